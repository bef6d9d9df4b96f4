"""`prelar pretrain`: pre-train the world model on action-free video segments (PreLAR Eq. 9; APV with
`model.action_free`).

One code path for CPU and CUDA, one process or `torchrun --nproc-per-node=N` (DDP: NCCL on CUDA, gloo on
CPU; each rank reads a different part of the shards; rank 0 logs, evaluates and saves).

Exact resume. A run restarted from its checkpoint continues exactly as an uninterrupted one would:
- the data stream is a pure function of (seed, step): it restarts with a fresh loader seed at every
  multiple of `pretrain.checkpoint_every`, and a resume between two such steps replays the skipped batches;
- the model's own sampling (latent-action `rsample`, straight-through categorical samples, consistency
  pairs) draws from a generator seeded by (seed, rank, step);
- the checkpoint restores model, optimiser and every rank's global random states;
- the learning rate is a pure function of the step (`learning_rate`); a cosine schedule resumes only with
  the `pretrain.steps` it was started with (another length would jump to another curve: a ConfigError).

A non-finite loss or gradient norm stops the run before the optimiser step (nothing is saved after it), so
the last good checkpoint stays as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

from prelar import checkpoint, config, device, losses, methods, seeding, tracking
from prelar import metrics as names


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/inf; the run stopped before updating the parameters."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shards", nargs="+", default=None, help="shard folder(s) or glob(s) (default: data.metaworld.out)"
    )
    parser.add_argument(
        "--variant",
        default="prelar",
        choices=list(methods.VARIANTS),
        help="pre-trained model (prelar/methods.py; plus its values in pretrain.variants)",
    )
    parser.add_argument(
        "--out", default=None, help="run folder: checkpoint, metrics, figures (default: pretrain.out/VARIANT)"
    )
    parser.add_argument("--steps", type=int, default=None, help="gradient steps in total (pretrain.steps)")
    parser.add_argument("--run-name", default=None, help="MLflow run name (default: pretrain/VARIANT)")
    parser.add_argument("--metrics", default=None, help="also write the final metrics JSON here (for DVC)")


def variant_updates(params: config.Params, variant: str) -> dict[str, Any]:
    """The `model` values of a pre-training variant: its registered ones, then `pretrain.variants`'s."""
    values = {**methods.variant(variant).model, **params.pretrain.variants.get(variant, {})}
    return {f"model.{k}": v for k, v in values.items()}


def updates(params: config.Params, args: argparse.Namespace) -> dict[str, Any]:
    """The parameters `--variant` and `--steps` stand for (`--set` applies after them)."""
    new = variant_updates(params, args.variant)
    if args.steps is not None:
        new["pretrain.steps"] = args.steps
    return new


def run(params: config.Params, args: argparse.Namespace) -> int:
    out = Path(args.out or Path(params.pretrain.out) / args.variant)
    shards = args.shards or [params.data.metaworld.out]
    try:
        result = pretrain(params, shards, out, run_name=args.run_name, variant=args.variant)
    except NonFiniteLossError as err:
        print(f"prelar pretrain: {err}", file=sys.stderr)
        return 1
    if args.metrics and int(os.environ.get("RANK", "0")) == 0:
        Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


