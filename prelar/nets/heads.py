"""Small dense heads (DreamerV2's MLP): the inverse dynamics head here; fine-tuning's action encoder and
reward heads are built from the same class.

Shape legend: N rows (any leading dims), I input width, O output width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """[.., I] → `layers` x (Linear(hidden), optional LayerNorm, ELU) → Linear(O) → [.., O]."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, layers: int, norm: bool = False):
        super().__init__()
        modules: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            modules += [nn.Linear(width, hidden), nn.LayerNorm(hidden, eps=1e-3) if norm else nn.Identity(),
                        nn.ELU()]
            width = hidden
        modules.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def diag_gaussian(raw: torch.Tensor, min_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a head's output [.., 2A] into a diagonal Gaussian: mean [.., A], std = softplus(raw) + min_std.

    softplus keeps the std positive with a gradient everywhere; `min_std` keeps it (and the action KL's
    log std) away from 0. At a zero raw output the std is ln 2 + min_std.
    """
    mean, raw_std = raw.float().chunk(2, -1)
    return mean, F.softplus(raw_std) + min_std
