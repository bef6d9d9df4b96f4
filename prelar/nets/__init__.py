"""Networks of the world model: ResNet encoder/decoder, RSSM, inverse dynamics encoder, dense heads."""

from prelar.nets.heads import MLP, diag_gaussian
from prelar.nets.inverse_dynamics import InverseDynamics
from prelar.nets.resnet import ResNetDecoder, ResNetEncoder
from prelar.nets.rssm import RSSM

__all__ = ["MLP", "RSSM", "InverseDynamics", "ResNetDecoder", "ResNetEncoder", "diag_gaussian"]
