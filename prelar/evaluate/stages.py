"""`prelar evaluate <what>`: the evaluation stages of the pipeline (DESIGN: "What we can measure on CPU").

    probe            latent-action probe R² (ridge from the latent-action mean to the true action, scored on
                     other episodes) of each pre-trained model with latent actions, and of an untrained
                     inverse dynamics encoder (method `untrained`); action-free checkpoints are skipped
    controllability  ΔPSNR per open-loop horizon: PSNR with the clip's own inferred latent actions minus
                     PSNR with another clip's, on held-out windows (action-free checkpoints are skipped)
    transfer-data    render the downstream episodes (noisy scripted expert, tasks held out of pre-training)
                     through the real ingest into shards
    transfer         offline transfer: action-conditioned open-loop error after K fine-tuning updates with
                     real actions, from each checkpoint (PreLAR variants; APV's stacked model on the
                     action-free one) and from scratch (`dreamerv2`); see `prelar.evaluate.transfer`

Each writes `<out>/metrics.json` (its `--metrics` copy adds timings), the plot data `<out>/<what>.csv` and
PNG plots into `<out>`, and logs one MLflow run per method and seed under the metric names of the report's
contract (`prelar.metrics`), tagged stage=<what>, method, seed (transfer-data writes shards, its
`metrics.json` and `contact_sheet.png`, and logs nothing). A checkpoint's method is the pre-training
variant it records (`variant_of`). Seeds vary only the evaluation's randomness (see `config.Evaluate`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from prelar import checkpoint, config, device, tracking
from prelar import methods as registry
from prelar import metrics as names

STAGES = ("probe", "controllability", "transfer-data", "transfer")
SCRATCH = registry.SCRATCH.name
COPY_LAST = "copy last frame"  # transfer's model-free yardstick (plot and CSV only, not an MLflow method)
NO_LATENT_ACTIONS = "no latent actions (action-free, or given true actions)"  # why a checkpoint is skipped
SEED_SCOPE = "evaluation only: one pre-training run per method, seeds vary the evaluation's randomness"


# ---- the command line -----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, metavar="{" + ",".join(STAGES) + "}")
    helps = {
        "probe": "latent-action probe R² per checkpoint and for an untrained encoder",
        "controllability": "ΔPSNR per open-loop horizon (own vs shuffled latent actions)",
        "transfer-data": "render the downstream episodes into shards (evaluate.transfer_*)",
        "transfer": "open-loop error after K offline fine-tuning updates: checkpoints and scratch",
    }
    for what in STAGES:
        p = sub.add_parser(what, help=helps[what])
        if what in ("probe", "controllability", "transfer"):
            p.add_argument(
                "--checkpoints",
                nargs="*" if what == "transfer" else "+",
                default=[],
                required=what != "transfer",
                help="pre-training run folders or checkpoint.pt files, e.g. runs/pretrain/prelar"
                + (" (dreamerv2 from scratch always runs)" if what == "transfer" else ""),
            )
        if what in ("probe", "controllability"):
            p.add_argument(
                "--shards",
                nargs="+",
                default=None,
                help="pre-training shards with actions (data.metaworld.out)",
            )
        if what == "transfer":
            p.add_argument("--data", default=None, help="downstream shards (evaluate.transfer_data)")
        default_out = "evaluate.transfer_data" if what == "transfer-data" else f"evaluate.out/{what}"
        p.add_argument("--out", default=None, help=f"output folder ({default_out})")
        p.add_argument("--metrics", default=None, help="also write the metrics JSON here (for DVC)")


def run(params: config.Params, args: argparse.Namespace) -> int:
    from prelar.data.ingest import IngestError

    cfg = params.evaluate
    if args.what == "transfer-data":
        try:
            summary = transfer_data_stage(params, args.out or cfg.transfer_data, args.metrics)
        except IngestError as err:
            print(f"prelar: error: {err}", file=sys.stderr)
            return 1
        print(summary)
        return 0
    out = Path(args.out or Path(cfg.out) / args.what)
    if args.what == "transfer":
        result = transfer_stage(params, args.checkpoints, args.data or cfg.transfer_data, out, args.metrics)
    else:
        stage = probe_stage if args.what == "probe" else controllability_stage
        result = stage(
            params, args.checkpoints, args.shards or [params.data.metaworld.out], out, args.metrics
        )
    print(f"evaluate {args.what}: {out / tracking.METRICS} ({result['seconds']:.1f} s)")
    return 0


# ---- shared pieces ----------------------------------------------------------------------------------------


def variant_of(ckpt: dict[str, Any], path: Path) -> str:
    """The pre-training variant a checkpoint records (`prelar pretrain --variant`): what names it here."""
    name = ckpt["extra"].get("variant")
    if name not in registry.VARIANTS:
        raise config.ConfigError(
            f"{path}: records no known pre-training variant ({name!r}); pre-train it again with "
            f"`prelar pretrain --variant NAME` (one of {list(registry.VARIANTS)})"
        )
    return name


def checkpoint_path(path: str | Path) -> Path:
    """A run folder → its checkpoint.pt; a `.pt` file as given."""
    path = Path(path)
    return path if path.suffix == ".pt" else path / checkpoint.FILENAME


def load_checkpoints(paths: list[str | Path], dev: torch.device) -> list[tuple[str, Path, torch.nn.Module]]:
    """(method, checkpoint, model in eval mode) per path; all are loaded before any work starts.

    A missing file is a FileNotFoundError naming it; two checkpoints of the same method a ConfigError.
    """
    from prelar.checkpoint import load_world_model

    loaded, seen = [], {}
    for p in paths:
        path = checkpoint_path(p)
        try:
            model, ckpt = load_world_model(path, dev)
        except ValueError as err:
            raise config.ConfigError(str(err)) from None
        method = variant_of(ckpt, path)
        if method in seen:
            raise config.ConfigError(
                f"--checkpoints: {seen[method]} and {path} are both method '{method}'; pass one per method"
            )
        seen[method] = path
        loaded.append((method, path, model.eval()))
    return loaded


def latent_action_models(loaded, what: str) -> list[tuple[str, Path, torch.nn.Module]]:
    """The checkpoints with latent actions; the others (action-free, true actions) are skipped with a note."""
    kept = []
    for method, path, model in loaded:
        if not model.cfg.latent_actions:
            print(f"evaluate {what}: skipping {path} ({method}): {NO_LATENT_ACTIONS}")
        else:
            kept.append((method, path, model))
    return kept


def evaluation_device(params: config.Params) -> torch.device:
    """`evaluate.device`, with the precision chosen there (`evaluate.precision`) said once at start."""
    dev = device.resolve_device(params.evaluate.device)
    precision = device.choose_precision(params.evaluate.precision, dev)
    print(f"evaluate: {precision.name} on {dev} ({precision.reason})")
    return dev


def mlflow_run(
    params: config.Params, stage: str, method: str, seed: int, tags: dict[str, str]
) -> AbstractContextManager[tracking.Run]:
    """The run (`tracking.stage_run`) of one method and seed of evaluation `stage`, named
    `evaluate/<stage>/<method>/seed<seed>` and tagged stage, method, seed (+ `tags`)."""
    dev = device.resolve_device(params.evaluate.device)
    precision = device.choose_precision(params.evaluate.precision, dev)
    return tracking.stage_run(
        params,
        f"evaluate/{stage}/{method}/seed{seed}",
        {
            names.TAG_STAGE: stage,
            names.TAG_METHOD: method,
            names.TAG_SEED: str(seed),
            "seed_scope": SEED_SCOPE,
            "precision": precision.name,
            "precision.reason": precision.reason,
            **tags,
        },
    )


def _data_tags(paths) -> dict[str, str]:
    tags = {}
    for i, p in enumerate([paths] if isinstance(paths, str | Path) else paths):
        if Path(p).is_dir():
            tags.update(tracking.data_tags(p, name=f"data.{i}"))
    return tags


TIMINGS = ("seconds", "run_seconds", "updates_per_s")  # differ run to run: only in the `--metrics` file


def write_outputs(
    out: Path,
    metrics_path: str | None,
    metrics: dict[str, Any],
    table: pd.DataFrame,
    name: str,
    figures: dict[str, Any],
) -> None:
    """`out/metrics.json` (all but the `TIMINGS`: the output's DVC hash depends on its inputs only), the
    `--metrics` file (all), `out/<name>.csv` and `out/<figure>.png`."""
    from prelar.evaluate import plots

    out.mkdir(parents=True, exist_ok=True)
    results = {k: v for k, v in metrics.items() if k not in TIMINGS}
    (out / tracking.METRICS).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    if metrics_path is not None:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_path).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    table.to_csv(out / f"{name}.csv", index=False)
    for fig_name, fig in figures.items():
        (out / f"{fig_name}.png").write_bytes(plots.png_bytes(fig))


def _spread(table: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean over seeds per (method, x), with the seeds' min and max as the band (plots.band_panels' input)."""
    grouped = table.groupby(["method", x])[y]
    return pd.DataFrame({y: grouped.mean(), "low": grouped.min(), "high": grouped.max()}).reset_index()


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "per_seed": [float(v) for v in values],
    }


