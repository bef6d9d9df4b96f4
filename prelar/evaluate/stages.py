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

Each writes `<out>/metrics.json` (and a copy at `--metrics` for DVC), the plot data `<out>/<what>.csv` and
PNG plots into `<out>`, and logs one MLflow run per method and seed under the metric names of the report's
contract (`prelar.evaluate.report`), tagged stage=<what>, method, seed (transfer-data writes shards, its
`metrics.json` and `contact_sheet.png`, and logs nothing). A checkpoint's method is read from its model
switches (`method_of`). Seeds vary only the evaluation's randomness (see `config.Evaluate`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from prelar import config, device, tracking
from prelar.cli import add_set_option
from prelar.data.clip import Clip

STAGES = ("probe", "controllability", "transfer-data", "transfer")
UNTRAINED = "untrained"
SCRATCH = "dreamerv2"
COPY_LAST = "copy last frame"  # transfer's model-free yardstick (plot and CSV only, not an MLflow method)
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
        # also accepted after the stage name (`prelar evaluate probe --params p.yaml`)
        p.add_argument("--params", default=argparse.SUPPRESS, help="parameter file (default: params.yaml)")
        p.add_argument("--profile", default=argparse.SUPPRESS, help="profile of the parameter file")
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
        add_set_option(p, "evaluate.seeds=[0,1]")


def run(params: config.Params, args: argparse.Namespace) -> int:
    from prelar.data.ingest import IngestError
    params = config.override(params, args.set)
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
    print(f"evaluate {args.what}: {out / 'metrics.json'} ({result['seconds']:.1f} s)")
    return 0


# ---- shared pieces ----------------------------------------------------------------------------------------


def method_of(model_config: dict[str, Any]) -> str:
    """The method of a pre-trained model, from its switches: `apv` (action-free) or a PreLAR variant."""
    from prelar.agent.model import METHODS

    fits = [
        name
        for name, m in METHODS.items()
        if m.expects and all(model_config.get(k) == v for k, v in m.expects.items())
    ]
    if not fits:
        switches = {k: model_config.get(k) for k in ("action_free", "use_consistency", "use_action_kl")}
        raise config.ConfigError(f"no method pre-trains a model with switches {switches}")
    return fits[0]  # action-free: apv (naive_ft loads the same checkpoint)


def checkpoint_path(path: str | Path) -> Path:
    """A run folder → its checkpoint.pt; a `.pt` file as given."""
    path = Path(path)
    return path if path.suffix == ".pt" else path / "checkpoint.pt"


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
        method = method_of(ckpt["model_config"])
        if method in seen:
            raise config.ConfigError(
                f"--checkpoints: {seen[method]} and {path} are both method '{method}'; pass one per method"
            )
        seen[method] = path
        loaded.append((method, path, model.eval()))
    return loaded


def latent_action_models(loaded, what: str) -> list[tuple[str, Path, torch.nn.Module]]:
    """The checkpoints with latent actions; the action-free ones are skipped with a printed note."""
    kept = []
    for method, path, model in loaded:
        if model.cfg.action_free:
            print(f"evaluate {what}: skipping {path} ({method}): an action-free model has no latent actions")
        else:
            kept.append((method, path, model))
    return kept


def evaluation_clips(
    shards, params: config.Params, limit: int, min_episodes: int, min_frames: int = 2
) -> tuple[list[Clip], str]:
    """Up to `limit` clips with actions and >= `min_frames` frames: from the held-out split
    (`loader.holdout_fraction`) if it holds `min_episodes` episodes, else from every clip.
    Returns (clips, "holdout" | "all")."""
    from prelar.data.shards import iter_clips
    from prelar.evaluate.probe import episode_key

    def take(split: str | None) -> list[Clip]:
        clips = []
        for clip in iter_clips(shards, split=split, holdout_fraction=params.loader.holdout_fraction):
            if clip.actions is not None and len(clip.frames) >= min_frames:
                clips.append(clip)
            if len(clips) == limit:
                break
        return clips

    held_out = take("holdout")
    if len({episode_key(c) for c in held_out}) >= min_episodes:
        return held_out, "holdout"
    clips = take(None)
    if not clips:
        raise config.ConfigError(
            f"{shards}: no clip with actions and at least {min_frames} frames; ingest Meta-world shards "
            f"(`prelar ingest metaworld`) or point --shards at them"
        )
    return clips, "all"