def batches(
    shards, params: config.Params, dist: device.Dist, start_step: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """The batches of steps start_step, start_step + 1, ...: a pure function of (seed, step, rank), each
    (segments uint8 [B, T, 3, 64, 64], their true actions [B, T-1, A] if `model.true_actions` else None).

    The stream restarts with loader seed (seed, k) at every step k that is a multiple of
    `checkpoint_every`; starting between two of them replays the batches since the last one.
    """
    from prelar.data.segments import make_loader

    every = params.pretrain.checkpoint_every
    with_actions = params.model.true_actions
    step = start_step
    while True:
        chunk_start = step - step % every
        seed = seeding.mix(params.seed, chunk_start)
        loader = make_loader(shards, params.loader, rank=dist.rank, world_size=dist.world_size, seed=seed,
                             with_actions=with_actions)
        stream = iter(loader)  # endless
        for _ in range(step - chunk_start):
            next(stream)
        for _ in range(chunk_start + every - step):
            batch = next(stream)
            yield batch if with_actions else (batch, None)
        del stream, loader  # shuts the loader's workers down before the next chunk starts its own
        step = chunk_start + every


class _Objective(nn.Module):
    """The world model's loss as a `forward`, so DDP sees the call and all-reduces the gradients."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        frames: torch.Tensor,
        generator: torch.Generator,
        beta_a: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
    ):
        return self.model.loss(frames, generator=generator, beta_a=beta_a, actions=actions)


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
    variant: str = "prelar",
    callback: Callable[[int, torch.Tensor, nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Pre-train for `params.pretrain.steps` steps in total (resuming from `out/checkpoint.pt` if present).

    Writes `out/checkpoint.pt`, `out/metrics.json` and `out/figures/`; logs to MLflow. `callback(step, frames,
    model)` runs on every rank after each optimiser step. `variant` (prelar/methods.py) must be what
    `params.model` pre-trains (a ConfigError names the key otherwise); the checkpoint records it and it
    tags the MLflow run as its `method`. Returns the metrics written to metrics.json.
    """
    model_config = params.model.model_dump()
    wrong = methods.variant(variant).mismatch(model_config)
    if wrong:
        fits = [v.name for v in methods.VARIANTS.values() if not v.mismatch(model_config)] or ["(none)"]
        raise config.ConfigError(
            f"model: variant '{variant}' is pre-trained with {dict(methods.variant(variant).model)}, "
            f"these parameters have {wrong}; pre-train them as --variant {' or '.join(fits)}, "
            "or drop the --set that changes them"
        )
    owns_group = not torch_dist.is_initialized()
    dist = device.setup(params.pretrain.device)
    try:
        return _train(params, shards, Path(out), dist, run_name, callback, variant)
    finally:
        if owns_group:
            device.teardown()


def build(params: config.Params, dist: device.Dist) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The world model, initialised from `params.seed` (the same on every rank), and its Adam optimiser."""
    from prelar.world_model import WorldModel

    torch.manual_seed(params.seed)
    model = WorldModel(params.model).to(dist.device)
    return model, torch.optim.Adam(model.parameters(), lr=params.pretrain.lr, eps=params.pretrain.eps)


def learning_rate(cfg: config.Pretrain, step: int) -> float:
    """The learning rate of update `step + 1`: `cfg.lr` throughout (`lr_schedule: constant`, the papers'), or
    cosine-annealed towards 0 over `cfg.steps` updates (`cosine`: lr · (1 + cos(π · step / steps)) / 2;
    Loshchilov & Hutter 2017, without restarts; not in the papers)."""
    if cfg.lr_schedule == "cosine":
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * step / cfg.steps))
    return cfg.lr


def _schedule(cfg: config.Pretrain) -> dict[str, Any]:
    """What fixes the learning rate of every step, recorded in the checkpoint (constant: the rate alone)."""
    return {"lr_schedule": cfg.lr_schedule, **({"steps": cfg.steps} if cfg.lr_schedule != "constant" else {})}


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
    beta_a: torch.Tensor | None = None,
    actions: torch.Tensor | None = None,
) -> dict[str, Any]:
    """One update: loss (autocast per `cfg.precision`), backward, clip, Adam step.

    frames uint8 [B,T,3,64,64] on the device; beta_a: the action KL's weight this update (0-d tensor; None:
    `model.beta_a`); actions: the segments' true actions [B, T-1, A] (`model.true_actions`).
    Returns {loss, metrics, grad_norm (before clipping), norms (per
    component, if asked)}. Raises NonFiniteLossError, before the update, if any rank's loss or gradient norm
    is not finite.
    """
    with device.autocast(dist.device, cfg.precision):
        loss, metrics, _ = objective(frames, generator, beta_a, actions)
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


def _train(params, shards, out, dist, run_name, callback, variant) -> dict[str, Any]:
    from prelar.world_model import check_action_dims

    cfg = params.pretrain
    dev = dist.device
    precision = device.choose_precision(cfg.precision, dev)
    if dist.is_main:
        print(f"pretrain: {precision.name} on {dev} ({precision.reason})")
    model, optimizer = build(params, dist)
    model_config = params.model.model_dump()

    step, run_id, last = 0, None, {}
    path = out / checkpoint.FILENAME
    if path.exists():
        ckpt = checkpoint.load(path, map_location=dev)
        # a parameter added since the checkpoint was written counts with its default
        if {**config.Model().model_dump(), **ckpt["model_config"]} != model_config:
            raise config.ConfigError(
                f"{path}: was trained with a different model config; "
                "use another --out or delete the checkpoint"
            )
        started = ckpt["extra"].get("schedule", {"lr_schedule": "constant"})  # older checkpoints: constant
        if started != _schedule(cfg):
            raise config.ConfigError(
                f"{path}: was trained with the learning-rate schedule {started}, not {_schedule(cfg)}; "
                "resume with the same pretrain.lr_schedule (and pretrain.steps), or use another --out"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for group in optimizer.param_groups:  # the current params decide eps (and lr: each update sets it)
            group.update(lr=cfg.lr, eps=cfg.eps)
        if dist.rank < len(ckpt["rng"]):
            checkpoint.set_rng_state(ckpt["rng"][dist.rank])
        step, run_id = ckpt["step"], ckpt["extra"].get("mlflow_run_id")
        last = ckpt["extra"].get("metrics", {})

    shard_list = [shards] if isinstance(shards, str | Path) else list(shards)
    data_tags = {}
    for i, s in enumerate(shard_list):
        data_tags.update(tracking.data_tags(s, name=f"shards.{i}") if Path(s).is_dir() else {})
    tags = {
        names.TAG_STAGE: names.PRETRAIN_STAGE,
        names.TAG_METHOD: variant,
        names.TAG_SEED: str(params.seed),
        "out": str(out),
        "world_size": str(dist.world_size),
        "precision": precision.name,
        "precision.reason": precision.reason,
        **data_tags,
    }

    objective = objective_of(model, params, dist)
    monitor = None
    if dist.is_main:
        from prelar.evaluate import curves

        monitor = curves.Monitor(params, shard_list, model.cfg, dev)
        if step > 0:  # before the first update: a resumed curve must go on measuring as it began
            monitor.check_continues(out / curves.CSV)

    frames_per_step = params.loader.batch_size * params.loader.segment_length * dist.world_size
    sums: dict[str, float] = {}
    count, busy = 0, 0.0
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain", disable=not dist.is_main, dynamic_ncols=True)
    stream = batches(shard_list, params, dist, step)
    with (
        tracking.stage_run(
            params, run_name or f"pretrain/{variant}", tags, resume_run_id=run_id, enabled=dist.is_main
        ) as mlflow_run,
        bar,
        contextlib.closing(stream),
    ):
        if dist.is_main and step == 0 and cfg.curve_every > 0:  # the curves start at the initialisation
            _curve_point(monitor, model, out, 0, 0, mlflow_run)
        while step < cfg.steps:
            t0 = time.perf_counter()
            frames, actions = next(stream)  # uint8 [B,T,3,64,64], true actions [B,T-1,A] or None
            frames = frames.to(dev, non_blocking=True)
            if actions is not None:
                check_action_dims(actions.shape[-1], params.model)
                actions = actions.to(dev, non_blocking=True)
            generator = torch.Generator(device=dev).manual_seed(seeding.mix(params.seed, dist.rank, step))
            log_now = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
            beta_a = None
            if params.model.beta_a_warmup > 0:
                weight = losses.warmup_weight(params.model.beta_a, step, params.model.beta_a_warmup)
                beta_a = torch.tensor(weight, device=dev)
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            try:
                update = train_step(
                    model, objective, optimizer, frames, generator, cfg, dist, log_now, beta_a, actions
                )
            except NonFiniteLossError as err:
                good = checkpoint.load(path)["step"] if path.exists() else "none"
                raise NonFiniteLossError(
                    f"step {step + 1}: {err} The last good checkpoint is {path} (step {good}). "
                    "Lower pretrain.lr, or try pretrain.precision: fp32."
                ) from None
            step += 1
            if callback is not None:
                callback(step, frames, model)

            # loss terms, entropies, ...
            values = {f"{names.PRETRAIN_PREFIX}{k}": v for k, v in update["metrics"].items()}
            values["grad_norm/total"] = update["grad_norm"].float()
            if beta_a is not None:
                values[f"{names.PRETRAIN_PREFIX}beta_a"] = beta_a  # the warm-up's weight this update
            if cfg.lr_schedule != "constant":
                values[f"{names.PRETRAIN_PREFIX}lr"] = torch.tensor(lr, dtype=torch.float64)
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
            if dist.is_main and cfg.curve_every > 0 and step % cfg.curve_every == 0 and step < cfg.steps:
                _curve_point(monitor, model, out, step, step * frames_per_step, mlflow_run)
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
                        extra={
                            "mlflow_run_id": mlflow_run.run_id, "metrics": last, "variant": variant,
                            "schedule": _schedule(cfg),
                        },
                    )
        bar.close()
        result = {"step": step, **last}
        if dist.is_main:  # inside the run: an evaluation that raises fails it
            final = evaluate(model, params, shard_list, out, monitor)
            result.update(final)
            if cfg.curve_every > 0:
                _curve_point(monitor, model, out, step, step * frames_per_step, mlflow_run, final)
            (out / tracking.METRICS).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
            mlflow_run.log_metrics({k: v for k, v in result.items() if isinstance(v, int | float)}, step=step)
            figures = sorted((out / "figures").glob("*")) if (out / "figures").exists() else []
            mlflow_run.log_artifacts(figures, "figures")
            mlflow_run.log_artifacts([out / tracking.METRICS, path])
    return result


def _curve_point(monitor, model, out: Path, step: int, frames: int, mlflow_run, measured=None) -> None:
    """One point of the learning curves (`measured`, or measured now): `out/curves.csv` and MLflow
    `curve/<name>` at this update (the first, before any update)."""
    from prelar.evaluate import curves

    measured = measured if measured is not None else monitor.measure(model)
    values = curves.numeric(measured)
    curves.append_row(out / curves.CSV, step, frames, {**values, **curves.labels(measured)})
    mlflow_run.log_metrics({f"{names.CURVE_PREFIX}{k}": v for k, v in values.items()}, step=step)


def evaluate(
    model: nn.Module, params: config.Params, shards, out: str | Path, monitor: Any = None
) -> dict[str, Any]:
    """Pre-training evaluation: the learning curves' measurement (`prelar.evaluate.curves.Monitor`: open-loop
    prediction on held-out clips beside copy-last-frame, ΔPSNR, the latent-action probe exactly as the probe
    stage runs it, the KL terms), with the prediction GIF and Fig. 1 grids in `out/figures/`. `monitor`: the
    run's (built here if None). Returns flat metrics (or `*_skipped` reasons)."""
    from prelar.evaluate import curves

    if monitor is None:
        monitor = curves.Monitor(params, shards, model.cfg, next(model.parameters()).device)
    return monitor.measure(model, Path(out) / "figures")
