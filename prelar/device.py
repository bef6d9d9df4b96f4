"""Where a run computes: device choice, mixed precision, and the process group under `torchrun`.

One code path for CPU and CUDA: `torchrun --nproc-per-node=N prelar pretrain ...` sets RANK / WORLD_SIZE /
LOCAL_RANK, and `setup` then joins a process group (NCCL on CUDA, gloo on CPU); a plain `prelar pretrain`
is a world of one with no process group.
"""

from __future__ import annotations

import contextlib
import os
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


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU or CUDA (`precision: bf16`), or plain fp32 (`precision: fp32`).

    bf16 keeps fp32's exponent range, so no loss scaling is needed (fp16 gave NaNs in the reference code).
    """
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got '{precision}'")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (for honest timings); nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
