"""`prelar pretrain`: pre-train the world model on action-free video segments (PreLAR Eq. 9; APV with
`model.action_free`).

One code path for CPU and CUDA, one process or `torchrun --nproc-per-node=N` (DDP: NCCL on CUDA, gloo on
CPU; each rank reads a different part of the shards; rank 0 logs, evaluates and saves).

Exact resume. A run restarted from its checkpoint continues exactly as an uninterrupted one would:
- the data stream is a pure function of (seed, step): it restarts with a fresh loader seed at every
  multiple of `pretrain.checkpoint_every`, and a resume between two such steps replays the skipped batches;
- the model's own sampling (latent-action `rsample`, straight-through categorical samples, consistency
  pairs) draws from a generator seeded by (seed, rank, step);
- the checkpoint restores model, optimiser and every rank's global random states.

A non-finite loss or gradient norm stops the run before the optimiser step (nothing is saved after it), so
the last good checkpoint stays as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

from prelar import checkpoint, config, device, tracking
from prelar.cli import add_set_option

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.json"


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/inf; the run stopped before updating the parameters."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shards", nargs="+", default=None, help="shard folder(s) or glob(s) (default: data.metaworld.out)"
    )
    parser.add_argument(
        "--variant",
        default="prelar",
        help="pre-trained model, a key of pretrain.variants (prelar, prelar_no_cl, prelar_no_cl_al, apv)",
    )
    parser.add_argument(
        "--out", default=None, help="run folder: checkpoint, metrics, figures (default: pretrain.out/VARIANT)"
    )
    parser.add_argument("--steps", type=int, default=None, help="gradient steps in total (pretrain.steps)")
    parser.add_argument("--run-name", default=None, help="MLflow run name (default: the variant)")
    parser.add_argument("--metrics", default=None, help="also write the final metrics JSON here (for DVC)")
    add_set_option(parser, "model.action_free=true")


def variant_params(params: config.Params, variant: str) -> config.Params:
    """`params` with the model switches of a named pre-training variant (`pretrain.variants`)."""
    variants = params.pretrain.variants
    if variant not in variants:
        raise config.ConfigError(
            f"--variant {variant!r}: not in pretrain.variants; choose one of {sorted(variants)} "
            "or add it to params.yaml"
        )
    return config.override(params, [f"model.{k}={json.dumps(v)}" for k, v in variants[variant].items()])


def run(params: config.Params, args: argparse.Namespace) -> int:
    params = variant_params(params, args.variant)
    sets = list(args.set)
    if args.steps is not None:
        sets.append(f"pretrain.steps={args.steps}")
    params = config.override(params, sets)
    out = Path(args.out or Path(params.pretrain.out) / args.variant)
    shards = args.shards or [params.data.metaworld.out]
    try:
        result = pretrain(params, shards, out, run_name=args.run_name or args.variant, method=args.variant)
    except NonFiniteLossError as err:
        print(f"prelar pretrain: {err}", file=sys.stderr)
        return 1
    if args.metrics and int(os.environ.get("RANK", "0")) == 0:
        Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (seed, step, rank, ...)."""
    return int(
        np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1
    )


def batches(shards, params: config.Params, dist: device.Dist, start_step: int) -> Iterator[torch.Tensor]:
    """The batches of steps start_step, start_step + 1, ...: a pure function of (seed, step, rank).

    The stream restarts with loader seed (seed, k) at every step k that is a multiple of
    `checkpoint_every`; starting between two of them replays the batches since the last one.
    """
    from prelar.data.segments import make_loader

    every = params.pretrain.checkpoint_every
    step = start_step
    while True:
        chunk_start = step - step % every
        seed = _seed(params.seed, chunk_start)
        loader = make_loader(shards, params.loader, rank=dist.rank, world_size=dist.world_size, seed=seed)
        stream = iter(loader)  # endless
        for _ in range(step - chunk_start):
            next(stream)
        for _ in range(chunk_start + every - step):
            yield next(stream)
        del stream, loader  # shuts the loader's workers down before the next chunk starts its own
        step = chunk_start + every


class _Objective(nn.Module):
    """The world model's loss as a `forward`, so DDP sees the call and all-reduces the gradients."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, generator: torch.Generator):
        return self.model.loss(frames, generator=generator)


def _gather_rng(dist: device.Dist) -> list[dict[str, Any]]:
    """Every rank's random states, collected on all ranks (so rank 0 can save them)."""
    state = checkpoint.rng_state()
    if not dist.distributed:
        return [state]
    states: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(states, state)
    return states


