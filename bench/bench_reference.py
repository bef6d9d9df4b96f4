"""Benchmark: our pre-training update beside the reference implementation's, side by side on this CPU.

The reference is PreLAR's released code (github zhanglixuan0720/PreLAR at commit fb9c4d2, package `wmlib`),
read from the user's own checkout (`--ref PATH`); none of its code is in this repository.

    git clone https://github.com/zhanglixuan0720/PreLAR /tmp/prelar_ref
    pip install einops            # the reference computes with it (tested: 0.8.2; it pinned 0.7.0)
    python bench/bench_reference.py --ref /tmp/prelar_ref [--precisions fp32 bf16] [--updates 3] [--warmup 2]
        [--rounds 2] [--size paper|small] [--threads N] [--profile] [--json FILE]
    python bench/bench_reference.py --profile [--size paper]      # only our per-module breakdown

Each round runs, for each precision, a fresh process of the reference (A) and then one of ours (B), with the
same thread count and the same batch (uniform random uint8 frames, seed 0): `--warmup` updates (the last one
under FlopCounterMode, which counts the update's FLOPs), then the median of `--updates` timed updates, and
the process's peak RSS. The headline is ours/reference in updates per second. A fresh process per precision
first measures this machine's peaks in that precision: a 2048^2 matmul, and the 3x3 stride-1 convolutions of
the ResNet encoder at its real shapes (channels-last, N = batch x length images; taken from our encoder,
which has the reference's architecture), forward and forward+backward, the fastest of at least 3 calls.

Reference (A), as its `examples/train_prelar_pretraining.py` and `wmlib/train/pretrainer.py` build it:
configs/prelar_pretraining.yaml, blocks `defaults` + `rlbench_pretrain`, then the README's pre-training flags
(--precision 32 --vanet.type_ stoch --vanet.discrete 0 --vanet.stoch 64 --rank_loss sign; the yaml's own
`rank_loss: sort_rank` raises NotImplementedError) and --device cpu; `agents.PreLARPretrain`, its optimiser
(`init_optimizers`: Adam, clip 100, weight decay 1e-6) and its Pretrainer's initialisation
(`Pretrainer.weights_init`: Xavier weights, channels-last convolutions). One update is one step of its
Pretrainer: the batch cast to float32 (`next_batch`), then `agent.train(batch, state)` with the state carried
over (loss, backward, clip, Adam step). The batch is its DummyReplay's: image [B, T, 3, 64, 64], action
[B, T, 1] zeros, is_first [B, T] true at t = 0.
Ours (B): `prelar.pretrain.build`, `objective_of`, `train_step` on the `paper` profile of params.yaml.

Sizes. `paper`: each implementation's own file (batch 16 x 25, RSSM deter/hidden 1024 with 32x32
categoricals, ResNet width 48; checked against that, not set). `small`, a quick end-to-end check: batch 4 x 8,
width 16, RSSM 128 with 8x8, set in both; the reference then also needs its embedding width and its decoder's
input width (`rssm.embed_dim`, `decoder.cnn_input_dim`), which the yaml leaves at the paper size's values.

Precision. fp32, and bf16 only where this CPU computes it natively (`prelar.device.choose_precision`);
elsewhere bf16 is skipped and the reason printed. Ours: `pretrain.precision=bf16` (autocast around the
loss). The reference: its own mixed-precision switch (`--precision 16`: autocast around its loss, as ours)
with `torch.cuda.amp.autocast` pointed at CPU bf16 autocast (its GradScaler turns itself off without CUDA,
and bf16 needs no loss scaling); the batch stays float32 (its Pretrainer would cast it to float16 for CUDA).

Stubbed in the reference's process (light modules put into sys.modules, installed or not): wandb (logging),
kornia and torchvision.transforms (augmentation of its contextualised encoders, not built here), torchtyping
and typeguard (annotations only: `TensorType[...]` and an unused `typechecked`). Its environment libraries
(gym, metaworld, mujoco-py) and data sets are never imported. Not stubbed: einops, which its update computes
with, and ruamel.yaml, which reads its config (dvc already installs it here).

`--profile` adds, per precision, a process that breaks one update of ours down by part of the model
(encoder, inverse dynamics, RSSM loop, decoder, consistency loss, the other losses, optimiser): forward
and backward CPU time from torch.profiler (forward by the part's call, backward by the autograd node's
sequence number, which falls in the range its forward created), and FLOPs per part with FlopCounterMode's
formulas, so each part's GFLOP/s can be set against the measured peaks. Profiling adds overhead per op; the
breakdown prints the profiled and the unprofiled update times. torch.compile is off in that process.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
IMPLS = ("reference", "ours")  # A, B: the order of every round
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
REFERENCE_COMMIT = "fb9c4d2"
REFERENCE_BLOCKS = ("defaults", "rlbench_pretrain")  # configs/prelar_pretraining.yaml, as its README runs it
REFERENCE_README_FLAGS = {"vanet.type_": "stoch", "vanet.discrete": 0, "vanet.stoch": 64, "rank_loss": "sign"}


@dataclass(frozen=True)
class Size:
    """A batch and model size, built alike in both implementations."""

    batch: int
    length: int
    width: int  # ResNet width: channels of the first stage
    deter: int
    hidden: int
    stoch: int
    classes: int


SIZES = {
    "paper": Size(batch=16, length=25, width=48, deter=1024, hidden=1024, stoch=32, classes=32),
    "small": Size(batch=4, length=8, width=16, deter=128, hidden=128, stoch=8, classes=8),
}


# --- the reference's process: stubs and config ------------------------------------------------------------


class _AnyTensorType:
    """torchtyping's `TensorType["batch", "dim"]` in an annotation: any subscript gives the class back."""

    def __class_getitem__(cls, item):
        return cls


