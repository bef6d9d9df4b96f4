"""Intrinsic bonus (Eq. 12): window averages, k-th neighbour distances, queue and normalisation."""

from __future__ import annotations

import torch

from prelar import config
from prelar.agent.bonus import IntrinsicBonus, kth_neighbour_distance, window_average


def test_window_average_matches_a_loop():
    x = torch.randn(2, 9, 3)
    got = window_average(x, 5)
    want = torch.stack([x[:, t : t + 5].mean(1) for t in range(5)], 1)
    assert got.shape == (2, 5, 3)
    torch.testing.assert_close(got, want)


def test_kth_neighbour_distance_on_a_line():
    bank = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    y = torch.tensor([[0.0], [10.0]])
    torch.testing.assert_close(kth_neighbour_distance(y, bank, 1), torch.tensor([0.0, 3.0]))
    torch.testing.assert_close(kth_neighbour_distance(y, bank, 3), torch.tensor([3.0, 9.0]))
    torch.testing.assert_close(kth_neighbour_distance(y, bank, 16), torch.tensor([7.0, 10.0]))  # k > bank


def test_bonus_rewards_novel_trajectories_and_keeps_a_fifo_queue():
    cfg = config.Bonus(window=2, dim=16, k=4, queue_size=64, momentum=0.0)
    bonus = IntrinsicBonus(feature_dim=32, cfg=cfg, seed=0)
    familiar = torch.randn(1, 1, 32).expand(4, 10, 32) + 0.01 * torch.randn(4, 10, 32)
    r_familiar = bonus(familiar)
    assert r_familiar.shape == (4, 9) and int(bonus.queue_len) == 36
    novel = familiar.clone()
    novel[0] += 5.0 * torch.randn(10, 32)  # one trajectory far from everything seen, and from itself
    r = bonus(novel)
    assert r[0].min() > 10 * r[1:].max()
    assert int(bonus.queue_len) == 64  # capped
    # the newest projections sit at the front of the queue
    y = window_average(novel, 2) @ bonus.projection
    torch.testing.assert_close(bonus.queue[0], y.reshape(-1, 16)[-1])


def test_running_mean_normalises_the_scale():
    cfg = config.Bonus(window=1, dim=8, k=2, queue_size=256, momentum=0.5)
    bonus = IntrinsicBonus(feature_dim=8, cfg=cfg, seed=1)
    for _ in range(30):
        r = bonus(100.0 * torch.randn(2, 20, 8))
    assert 0.3 < r.mean().item() < 3.0  # raw distances are ~100x larger
    state = bonus.state_dict()
    assert {"projection", "queue", "queue_len", "magnitude"} <= set(state)