def _grad_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of the gradients of each top-level component (encoder, decoder, rssm, ...)."""
    norms = {}
    for name, child in model.named_children():
        grads = [p.grad.detach().float().norm() for p in child.parameters() if p.grad is not None]
        if grads:
            norms[f"grad_norm/{name}"] = torch.stack(grads).norm().item()
    return norms


def _peak_memory_gib(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def pretrain(
    params: config.Params,
    shards: str | Path | list,
    out: str | Path,
    *,
    run_name: str | None = None,
    method: str = "prelar",
    callback: Callable[[int, torch.Tensor, nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Pre-train for `params.pretrain.steps` steps in total (resuming from `out/checkpoint.pt` if present).

    Writes `out/checkpoint.pt`, `out/metrics.json` and `out/figures/`; logs to MLflow. `callback(step, frames,
    model)` runs on every rank after each optimiser step; `method` tags the MLflow run (the variant's name).
    Returns the metrics written to metrics.json.
    """
    owns_group = not torch_dist.is_initialized()
    dist = device.setup(params.pretrain.device)
    try:
        return _train(params, shards, Path(out), dist, run_name, callback, method)
    finally:
        if owns_group:
            device.teardown()


def build(params: config.Params, dist: device.Dist) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The world model, initialised from `params.seed` (the same on every rank), and its Adam optimiser."""
    from prelar.world_model import WorldModel

    torch.manual_seed(params.seed)
    model = WorldModel(params.model).to(dist.device)
    return model, torch.optim.Adam(model.parameters(), lr=params.pretrain.lr, eps=params.pretrain.eps)


def objective_of(model: nn.Module, params: config.Params, dist: device.Dist) -> nn.Module:
    """What a step calls: the model's loss as a module, DDP-wrapped under torchrun, compiled if configured."""
    objective: nn.Module = _Objective(model)
    if dist.distributed:
        device_ids = [dist.device.index] if dist.device.type == "cuda" else None
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=device_ids)
    if params.pretrain.compile:
        objective = torch.compile(objective)
    return objective


def train_step(
    model: nn.Module,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    frames: torch.Tensor,
    generator: torch.Generator,
    cfg: config.Pretrain,
    dist: device.Dist,
    component_norms: bool = False,
) -> dict[str, Any]:
    """One update: loss (autocast per `cfg.precision`), backward, clip, Adam step.

    frames uint8 [B,T,3,64,64] on the device. Returns {loss, metrics, grad_norm (before clipping), norms (per
    component, if asked)}. Raises NonFiniteLossError, before the update, if any rank's loss or gradient norm
    is not finite.
    """
    with device.autocast(dist.device, cfg.precision):
        loss, metrics, _ = objective(frames, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norms = _grad_norms(model) if component_norms else {}
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    finite = (torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)).float()
    if dist.distributed:
        torch_dist.all_reduce(finite, op=torch_dist.ReduceOp.MIN)
    if not finite.item():
        raise NonFiniteLossError(
            f"non-finite loss ({loss.item():.4g}) or gradient norm ({grad_norm.item():.4g}) on some rank; "
            "stopped before the update."
        )
    optimizer.step()
    return {"loss": loss.detach(), "metrics": metrics, "grad_norm": grad_norm.detach(), "norms": norms}