REFERENCE_STUBS: dict[str, dict[str, Any]] = {
    "wandb": {},  # logging
    "kornia": {},  # augmentation (contextualised encoders)
    "torchvision": {},
    "torchvision.transforms": {},  # augmentation (contextualised encoders)
    "torchtyping": {"TensorType": _AnyTensorType, "patch_typeguard": lambda: None},  # annotations
    "typeguard": {"typechecked": lambda fn=None, **_: fn},  # imported, never applied
}


def install_stubs(stubs: dict[str, dict[str, Any]]) -> list[str]:
    """Put a light module for each name into sys.modules (attributes from `stubs`), parents first; a module
    already imported is left alone. Returns the names stubbed."""
    stubbed = []
    for name in sorted(stubs, key=lambda n: n.count(".")):
        if name in sys.modules:
            continue
        module = types.ModuleType(name, "stub: not needed by a training update (bench/bench_reference.py)")
        for attr, value in stubs[name].items():
            setattr(module, attr, value)
        parent, _, leaf = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], leaf, module)
        sys.modules[name] = module
        stubbed.append(name)
    return stubbed


def reference_settings(size: str, precision: str) -> dict[str, Any]:
    """The reference config's keys this benchmark sets, on top of REFERENCE_BLOCKS (flat, dotted keys)."""
    settings = {"precision": 16 if precision == "bf16" else 32, **REFERENCE_README_FLAGS, "device": "cpu"}
    if size != "paper":
        s = SIZES[size]
        settings |= {
            "dataset.batch": s.batch,
            "dataset.length": s.length,
            "encoder.cnn_depth": s.width,
            "decoder.cnn_depth": s.width,
            "vanet.cnn_depth": s.width,
            "rssm.deter": s.deter,
            "rssm.hidden": s.hidden,
            "rssm.stoch": s.stoch,
            "rssm.discrete": s.classes,
            "vanet.hidden_dim": s.hidden,
            "rssm.embed_dim": 4 * s.width * 4 * 4,  # the encoder's 4x4x(4 width) map, flattened
            "decoder.cnn_input_dim": s.deter + s.stoch * s.classes,  # the RSSM's features
        }
    return settings


def reference_size(cfg) -> Size:
    """The size a reference config builds (fails if its three ResNets differ in width)."""
    widths = {cfg.encoder.cnn_depth, cfg.decoder.cnn_depth, cfg.vanet.cnn_depth}
    if len(widths) != 1:
        raise SystemExit(f"reference config: encoder/decoder/vanet widths differ: {sorted(widths)}")
    return Size(
        cfg.dataset.batch,
        cfg.dataset.length,
        widths.pop(),
        cfg.rssm.deter,
        cfg.rssm.hidden,
        cfg.rssm.stoch,
        cfg.rssm.discrete,
    )


def reference_config(ref: Path, size: str, precision: str):
    """The reference's `utils.Config`, built as its entry script does, with `reference_settings`."""
    from ruamel.yaml import YAML
    from wmlib import utils

    blocks = YAML(typ="safe", pure=True).load((ref / "configs" / "prelar_pretraining.yaml").read_text())
    cfg = utils.Config(blocks[REFERENCE_BLOCKS[0]])
    for name in REFERENCE_BLOCKS[1:]:
        cfg = cfg.update(blocks[name])
    settings = reference_settings(size, precision)
    new = {k: v for k, v in settings.items() if k not in cfg.flat}  # keys the yaml leaves to class defaults
    cfg = utils.Config({**cfg.flat, **new}).update({k: v for k, v in settings.items() if k not in new})
    if reference_size(cfg) != SIZES[size]:
        raise SystemExit(
            f"the reference's config builds {reference_size(cfg)}, not the {size} size "
            f"{SIZES[size]}: is --ref at commit {REFERENCE_COMMIT}?"
        )
    return cfg


