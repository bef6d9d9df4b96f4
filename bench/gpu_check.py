"""The GPU device check (issue 11): every CUDA path of the project exercised and timed in one call.

    bash bench/gpu_check.sh OUTDIR [--device cuda|cpu] [--size paper|tiny]   (sets up, then runs this file)

Steps, each in a fresh process with its own time limit (so a crash or a slow compile in one leaves the
others' figures), each writing OUTDIR/<step>.json as soon as it has figures; all are merged into
OUTDIR/figures.json at the end:
  tests             tests/test_device.py on the device: `pytest -m cuda` (on --device cpu the same
                    selection, collected without the blocked packages and skipped without CUDA: the
                    test suite itself runs their CPU half)
  pretrain          one pre-training update (`pretrain.build/objective_of/train_step`, bf16 autocast) on
                    synthetic uint8 segments: ms/update, frames/s, peak memory (CUDA: max allocated; CPU: the
                    process's peak RSS), FLOPs per update against the device's measured bf16 matmul rate, and
                    the step's two parts timed alone (forward + backward each): the RSSM's sequential loop
                    (`observe` over T steps) and the convolutions (encoder, decoder, inverse dynamics)
  pretrain_compile  the same update with `pretrain.compile: true` (CUDA only: on a 2-core CPU tracing the tiny
                    model alone takes over a minute); its first update includes the compilation
  finetune          one fine-tuning update (`bench_finetune.time_updates`: world model Eq. 11, imagination,
                    actor-critic) on segments of synthetic episodes
  render            Meta-world frames/s with MUJOCO_GL=egl (`bench_render.render_trajectory`), if MuJoCo and
                    Meta-world import; else the reason it was skipped
`--size paper`: params.yaml's `paper` profile (pre-training batch 16 x 25, RSSM 1024 / 32x32, ResNet width 48;
fine-tuning batch 50 x 50); `--size tiny`: its `tiny` profile (the CPU half that CI runs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PRECISION = "bf16"  # the check times bf16 autocast, the precision a GPU run uses


@dataclass(frozen=True)
class Size:
    profile: str  # of params.yaml
    warmup: int  # updates before timing (a compiled objective compiles in the first ones)
    timed: int  # updates timed (the median is reported)
    part_repeats: int  # repeats of each part of the step timed alone
    finetune_updates: int  # fine-tuning updates timed (after one warm-up)
    render_frames: int
    matmul_n: int  # side of the square bf16 matmul that measures the device's rate


SIZES = {
    "paper": Size("paper", warmup=3, timed=20, part_repeats=10, finetune_updates=5, render_frames=200,
                  matmul_n=8192),
    "tiny": Size("tiny", warmup=1, timed=1, part_repeats=1, finetune_updates=2, render_frames=20,
                 matmul_n=512),
}


def _params(args: argparse.Namespace, updates: dict[str, Any]):
    from prelar import config

    params = config.load(REPO / "params.yaml", profile=SIZES[args.size].profile)
    return config.override(params, updates)


def _median_ms(fn: Callable[[], Any], repeats: int, dev) -> float:
    """Median wall time of `fn` in ms, synchronised with the device around each call."""
    from prelar.device import synchronize

    times = []
    for _ in range(repeats):
        synchronize(dev)
        t0 = time.perf_counter()
        fn()
        synchronize(dev)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _reset_peak_memory(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def step_tests(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """tests/test_device.py's device half, in pytest; counts from its JUnit XML."""
    xml = out / "pytest.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
           f"--junitxml={xml}", "tests/test_device.py"]
    t0 = time.perf_counter()
    code = subprocess.run(cmd, cwd=REPO).returncode
    seconds = time.perf_counter() - t0
    if code not in (0, 1) or not xml.exists():  # 1: some tests failed (counted below)
        return {"error": f"pytest exited {code}"}
    suite = ET.parse(xml).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "failed": counts["failures"] + counts["errors"],
        "skipped": counts["skipped"],
        "seconds": seconds,
    }


