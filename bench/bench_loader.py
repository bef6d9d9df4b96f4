"""Benchmark: training frames/s the segment loader delivers into [B, T, 3, 64, 64] uint8 batches.

Writes shards of synthetic clips of realistic size (default 100 clips x 150 frames of 64x64, like a
Meta-world episode) into a temporary folder, then times `make_loader` with the `Loader` config of
params.yaml (batch 16 x segment 25, 2 workers by default) after a warm-up.

    python bench/bench_loader.py [--clips 100] [--frames 150] [--workers 2] [--seconds 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from prelar import config
from prelar.data.clip import Clip
from prelar.data.segments import make_loader
from prelar.data.shards import write_shards

# What pre-training consumes: the GPU goal is ~2,000 frames/s (batch 16 x 25 frames at ~5 updates/s);
# the loader should deliver 10x that so it never limits training.
TRAINING_FRAMES_PER_S = 2_000
TARGET_FRAMES_PER_S = 20_000


def synthetic_clips(clips: int, frames: int, size: int, rng: np.random.Generator):
    """Clips of smooth moving patterns (not constant, not noise) with actions, like ingested episodes."""
    yy, xx = np.mgrid[0:size, 0:size]
    for c in range(clips):
        t = np.arange(frames)[:, None, None]
        base = (xx[None] * 3 + yy[None] * 2 + t * (c + 1)) % 256  # [T, size, size]
        video = np.stack([base, (base + 85) % 256, (base + 170) % 256], axis=-1).astype(np.uint8)
        yield Clip(
            frames=video,
            actions=rng.uniform(-1, 1, (frames - 1, 4)).astype(np.float32),
            rewards=rng.uniform(0, 10, frames - 1).astype(np.float32),
            success=np.zeros(frames - 1, bool),
            meta={"source": "bench", "id": f"bench/clip{c:05d}", "task": "synthetic"},
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: params loader)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed duration after warm-up")
    args = parser.parse_args()
    params = config.load(args.params)
    cfg = params.loader
    if args.workers is not None:
        cfg = cfg.model_copy(update={"workers": args.workers})

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        clips = synthetic_clips(args.clips, args.frames, params.data.shards.size, np.random.default_rng(0))
        paths = write_shards(clips, tmp, params.data.shards.clips_per_shard)
        print(f"wrote {len(paths)} shards ({args.clips} clips x {args.frames} frames) "
              f"in {time.perf_counter() - start:.1f} s")

        loader = iter(make_loader(tmp, cfg, seed=0))
        for _ in range(10):  # warm-up: worker start, shuffle buffer fill
            batch = next(loader)
        batches, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            batch = next(loader)
            batches += 1
        seconds = time.perf_counter() - start
    frames_per_s = batches * batch.shape[0] * batch.shape[1] / seconds
    print(f"batch {tuple(batch.shape)} {batch.dtype}, workers={cfg.workers}, "
          f"shuffle_buffer={cfg.shuffle_buffer}")
    print(f"{batches} batches in {seconds:.1f} s: {frames_per_s:,.0f} frames/s "
          f"({batches / seconds:.1f} batches/s)")
    print(f"assumption: GPU pre-training consumes ~{TRAINING_FRAMES_PER_S:,} frames/s; "
          f"target >= {TARGET_FRAMES_PER_S:,} frames/s")
    print(f"ratio to consumption: {frames_per_s / TRAINING_FRAMES_PER_S:.1f}x; "
          f"target {'met' if frames_per_s >= TARGET_FRAMES_PER_S else 'NOT met'}")


if __name__ == "__main__":
    main()
