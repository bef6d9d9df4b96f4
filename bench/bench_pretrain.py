"""Benchmark: pre-training throughput, achieved FLOP/s, world-model inference rate and peak memory.

For each model size (params.yaml's base `cpu` profile and the `paper` profile; batch 16 x segment 25 for
both) and precision (fp32, bf16 autocast), a fresh subprocess builds the model exactly as `prelar pretrain`
does (`pretrain.build`, `pretrain.objective_of`) and times `pretrain.train_step` on random uint8 frames
(the model alone: the loader is benchmarked by bench/bench_loader.py) after a warm-up step, whose FLOPs are
counted with torch's FlopCounterMode. Each subprocess also times, at batch 1 and without gradient, the
world model's two inference steps: one imagination step (the transition prior) and one posterior update
(encode one frame + one representation step). Peak memory is the subprocess's peak RSS (ru_maxrss), minus
its RSS before the first step for the "step" column. Achieved FLOP/s is compared to this machine's matmul
peak, measured with a large torch.matmul in fp32 and bf16.

    python bench/bench_pretrain.py [--steps 2] [--sizes cpu paper] [--precisions fp32 bf16]

Our update beside the reference implementation's, same machine, same run: bench/bench_reference.py.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best FLOP/s of an n x n matmul in `dtype` on `device` over `repeats` runs (after one warm-up)."""
    from prelar.device import synchronize

    dev = torch.device(device)
    a, b = torch.randn(n, n, dtype=dtype, device=dev), torch.randn(n, n, dtype=dtype, device=dev)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        synchronize(dev)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        synchronize(dev)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def _rate(fn, seconds: float = 2.0) -> float:
    """Calls per second of `fn` (after 3 warm-up calls), over about `seconds`."""
    for _ in range(3):
        fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def child(size: str, precision: str, steps: int) -> dict:
    """One (size, precision): step throughput, FLOPs, inference rates, memory (in a fresh process)."""
    from torch.utils.flop_counter import FlopCounterMode

    from prelar import config, device, pretrain

    params = config.load(REPO / "params.yaml", profile=size)
    params = config.override(params, {"pretrain.precision": precision, "pretrain.device": "cpu"})
    dist = device.setup("cpu")
    model, optimizer = pretrain.build(params, dist)
    objective = pretrain.objective_of(model, params, dist)
    B, T = params.loader.batch_size, params.loader.segment_length
    frames = torch.randint(0, 256, (B, T, 3, 64, 64), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    rss_before = _rss_gib()

    with FlopCounterMode(display=False) as counter:  # the warm-up step
        pretrain.train_step(model, objective, optimizer, frames, generator, params.pretrain, dist)
    flops = counter.get_total_flops()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        pretrain.train_step(model, objective, optimizer, frames, generator, params.pretrain, dist)
        times.append(time.perf_counter() - t0)
    step_s = min(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    model.eval()
    state = model.initial_state(1)
    action = None if params.model.action_free else torch.zeros(1, params.model.latent_action_dim)
    frame = frames[:1, :1]  # uint8 [1,1,3,64,64]
    from prelar.world_model import preprocess

    def imagine():
        model.imagine_step(state, action, generator)

    def posterior():
        embed = model.encode(preprocess(frame))  # [1,1,E]
        model.observe(embed, None if action is None else action[:, None], None, state, generator)

    with torch.no_grad(), device.autocast(dist.device, precision):
        imagine_hz, posterior_hz = _rate(imagine), _rate(posterior)
    return {
        "size": size,
        "precision": precision,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "step_s": step_s,
        "frames_per_s": B * T / step_s,
        "flops_per_step": flops,
        "flop_per_s": flops / step_s,
        "imagine_hz": imagine_hz,
        "posterior_hz": posterior_hz,
        "peak_rss_gib": peak,
        "step_rss_gib": peak - rss_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=2, help="timed steps per configuration (after 1 warm-up)"
    )
    parser.add_argument("--sizes", nargs="+", default=["cpu", "paper"], help="params.yaml profiles")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.steps)))
        return

    t_start = time.perf_counter()
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peak (2048^3): "
        f"fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s",
        flush=True,
    )
    rows = []
    for size in args.sizes:
        for precision in args.precisions:
            cmd = [sys.executable, __file__, "--child", size, precision, "--steps", str(args.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if out.returncode != 0:
                raise RuntimeError(f"{size}/{precision} failed:\n{out.stderr[-3000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"  {size}/{precision}: {r['step_s']:.2f} s/step, {r['frames_per_s']:.1f} frames/s",
                flush=True,
            )

    header = (
        f"{'size':6} {'prec':5} {'params':>7} {'s/step':>7} {'frames/s':>9} {'GFLOP/st':>9} "
        f"{'GFLOP/s':>8} {'%peak':>6} {'imag Hz':>8} {'post Hz':>8} {'peakRSS':>8} {'stepRSS':>8}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(
            f"{r['size']:6} {r['precision']:5} {r['params_m']:6.1f}M {r['step_s']:7.2f} "
            f"{r['frames_per_s']:9.1f} {r['flops_per_step'] / 1e9:9.1f} "
            f"{r['flop_per_s'] / 1e9:8.1f} {100 * r['flop_per_s'] / peaks[r['precision']]:5.1f}% "
            f"{r['imagine_hz']:8.0f} {r['posterior_hz']:8.0f} "
            f"{r['peak_rss_gib']:7.2f}G {r['step_rss_gib']:7.2f}G"
        )
    print(
        f"\n(peakRSS includes the process; stepRSS is the growth from the first training step; "
        f"{time.perf_counter() - t_start:.0f} s in all)"
    )


if __name__ == "__main__":
    main()
