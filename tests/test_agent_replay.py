"""Replay of whole episodes: uniform segments inside episodes, eviction, persistence and restore."""

from __future__ import annotations

import numpy as np
import pytest

from prelar.agent.replay import Episode, Replay


def _episode(length: int, tag: int, action_dim: int = 4) -> Episode:
    """Frames whose every pixel encodes (episode tag, step) so that sampled segments can be traced."""
    frames = np.zeros((length, 3, 64, 64), dtype=np.uint8)
    frames[:, 0] = tag
    frames[:, 1] = np.arange(length, dtype=np.uint8)[:, None, None]
    actions = np.random.default_rng(tag).uniform(-1, 1, (length, action_dim)).astype(np.float32)
    actions[0] = 0
    rewards = np.arange(length, dtype=np.float32) + 1000 * tag
    rewards[0] = 0
    return Episode(frames, actions, rewards, np.zeros(length, dtype=bool))


def test_segments_are_contiguous_and_inside_one_episode():
    replay = Replay(capacity=1000, segment_length=5)
    for tag in range(3):
        replay.add(_episode(10 + tag, tag))
    assert replay.segments == (6 + 7 + 8)
    batch = replay.sample(256, np.random.default_rng(0))
    assert batch["frames"].shape == (256, 5, 3, 64, 64) and batch["frames"].dtype == np.uint8
    assert batch["actions"].shape == (256, 5, 4) and batch["rewards"].shape == (256, 5)
    tags = batch["frames"][:, :, 0, 0, 0].astype(int)
    steps = batch["frames"][:, :, 1, 0, 0].astype(int)
    assert (tags == tags[:, :1]).all()  # one episode per segment
    assert (np.diff(steps, axis=1) == 1).all()  # consecutive steps
    assert (batch["is_first"][:, 0] == (steps[:, 0] == 0)).all() and not batch["is_first"][:, 1:].any()
    # rewards and actions travel with their frames
    np.testing.assert_array_equal(batch["rewards"][:, 1:], steps[:, 1:] + 1000 * tags[:, 1:])
    # every start position of every episode is reachable, uniformly (21 segments, 256 draws)
    starts = set(zip(tags[:, 0].tolist(), steps[:, 0].tolist(), strict=True))
    assert len(starts) == 21


def test_eviction_keeps_newest_whole_episodes_within_capacity():
    replay = Replay(capacity=25, segment_length=5)
    for tag in range(4):
        replay.add(_episode(10, tag))
    assert replay.steps == 20 and replay.added == 4
    assert [int(e.frames[0, 0, 0, 0]) for e in replay.episodes] == [2, 3]
    assert replay.nbytes == 20 * (12288 + 16 + 4 + 1)


def test_bad_episode_and_capacity_fail_with_the_parameter_name():
    replay = Replay(capacity=100, segment_length=50)
    with pytest.raises(ValueError, match="max_episode_steps"):
        replay.add(_episode(10, 0))
    with pytest.raises(ValueError, match="replay_capacity"):
        Replay(capacity=10, segment_length=50)


def test_restore_reloads_checkpointed_episodes_and_drops_later_ones(tmp_path):
    replay = Replay(capacity=1000, segment_length=5, directory=tmp_path / "replay")
    for tag in range(5):
        replay.add(_episode(8, tag))
    # a checkpoint taken after 3 episodes; episodes 3 and 4 were written after it by a killed run
    again = Replay(capacity=1000, segment_length=5, directory=tmp_path / "replay")
    again.restore(3)
    assert again.added == 3 and again.steps == 24
    assert sorted(p.name for p in (tmp_path / "replay").iterdir()) == [
        "000000.npz",
        "000001.npz",
        "000002.npz",
    ]
    for a, b in zip(again.episodes, replay.episodes[:3], strict=True):
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.actions, b.actions)
    again.add(_episode(8, 9))
    assert (tmp_path / "replay" / "000003.npz").exists() and again.added == 4
    # a smaller capacity reloads only the newest episodes
    small = Replay(capacity=16, segment_length=5, directory=tmp_path / "replay")
    small.restore(4)
    assert [int(e.frames[0, 0, 0, 0]) for e in small.episodes] == [2, 9] and small.added == 4