def _space(*shape: int) -> types.SimpleNamespace:
    """What the reference reads of a gym space: its shape (Meta-world's image is 64 x 64 x 3)."""
    return types.SimpleNamespace(shape=shape)


def _cpu_bf16_autocast(enabled: bool = True, dtype=None, cache_enabled: bool = True):
    """Stands in for `torch.cuda.amp.autocast` in the reference's process: its fp16 switch, as CPU bf16."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled, cache_enabled=cache_enabled)


# --- measuring --------------------------------------------------------------------------------------------


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def frames_of(size: Size) -> torch.Tensor:
    """The benchmark's batch: uniform random uint8 frames [B, T, 3, 64, 64], the same in every process."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (size.batch, size.length, 3, 64, 64), dtype=torch.uint8, generator=generator)


def measure(update: Callable[[], Any], warmup: int, updates: int) -> dict[str, Any]:
    """Warm-up updates (FLOPs counted on the last one), then `updates` timed ones; memory of this process."""
    from torch.utils.flop_counter import FlopCounterMode

    rss_before = _rss_gib()
    warmup_s, flops = [], 0
    for i in range(warmup):
        counting = FlopCounterMode(display=False) if i == warmup - 1 else contextlib.nullcontext()
        t0 = time.perf_counter()
        with counting:
            update()
        warmup_s.append(time.perf_counter() - t0)
        if i == warmup - 1:
            flops = counting.get_total_flops()
    times = []
    for _ in range(updates):
        t0 = time.perf_counter()
        update()
        times.append(time.perf_counter() - t0)
    return {
        "update_s": statistics.median(times),
        "times_s": times,
        "warmup_s": warmup_s,
        "flops": flops,
        "rss_before_gib": rss_before,
        "peak_rss_gib": _peak_rss_gib(),
        "threads": torch.get_num_threads(),
    }


def reference_child(ref: Path, size: str, precision: str, warmup: int, updates: int) -> dict[str, Any]:
    """Time the reference's update (see the module docstring) in this process."""
    if importlib.util.find_spec("einops") is None:
        raise SystemExit("the reference computes with einops, its own dependency: pip install einops")
    install_stubs(REFERENCE_STUBS)
    sys.path.insert(0, str(ref))
    if precision == "bf16":
        torch.cuda.amp.autocast = _cpu_bf16_autocast
    with contextlib.redirect_stdout(sys.stderr):  # its constructors print; our result goes to a file
        from wmlib import agents, utils
        from wmlib.train.pretrainer import Pretrainer

        cfg = reference_config(ref, size, precision)
        utils.set_seed(cfg.seed)
        agent = agents.PreLARPretrain(
            cfg, {"image": _space(64, 64, 3)}, {"action": _space(4)}, utils.Counter(0)
        )
        agent.to(CPU)
        agent.init_optimizers()
        agent.apply(functools.partial(Pretrainer.weights_init, None))
        frames = frames_of(SIZES[size])
        B, T = frames.shape[:2]
        is_first = torch.zeros(B, T, dtype=torch.bool)
        is_first[:, 0] = True
        batch = {"image": frames, "action": torch.zeros(B, T, 1), "is_first": is_first}
        carried = {"state": None, "losses": []}

        def update():
            data = {k: v.to(device=CPU, dtype=torch.float32) for k, v in batch.items()}
            carried["state"], metrics = agent.train(data, carried["state"])
            carried["losses"].append(float(metrics["wm/model_loss"]))

        result = measure(update, warmup, updates)
    return result | {
        "params_m": sum(p.numel() for p in agent.parameters()) / 1e6,
        "losses": carried["losses"],
    }


