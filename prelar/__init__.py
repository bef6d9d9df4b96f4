"""PreLAR: world-model pre-training on action-free videos with a learnable action representation."""

__version__ = "0.1.0"
