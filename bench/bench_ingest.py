"""Source throughput per core: SSv2 webm decode (+ resize to 64x64) and RLBench PNG read (+ resize).

Generates its inputs in a temporary folder with the test generators (tests/media.py): SSv2-like VP9 webm
(427x240, 12 fps, ~0.25 Mbit/s) and an RLBench tree of 128x128 PNGs, then times `load_clip` and
`resize_frames` in this one process (the ingest pool runs one such process per core).

    python bench/bench_ingest.py [--clips 12] [--frames 48] [--episodes 4] [--steps 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from media import make_rlbench_tree, make_webm  # noqa: E402

from prelar.config import RLBenchSource, SSv2Source  # noqa: E402
from prelar.data import rlbench, ssv2  # noqa: E402
from prelar.data.video import resize_frames  # noqa: E402


def _time_source(module, cfg, size: int) -> tuple[int, float, float]:
    """(frames, seconds loading, seconds resizing) over every clip of a source, in this process."""
    refs, rejects = module.list_clips(cfg)
    assert not rejects, rejects
    frames, load_s, resize_s = 0, 0.0, 0.0
    for ref in refs:
        start = time.perf_counter()
        clip = module.load_clip(ref, cfg)
        middle = time.perf_counter()
        resize_frames(clip.frames, size, cfg.resize)
        load_s += middle - start
        resize_s += time.perf_counter() - middle
        frames += len(clip.frames)
    return frames, load_s, resize_s


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--clips", type=int, default=12, help="SSv2-like webm files")
    parser.add_argument("--frames", type=int, default=48, help="frames per webm (SSv2: 2-6 s at 12 fps)")
    parser.add_argument("--episodes", type=int, default=4, help="RLBench episodes (one camera each)")
    parser.add_argument("--steps", type=int, default=100, help="frames per RLBench episode")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        videos = Path(tmp) / "ssv2"
        for i in range(args.clips):
            make_webm(videos / f"{i}.webm", frames=args.frames, texture=True, seed=i)
        megabits = sum(p.stat().st_size for p in videos.iterdir()) * 8 / 1e6
        bitrate = megabits / (args.clips * args.frames / 12)
        make_rlbench_tree(Path(tmp) / "rlbench", episodes=args.episodes, frames=args.steps, size=128)

        rows = []
        for decoder in ("decord", "pyav"):
            cfg = SSv2Source(src=str(videos), labels=None, decoder=decoder)
            rows.append((f"SSv2 427x240 VP9 ({decoder})", *_time_source(ssv2, cfg, args.size)))
        cfg = RLBenchSource(src=str(Path(tmp) / "rlbench"), cameras=["front"])
        rows.append(("RLBench 128x128 PNG", *_time_source(rlbench, cfg, args.size)))

    print(f"\nsource throughput, one process (frames/s per core); webm bitrate {bitrate:.2f} Mbit/s")
    print(f"{'source':32s} {'frames':>7s} {'decode f/s':>11s} {'resize f/s':>11s} {'decode+resize f/s':>18s}")
    for name, frames, load_s, resize_s in rows:
        total = frames / (load_s + resize_s)
        print(f"{name:32s} {frames:7d} {frames / load_s:11.0f} {frames / resize_s:11.0f} {total:18.0f}")


if __name__ == "__main__":
    main()