def _train(params, shards, out, dist, run_name, callback, method) -> dict[str, Any]:
    cfg = params.pretrain
    dev = dist.device
    model, optimizer = build(params, dist)
    model_config = params.model.model_dump()

    step, run_id, last = 0, None, {}
    path = out / CHECKPOINT
    if path.exists():
        ckpt = checkpoint.load(path, map_location=dev)
        if ckpt["model_config"] != model_config:
            raise config.ConfigError(
                f"{path}: was trained with a different model config; "
                "use another --out or delete the checkpoint"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for group in optimizer.param_groups:  # the current params decide lr / eps, not the checkpoint
            group.update(lr=cfg.lr, eps=cfg.eps)
        if dist.rank < len(ckpt["rng"]):
            checkpoint.set_rng_state(ckpt["rng"][dist.rank])
        step, run_id = ckpt["step"], ckpt["extra"].get("mlflow_run_id")
        last = ckpt["extra"].get("metrics", {})

    shard_list = [shards] if isinstance(shards, str | Path) else list(shards)
    data_tags = {}
    for i, s in enumerate(shard_list):
        data_tags.update(tracking.data_tags(s, name=f"shards.{i}") if Path(s).is_dir() else {})
    mlflow_run = tracking.start_run(
        params,
        params.mlflow.tracking_uri,
        params.mlflow.experiment,
        run_name=run_name or out.name,
        tags={
            "stage": "pretrain",
            "method": method,
            "seed": str(params.seed),
            "out": str(out),
            "world_size": str(dist.world_size),
            **data_tags,
        },
        resume_run_id=run_id,
        enabled=dist.is_main,
    )

    objective = objective_of(model, params, dist)

    frames_per_step = params.loader.batch_size * params.loader.segment_length * dist.world_size
    sums: dict[str, float] = {}
    count, busy = 0, 0.0
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain", disable=not dist.is_main, dynamic_ncols=True)
    stream = batches(shard_list, params, dist, step)
    status = "FAILED"
    try:
        while step < cfg.steps:
            t0 = time.perf_counter()
            frames = next(stream).to(dev, non_blocking=True)  # uint8 [B,T,3,64,64]
            generator = torch.Generator(device=dev).manual_seed(_seed(params.seed, dist.rank, step))
            log_now = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
            try:
                update = train_step(model, objective, optimizer, frames, generator, cfg, dist, log_now)
            except NonFiniteLossError as err:
                good = checkpoint.load(path)["step"] if path.exists() else "none"
                raise NonFiniteLossError(
                    f"step {step + 1}: {err} The last good checkpoint is {path} (step {good}). "
                    "Lower pretrain.lr, or try pretrain.precision: fp32."
                ) from None
            step += 1
            if callback is not None:
                callback(step, frames, model)

            values = {f"train/{k}": v for k, v in update["metrics"].items()}  # loss terms, entropies, ...
            values["grad_norm/total"] = update["grad_norm"].float()
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            count += 1
            device.synchronize(dev)
            busy += time.perf_counter() - t0  # data + forward + backward + update; no logging or saving
            bar.update(1)
            if log_now:
                keys = sorted(sums)
                mean = torch.tensor([sums[k] for k in keys], dtype=torch.float64) / count
                if dist.distributed:
                    torch_dist.all_reduce(mean)
                    mean /= dist.world_size
                last = dict(zip(keys, mean.tolist(), strict=True))
                last.update(update["norms"])
                last["perf/frames_per_s"] = count * frames_per_step / busy
                last["perf/peak_memory_gib"] = _peak_memory_gib(dev)
                mlflow_run.log_metrics(last, step=step)
                bar.set_postfix(loss=f"{last['train/total']:.3f}", fps=f"{last['perf/frames_per_s']:.0f}")
                sums, count, busy = {}, 0, 0.0
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                rng = _gather_rng(dist)
                if dist.is_main:
                    checkpoint.save(
                        path,
                        model=model,
                        optimizer=optimizer,
                        step=step,
                        model_config=model_config,
                        rng=rng,
                        extra={"mlflow_run_id": mlflow_run.run_id, "metrics": last},
                    )
        status = "FINISHED"
    finally:
        bar.close()
        stream.close()
        if status == "FAILED":
            mlflow_run.end("FAILED")

    result = {"step": step, **last}
    if dist.is_main:
        model.eval()
        result.update(evaluate(model, params, shard_list, out))
        model.train()
        (out / METRICS).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        mlflow_run.log_metrics({k: v for k, v in result.items() if isinstance(v, int | float)}, step=step)
        figures = sorted((out / "figures").glob("*")) if (out / "figures").exists() else []
        mlflow_run.log_artifacts(figures, "figures")
        mlflow_run.log_artifacts([out / METRICS, path])
    mlflow_run.end(status)
    return result


def evaluate(model: nn.Module, params: config.Params, shards, out: str | Path) -> dict[str, Any]:
    """Pre-training evaluation: open-loop prediction on held-out clips, latent-action probe on clips with
    true actions. Figures go to `out/figures/`; returns flat metrics (or `*_skipped` reasons)."""
    from prelar.data.shards import iter_clips
    from prelar.evaluate import prediction, probe

    cfg = params.pretrain
    out = Path(out)
    result: dict[str, Any] = {}
    length = prediction.CONTEXT + prediction.HORIZON
    held_out = []
    if cfg.eval_clips > 0:
        for clip in iter_clips(shards, split="holdout", holdout_fraction=params.loader.holdout_fraction):
            if len(clip.frames) >= length:
                held_out.append(clip.frames[:length])
            if len(held_out) == cfg.eval_clips:
                break
    if held_out:
        result.update(prediction.evaluate_prediction(model, np.stack(held_out), out / "figures"))
    else:
        result["prediction_skipped"] = (
            f"no held-out clip of >= {length} frames "
            f"(loader.holdout_fraction={params.loader.holdout_fraction}, "
            f"pretrain.eval_clips={cfg.eval_clips})"
        )
    if params.model.action_free:
        result["probe_skipped"] = "the action-free model has no latent actions"
    elif cfg.probe_clips > 0:
        clips = []
        for clip in iter_clips(shards):
            if clip.actions is not None:
                clips.append(clip)
            if len(clips) == cfg.probe_clips:
                break
        result.update(probe.latent_action_probe(model, clips, seed=params.seed))
    return result