def step_parts(model, frames, dev, repeats: int) -> dict[str, float]:
    """ms of the pre-training step's two parts, each timed alone (forward + backward, bf16 autocast):
    the RSSM's sequential loop over T steps, and the convolutional networks on all B·T frames at once."""
    import torch

    from prelar import device
    from prelar.world_model import preprocess

    images = preprocess(frames)  # [B, T, 3, 64, 64]
    B, T = frames.shape[:2]
    cfg = model.cfg
    feat = torch.randn(B, T, model.rssm.feat_dim, device=dev)  # the decoder's input
    embed = torch.randn(B, T, model.encoder.out_dim, device=dev, requires_grad=True)
    action = None if cfg.action_free else torch.randn(B, T, cfg.latent_action_dim, device=dev,
                                                      requires_grad=True)
    generator = torch.Generator(device=dev).manual_seed(0)

    def convolutions() -> None:
        with device.autocast(dev, PRECISION):
            total = model.encode(images).float().mean() + model.decode(feat).float().mean()
            if model.inverse_dynamics is not None:
                mean, std = model.latent_action_posterior(images)  # [B, T−1, A]
                total = total + mean.float().mean() + std.float().mean()
        total.backward()

    def rssm_loop() -> None:
        with device.autocast(dev, PRECISION):
            post, prior = model.observe(embed, action, None, None, generator)
            total = model.features(post).float().mean() + prior["logits"].float().mean()
        total.backward()

    parts = {"convolutions_ms": _median_ms(convolutions, repeats, dev),
             "rssm_loop_ms": _median_ms(rssm_loop, repeats, dev)}
    model.zero_grad(set_to_none=True)
    return parts