# ---- probe -------------------------------------------------------------------------------------------------


def probe_stage(params: config.Params, checkpoints, shards, out: str | Path, metrics_path: str | None = None):
    """Latent-action probe R² per method and seed (seeds: the episode split and the untrained init), by
    `prelar.evaluate.probe` on its clips: pre-training's end-of-run probe gives the same numbers."""
    from prelar.evaluate import plots, probe

    start = time.perf_counter()
    cfg, dev, out = params.evaluate, evaluation_device(params), Path(out)
    loaded = load_checkpoints(checkpoints, dev)
    models = latent_action_models(loaded, "probe")
    skipped = {str(p): NO_LATENT_ACTIONS for m, p, model in loaded if not model.cfg.latent_actions}
    clips, split_used = probe.probe_clips(shards, params)
    fit_clips = probe.probe_fit_clips(shards, params, clips, split_used)
    episodes = len({probe.episode_key(c) for c in clips})
    print(
        f"evaluate probe: {len(clips)} clips of {episodes} episodes ({split_used} clips), fit also on "
        f"{len(fit_clips)} pre-training clips (evaluate.probe_fit={cfg.probe_fit}); "
        f"seeds {cfg.seeds} vary the episode split and the untrained initialisation only"
    )
    # the untrained encoder's architecture: that of the checkpoints (their switches do not change it)
    untrained = models[0][2].cfg if models else params.model.model_copy(update={"action_free": False})
    rows = probe.latent_action_probe(
        {m: model for m, _, model in models}, clips, cfg, untrained, dev, fit_clips
    )
    paths = {m: str(p) for m, p, _ in models}
    for row in rows:
        dims = [row[k] for k in row if k.startswith("r2_dim")]
        values = {
            names.PROBE_R2: row["r2"],
            **{names.probe_r2_dim(i): v for i, v in enumerate(dims)},
            names.PROBE_TEST_EPISODES: row["test_episodes"],
            names.PROBE_FIT_EPISODES: row["fit_episodes"],
        }
        tags = {
            "checkpoint": paths.get(row["method"], "fresh initialisation"),
            "device": dev.type,
            "clip_split": split_used,
            **_data_tags(shards),
        }
        with mlflow_run(params, "probe", row["method"], row["seed"], tags) as run:
            run.log_metrics(values, step=0)
    table = pd.DataFrame(rows).drop(columns=["fit_episodes", "test_episodes", "test_frames"])
    metrics = {
        "probe_r2": {m: _summary(list(g["r2"])) for m, g in table.groupby("method")},
        "clips": len(clips),
        "episodes": episodes,
        "clip_split": split_used,
        "target": cfg.probe_target,
        "seeds": list(cfg.seeds),
        "skipped": skipped,
        "seconds": round(time.perf_counter() - start, 2),
    }
    title = f"Latent-action probe: latent → {probe.TARGET_NAMES[cfg.probe_target]}"
    fig = plots.points_per_method(table, "r2", "R² (test episodes)", title)
    write_outputs(out, metrics_path, metrics, table, "probe", {"probe_r2": fig})
    return metrics