def our_params(size: str, precision: str):
    """params.yaml's `paper` profile on the CPU in `precision`, at `size` (checked against SIZES)."""
    from prelar import config

    params = config.load(REPO / "params.yaml", profile="paper")
    updates: dict[str, Any] = {"pretrain.precision": precision, "pretrain.device": "cpu"}
    if size != "paper":
        s = SIZES[size]
        updates |= {
            "loader.batch_size": s.batch,
            "loader.segment_length": s.length,
            "model.cnn_width": s.width,
            "model.deter": s.deter,
            "model.hidden": s.hidden,
            "model.stoch": s.stoch,
            "model.classes": s.classes,
        }
    params = config.override(params, updates)
    m = params.model
    got = Size(
        params.loader.batch_size,
        params.loader.segment_length,
        m.cnn_width,
        m.deter,
        m.hidden,
        m.stoch,
        m.classes,
    )
    if got != SIZES[size]:
        raise SystemExit(f"params.yaml's paper profile builds {got}, not the {size} size {SIZES[size]}")
    return params


def _ours(size: str, precision: str, compile_off: bool = False):
    """(model, objective, optimizer, update) of ours, as `prelar pretrain` builds them."""
    from prelar import config, device, pretrain

    params = our_params(size, precision)
    if compile_off:
        params = config.override(params, {"pretrain.compile": False})
    dist = device.setup("cpu")
    model, optimizer = pretrain.build(params, dist)
    objective = pretrain.objective_of(model, params, dist)
    frames, generator = frames_of(SIZES[size]), torch.Generator().manual_seed(0)
    losses = []

    def update():
        out = pretrain.train_step(model, objective, optimizer, frames, generator, params.pretrain, dist)
        losses.append(float(out["loss"]))

    return model, objective, optimizer, update, losses


def ours_child(size: str, precision: str, warmup: int, updates: int) -> dict[str, Any]:
    model, _, _, update, losses = _ours(size, precision)
    result = measure(update, warmup, updates)
    return result | {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "losses": losses}


def _best_seconds(fn: Callable[[], Any], repeats: int = 3, min_seconds: float = 0.5) -> float:
    """Fastest of at least `repeats` calls and `min_seconds` of calls, after one warm-up call."""
    fn()
    best, calls, spent = float("inf"), 0, 0.0
    while calls < repeats or spent < min_seconds:
        t0 = time.perf_counter()
        fn()
        took = time.perf_counter() - t0
        best, calls, spent = min(best, took), calls + 1, spent + took
    return best


def encoder_conv_shapes(width: int) -> list[tuple[int, int, int, int]]:
    """(in channels, out channels, height = width of the map, count) of the 3x3 stride-1 convolutions in our
    ResNet encoder (the reference's architecture), read off a forward pass."""
    from prelar.nets.resnet import ResNetEncoder

    seen: dict[tuple[int, int, int], int] = defaultdict(int)

    def record(conv, inputs, _):
        if conv.kernel_size == (3, 3) and conv.stride == (1, 1):
            seen[(conv.in_channels, conv.out_channels, inputs[0].shape[-1])] += 1

    encoder = ResNetEncoder(3, width)
    for conv in encoder.modules():
        if isinstance(conv, torch.nn.Conv2d):
            conv.register_forward_hook(record)
    with torch.no_grad():
        encoder(torch.zeros(1, 3, 64, 64))
    return [(*shape, count) for shape, count in seen.items()]


