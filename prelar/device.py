"""Where a run computes: device choice, mixed precision, and the process group under `torchrun`.

One code path for CPU and CUDA: `torchrun --nproc-per-node=N prelar pretrain ...` sets RANK / WORLD_SIZE /
LOCAL_RANK, and `setup` then joins a process group (NCCL on CUDA, gloo on CPU); a plain `prelar pretrain`
is a world of one with no process group.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates and saves; the other ranks only train."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` → this rank's GPU when CUDA is available, else the CPU; `cpu`, `cuda`, `cuda:N` as given."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device '{name}' requested but CUDA is not available; set pretrain.device: cpu"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def setup(device: str = "auto") -> Dist:
    """Join the `torchrun` process group if there is one, and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if dev.type == "cpu" and local_world > 1 and "OMP_NUM_THREADS" not in os.environ:
        # CPU ranks on one machine share its cores: oversubscribed OpenMP threads stall at every barrier.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def teardown() -> None:
    """Leave the process group (no-op in a world of one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Precision:
    """The precision a run computes in, and why it was chosen (logged at start and to MLflow)."""

    name: str  # "bf16" | "fp32"
    reason: str


@functools.lru_cache
def bf16_support(dev: torch.device) -> tuple[bool, str]:
    """Whether `dev` computes bf16 natively (not emulated), with the evidence in words.

    CUDA: the device's own answer (`torch.cuda.is_bf16_supported(including_emulation=False)`). CPU: oneDNN
    must run bf16 kernels, and the CPU must have AMX or AVX-512 BF16; elsewhere (AVX2 only, most laptops and
    many cloud VMs) bf16 is emulated and measured ~80x slower than fp32 on a 1024^2 matmul.
    """
    if dev.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        name = torch.cuda.get_device_name(dev)
        return native, f"{name} {'supports' if native else 'does not support'} bf16 natively"
    flags = {
        "amx_bf16": torch.cpu._is_amx_tile_supported(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "onednn_bf16": torch.ops.mkldnn._is_mkldnn_bf16_supported(),
    }
    native = flags["onednn_bf16"] and (flags["amx_bf16"] or flags["avx512_bf16"])
    have = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in flags.items())
    return native, f"CPU {'computes' if native else 'emulates'} bf16 ({have})"


def measured_bf16_speedup(dev: torch.device, n: int = 512, repeats: int = 3) -> float:
    """fp32 time / bf16 time of an n x n matmul on `dev` (best of `repeats`): >1 where bf16 is faster."""

    def best(dtype: torch.dtype) -> float:
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        torch.matmul(a, b)
        times = []
        for _ in range(repeats):
            synchronize(dev)
            t0 = time.perf_counter()
            torch.matmul(a, b)
            synchronize(dev)
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(torch.float32) / best(torch.bfloat16)


_warned: set[tuple[str, str]] = set()


def choose_precision(requested: str, dev: torch.device, support: tuple[bool, str] | None = None) -> Precision:
    """Resolve `precision: auto | bf16 | fp32` on `dev`.

    auto → bf16 where the device computes it natively (`bf16_support`), fp32 elsewhere. An explicit bf16 on a
    device that emulates it still runs, but warns once, with the slowdown measured here and the fix.
    `support` injects the capability answer (tests); by default the device is asked.
    """
    if requested not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got '{requested}'")
    if requested == "fp32":
        return Precision("fp32", "fp32 requested")
    native, evidence = support if support is not None else bf16_support(dev)
    if requested == "auto":
        return Precision("bf16" if native else "fp32", f"auto: {evidence}")
    if not native and (dev.type, evidence) not in _warned:
        _warned.add((dev.type, evidence))
        slowdown = 1 / measured_bf16_speedup(dev)
        warnings.warn(
            f"precision bf16 requested, but this {evidence}: a matmul measured {slowdown:.0f}x slower "
            "in bf16 than in fp32 here. Set precision: auto (or fp32) in params.yaml, "
            "or --set <stage>.precision=auto.",
            RuntimeWarning,
            stacklevel=2,
        )
    return Precision("bf16", f"bf16 requested; {evidence}")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or CUDA, or plain fp32, for `precision` auto | bf16 | fp32 (`choose_precision`).

    bf16 keeps fp32's exponent range, so no loss scaling is needed (fp16 gave NaNs in the reference code).
    """
    name = choose_precision(precision, device).name
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=name == "bf16")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (for honest timings); nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