# ---- controllability ------------------------------------------------------------------------------------


def controllability_stage(
    params: config.Params, checkpoints, shards, out: str | Path, metrics_path: str | None = None
):
    """ΔPSNR per horizon per method and seed (seeds: which clip lends its latent actions to which)."""
    from prelar.evaluate import plots, prediction, probe

    start = time.perf_counter()
    cfg, dev, out = params.evaluate, evaluation_device(params), Path(out)
    loaded = load_checkpoints(checkpoints, dev)
    models = latent_action_models(loaded, "controllability")
    skipped = {str(p): NO_LATENT_ACTIONS for m, p, model in loaded if not model.cfg.latent_actions}
    length = cfg.window
    # held-out clips when they give 2 windows (one clip lends its latent actions to another), else all
    clips, split_used = probe.select_clips(shards, params, cfg.controllability_windows, 2, min_frames=length)
    cut = prediction.windows([{"frames": c.frames} for c in clips], length, cfg.controllability_windows)
    frames = cut["frames"]  # [N, T, 64, 64, 3]
    if len(frames) < 2:
        raise config.ConfigError(f"{shards}: ΔPSNR needs 2 windows of {length} frames; ingest longer clips")
    print(
        f"evaluate controllability: {len(frames)} windows of {length} frames from {len(clips)} "
        f"{split_used} clips; seeds {cfg.seeds} vary only the pairing of clips"
    )
    rows = []
    for method, path, model in models:
        for seed in cfg.seeds:
            order = np.random.default_rng(seed).permutation(len(frames))
            with device.autocast(dev, cfg.precision):
                result = prediction.controllability(model, frames[order], cfg.context)  # tensors [H]
            result = {k: v.float().cpu().numpy() for k, v in result.items()}
            tags = {
                "checkpoint": str(path),
                "device": dev.type,
                "clip_split": split_used,
                **_data_tags(shards),
            }
            with mlflow_run(params, "controllability", method, seed, tags) as run:
                for k, delta in enumerate(result["delta_psnr"], start=1):
                    run.log_metrics({names.delta_psnr_metric(k): delta}, step=k)
                run.log_metrics({names.DELTA_PSNR_MEAN: result["delta_psnr"].mean()}, step=0)
            for k in range(len(result["delta_psnr"])):
                rows.append(
                    {
                        "method": method,
                        "seed": seed,
                        "horizon": k + 1,
                        **{name: float(v[k]) for name, v in result.items()},
                    }
                )
    table = pd.DataFrame(
        rows, columns=["method", "seed", "horizon", "delta_psnr", "psnr_inferred", "psnr_shuffled"]
    )
    by_method = table.groupby("method")
    metrics = {
        "delta_psnr_mean": {m: float(g["delta_psnr"].mean()) for m, g in by_method},
        "delta_psnr_last": {
            m: float(g[g["horizon"] == g["horizon"].max()]["delta_psnr"].mean()) for m, g in by_method
        },
        "psnr_inferred_mean": {m: float(g["psnr_inferred"].mean()) for m, g in by_method},
        "windows": len(frames),
        "clip_split": split_used,
        "seeds": list(cfg.seeds),
        "skipped": skipped,
        "seconds": round(time.perf_counter() - start, 2),
    }
    figures = {}
    if not table.empty:
        figures["delta_psnr"] = plots.band_panels(
            _spread(table, "horizon", "delta_psnr"),
            "horizon",
            "delta_psnr",
            None,
            "open-loop horizon (frames)",
            "ΔPSNR (dB)",
            "ΔPSNR: own minus another clip's latent actions",
        )
    write_outputs(out, metrics_path, metrics, table, "controllability", figures)
    return metrics