def peaks_child(size: str, precision: str) -> dict[str, Any]:
    """This machine's matmul and encoder-conv rates in `precision` (GFLOP/s)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = 2048
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    matmul = 2 * n**3 / _best_seconds(lambda: a @ b, repeats=5) / 1e9
    s = SIZES[size]
    N = s.batch * s.length
    convs, totals = [], defaultdict(float)
    for cin, cout, hw, count in encoder_conv_shapes(s.width):
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False).to(
            dtype=dtype, memory_format=torch.channels_last
        )
        x = torch.randn(N, cin, hw, hw, dtype=dtype).contiguous(memory_format=torch.channels_last)
        grad = torch.randn(N, cout, hw, hw, dtype=dtype).contiguous(memory_format=torch.channels_last)
        flops = 2 * N * hw * hw * cin * cout * 9
        with torch.no_grad():
            fwd = _best_seconds(lambda conv=conv, x=x: conv(x))
        x.requires_grad_(True)

        def fwd_bwd(conv=conv, x=x, grad=grad):
            x.grad = conv.weight.grad = None
            conv(x).backward(grad)  # input and weight gradients: twice the forward's FLOPs

        both = _best_seconds(fwd_bwd)
        convs.append(
            {
                "shape": f"{cin}->{cout} @{hw}x{hw}",
                "count": count,
                "fwd_gflops": flops / fwd / 1e9,
                "fwd_bwd_gflops": 3 * flops / both / 1e9,
            }
        )
        totals["flops"] += count * flops
        totals["fwd_s"] += count * fwd
        totals["fwd_bwd_s"] += count * both
    return {
        "matmul_gflops": matmul,
        "convs": convs,
        "images": N,
        "conv_fwd_gflops": totals["flops"] / totals["fwd_s"] / 1e9,
        "conv_fwd_bwd_gflops": 3 * totals["flops"] / totals["fwd_bwd_s"] / 1e9,
    }


# --- profile: where our update's time goes ----------------------------------------------------------------

RANGE = "bench:"  # prefix of the profiler ranges this benchmark adds
BACKWARD = "autograd::engine::evaluate_function: "
PARTS = (
    "encoder",
    "inverse dynamics",
    "rssm loop",
    "decoder",
    "consistency loss",
    "losses",
    "optimiser",
    "other",
)
RESNET_PARTS = ("encoder", "inverse dynamics", "decoder")


class _Parts:
    """Attributes an update's work to parts of the model. Forward: the innermost wrapped call running.
    Backward: the autograd node's sequence number, which lies in the range of numbers its forward call drew
    (nodes are numbered in creation order)."""

    def __init__(self):
        self.stack: list[str] = []
        self.ranges: list[tuple[int, int, str]] = []
        self._probe = torch.zeros(1, requires_grad=True)

    def _sequence_nr(self) -> int:
        with torch.enable_grad():
            return self._probe.view(1).grad_fn._sequence_nr()  # draws the next number

    def wrap(self, owner: Any, attr: str, part: str) -> None:
        """Replace `owner.attr` (a method or function) by one that runs as `part` and records its range."""
        fn = getattr(owner, attr)

        @functools.wraps(fn)
        def as_part(*args, **kwargs):
            self.stack.append(part)
            start = self._sequence_nr()
            try:
                with torch.profiler.record_function(RANGE + part):
                    return fn(*args, **kwargs)
            finally:
                self.ranges.append((start, self._sequence_nr(), part))
                self.stack.pop()

        setattr(owner, attr, as_part)

    def of_node(self, sequence_nr: int) -> str:
        inside = [(end - start, part) for start, end, part in self.ranges if start < sequence_nr < end]
        return min(inside)[1] if inside else "other"

    def current(self) -> tuple[str, str]:
        node = torch._C._current_autograd_node()
        if node is not None:
            return self.of_node(node._sequence_nr()), "backward"
        return (self.stack[-1] if self.stack else "other"), "forward"


def _part_flops(parts: _Parts, update: Callable[[], Any]) -> dict[tuple[str, str], int]:
    """FLOPs of one update per (part, forward|backward), with FlopCounterMode's formulas."""
    from torch.utils.flop_counter import FlopCounterMode

    class PartCounter(FlopCounterMode):
        def _count_flops(self, func_packet, out, args, kwargs):  # instead of per module: per part
            if func_packet in self.flop_registry:
                by_part[parts.current()] += self.flop_registry[func_packet](*args, **kwargs, out_val=out)
            return out

    by_part: dict[tuple[str, str], int] = defaultdict(int)
    with PartCounter(display=False):
        update()
    return by_part


def _own_us(event) -> float:
    """An event's CPU time less that of the ranges and backward functions inside it (counted on their own)."""
    own, stack = event.cpu_time_total, list(event.cpu_children)
    while stack:
        child = stack.pop()
        if child.name.startswith((RANGE, BACKWARD)):
            own -= child.cpu_time_total
        else:
            stack.extend(child.cpu_children)
    return own


def part_seconds(events, parts: _Parts) -> dict[tuple[str, str], float]:
    """CPU seconds per (part, forward|backward) from torch.profiler events: a part's own range (less the
    ranges and backward functions inside it) under forward, the autograd functions its forward created
    under backward."""
    seconds: dict[tuple[str, str], float] = defaultdict(float)
    for event in events:
        if event.name.startswith(RANGE):
            seconds[(event.name[len(RANGE) :], "forward")] += _own_us(event) / 1e6
        elif event.name.startswith(BACKWARD):
            seconds[(parts.of_node(event.sequence_nr), "backward")] += event.cpu_time_total / 1e6
    return seconds


