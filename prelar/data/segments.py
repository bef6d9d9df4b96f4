"""Training segments: random windows of T consecutive frames from the clips of shards, as an endless stream.

Every (DDP rank, DataLoader worker) pair is one stream; streams read disjoint data. With at least as many
shards as streams, stream s reads shards s, s + S, s + 2S, ... (S streams), in a new random order each
pass; with fewer shards, every stream reads all shards (in order) and keeps the training clips whose index
among them is s modulo S. Clips in the held-out split (`in_holdout(id, holdout_fraction)`) are never read
for training. Each visit of a clip of L >= T frames yields max(1, L // T) windows at random offsets;
clips shorter than T are skipped (counted in a warning). With `with_actions`, each window also carries its
clip's true actions [T-1, A] (for a `model.true_actions` world model); a clip without actions is then an error
naming it. Windows pass through a shuffle buffer. Random numbers come from `seeding.mix(seed, rank, worker)`,
so a run is reproducible.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from prelar import seeding
from prelar.data.shards import in_holdout, read_shard, shard_paths

log = logging.getLogger(__name__)


class SegmentDataset(IterableDataset):
    """Endless uint8 segments [T, 3, H, W]; with `with_actions`, (segment, float32 actions [T-1, A]) pairs;
    with `with_meta`, dicts {frames, id, offset, stream} (and actions)."""

    def __init__(
        self,
        shards: str | Path | Iterable[str | Path],
        segment_length: int,
        shuffle_buffer: int,
        holdout_fraction: float,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        with_meta: bool = False,
        with_actions: bool = False,
    ):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.shards = shard_paths(shards)
        self.segment_length = segment_length
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.holdout_fraction = holdout_fraction
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.with_meta = with_meta
        self.with_actions = with_actions

    def _stream(self) -> tuple[int, int, int]:
        """(stream index, number of streams, worker id) of the calling DataLoader worker."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * workers + worker, self.world_size * workers, worker

    def _windows(self, stream: int, streams: int, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        """Endless windows of this stream's clips, pass after pass."""
        by_shard = len(self.shards) >= streams
        shards = self.shards[stream::streams] if by_shard else self.shards
        T = self.segment_length
        first_pass = True
        while True:
            order = rng.permutation(len(shards)) if by_shard else range(len(shards))
            index, read, short, yielded = -1, 0, 0, 0
            for i in order:
                for clip in read_shard(shards[i]):
                    clip_id = str(clip.meta["id"])
                    if in_holdout(clip_id, self.holdout_fraction):
                        continue
                    index += 1  # among the training clips, so each stream gets some if S of them exist
                    if not by_shard and index % streams != stream:
                        continue
                    read += 1
                    length = len(clip.frames)
                    if length < T:
                        short += 1
                        continue
                    if self.with_actions and clip.actions is None:
                        raise ValueError(
                            f"{shards[i]}: clip {clip_id} has no actions, and model.true_actions trains on "
                            "the clips' true actions; use shards with actions (Meta-world, RLBench) or a "
                            "variant with latent actions"
                        )
                    for offset in rng.integers(0, length - T + 1, size=max(1, length // T)):
                        window = clip.frames[offset : offset + T].transpose(0, 3, 1, 2)  # [T, 3, H, W]
                        frames = torch.from_numpy(np.ascontiguousarray(window))  # [T, 3, H, W] uint8
                        item = {"frames": frames, "id": clip_id, "offset": int(offset), "stream": stream}
                        if self.with_actions:  # actions[t] leads from frame t to t + 1: [T-1, A]
                            item["actions"] = torch.from_numpy(
                                np.ascontiguousarray(clip.actions[offset : offset + T - 1], np.float32)
                            )
                        yielded += 1
                        yield item
            if first_pass and short:
                log.warning(
                    "stream %d/%d: skipped %d of %d training clips shorter than segment_length=%d",
                    stream, streams, short, read, T,
                )
            if not yielded:
                raise RuntimeError(
                    f"stream {stream} of {streams} (rank {self.rank}): no training clip of >= {T} frames in "
                    f"{len(shards)} of {len(self.shards)} shards ({read} clips read, {short} too short); "
                    f"use more data, fewer loader workers/ranks, or a shorter segment_length"
                )
            first_pass = False

    def __iter__(self) -> Iterator[torch.Tensor | dict[str, Any]]:
        stream, streams, worker = self._stream()
        rng = np.random.default_rng(seeding.mix(self.seed, self.rank, worker))
        buffer: list[dict[str, Any]] = []
        for item in self._windows(stream, streams, rng):
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            slot = int(rng.integers(len(buffer)))
            item, buffer[slot] = buffer[slot], item
            if self.with_meta:
                yield item
            else:
                yield (item["frames"], item["actions"]) if self.with_actions else item["frames"]


def make_loader(
    shards: str | Path | Iterable[str | Path],
    loader_cfg,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    with_meta: bool = False,
    with_actions: bool = False,
) -> DataLoader:
    """Batches of uint8 segments [B, T, 3, H, W] (B = batch_size, T = segment_length), endlessly.

    shards: shard folder(s), tar(s) or glob(s). loader_cfg: `config.Loader`. With `with_actions`, batches are
    (segments, their true actions float32 [B, T-1, A]); with `with_meta`, dicts {frames [B, T, 3, H, W], id:
    list[str], offset [B], stream [B]} (and actions).
    """
    dataset = SegmentDataset(
        shards,
        segment_length=loader_cfg.segment_length,
        shuffle_buffer=loader_cfg.shuffle_buffer,
        holdout_fraction=loader_cfg.holdout_fraction,
        rank=rank,
        world_size=world_size,
        seed=seed,
        with_meta=with_meta,
        with_actions=with_actions,
    )
    return DataLoader(
        dataset,
        batch_size=loader_cfg.batch_size,
        num_workers=loader_cfg.workers,
        persistent_workers=loader_cfg.workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