def _pretrain_update(args: argparse.Namespace, out: Path, compiled: bool) -> dict[str, Any]:
    import torch
    from bench_pretrain import matmul_peak
    from torch.utils.flop_counter import FlopCounterMode

    from prelar import device, pretrain

    size = SIZES[args.size]
    params = _params(args, {"pretrain.device": args.device, "pretrain.precision": PRECISION,
                            "pretrain.compile": compiled})
    dist = device.setup(args.device)
    dev = dist.device
    model, optimizer = pretrain.build(params, dist)
    objective = pretrain.objective_of(model, params, dist)
    B, T = params.loader.batch_size, params.loader.segment_length
    frames = torch.randint(0, 256, (B, T, 3, 64, 64), dtype=torch.uint8, device=dev)  # synthetic segments
    seeds = itertools.count()

    def update() -> None:
        generator = torch.Generator(device=dev).manual_seed(next(seeds))
        pretrain.train_step(model, objective, optimizer, frames, generator, params.pretrain, dist)

    _reset_peak_memory(dev)
    result: dict[str, Any] = {"device_name": _device_name(dev), "batch": B, "segment_length": T,
                              "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    result["first_update_s"] = _median_ms(update, 1, dev) / 1000  # includes the compilation, if any
    for _ in range(size.warmup - 1):
        update()
    ms = _median_ms(update, size.timed, dev)
    result.update(ms_per_update=ms, frames_per_s=B * T / (ms / 1000),
                  peak_memory_gib=pretrain._peak_memory_gib(dev))
    _write(out, args.step, result)  # the timings are safe before the slower extras below
    if not compiled:
        with FlopCounterMode(display=False) as counter:
            update()
        flops = counter.get_total_flops()
        rate = matmul_peak(torch.bfloat16, size.matmul_n, device=str(dev))
        result.update(flops_per_update=flops, achieved_tflop_per_s=flops / ms * 1e-9,
                      matmul_bf16_tflop_per_s=rate * 1e-12, share_of_matmul_rate=flops / (ms / 1000) / rate)
        parts = step_parts(model, frames, dev, size.part_repeats)
        result.update(parts, convolutions_share=parts["convolutions_ms"] / ms,
                      rssm_loop_share=parts["rssm_loop_ms"] / ms)
    return result


def step_pretrain(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    return _pretrain_update(args, out, compiled=False)


def step_pretrain_compile(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    if args.device != "cuda":
        return {"skipped": "torch.compile is timed on CUDA only (tracing the tiny model alone takes over a "
                           "minute on a 2-core CPU)"}
    return _pretrain_update(args, out, compiled=True)


def synthetic_replay(cfg, rng):
    """A replay of random uint8 episodes, each two segments (`cfg.segment_length`) long."""
    import numpy as np

    from prelar.agent.model import ACTION_DIM
    from prelar.agent.replay import Episode, Replay

    length = 2 * cfg.segment_length
    replay = Replay(4 * length, cfg.segment_length)
    for _ in range(4):
        actions = rng.uniform(-1, 1, (length, ACTION_DIM)).astype(np.float32)
        actions[0] = 0  # the action into the first frame
        replay.add(
            Episode(
                frames=rng.integers(0, 256, (length, 3, 64, 64), dtype=np.uint8),
                actions=actions,
                rewards=rng.uniform(0, 1, length).astype(np.float32),
                success=np.zeros(length, dtype=bool),
            ),
            persist=False,
        )
    return replay


def step_finetune(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import numpy as np
    import torch
    from bench_finetune import time_updates

    from prelar import device, pretrain
    from prelar.agent.finetune import Agent
    from prelar.world_model import WorldModel

    params = _params(args, {"finetune.method": "prelar", "finetune.device": args.device,
                            "finetune.precision": PRECISION})
    cfg = params.finetune
    dev = device.resolve_device(cfg.device)
    torch.manual_seed(0)
    agent = Agent(params, WorldModel(params.model), dev)  # a fresh world model: the pre-trained one's cost
    rng = np.random.default_rng(0)
    replay = synthetic_replay(cfg, rng)
    _reset_peak_memory(dev)
    timed = time_updates(agent, replay, cfg.batch_size, SIZES[args.size].finetune_updates, rng)
    return {
        "device_name": _device_name(dev),
        "batch": cfg.batch_size,
        "segment_length": cfg.segment_length,
        "imagination_horizon": cfg.behavior.horizon,
        "ms_per_update": 1000 * timed.pop("update_s"),
        **timed,
        "peak_memory_gib": pretrain._peak_memory_gib(dev),
    }


def step_render(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import metaworld  # noqa: F401
        import mujoco  # noqa: F401
    except ImportError as err:
        return {"skipped": f"MuJoCo / Meta-world cannot be imported here ({err})"}
    from bench_render import render_trajectory
    n = SIZES[args.size].render_frames
    _, seconds = render_trajectory("drawer-close-v3", "corner", n, fast=True, seed=0)
    return {"mujoco_gl": os.environ["MUJOCO_GL"], "frames": n, "ms_per_frame": 1000 * seconds / n,
            "frames_per_s": n / seconds}


# name -> (function, time limit in s at the paper size); the limits add up to under 8 minutes.
STEPS: dict[str, tuple[Callable[[argparse.Namespace, Path], dict[str, Any]], int]] = {
    "tests": (step_tests, 100),
    "pretrain": (step_pretrain, 75),
    "pretrain_compile": (step_pretrain_compile, 165),
    "finetune": (step_finetune, 75),
    "render": (step_render, 40),
}


def _device_name(dev) -> str:
    import platform

    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU {platform.machine()}"


def _write(out: Path, step: str, figures: dict[str, Any]) -> None:
    (out / f"{step}.json").write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")


def _line(step: str, figures: dict[str, Any]) -> str:
    shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()]
    return f"{step:17s} " + "  ".join(shown)


def run_all(args: argparse.Namespace) -> int:
    """Every step in its own process (stdout and stderr pass through); figures.json; 1 if any step failed."""
    import platform

    import torch

    out = Path(args.out)
    figures: dict[str, Any] = {"device": args.device, "size": args.size, "python": platform.python_version(),
                               "torch": torch.__version__, "cuda": torch.version.cuda, "steps": {}}
    print(f"== python {figures['python']}, torch {figures['torch']} (CUDA {figures['cuda']}), "
          f"--device {args.device} --size {args.size}", flush=True)
    failed = False
    start = time.perf_counter()
    for step, (_, limit) in STEPS.items():
        (out / f"{step}.json").unlink(missing_ok=True)
        print(f"== {step} (limit {limit} s)", flush=True)
        cmd = [sys.executable, __file__, str(out), "--device", args.device, "--size", args.size,
               "--step", step]
        proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)  # its own group: pytest goes with it
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            code = f"timed out after {limit} s"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        path = out / f"{step}.json"
        result = json.loads(path.read_text()) if path.exists() else {}
        if code != 0:
            result["error"] = code if isinstance(code, str) else f"exited {code}"
        failed |= "error" in result or result.get("failed", 0) > 0
        figures["steps"][step] = result
        print(_line(step, result), flush=True)
    figures["seconds"] = time.perf_counter() - start
    (out / "figures.json").write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
    status = "FAILED" if failed else "done"
    print(f"== {status} in {figures['seconds']:.0f} s; figures: {out / 'figures.json'}", flush=True)
    return int(failed)


def main() -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("out", help="folder for the log, the figures (JSON) and pytest's report")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--size", choices=sorted(SIZES), default="paper")
    parser.add_argument("--step", choices=list(STEPS), help="run this step alone, in this process")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.step is None:
        return run_all(args)
    result = STEPS[args.step][0](args, Path(args.out))
    _write(Path(args.out), args.step, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
