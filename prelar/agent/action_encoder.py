"""The action encoder of fine-tuning (PreLAR Eq. 10): real action a_t → latent action ã_t.

An MLP (paper: 2 hidden layers of 1024 units, ELU, 64 outputs) whose output takes the place of the
inverse dynamics encoder's latent action in the pre-trained RSSM. It is deterministic: Eq. 10 writes
p_θ(ã_t | a_t), but a point estimate is what the world model's action slot receives; the inverse
dynamics' Gaussian, and its KL to N(0, I), are pre-training-only. Methods that feed real actions
directly (DreamerV2, naïve fine-tuning) have no action encoder (`None` in `prelar.agent.finetune`).

Shape legend: N rows (any leading dims), A real action dims, L latent action dims.
"""

from __future__ import annotations

import torch
from torch import nn

from prelar.nets.heads import MLP


class ActionEncoder(nn.Module):
    """p_θ(ã_t | a_t): [.., A] → [.., L]. At an episode's first step the RSSM zeroes the latent action
    itself (`is_first`), as pre-training prepends a zero latent action at t=0."""

    def __init__(self, action_dim: int, latent_action_dim: int, units: int, layers: int):
        super().__init__()
        self.net = MLP(action_dim, latent_action_dim, units, layers)

    def forward(self, action: torch.Tensor) -> torch.Tensor:
        return self.net(action)
