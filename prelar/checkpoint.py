"""Checkpoints: atomic save, `weights_only` load, and the random states that make a resume exact.

A checkpoint holds the world model, the optimiser, the step, the model's config (so that evaluation and
fine-tuning can rebuild the model from the file alone) and every rank's random states (python, numpy,
torch, CUDA). The data stream needs no saved position: the trainer derives it from (seed, step)
(see `prelar.pretrain`). Everything is stored as tensors or plain Python types, so `torch.load` runs
with `weights_only=True` (no arbitrary unpickling).
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 1
FILENAME = "checkpoint.pt"  # a run folder's checkpoint (pre-training, fine-tuning)


def rng_state() -> dict[str, Any]:
    """This process's random states, as tensors and plain types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    model_config: dict[str, Any],
    rng: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint atomically: a temporary file in the same folder, fsync, then `os.replace`.

    A crash mid-write leaves the previous checkpoint intact. `rng` is one `rng_state()` per rank.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "step": int(step),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_config": model_config,
        "rng": rng,
        "extra": extra or {},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no checkpoint here; run `prelar pretrain --out {path.parent}` first"
        )
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a prelar checkpoint (format {FORMAT}); delete it or point elsewhere")
    return ckpt


def digest(path: str | Path) -> str:
    """The md5 of a checkpoint file's bytes: which checkpoint a result came from, wherever the file lies."""
    md5 = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            md5.update(chunk)
    return md5.hexdigest()


def load_world_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the pre-trained `WorldModel` from a checkpoint alone; returns (model, checkpoint dict)."""
    from prelar import config
    from prelar.world_model import WorldModel

    ckpt = load(path, map_location=device)
    model = WorldModel(config.Model(**ckpt["model_config"])).to(device)
    model.load_state_dict(ckpt["model"])
    return model, ckpt
