"""Inverse dynamics encoder q(ã_t | o_t, o_{t+1}) of PreLAR Eq. 3.

As in the reference code: its own 13-layer ResNet over the channel-concatenation of the two frames
(6 channels), one hidden dense layer, and a diagonal Gaussian over the latent action (`latent_action_dim`,
64 in the paper) with std = softplus(·) + min_std (see `heads.diag_gaussian`).

Shape legend: N frame pairs, A latent action dims.
"""

from __future__ import annotations

import torch
from torch import nn

from prelar.nets.heads import MLP, diag_gaussian
from prelar.nets.resnet import ResNetEncoder


class InverseDynamics(nn.Module):
    def __init__(self, width: int, hidden: int, action_dim: int, min_std: float, norm: str = "batch"):
        super().__init__()
        self.encoder = ResNetEncoder(6, width, norm=norm)
        self.head = MLP(self.encoder.out_dim, 2 * action_dim, hidden, layers=1)
        self.min_std = min_std

    def forward(self, obs: torch.Tensor, next_obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs, next_obs [N, 3, 64, 64] in [-0.5, 0.5] → (mean [N, A], std [N, A]), float32."""
        x = self.encoder(torch.cat([obs, next_obs], 1))  # [N, F]
        return diag_gaussian(self.head(x), self.min_std)