def profile_child(size: str, precision: str, warmup: int, updates: int) -> dict[str, Any]:
    """Our update broken down by part: forward/backward seconds (torch.profiler) and FLOPs."""
    from torch.profiler import ProfilerActivity, profile

    model, objective, optimizer, update, _ = _ours(size, precision, compile_off=True)
    parts = _Parts()
    for owner, attr, part in [
        (model.encoder, "forward", "encoder"),
        (model.decoder, "forward", "decoder"),
        (model.inverse_dynamics, "forward", "inverse dynamics"),
        (model.rssm, "observe", "rssm loop"),
        (model, "consistency", "consistency loss"),
        (objective, "forward", "losses"),
        (optimizer, "step", "optimiser"),
        (torch.nn.utils, "clip_grad_norm_", "optimiser"),
    ]:
        parts.wrap(owner, attr, part)
    box = types.SimpleNamespace(update=update)
    parts.wrap(box, "update", "other")

    def step():
        parts.ranges.clear()
        box.update()

    for _ in range(warmup):
        step()
    flops = _part_flops(parts, step)
    times = []
    for _ in range(updates):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    seconds = part_seconds(prof.events(), parts)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    return {
        "parts": {
            part: {
                "forward_s": seconds[(part, "forward")],
                "backward_s": seconds[(part, "backward")],
                "forward_flops": flops[(part, "forward")],
                "backward_flops": flops[(part, "backward")],
            }
            for part in PARTS
        },
        "update_s": statistics.median(times),
        "profiled_s": sum(seconds.values()),
        "top_ops": table,
    }


# --- the parent: rounds, summary, report ------------------------------------------------------------------


def parse_cpu(text: str) -> dict[str, Any]:
    """CPU model name and CPU_FLAGS from `lscpu` (or /proc/cpuinfo) text."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name", "unknown CPU"), "flags": {f: f in flags for f in CPU_FLAGS}}


def machine() -> dict[str, Any]:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        text = Path("/proc/cpuinfo").read_text()
    return parse_cpu(text) | {"torch": torch.__version__, "cores": os.cpu_count()}


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per precision: ours/reference in updates/s (overall: each side's median s/update over its processes;
    and per round), peak memory ours/reference, and each side's figures."""
    summary = {}
    for precision in dict.fromkeys(r["precision"] for r in runs):
        side = {
            impl: [r for r in runs if r["precision"] == precision and r["impl"] == impl] for impl in IMPLS
        }
        if not all(side.values()):
            continue
        figures = {}
        for impl, rs in side.items():
            update_s = statistics.median(r["update_s"] for r in rs)
            figures[impl] = {
                "update_s": update_s,
                "frames_per_s": rs[0]["frames"] / update_s,
                "peak_rss_gib": statistics.median(r["peak_rss_gib"] for r in rs),
                "params_m": rs[0]["params_m"],
                "flops": rs[0]["flops"],
                "gflops_per_s": rs[0]["flops"] / update_s / 1e9,
            }
        by_round = {impl: {r["round"]: r["update_s"] for r in rs} for impl, rs in side.items()}
        rounds = sorted(by_round["reference"].keys() & by_round["ours"].keys())
        ref, ours = figures["reference"], figures["ours"]
        summary[precision] = {
            "speedup": ref["update_s"] / ours["update_s"],
            "speedup_per_round": [by_round["reference"][k] / by_round["ours"][k] for k in rounds],
            "memory_ratio": ours["peak_rss_gib"] / ref["peak_rss_gib"],
            **figures,
        }
    return summary


def format_run(r: dict[str, Any]) -> str:
    return (
        f"  round {r['round']} {r['precision']} {r['impl']:9}: {r['update_s']:7.2f} s/update "
        f"(timed {', '.join(f'{t:.2f}' for t in r['times_s'])}; warm-up "
        f"{', '.join(f'{t:.2f}' for t in r['warmup_s'])}), {r['frames'] / r['update_s']:6.1f} frames/s, "
        f"peak RSS {r['peak_rss_gib']:.2f} GiB, {r['params_m']:.1f}M params, loss {r['losses'][-1]:.4g}"
    )


def format_peaks(precision: str, p: dict[str, Any]) -> str:
    convs = "; ".join(
        f"{c['shape']} x{c['count']}: {c['fwd_gflops']:.0f} / {c['fwd_bwd_gflops']:.0f}" for c in p["convs"]
    )
    return (
        f"  {precision}: 2048^2 matmul {p['matmul_gflops']:.1f} GFLOP/s; encoder 3x3 convs "
        f"(N={p['images']}, channels-last), fwd / fwd+bwd GFLOP/s: {convs}; the encoder's mix "
        f"{p['conv_fwd_gflops']:.0f} / {p['conv_fwd_bwd_gflops']:.0f}"
    )


def _share(value: float, peak: float) -> str:
    return f"{100 * value / peak:.0f}%" if peak else "-"


