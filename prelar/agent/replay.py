"""Replay buffer of whole episodes for online fine-tuning (DreamerV2's replay, in memory and on disk).

Each stored step t of an episode holds the frame o_t, the action a_{t-1} that led to it (zeros at t=0,
the convention of the world model: `latent_action[:, t]` is the action *into* frame t), the reward for
that action and Meta-world's success flag. Segments of `segment_length` consecutive steps are drawn
uniformly among all segments that lie inside one stored episode.

Memory: frames are uint8 [3, 64, 64] = 12,288 B a step; with a 4-d float32 action, a float32 reward and
a bool success flag a stored step costs 12,309 B, i.e. 12.3 GB for the paper's capacity of 1e6 steps.
Episodes are allocated as they arrive, so memory grows with the buffer, not with its capacity.

Persistence (the resume policy): with a `directory`, every added episode is also written once to
`<directory>/<index>.npz` (append-only, deflate-compressed: Meta-world frames shrink ~12x, to ~0.5 MB per
501-step episode, ~0.25 GB per 250K-step run, at ~0.05 s per episode). A run's
checkpoint records how many episodes it had added; `restore(n)` reloads the newest of episodes 0..n-1
that fit the capacity and deletes files a killed run wrote after its checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Episode:
    """One episode as the replay stores it.

    frames:  uint8 [T, 3, H, W]
    actions: float32 [T, A]; actions[t] led to frames[t] (actions[0] = 0)
    rewards: float32 [T]; rewards[t] was received for actions[t] (rewards[0] = 0)
    success: bool [T]; info["success"] on arriving at frames[t]
    """

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    success: np.ndarray

    def __post_init__(self) -> None:
        length = len(self.frames)
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4:
            raise ValueError(
                f"episode frames must be uint8 [T, 3, H, W], got {self.frames.dtype} {self.frames.shape}"
            )
        for name in ("actions", "rewards", "success"):
            if len(getattr(self, name)) != length:
                raise ValueError(f"episode {name} has {len(getattr(self, name))} steps, frames have {length}")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def nbytes(self) -> int:
        return self.frames.nbytes + self.actions.nbytes + self.rewards.nbytes + self.success.nbytes


class Replay:
    """Episodes kept whole; the oldest are evicted once more than `capacity` steps are stored."""

    def __init__(self, capacity: int, segment_length: int, directory: str | Path | None = None):
        if capacity < segment_length:
            raise ValueError(
                f"replay capacity {capacity} is smaller than one segment ({segment_length} steps); "
                f"raise finetune.replay_capacity"
            )
        self.capacity = capacity
        self.segment_length = segment_length
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.episodes: list[Episode] = []
        self.added = 0  # episodes ever added (the index of the next file)
        self._starts = np.zeros(0, dtype=np.int64)  # valid segment starts per stored episode

    @property
    def steps(self) -> int:
        """Steps currently stored."""
        return sum(len(e) for e in self.episodes)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays."""
        return sum(e.nbytes for e in self.episodes)

    @property
    def segments(self) -> int:
        """Number of distinct segments that `sample` can draw."""
        return int(self._starts.sum())

    def add(self, episode: Episode, persist: bool = True) -> None:
        """Store one finished episode (and write it to `directory` unless `persist` is False)."""
        if len(episode) < self.segment_length:
            raise ValueError(
                f"episode of {len(episode)} steps is shorter than a segment ({self.segment_length}); "
                f"raise finetune.max_episode_steps or lower finetune.segment_length"
            )
        if persist and self.directory is not None:
            path = self.directory / f"{self.added:06d}.npz"
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(
                tmp,
                frames=episode.frames,
                actions=episode.actions,
                rewards=episode.rewards,
                success=episode.success,
            )
            tmp.replace(path)
        self.episodes.append(episode)
        self.added += 1
        while self.steps > self.capacity:
            self.episodes.pop(0)
        self._starts = np.array([len(e) - self.segment_length + 1 for e in self.episodes], dtype=np.int64)

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Draw `batch_size` segments uniformly among all stored segments.

        Returns frames uint8 [B, L, 3, H, W], actions float32 [B, L, A], rewards float32 [B, L],
        is_first bool [B, L] (True where a segment starts at an episode's first step).
        """
        if not self.episodes:
            raise RuntimeError("replay is empty: sample after the random prefill has added an episode")
        L = self.segment_length
        flat = rng.integers(0, self.segments, size=batch_size)  # [B] index among all segments
        ends = np.cumsum(self._starts)
        which = np.searchsorted(ends, flat, side="right")  # [B] episode of each segment
        offset = flat - (ends[which] - self._starts[which])  # [B] start inside that episode
        eps = [self.episodes[w] for w in which]
        is_first = np.zeros((batch_size, L), dtype=bool)
        is_first[:, 0] = offset == 0
        return {
            "frames": np.stack([e.frames[o : o + L] for e, o in zip(eps, offset, strict=True)]),
            "actions": np.stack([e.actions[o : o + L] for e, o in zip(eps, offset, strict=True)]),
            "rewards": np.stack([e.rewards[o : o + L] for e, o in zip(eps, offset, strict=True)]),
            "is_first": is_first,
        }

    def restore(self, episodes: int) -> None:
        """Reload episodes 0..`episodes`-1 from `directory` (newest first, up to the capacity).

        Files with a higher index were written by a run that was stopped before its next checkpoint:
        they are deleted, so that the replay and the checkpoint's step counter agree.
        """
        if self.directory is None:
            raise RuntimeError("replay has no directory to restore from")
        for path in self.directory.glob("*.npz"):
            if path.name.endswith(".tmp.npz") or int(path.stem) >= episodes:
                path.unlink()
        loaded: list[Episode] = []
        steps = 0
        for index in range(episodes - 1, -1, -1):
            if steps >= self.capacity:
                break
            path = self.directory / f"{index:06d}.npz"
            if not path.exists():
                raise FileNotFoundError(
                    f"{path}: replay episode missing, the run folder is incomplete; delete "
                    f"{self.directory.parent} to start the run afresh"
                )
            with np.load(path) as data:
                episode = Episode(**{k: data[k] for k in ("frames", "actions", "rewards", "success")})
            loaded.append(episode)
            steps += len(episode)
        self.episodes = []
        self.added = episodes - len(loaded)
        for episode in reversed(loaded):
            self.add(episode, persist=False)