def evaluation_device(params: config.Params) -> torch.device:
    return device.resolve_device(params.evaluate.device)


@contextmanager
def mlflow_run(
    params: config.Params, stage: str, method: str, seed: int, tags: dict[str, str]
) -> Iterator[tracking.Run]:
    """One MLflow run tagged stage, method, seed (+ `tags`); FINISHED, or FAILED if the block raises."""
    run = tracking.start_run(
        params,
        params.mlflow.tracking_uri,
        params.mlflow.experiment,
        run_name=f"{stage}-{method}-seed{seed}",
        tags={"stage": stage, "method": method, "seed": str(seed), "seed_scope": SEED_SCOPE, **tags},
    )
    try:
        yield run
    except BaseException:
        run.end("FAILED")
        raise
    run.end("FINISHED")


def _data_tags(paths) -> dict[str, str]:
    tags = {}
    for i, p in enumerate([paths] if isinstance(paths, str | Path) else paths):
        if Path(p).is_dir():
            tags.update(tracking.data_tags(p, name=f"data.{i}"))
    return tags


def write_outputs(
    out: Path,
    metrics_path: str | None,
    metrics: dict[str, Any],
    table: pd.DataFrame,
    name: str,
    figures: dict[str, Any],
) -> None:
    """`out/metrics.json` (+ the DVC copy), `out/<name>.csv` and `out/<figure>.png`."""
    from prelar.evaluate import plots

    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(metrics, indent=2, sort_keys=True) + "\n"
    (out / "metrics.json").write_text(text)
    if metrics_path is not None:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        Path(metrics_path).write_text(text)
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
    """Latent-action probe R² per method and seed (seeds: the episode split and the untrained init)."""
    from prelar.evaluate import plots, probe
    from prelar.world_model import WorldModel

    start = time.perf_counter()
    cfg, dev, out = params.evaluate, evaluation_device(params), Path(out)
    loaded = load_checkpoints(checkpoints, dev)
    models = latent_action_models(loaded, "probe")
    skipped = {str(p): "action-free: no latent actions" for m, p, model in loaded if model.cfg.action_free}
    clips, split_used = evaluation_clips(shards, params, cfg.probe_clips, cfg.min_holdout_episodes)
    keys = [probe.episode_key(c) for c in clips]
    actions = [c.actions.astype(np.float32) for c in clips]  # [T-1, A] each
    print(
        f"evaluate probe: {len(clips)} clips of {len(set(keys))} episodes ({split_used} clips); "
        f"seeds {cfg.seeds} vary the episode split and the untrained initialisation only"
    )
    fresh_cfg = params.model.model_copy(update={"action_free": False})
    reference = models[0][2] if models else WorldModel(fresh_cfg)  # the untrained encoder's architecture
    with device.autocast(dev, cfg.precision):
        features = {method: probe.latent_action_features(model, clips) for method, _, model in models}
    rows = []
    for seed in cfg.seeds:
        fit, test = probe.split_episodes(keys, cfg.probe_test_fraction, seed)
        fit_idx = [i for i, k in enumerate(keys) if k in fit]
        test_idx = [i for i, k in enumerate(keys) if k in test]
        with device.autocast(dev, cfg.precision):
            untrained = probe.latent_action_features(probe.untrained_like(reference.to(dev), seed), clips)
        sources = [(m, p, features[m]) for m, p, _ in models] + [(UNTRAINED, None, untrained)]
        for method, path, feats in sources:
            r2, per_dim = probe.ridge_r2(feats, actions, fit_idx, test_idx, cfg.probe_alpha)
            values = {
                "probe/r2": r2,
                **{f"probe/r2_dim{i}": v for i, v in enumerate(per_dim)},
                "probe/test_episodes": len(test),
                "probe/fit_episodes": len(fit),
            }
            tags = {
                "checkpoint": str(path or "fresh initialisation"),
                "device": dev.type,
                "clip_split": split_used,
                **_data_tags(shards),
            }
            with mlflow_run(params, "probe", method, seed, tags) as run:
                run.log_metrics(values, step=0)
            rows.append(
                {"method": method, "seed": seed, "r2": r2, **{f"r2_dim{i}": v for i, v in enumerate(per_dim)}}
            )
    table = pd.DataFrame(rows)
    metrics = {
        "r2": {m: _summary(list(g["r2"])) for m, g in table.groupby("method")},
        "clips": len(clips),
        "episodes": len(set(keys)),
        "clip_split": split_used,
        "seeds": list(cfg.seeds),
        "skipped": skipped,
        "seconds": round(time.perf_counter() - start, 2),
    }
    fig = plots.points_per_method(
        table, "r2", "R² (test episodes)", "Latent-action probe: latent → true action"
    )
    write_outputs(out, metrics_path, metrics, table, "probe", {"probe_r2": fig})
    return metrics