# ---- transfer data -------------------------------------------------------------------------------------


def transfer_source(params: config.Params, out: str | Path) -> config.MetaworldSource:
    """The Meta-world source of the downstream episodes (`exclude=[]`: downstream tasks are the point), at
    the fine-tuning env's camera and action repeat (`finetune.camera`, `finetune.action_repeat`): the
    episodes fine-tuning would collect.

    Fails naming `evaluate.transfer_tasks` for an unknown task or one that pre-training also renders, and
    `evaluate.transfer_max_steps` for episodes too short for a segment or an open-loop window.
    """
    from prelar.data.metaworld import selected_tasks
    from prelar.envs.metaworld import validate_task

    cfg = params.evaluate
    for task in cfg.transfer_tasks:
        try:
            validate_task(task, "evaluate.transfer_tasks")
        except ValueError as err:
            raise config.ConfigError(str(err)) from None
    seen = sorted(set(cfg.transfer_tasks) & set(selected_tasks(params.data.metaworld)))
    if seen:
        raise config.ConfigError(
            f"evaluate.transfer_tasks: {seen} are also pre-training tasks (data.metaworld.tasks); transfer "
            f"must be measured on tasks pre-training never saw: pick others or add them to "
            f"data.metaworld.exclude"
        )
    need = max(cfg.window, cfg.transfer_segment_length)
    if cfg.transfer_max_steps + 1 < need:
        raise config.ConfigError(
            f"evaluate.transfer_max_steps: episodes of {cfg.transfer_max_steps + 1} frames are shorter than "
            f"{need} (an open-loop window or a segment); raise it to at least {need - 1}"
        )
    return config.MetaworldSource(
        tasks=list(cfg.transfer_tasks),
        exclude=[],
        episodes_per_task=cfg.transfer_episodes,
        max_steps=cfg.transfer_max_steps,
        cameras=[params.finetune.camera],
        action_repeat=params.finetune.action_repeat,
        action_noise=cfg.transfer_action_noise,
        seed=cfg.transfer_seed,
        fast_render=params.finetune.fast_render,
        out=str(out),
    )