def format_report(report: dict[str, Any]) -> str:
    """The figures of one run, as printed (the same as the JSON)."""
    m, s = report["machine"], report["size"]
    flags = ", ".join(f"{f} {'yes' if have else 'no'}" for f, have in m["flags"].items())
    lines = [
        f"CPU: {m['model']} ({m['cores']} cores); {flags}",
        f"torch {m['torch']}, {report['threads']} threads; size {report['size_name']}: batch {s['batch']} x "
        f"{s['length']}, ResNet width {s['width']}, RSSM {s['deter']}/{s['hidden']}, "
        f"{s['stoch']}x{s['classes']}",
    ]
    if report.get("reference"):
        lines.append(f"reference: {report['reference']}")
    lines += [f"  {p}: skipped: {why}" for p, why in report["skipped"].items()]
    lines.append("peaks (fastest of at least 3 calls):")
    lines += [format_peaks(p, peak) for p, peak in report["peaks"].items()]
    if report["runs"]:
        lines.append("rounds (A = reference, B = ours, each a fresh process):")
        lines += [format_run(r) for r in report["runs"]]
        header = (
            f"{'prec':5} {'impl':9} {'s/update':>8} {'updates/s':>9} {'frames/s':>8} {'peak RSS':>8} "
            f"{'params':>7} {'GFLOP/upd':>9} {'GFLOP/s':>8} {'%matmul':>7} {'%conv':>6}"
        )
        lines += ["", header, "-" * len(header)]
        for precision, row in report["summary"].items():
            peak = report["peaks"][precision]
            for impl in IMPLS:
                f = row[impl]
                lines.append(
                    f"{precision:5} {impl:9} {f['update_s']:8.2f} {1 / f['update_s']:9.3f} "
                    f"{f['frames_per_s']:8.1f} {f['peak_rss_gib']:7.2f}G {f['params_m']:6.1f}M "
                    f"{f['flops'] / 1e9:9.0f} {f['gflops_per_s']:8.1f} "
                    f"{_share(f['gflops_per_s'], peak['matmul_gflops']):>7} "
                    f"{_share(f['gflops_per_s'], peak['conv_fwd_bwd_gflops']):>6}"
                )
        lines.append("")
        for precision, row in report["summary"].items():
            peak, ours = report["peaks"][precision], row["ours"]
            rounds = ", ".join(f"{x:.2f}x" for x in row["speedup_per_round"])
            lines.append(
                f"HEADLINE {precision}: ours/reference {row['speedup']:.2f}x updates/s (per round {rounds}); "
                f"peak memory ours/reference {row['memory_ratio']:.2f}x ({ours['peak_rss_gib']:.2f} / "
                f"{row['reference']['peak_rss_gib']:.2f} GiB); ours {ours['gflops_per_s']:.0f} GFLOP/s = "
                f"{_share(ours['gflops_per_s'], peak['matmul_gflops'])} of the matmul peak, "
                f"{_share(ours['gflops_per_s'], peak['conv_fwd_bwd_gflops'])} of the encoder convs' "
                "fwd+bwd peak"
            )
    for precision, prof in report.get("profile", {}).items():
        lines += ["", format_profile(precision, prof, report["peaks"][precision])]
    return "\n".join(lines)


def format_profile(precision: str, prof: dict[str, Any], peak: dict[str, Any]) -> str:
    """Our update by part: forward and backward seconds, share, GFLOP and GFLOP/s against the peak that
    bounds the part (the encoder convs' fwd+bwd peak for the ResNets, the matmul peak elsewhere; the whole
    update against both)."""
    total = prof["profiled_s"]
    header = (
        f"{'part':17} {'fwd s':>7} {'bwd s':>7} {'total s':>7} {'share':>6} {'GFLOP':>7} {'GFLOP/s':>8} "
        f"{'vs peak':>18}"
    )
    lines = [
        f"our update by part, {precision} (profiled {total:.2f} s; unprofiled {prof['update_s']:.2f} s):",
        header,
        "-" * len(header),
    ]
    whole = {key: sum(p[key] for p in prof["parts"].values()) for key in next(iter(prof["parts"].values()))}
    for part, p in [*prof["parts"].items(), ("update", whole)]:
        seconds = p["forward_s"] + p["backward_s"]
        flops = p["forward_flops"] + p["backward_flops"]
        rate = flops / seconds / 1e9 if seconds else 0.0
        if part == "update":
            lines.append("-" * len(header))
            vs = f"{_share(rate, peak['matmul_gflops'])} mm, {_share(rate, peak['conv_fwd_bwd_gflops'])} conv"
        elif not flops:
            vs = "-"
        elif part in RESNET_PARTS:
            vs = f"{_share(rate, peak['conv_fwd_bwd_gflops'])} conv"
        else:
            vs = f"{_share(rate, peak['matmul_gflops'])} mm"
        lines.append(
            f"{part:17} {p['forward_s']:7.2f} {p['backward_s']:7.2f} {seconds:7.2f} "
            f"{_share(seconds, total):>6} {flops / 1e9:7.1f} {rate:8.1f} {vs:>18}"
        )
    lines += [
        "(optimiser: gradient clipping and the Adam step, under fwd; other: the rest of the update, and "
        "backward nodes outside the parts; mm: the 2048^2 matmul peak; conv: the encoder convs' fwd+bwd "
        "peak)",
        "busiest operators (self CPU time):",
        prof["top_ops"],
    ]
    return "\n".join(lines)