# ---- controllability ------------------------------------------------------------------------------------


def clip_windows(clips: list[Clip], length: int, limit: int) -> np.ndarray:
    """Up to `limit` non-overlapping windows of `length` frames, clip by clip: uint8 [N, length, 64, 64, 3]"""
    picks = [c.frames[s : s + length] for c in clips for s in range(0, len(c.frames) - length + 1, length)]
    return np.stack(picks[:limit])


def controllability_stage(
    params: config.Params, checkpoints, shards, out: str | Path, metrics_path: str | None = None
):
    """ΔPSNR per horizon per method and seed (seeds: which clip lends its latent actions to which)."""
    from prelar.evaluate import plots, prediction
    from prelar.evaluate.report import delta_psnr_metric

    start = time.perf_counter()
    cfg, dev, out = params.evaluate, evaluation_device(params), Path(out)
    loaded = load_checkpoints(checkpoints, dev)
    models = latent_action_models(loaded, "controllability")
    skipped = {str(p): "action-free: no latent actions" for m, p, model in loaded if model.cfg.action_free}
    length = prediction.CONTEXT + prediction.HORIZON
    # held-out clips when they give 2 windows (one clip lends its latent actions to another), else all
    clips, split_used = evaluation_clips(shards, params, cfg.controllability_windows, 2, min_frames=length)
    frames = clip_windows(clips, length, cfg.controllability_windows)  # [N, T, 64, 64, 3]
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
                result = prediction.controllability(model, frames[order])  # tensors [H]
            result = {k: v.float().cpu().numpy() for k, v in result.items()}
            tags = {
                "checkpoint": str(path),
                "device": dev.type,
                "clip_split": split_used,
                **_data_tags(shards),
            }
            with mlflow_run(params, "controllability", method, seed, tags) as run:
                for k, delta in enumerate(result["delta_psnr"], start=1):
                    run.log_metrics({delta_psnr_metric(k): delta}, step=k)
                run.log_metrics({"controllability/delta_psnr_mean": result["delta_psnr"].mean()}, step=0)
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
    """The Meta-world source of the downstream episodes (`exclude=[]`: downstream tasks are the point).

    Fails naming `evaluate.transfer_tasks` for an unknown task or one that pre-training also renders, and
    `evaluate.transfer_max_steps` for episodes too short for a segment or an open-loop window.
    """
    from prelar.data.metaworld import selected_tasks
    from prelar.envs.metaworld import validate_task
    from prelar.evaluate.transfer import WINDOW

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
    need = max(WINDOW, cfg.transfer_segment_length)
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
        action_noise=cfg.transfer_action_noise,
        seed=cfg.transfer_seed,
        fast_render=params.finetune.fast_render,
        out=str(out),
    )


def transfer_data_stage(params: config.Params, out: str | Path, metrics_path: str | None = None):
    """Render the downstream episodes through `prelar.data.ingest` into shards at `out`."""
    from prelar.data import metaworld
    from prelar.data.ingest import ingest
    from prelar.evaluate.transfer import WINDOW

    source_cfg = transfer_source(params, out)
    need = max(WINDOW, params.evaluate.transfer_segment_length)
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
    from prelar.evaluate.report import transfer_metric

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
            copy = offline.copy_last_mse(offline.windows(test, cfg.transfer_eval_windows))  # [B, H]
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
                pretrained, _ = load_pretrained(method, path, params.model)
                if pretrained is not None:
                    pretrained.to(dev)
                curve = offline.transfer(method, pretrained, params, train, test, seed, progress=bar.update)
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
                    for point in points:
                        k = point["updates"]
                        values = {transfer_metric(k): point["mse"], f"transfer/psnr_k{k}": point["psnr"]}
                        run.log_metrics({**values, f"transfer/train_mse_k{k}": point["train_mse"]}, step=k)
                    if curve.losses:
                        run.log_metrics({"transfer/final_loss": curve.losses[-1]}, step=grid[-1])
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