def transfer_data_stage(params: config.Params, out: str | Path, metrics_path: str | None = None):
    """Render the downstream episodes through `prelar.data.ingest` into shards at `out`."""
    from prelar.data import metaworld
    from prelar.data.ingest import ingest

    source_cfg = transfer_source(params, out)
    need = max(params.evaluate.window, params.evaluate.transfer_segment_length)
    shards_cfg = params.data.shards.model_copy(update={"min_frames": need})
    return ingest(metaworld, source_cfg, shards_cfg, out, metrics_path)


# ---- transfer ---------------------------------------------------------------------------------------------


def transfer_stage(
    params: config.Params, checkpoints, data, out: str | Path, metrics_path: str | None = None
):
    """Open-loop error at each K of `evaluate.transfer_updates`, per method (checkpoints, scratch), seed."""
    from tqdm import tqdm

    from prelar.agent.model import load_pretrained
    from prelar.data.shards import iter_clips
    from prelar.evaluate import plots
    from prelar.evaluate import transfer as offline
    from prelar.evaluate.prediction import psnr

    start = time.perf_counter()
    cfg, dev, out = params.evaluate, evaluation_device(params), Path(out)
    methods = [(method, path) for method, path, _ in load_checkpoints(checkpoints, dev)] + [(SCRATCH, None)]
    if cfg.transfer_segment_length < params.finetune.bonus.window:
        raise config.ConfigError(
            f"evaluate.transfer_segment_length: {cfg.transfer_segment_length} is shorter than the intrinsic "
            f"bonus' window (finetune.bonus.window: {params.finetune.bonus.window}); raise it"
        )
    if not Path(data).is_dir():
        raise FileNotFoundError(
            f"{data}: no downstream shards; run `prelar evaluate transfer-data --out {data}`"
        )
    clips = [c for c in iter_clips(data) if c.actions is not None and c.rewards is not None]
    if not clips:
        raise config.ConfigError(
            f"{data}: no clip with actions and rewards; run `prelar evaluate transfer-data`"
        )
    grid = sorted(set(cfg.transfer_updates))
    total = len(cfg.seeds) * len(methods) * grid[-1]
    bar = tqdm(total=total, desc="transfer updates", dynamic_ncols=True)
    rows, seconds, splits, update_seconds = [], {}, {}, 0.0
    try:
        for seed in cfg.seeds:
            train, test = offline.split(clips, cfg.transfer_test_fraction, seed)
            splits[seed] = {"train_episodes": len(train), "test_episodes": len(test)}
            copy = offline.copy_last(test, cfg)  # [B, H]
            for k in grid:  # the yardstick: repeat the last context frame (no model), flat in K
                rows.append(
                    {
                        "method": COPY_LAST,
                        "seed": seed,
                        "updates": k,
                        "mse": copy.mean().item(),
                        "psnr": psnr(copy).mean().item(),
                        "train_mse": float("nan"),
                    }
                )
            for method, path in methods:
                t0 = time.perf_counter()
                finetuner = registry.finetuned_by(method).name if path is not None else method
                pretrained, _ = load_pretrained(finetuner, path, params.model)
                if pretrained is not None:
                    pretrained.to(dev)
                curve = offline.transfer(
                    finetuner, pretrained, params, train, test, seed, progress=bar.update
                )
                seconds[f"{method}/seed{seed}"] = round(time.perf_counter() - t0, 2)
                update_seconds += curve.update_seconds
                tags = {
                    "checkpoint": str(path or "fresh initialisation"),
                    "device": dev.type,
                    **_data_tags(data),
                }
                points = [
                    {"updates": k, "mse": mse, "psnr": db, "train_mse": fit}
                    for k, mse, db, fit in zip(
                        curve.updates, curve.mse, curve.psnr, curve.train_mse, strict=True
                    )
                ]
                with mlflow_run(params, "transfer", method, seed, tags) as run:
                    for k, values in curve.logged():
                        run.log_metrics(values, step=k)
                rows += [{"method": method, "seed": seed, **point} for point in points]
    finally:
        bar.close()
    table = pd.DataFrame(rows)
    models, copy = table[table["method"] != COPY_LAST], table[table["method"] == COPY_LAST]
    metrics = {
        name: {
            m: {f"k{k}": float(v) for k, v in g.groupby("updates")[name].mean().items()}
            for m, g in models.groupby("method")
        }
        for name in ("mse", "psnr", "train_mse")
    }
    metrics["copy_last_frame"] = {"mse": float(copy["mse"].mean()), "psnr": float(copy["psnr"].mean())}
    metrics.update(
        splits=splits,
        seeds=list(cfg.seeds),
        clips=len(clips),
        run_seconds=seconds,
        updates_per_s=round(total / max(update_seconds, 1e-9), 2),
        seconds=round(time.perf_counter() - start, 2),
    )
    figures = {
        "transfer_mse": plots.band_panels(
            _spread(table, "updates", "mse"),
            "updates",
            "mse",
            None,
            "fine-tuning updates K",
            "open-loop MSE (held-out episodes)",
            "Offline transfer: action-conditioned prediction error",
        ),
        "transfer_psnr": plots.band_panels(
            _spread(table, "updates", "psnr"),
            "updates",
            "psnr",
            None,
            "fine-tuning updates K",
            "open-loop PSNR (dB, held-out episodes)",
            "Offline transfer: action-conditioned PSNR",
        ),
    }
    write_outputs(out, metrics_path, metrics, table, "transfer", figures)
    return metrics