def run_child(kind: str, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    """One fresh process of `kind` (reference | ours | peaks | profile); its result dict."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            kind,
            precision,
            str(out),
            "--size",
            args.size,
            "--threads",
            str(args.threads),
            "--warmup",
            str(args.warmup),
            "--updates",
            str(args.updates),
        ] + (["--ref", str(args.ref)] if args.ref else [])
        env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
        if proc.returncode != 0 or not out.exists():
            raise SystemExit(f"{kind}/{precision} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())


def _reference_label(ref: Path) -> str:
    commit = subprocess.run(
        ["git", "-C", str(ref), "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    note = (
        "" if commit.startswith(REFERENCE_COMMIT) else f" (this benchmark was written for {REFERENCE_COMMIT})"
    )
    return f"{ref} at commit {commit or 'unknown'}{note}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ref", type=Path, help="a checkout of github zhanglixuan0720/PreLAR (fb9c4d2)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--updates", type=int, default=3, help="timed updates per process (median)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed updates first (FLOPs counted on the last)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of A B (reference, ours) per precision")
    parser.add_argument("--size", choices=sorted(SIZES), default="paper")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="threads of every process"
    )
    parser.add_argument("--profile", action="store_true", help="also break our update down by part")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "PRECISION", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.updates < 1:
        parser.error("--warmup and --updates must be at least 1")
    if args.child:
        kind, precision, out = args.child
        torch.set_num_threads(args.threads)
        result = {
            "reference": lambda: reference_child(args.ref, args.size, precision, args.warmup, args.updates),
            "ours": lambda: ours_child(args.size, precision, args.warmup, args.updates),
            "peaks": lambda: peaks_child(args.size, precision),
            "profile": lambda: profile_child(args.size, precision, args.warmup, args.updates),
        }[kind]()
        Path(out).write_text(json.dumps(result))
        return
    if args.ref is None and not args.profile:
        parser.error(
            "--ref PATH is needed (git clone https://github.com/zhanglixuan0720/PreLAR PATH), "
            "unless only --profile is asked for"
        )
    if args.ref is not None and not (args.ref / "wmlib" / "agents" / "prelar_pretrain.py").exists():
        parser.error(f"--ref {args.ref}: not a checkout of PreLAR (no wmlib/agents/prelar_pretrain.py)")

    from prelar import device

    native = device.choose_precision("auto", CPU)
    precisions = [p for p in dict.fromkeys(args.precisions) if p == "fp32" or native.name == "bf16"]
    report: dict[str, Any] = {
        "machine": machine(),
        "threads": args.threads,
        "size_name": args.size,
        "size": asdict(SIZES[args.size]),
        "reference": _reference_label(args.ref) if args.ref else None,
        "skipped": {p: native.reason for p in dict.fromkeys(args.precisions) if p not in precisions},
        "peaks": {},
        "runs": [],
        "summary": {},
        "command": sys.argv,
    }
    t_start = time.perf_counter()
    for precision in precisions:
        report["peaks"][precision] = run_child("peaks", precision, args)
        print(format_peaks(precision, report["peaks"][precision]), flush=True)
    if args.ref is not None:
        frames = SIZES[args.size].batch * SIZES[args.size].length
        for round_ in range(1, args.rounds + 1):
            for precision in precisions:
                for impl in IMPLS:
                    run = run_child(impl, precision, args)
                    run |= {"round": round_, "precision": precision, "impl": impl, "frames": frames}
                    report["runs"].append(run)
                    print(format_run(run), flush=True)
        report["summary"] = summarize(report["runs"])
    if args.profile:
        report["profile"] = {p: run_child("profile", p, args) for p in precisions}
    report["seconds"] = time.perf_counter() - t_start
    print("\n" + format_report(report) + f"\n({report['seconds']:.0f} s in all)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
