"""The video-based intrinsic bonus (PreLAR Eq. 12, APV Sec. 3.3 Eq. 5).

r_int_t = || y_t - y_t^k ||_2 where y_t is a fixed random Gaussian projection of an observation
representation averaged over a window of `window` steps (t .. t+window-1), and y_t^k its k-th nearest
neighbour in a FIFO queue of the most recent `queue_size` projections. As in APV's code, the batch's own
projections enter the queue before the search (so the queue is never empty) and the bonus is divided by a
running mean of its magnitude (DreamerV2's StreamNorm, momentum 0.99, starting at 1).

Where APV's code averages the k nearest distances, we take the distance to the k-th neighbour, as both
papers' equations say. Shape legend: B batch, T time, D representation width, P projection width,
N = B·(T-window+1) windows, Q queue entries.
"""

from __future__ import annotations

import torch
from torch import nn

from prelar import config


def window_average(x: torch.Tensor, window: int) -> torch.Tensor:
    """Average over sliding windows along time: [B, T, D] → [B, T-window+1, D] ("valid" windows only)."""
    if x.shape[1] < window:
        raise ValueError(f"bonus window {window} is longer than the segment ({x.shape[1]} steps)")
    csum = torch.cumsum(torch.nn.functional.pad(x, (0, 0, 1, 0)), dim=1)  # [B, T+1, D]
    return (csum[:, window:] - csum[:, :-window]) / window  # [B, T-window+1, D]


def kth_neighbour_distance(y: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Euclidean distance of each row of y [N, P] to its k-th nearest row of bank [Q, P] → [N].

    With fewer than k rows in the bank, the farthest one counts.
    """
    dist = torch.cdist(y, bank)  # [N, Q]
    k = min(k, bank.shape[0])
    return dist.topk(k, dim=1, largest=False).values[:, -1]  # [N]


class IntrinsicBonus(nn.Module):
    """Stateful bonus: the projection, the queue and the running mean are buffers (saved with the agent)."""

    def __init__(self, feature_dim: int, cfg: config.Bonus, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        # Johnson–Lindenstrauss: N(0, 1/P) entries preserve distances in expectation.
        self.register_buffer("projection", torch.randn(feature_dim, cfg.dim, generator=g) / cfg.dim**0.5)
        self.register_buffer("queue", torch.zeros(cfg.queue_size, cfg.dim))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))
        self.register_buffer("magnitude", torch.ones(()))

    def enqueue(self, y: torch.Tensor) -> None:
        """Push projections y [N, P] to the front of the queue, dropping the oldest."""
        n = min(len(y), self.cfg.queue_size)
        self.queue.copy_(torch.cat([y[-n:].flip(0), self.queue[: self.cfg.queue_size - n]]))
        self.queue_len.fill_(min(int(self.queue_len) + n, self.cfg.queue_size))

    @torch.no_grad()
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, T, D] → normalised bonus [B, T-window+1] (before the weight β)."""
        B = features.shape[0]
        y = window_average(features.float(), self.cfg.window) @ self.projection  # [B, T', P]
        y = y.reshape(-1, self.cfg.dim)  # [N, P]
        self.enqueue(y)
        bonus = kth_neighbour_distance(y, self.queue[: int(self.queue_len)], self.cfg.k)  # [N]
        m = self.cfg.momentum
        self.magnitude.mul_(m).add_((1 - m) * bonus.abs().mean())
        return (bonus / (self.magnitude + 1e-8)).reshape(B, -1)  # [B, T']
