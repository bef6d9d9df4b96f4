"""Offscreen rendering speed of Meta-world frames: the fast settings vs MuJoCo's default quality.

Both qualities render the same scripted-expert trajectory (physics does not depend on rendering), so the
frames can be compared pixel by pixel. Only `env.render()` is timed (after one warm-up frame).

    python bench/bench_render.py [--task drawer-close-v3] [--frames 100] [--out reports/bench_render.png]

Prints a table (ms/frame, frames/s, speed-up) and the mean absolute pixel difference, and saves a contact
sheet: default frames, fast frames, and their absolute difference x4, one row each.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from prelar.data.contact_sheet import contact_sheet
from prelar.envs.metaworld import expert_policy, make_env


def render_trajectory(task: str, camera: str, frames: int, fast: bool, seed: int) -> tuple[np.ndarray, float]:
    """Frames uint8 [frames, 64, 64, 3] of the expert's episode and the seconds spent in env.render()."""
    env = make_env(task, seed, camera=camera, max_steps=frames, fast_render=fast)
    policy = expert_policy(task)
    _, info = env.reset(seed=seed)
    env.render()  # warm-up: the first frame uploads textures
    out, seconds = [], 0.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
        for _ in range(frames):
            _, _, _, _, info = env.step(policy.get_action(info["state"]))
            start = time.perf_counter()
            out.append(env.render())
            seconds += time.perf_counter() - start
    env.close()
    return np.stack(out), seconds


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--task", default="drawer-close-v3")
    parser.add_argument("--camera", default="corner")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/out/bench_render.png", help="contact sheet PNG")
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")

    default, t_default = render_trajectory(args.task, args.camera, args.frames, fast=False, seed=args.seed)
    fast, t_fast = render_trajectory(args.task, args.camera, args.frames, fast=True, seed=args.seed)
    diff = np.abs(fast.astype(np.int16) - default.astype(np.int16))  # [N, 64, 64, 3]

    n = args.frames
    print(f"{args.task} / {args.camera}, {n} frames of 64x64, MUJOCO_GL={os.environ['MUJOCO_GL']}")
    print(f"{'quality':<10}{'ms/frame':>10}{'frames/s':>10}")
    print(f"{'default':<10}{1000 * t_default / n:>10.2f}{n / t_default:>10.1f}")
    print(f"{'fast':<10}{1000 * t_fast / n:>10.2f}{n / t_fast:>10.1f}")
    print(f"speed-up: {t_default / t_fast:.1f}x")
    print(f"mean |fast - default|: {diff.mean():.2f} / 255 (values off by > 32: {(diff > 32).mean():.1%})")

    scaled = np.clip(diff * 4, 0, 255).astype(np.uint8)
    sheet = contact_sheet([default, fast, scaled], ["default quality", "fast", "|fast - default| x4"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet = sheet.resize((sheet.width * 2, sheet.height * 2), Image.Resampling.NEAREST)
    sheet.save(args.out)
    print(f"contact sheet: {args.out}")


if __name__ == "__main__":
    main()
