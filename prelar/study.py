"""`prelar study`: when do world models beat copying the last frame, and when do latent actions become
informative? Every run of `study.runs` x `study.seeds` is pre-trained for `study.steps` updates with a
learning-curve point (`prelar.evaluate.curves`) every `study.curve_every`, on the study's own shards
(`data.metaworld` with the values of `study.data`, rendered by `prelar ingest metaworld --study`), into
`study.out/<run>/seed<seed>` and MLflow experiment `study.experiment`; a run already complete is not trained
again (its checkpoint is resumed, so an interrupted study continues where it stopped). Then, in `study.docs`:

- `learning_curves.png`: the report's learning-curve panels, a colour per run: seeds thin, their mean thick;
- `curves.csv`: every point (run, seed, step, frames, measurements);
- `summary.csv`: per run and seed, the first update (and frames seen) whose open-loop MSE beats
  copy-last-frame, the first whose probe R² reaches 0.5, and the final measurements;
- `summary.md` / `summary.json` (the DVC metrics): the same per run, as the mean and its 95% interval over
  seeds, beside their yardsticks (for the probe, also the same probe on one-step pixel differences: how
  much of the action a linear read-out of the raw motion recovers; and on the inverse dynamics encoder
  trained with the true actions of the pre-training clips: the ceiling), beside a world model trained with
  the true actions (`true_action_model`), and each run minus PreLAR, seed by seed;
- `transfer.csv`, `transfer.png` and a section of `summary.md` / `summary.json`: every run's checkpoint
  fine-tuned offline on downstream episodes (`offline_transfer`), beside DreamerV2 from scratch and copying
  the last frame, seed by seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prelar import config
from prelar import metrics as names
from prelar.evaluate.probe import (
    HAND_MOTION,
    PIXELS,
    SUPERVISED,
    TARGET_NAMES,
    hand_motion_probe,
    pixel_difference_probe,
    probe_clips,
    probe_fit_clips,
    supervised_probe,
)
from prelar.over_seeds import (
    cell,
    differences_json,
    estimate,
    interval,
    json_value,
    markdown,
    paired_differences,
)

PROBE_TARGET = 0.5  # "informative": the probe explains half of the true action's variance
PROBE_MARGIN = 0.3  # and by this much more than the untrained encoder's probe (the second bar)
REFERENCE = "prelar"  # the run every other run is compared with, seed by seed
SCRATCH = "scratch"  # the offline transfer's run without pre-training: DreamerV2 from a fresh initialisation
COMPARED = ("pred_mse_ratio", "delta_psnr", "probe_r2", "kl_action")  # final measurements compared
# the columns of offline_transfer's rows
TRANSFER_COLUMNS = ["run", "seed", "updates", "mse", "psnr", "train_mse", "copy_last_mse"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shards", nargs="+", default=None, help="shard folder(s) (default: the study's, study.data.out)"
    )
    parser.add_argument("--runs", nargs="+", default=None, help="only these runs of study.runs")
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="train no run: redraw the figure and tables from the runs on disk (the yardsticks from labels "
        "are still measured: the probe's ceiling always, the true-action model and each run's offline "
        "transfer unless kept)",
    )


def run_params(params: config.Params, name: str, seed: int) -> config.Params:
    """The parameters of one study run: its variant's and its own `model`, `loader` and `pretrain` values,
    the study's length and curve spacing, its seed and MLflow experiment."""
    from prelar.pretrain import variant_updates

    study = params.study
    spec = study.runs[name]
    return config.override(
        params,
        {
            **variant_updates(params, spec.variant),
            **{f"model.{k}": v for k, v in spec.model.items()},
            **{f"loader.{k}": v for k, v in spec.loader.items()},
            **{f"pretrain.{k}": v for k, v in spec.pretrain.items()},
            "pretrain.steps": study.steps,
            "pretrain.curve_every": study.curve_every,
            "seed": seed,
            "mlflow.experiment": study.experiment,
        },
    )


def run_folder(params: config.Params, name: str, seed: int) -> Path:
    return Path(params.study.out) / name / f"seed{seed}"


def study_shards(params: config.Params, args: argparse.Namespace) -> list[str]:
    """The shard folders the study trains and probes on: `--shards`, else the study's own (which must have
    been rendered: a ConfigError naming the command that renders them)."""
    if args.shards:
        return args.shards
    out = params.study.source(params.data.metaworld).out
    if not (Path(out) / "manifest.parquet").exists():
        raise config.ConfigError(
            f"{out}: the study's shards are missing; render them with `prelar ingest metaworld --study` "
            "(or `dvc repro pipelines/study/dvc.yaml`), or pass --shards"
        )
    return [out]


def run(params: config.Params, args: argparse.Namespace) -> int:
    study = params.study
    names_ = args.runs or list(study.runs)
    unknown = sorted(set(names_) - set(study.runs))
    if unknown:
        raise config.ConfigError(f"--runs: {unknown} are not runs of study.runs ({sorted(study.runs)})")
    shards = study_shards(params, args)  # trained on (unless --summary-only), and the yardsticks'
    if not args.summary_only:
        from prelar.pretrain import pretrain

        for seed in study.seeds:  # every run of seed 0 first: a short study still compares all runs
            for name in names_:
                print(f"study: {name} seed {seed}", flush=True)
                pretrain(
                    run_params(params, name, seed),
                    shards,
                    run_folder(params, name, seed),
                    run_name=f"study/{name}/seed{seed}",
                    variant=study.runs[name].variant,
                )
    points = collect(params, names_)
    yardsticks = probe_yardsticks(params, shards, points)
    true_actions = true_action_model(params, shards)
    written = write_summary(
        points, Path(study.docs), yardsticks, true_actions, offline_transfer(params, names_),
        params.evaluate.probe_fit,
        params.evaluate.probe_target,
    )
    print(f"study: {', '.join(str(p) for p in written)}")
    return 0


def probe_yardsticks(params: config.Params, shards: list[str], points: pd.DataFrame) -> dict[str, float]:
    """The probe's yardsticks on the study's probe clips and splits, mean R² over `evaluate.seeds`: the
    ridge probe on one-step pixel differences (`PIXELS`, no model) and on an inverse dynamics encoder fit
    to the probe's target (`evaluate.probe_target`) of the pre-training clips (`SUPERVISED`, the ceiling;
    `study.supervised_*`), the ridge fit as `evaluate.probe_fit` says; with the action as target and clips
    that store the end effector, also on the true hand motion (`HAND_MOTION`, from the simulator). A
    ConfigError when the runs' curve `points` fit their probes otherwise (their `probe_fit_clips`; none in
    curves from before it was recorded: `held_out`) or read another target (before it was recorded: `action`).
    """
    from prelar.data.shards import iter_clips
    from prelar.device import resolve_device

    study, cfg = params.study, params.evaluate
    clips, split = probe_clips(shards, params)
    fit_clips = probe_fit_clips(shards, params, clips, split)
    probed = points[points["probe_r2"].notna()] if "probe_r2" in points else points.iloc[:0]
    runs_fit = set(probed.get("probe_fit_clips", pd.Series(0.0, index=probed.index)).fillna(0).astype(int))
    if runs_fit - {len(fit_clips)}:
        raise config.ConfigError(
            f"the runs' probes fit on {sorted(runs_fit)} pre-training clips, the yardsticks' would fit on "
            f"{len(fit_clips)} (evaluate.probe_fit={cfg.probe_fit}): summarise with the evaluate.probe_fit "
            "the runs were trained with (curves that mix two fits, from a run resumed with another one, "
            "need that run trained again)"
        )
    targets = set(probed.get("probe_target", pd.Series("action", index=probed.index)).fillna("action"))
    if targets - {cfg.probe_target}:
        raise config.ConfigError(
            f"the runs' probes read {sorted(targets)}, the yardsticks would read {cfg.probe_target!r}: "
            "summarise with the evaluate.probe_target the runs were trained with"
        )
    train = list(iter_clips(shards, split="train", holdout_fraction=params.loader.holdout_fraction))
    rows = pixel_difference_probe(clips, cfg, fit_clips) + supervised_probe(
        train, clips, cfg, params.model, study.supervised_updates, study.supervised_batch_size,
        study.supervised_lr, resolve_device(cfg.device), fit_clips,
    )
    if cfg.probe_target == "action" and all(c.hand is not None for c in clips + fit_clips):
        rows += hand_motion_probe(clips, cfg, fit_clips)
    elif cfg.probe_target == "action":
        print("study: no true-hand-motion yardstick (shards from before hand.npy was stored)", flush=True)
    methods = dict.fromkeys(r["method"] for r in rows)
    return {method: float(np.mean([r["r2"] for r in rows if r["method"] == method])) for method in methods}


def true_action_model(params: config.Params, shards: list[str]) -> dict[str, Any] | None:
    """The prediction's yardstick from labels: what a world model of the same sizes does with the *true*
    action. DreamerV2's (the `dreamerv2` method's fine-tuning model: real actions into the RSSM, Eq. 11 with
    the reward heads) is trained from scratch on the pre-training clips with their actions and rewards, for
    `study.true_action_updates` updates of the pre-training batch shape (`loader`), by the offline transfer's
    loop (seed `seed`); then measured on the learning curves' own held-out windows (`curves.held_out_clips`)
    as they measure the runs: open-loop MSE beside copy-last-frame, and ΔPSNR with each window's own vs
    another window's true actions.

    The result is kept in `<study.out>/true_actions/seed<seed>.json` with the settings it was measured
    with, and measured again only when they change (a run takes as long as a study run). None when
    `study.true_action_updates` is 0."""
    study, loader, ev = params.study, params.loader, params.evaluate
    if study.true_action_updates == 0:
        print("study: no true-action world model (study.true_action_updates is 0)", flush=True)
        return None
    import torch
    from tqdm import tqdm

    from prelar.agent.model import ACTION_DIM
    from prelar.data.shards import iter_clips
    from prelar.evaluate import curves
    from prelar.evaluate import transfer as offline
    from prelar.evaluate.prediction import copy_last_frame_mse, real_action_prediction

    settings = {
        "shards": [str(s) for s in shards], "data": study.data, "seed": params.seed,
        "updates": study.true_action_updates, "batch": [loader.batch_size, loader.segment_length],
        "holdout_fraction": loader.holdout_fraction, "eval_clips": params.pretrain.eval_clips,
        "window": [ev.context, ev.horizon], "precision": ev.precision, "model": params.model.model_dump(),
        "finetune": params.finetune.model_dump(),
    }  # fmt: skip
    path = Path(study.out) / "true_actions" / f"seed{params.seed}.json"
    if (measured := _kept(path, settings)) is not None:
        return measured

    def episodes(clips) -> list:
        try:
            return [offline.to_episode(c) for c in clips]
        except ValueError as err:  # no actions or rewards
            raise config.ConfigError(f"{shards}: {err} (render Meta-world shards)") from None

    train = episodes(iter_clips(shards, split="train", holdout_fraction=loader.holdout_fraction))
    held_out = episodes(curves.held_out_clips(shards, params))
    if not train or not held_out:
        raise config.ConfigError(
            f"{shards}: the true-action world model needs training and held-out clips "
            f"(loader.holdout_fraction={loader.holdout_fraction}, "
            f"pretrain.eval_clips={params.pretrain.eval_clips})"
        )
    if train[0].actions.shape[1] != ACTION_DIM:
        raise config.ConfigError(
            f"{shards}: actions of {train[0].actions.shape[1]} dims; the true-action world model is "
            f"DreamerV2's for Meta-world ({ACTION_DIM}-d actions)"
        )
    frames = torch.from_numpy(np.stack([e.frames[: ev.window] for e in held_out]))  # [B, W, 3, 64, 64]
    actions = torch.from_numpy(np.stack([e.actions[: ev.window] for e in held_out]))  # [B, W, A]
    fit_params = config.override(params, {
        "evaluate.transfer_updates": [study.true_action_updates],
        "evaluate.transfer_batch_size": loader.batch_size,
        "evaluate.transfer_segment_length": loader.segment_length,
    })  # fmt: skip
    measured: dict[str, Any] = {}

    def measure(k: int, model) -> None:
        measured.update(real_action_prediction(model, frames, actions, ev.context))

    updates = study.true_action_updates
    with tqdm(total=updates, desc="true-action world model", unit="update", mininterval=10) as bar:
        offline.transfer("dreamerv2", None, fit_params, train, held_out, params.seed, bar.update, measure)
    copy_last = float(copy_last_frame_mse(frames, ev.context).mean())
    measured.update(
        pred_copy_last_frame_mse=copy_last, pred_mse_ratio=measured["pred_mse"] / copy_last, updates=updates,
        windows=len(frames),
    )  # fmt: skip
    _keep(path, settings, measured)
    return measured


def _kept(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The measurement kept at `path` if it was measured with `settings`, else None."""
    if path.exists() and (kept := json.loads(path.read_text()))["settings"] == settings:
        return kept["measured"]
    return None


def _keep(path: Path, settings: dict[str, Any], measured: dict[str, Any]) -> None:
    """Keep `measured` at `path` with the `settings` it was measured with (`_kept` reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "measured": measured}, indent=1) + "\n")
    tmp.replace(path)  # never a half-written result file


def transfer_params(params: config.Params) -> config.Params:
    """`params` for the study's offline transfer: `evaluate`'s transfer with `study.transfer_updates` and
    `study.transfer_episodes`, its downstream episodes at the action repeat of the study's data (the
    fine-tuning env's, `finetune.action_repeat`, is what `transfer_source` renders them at), held out of
    the study's pre-training tasks (`data.metaworld` set to the study's source)."""
    study = params.study
    source = study.source(params.data.metaworld)
    return config.override(params, {
        "evaluate.transfer_updates": study.transfer_updates,
        "evaluate.transfer_episodes": study.transfer_episodes,
        "finetune.action_repeat": source.action_repeat,
        "data.metaworld": source.model_dump(),
    })  # fmt: skip


def _downstream(params: config.Params) -> dict[str, Any]:
    """What the downstream episodes of `params` (`transfer_params`) are rendered from: their source and
    frame size."""
    from prelar.evaluate.stages import transfer_source

    source = transfer_source(params, "").model_dump(mode="json", exclude={"out"})
    return {"source": source, "size": params.data.shards.size}


def downstream_shards(params: config.Params) -> Path:
    """The downstream episodes of `params` (`transfer_params`) in `<study.out>/downstream`, rendered (by the
    `prelar evaluate transfer-data` stage's code) unless the folder holds those of the same `_downstream`."""
    from prelar.evaluate.stages import transfer_data_stage

    out = Path(params.study.out) / "downstream"
    record, rendered = out / "rendered_from.json", _downstream(params)
    if not record.exists() or json.loads(record.read_text()) != rendered:
        print(f"study: rendering the downstream episodes into {out}", flush=True)
        transfer_data_stage(params, out)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(rendered, indent=1) + "\n")
        tmp.replace(record)
    return out


def offline_transfer(params: config.Params, runs: list[str]) -> pd.DataFrame:
    """The offline transfer (`prelar.evaluate.transfer`, `transfer_params`) of the checkpoint of every run of
    `runs` x `study.seeds` that completed its `study.steps` (an unfinished or missing one is skipped and
    said), and of DreamerV2 from scratch (`SCRATCH`) for each of their seeds. The transfer's seed is the
    run's: a run and scratch of one seed are scored on the same held-out episodes and fine-tuned on the same
    batches. Rows: run, seed, updates (K), mse and psnr on the held-out windows, train_mse on the fine-tuning
    episodes' windows, copy_last_mse (the yardstick on the held-out windows). MLflow: a run per transfer in
    `study.experiment`, named `study/<run>/seed<seed>/transfer`.

    Each result is kept in `<run folder>/transfer/<digest of its settings>.json` (scratch's run folder:
    `<study.out>/scratch/seed<seed>`) with its settings, the checkpoint's digest among them, so that
    transfers with other settings (a longer K grid) are kept beside it, not measured again."""
    import hashlib

    from tqdm import tqdm

    from prelar import checkpoint as checkpoints
    from prelar import methods as registry
    from prelar import tracking
    from prelar.agent.model import load_pretrained
    from prelar.data.shards import iter_clips
    from prelar.evaluate import transfer as offline

    study = params.study
    if SCRATCH in runs:
        raise config.ConfigError(
            f"study.runs: '{SCRATCH}' names the offline transfer's run from scratch; rename it"
        )
    if not study.transfer_updates:
        print("study: no offline transfer (study.transfer_updates is empty)", flush=True)
        return pd.DataFrame(columns=TRANSFER_COLUMNS)
    tparams = transfer_params(params)
    ev = tparams.evaluate
    jobs: list[tuple[str, int, Path | None]] = []
    for seed in study.seeds:  # seed by seed: an interrupted transfer has whole seeds to compare
        found = []
        for name in runs:
            path = run_folder(params, name, seed) / "checkpoint.pt"
            if not path.exists():
                why = f"no checkpoint at {path} (run `prelar study --runs {name}` to pre-train it)"
            elif (step := checkpoints.load(path)["step"]) < study.steps:
                why = f"its checkpoint is at update {step} of {study.steps} (run `prelar study` to finish it)"
            else:
                found.append((name, seed, path))
                continue
            print(f"study: no offline transfer of {name} seed {seed}: {why}", flush=True)
        jobs += found + [(SCRATCH, seed, None)] * bool(found)
    common = {
        **_downstream(tparams),
        "evaluate": ev.model_dump(include={
            "precision", "context", "horizon", "transfer_updates", "transfer_batch_size",
            "transfer_segment_length", "transfer_test_fraction", "transfer_eval_windows",
        }),
        "finetune": tparams.finetune.model_dump(), "model": params.model.model_dump(),
    }  # fmt: skip
    results, todo = {}, []
    for name, seed, path in jobs:
        folder = Path(study.out) / SCRATCH / f"seed{seed}" if path is None else path.parent
        digest = None if path is None else checkpoints.digest(path)
        settings = {**common, "seed": seed, "checkpoint_md5": digest}
        key = hashlib.md5(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        if (kept := _kept(folder / "transfer" / f"{key}.json", settings)) is not None:
            results[name, seed] = kept
        else:
            todo.append((name, seed, path, folder / "transfer" / f"{key}.json", settings, key))
    if todo:
        data = downstream_shards(tparams)
        clips = [c for c in iter_clips(data) if c.actions is not None and c.rewards is not None]
        grid = max(ev.transfer_updates)
        bar = tqdm(total=len(todo) * grid, desc="study: offline transfer", unit="update", mininterval=10)
        with bar:
            for name, seed, path, kept, settings, key in todo:
                if path is None:
                    method, job = registry.SCRATCH.name, config.override(tparams, {"seed": seed})
                else:  # the run's own parameters (its model values) with the transfer's
                    method = registry.finetuned_by(study.runs[name].variant).name
                    job = transfer_params(run_params(params, name, seed))
                pretrained, _ = load_pretrained(method, path, job.model)
                train, test = offline.split(clips, ev.transfer_test_fraction, seed)
                tags = {names.TAG_STAGE: "transfer", names.TAG_METHOD: method, names.TAG_SEED: str(seed)}
                tags.update({names.TAG_STUDY_RUN: name, names.TAG_SETTINGS: key})
                logged = config.override(job, {"mlflow.experiment": study.experiment})
                with tracking.stage_run(logged, f"study/{name}/seed{seed}/transfer", tags) as mlflow_run:
                    curve = offline.transfer(method, pretrained, job, train, test, seed, bar.update)
                    for k, values in curve.logged():
                        mlflow_run.log_metrics(values, step=k)
                measured = {
                    "updates": curve.updates, "mse": curve.mse, "psnr": curve.psnr,
                    "train_mse": curve.train_mse,
                    "copy_last_mse": float(offline.copy_last(test, ev).mean()),
                    "episodes": [len(train), len(test)],
                    "updates_per_s": grid / max(curve.update_seconds, 1e-9),
                }  # fmt: skip
                _keep(kept, settings, measured)
                results[name, seed] = measured
    rows = [
        {"run": name, "seed": seed, "updates": k, "mse": mse, "psnr": db, "train_mse": fit,
         "copy_last_mse": m["copy_last_mse"]}
        for name, seed, _ in jobs  # the runs' order, scratch after them, seed by seed
        for m in [results[name, seed]]
        for k, mse, db, fit in zip(m["updates"], m["mse"], m["psnr"], m["train_mse"], strict=True)
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=TRANSFER_COLUMNS)


def collect(params: config.Params, runs: list[str]) -> pd.DataFrame:
    """Every curve point of the runs on disk: run, seed, step, frames, then the measurements."""
    from prelar.evaluate import curves

    tables = []
    for name in runs:
        for seed in params.study.seeds:
            path = run_folder(params, name, seed) / curves.CSV
            if path.exists():
                tables.append(pd.read_csv(path).assign(run=name, seed=seed))
    if not tables:
        raise config.ConfigError(
            f"no learning curves under {params.study.out}/<run>/seed<seed>/{curves.CSV}: "
            "run `prelar study` first"
        )
    table = pd.concat(tables, ignore_index=True)
    return table[["run", "seed", *[c for c in table.columns if c not in ("run", "seed")]]]


def _first(frame: pd.DataFrame, passed: pd.Series) -> tuple[float, float]:
    """(update, frames) of the first point where `passed`, or (inf, inf): not within the run."""
    hits = frame[passed.fillna(False).astype(bool)]
    if hits.empty:
        return float("inf"), float("inf")
    return float(hits["step"].iloc[0]), float(hits["frames"].iloc[0])


def summarize(points: pd.DataFrame) -> pd.DataFrame:
    """One row per run and seed: first updates past the yardsticks, final measurements."""
    rows = []
    for (name, seed), frame in points.groupby(["run", "seed"], sort=False):
        frame = frame.sort_values("step")
        last = frame.iloc[-1]
        row: dict[str, Any] = {
            "run": name,
            "seed": seed,
            "updates": int(last["step"]),
            "frames": int(last["frames"]),
        }
        if "pred_mse_ratio" in frame and frame["pred_mse_ratio"].notna().any():
            row["beats_copy_last_at"], row["beats_copy_last_frames"] = _first(
                frame, frame["pred_mse_ratio"] < 1
            )
        if "probe_r2" in frame and frame["probe_r2"].notna().any():  # (not for APV: no latent actions)
            row["probe_r2_0.5_at"], _ = _first(frame, frame["probe_r2"] >= PROBE_TARGET)
            if "probe_r2_untrained" in frame:
                margin = frame["probe_r2"] - frame["probe_r2_untrained"]
                row["probe_margin_0.3_at"], _ = _first(frame, margin >= PROBE_MARGIN)
        for key in (
            "pred_mse",
            "pred_copy_last_frame_mse",
            "pred_mse_ratio",
            "probe_r2",
            "probe_r2_untrained",
            "delta_psnr",
            "kl_action",
            "kl_dyn",
            "consistency_agreement",
        ):
            if key in frame:
                row[key] = float(last[key])
        rows.append(row)
    return pd.DataFrame(rows)


def differences(per_seed: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each run minus `reference`, paired by seed (the same seed: the same batches, and the same
    initialisation of the modules they share) among seeds run for as many updates, on the final COMPARED
    measurements (`over_seeds.paired_differences`)."""
    return paired_differences(per_seed, "run", reference, "updates", COMPARED)


def transfer_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run and seed of the offline transfer (`offline_transfer`'s rows): at each K the held-out
    MSE over scratch's of the same seed and K (`vs_scratch_k<K>`), and the MSE (`mse_k<K>`); at the last K,
    the MSE over copying the last frame on the same windows (`vs_copy_last`) and the PSNR (`psnr`)."""
    scratch = rows[rows["run"] == SCRATCH].set_index(["seed", "updates"])["mse"]
    table = []
    for (name, seed), frame in rows.groupby(["run", "seed"], sort=False):
        frame = frame.set_index("updates").sort_index()
        row: dict[str, Any] = {"run": name, "seed": seed, "updates": int(frame.index[-1])}
        if name != SCRATCH:  # (pandas divides: a ratio to 0 is inf, no warning; NaN below)
            base = scratch.reindex(pd.MultiIndex.from_product([[seed], frame.index])).to_numpy()
            ratio = frame["mse"] / pd.Series(base, index=frame.index)
            row.update({f"vs_scratch_k{k}": value for k, value in ratio.items()})
        row.update({f"mse_k{k}": mse for k, mse in frame["mse"].items()})
        row.update(
            vs_copy_last=(frame["mse"] / frame["copy_last_mse"]).iloc[-1], psnr=frame["psnr"].iloc[-1]
        )
        table.append(row)
    return pd.DataFrame(table).replace([np.inf, -np.inf], np.nan)  # a ratio to 0, a diverged fit: no value


def _copy_last(rows: pd.DataFrame) -> float:
    """Copying the last frame's MSE on the held-out windows, the mean over seeds (each seed its split)."""
    return float(rows.groupby("seed")["copy_last_mse"].first().mean())


def _transfer_figure(rows: pd.DataFrame):
    """Held-out MSE against K per run (log scale): the mean over seeds with its 95% interval, copying the
    last frame as the dashed yardstick."""
    from prelar.evaluate import plots

    spread = [
        dict(zip(("mse", "low", "high"), interval(frame["mse"]), strict=True), method=name, updates=k)
        for (name, k), frame in rows.groupby(["run", "updates"])
    ]
    figure = plots.band_panels(
        pd.DataFrame(spread), "updates", "mse", None, "offline fine-tuning updates K",
        "open-loop MSE (held-out episodes)",
        "Offline transfer of each run (mean, 95% interval over seeds; dashed: copy last frame)",
        yardsticks={None: _copy_last(rows)},
    )  # fmt: skip
    figure.axes[0].set_yscale("log")  # scratch starts ~10x above the pre-trained runs
    return figure


def _over_seeds(
    per_seed: pd.DataFrame, columns: list[str], compared: pd.DataFrame, compared_columns: tuple[str, ...]
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The Markdown tables and the metrics JSON of per-seed rows: per run, each of `columns` over its seeds
    (`cell`, the seeds listed); `compared` (each run minus `REFERENCE`, `paired_differences`) as cells of
    `compared_columns`, runs in the first table's order; per run {seeds, column: `json_value`}."""
    grouped = per_seed.groupby("run", sort=False)
    table = grouped[columns].agg(cell).reset_index()
    table.insert(1, "seeds", grouped["seed"].agg(lambda s: ",".join(str(v) for v in sorted(s))).to_numpy())
    cells = [estimate(row.mean, row.low, row.high, row.seeds) for row in compared.itertuples()]
    versus = compared.assign(difference=cells).pivot(index="run", columns="measurement", values="difference")
    order = [name for name in table["run"] if name in versus.index]
    versus = versus.reindex(index=order, columns=[c for c in compared_columns if c in versus]).fillna("—")
    runs = {name: {"seeds": len(f), **{c: json_value(f[c]) for c in columns}} for name, f in grouped}
    return table, versus, runs


def _transfer_section(rows: pd.DataFrame) -> tuple[str, dict[str, Any]]:
    """The offline transfer's part of summary.md and summary.json (`transfer_summary` over seeds)."""
    per_seed = transfer_summary(rows)
    columns = [c for c in per_seed.columns if c not in ("run", "seed", "updates")]
    compared = paired_differences(per_seed, "run", REFERENCE, "updates", tuple(columns))
    table, versus, runs = _over_seeds(per_seed, columns, compared, tuple(columns))
    copy_last = _copy_last(rows)
    text = (
        "## Offline transfer\n\n"
        "Each run's checkpoint fine-tuned offline on downstream episodes (tasks held out of pre-training, "
        "with their actions and rewards, Eq. 11), and DreamerV2 from scratch (`scratch`), seed by seed (the "
        "same held-out episodes and batches); then the open-loop MSE on held-out windows after K updates. "
        "`vs_scratch_k<K>`: MSE over scratch's of the same seed and K (< 1: pre-training helps); "
        "`vs_copy_last`: MSE over copying the last context frame at the last K (< 1 beats it); "
        f"copying the last frame: MSE {copy_last:.5f}. Mean over seeds [95% Student-t interval].\n\n"
        + markdown(table)
    )
    if len(versus):
        text += f"\n\nEach run minus `{REFERENCE}`, seed by seed.\n\n" + markdown(versus.reset_index())
    metrics = {"runs": runs, f"minus_{REFERENCE}": differences_json(compared, "run")}
    return text, {**metrics, "copy_last_frame_mse": copy_last}


def _true_action_text(true_actions: dict[str, Any] | None) -> str:
    if true_actions is None:
        return "The prediction's yardstick from labels: not measured (`study.true_action_updates` is 0).\n\n"
    return (
        "The prediction's yardstick from labels (not in the papers): DreamerV2's world model of the same "
        "sizes trained from scratch with the true actions of the pre-training clips for "
        f"{true_actions['updates']:,} updates, on {true_actions['windows']} windows of the held-out clips: "
        f"open-loop MSE / copy-last-frame {true_actions['pred_mse_ratio']:.3f} "
        f"({true_actions['pred_mse']:.5f} vs {true_actions['pred_copy_last_frame_mse']:.5f}), ΔPSNR with its "
        f"own vs another window's true actions {true_actions['delta_psnr']:.3f} dB.\n\n"
    )


def learning_figure(points: pd.DataFrame):
    """The study's learning-curve figure (the report's panels, `names.CURVE_PANELS`) of `collect`'s points
    (or a study's `curves.csv`): one colour per run, its seeds and their mean (`plots.histories`). Its x-axis
    is updates, or frames seen where the runs see different numbers of frames per update (a larger batch):
    then a point of one run lines up with the points of the others that have seen as many frames."""
    from prelar.evaluate import plots

    trained = points[points["step"] > 0]
    by_frames = (trained["frames"] / trained["step"]).nunique() > 1
    x_label = "frames seen (thousands)" if by_frames else "update"
    points = points.assign(step=points["frames"] / 1000) if by_frames else points
    measured = [c for c in points.columns if c not in ("run", "seed", "step", "frames")]
    long = points.melt(id_vars=["run", "seed", "step"], value_vars=measured, var_name="metric")
    long = long.dropna(subset=["value"]).rename(columns={"run": "method"})
    long["metric"] = names.CURVE_PREFIX + long["metric"]
    title = "Pre-training study: learning curves, held-out clips"
    return plots.histories(long, title, names.CURVE_PANELS, x_label)


def write_summary(
    points: pd.DataFrame,
    docs: Path,
    yardsticks: dict[str, float],
    true_actions: dict[str, Any] | None,
    transfer: pd.DataFrame,
    probe_fit: str = "held_out",
    probe_target: str = "action",
) -> list[Path]:
    """The study's figure and tables in `docs`, with the probe's yardsticks from the data (method → R²,
    `probe_yardsticks`: same clips and splits), the true-action world model (`true_action_model`; none
    written when None) and the offline transfer (`offline_transfer`'s rows; none written when empty), saying
    how the probe's ridge was fit (`probe_fit`: `evaluate.probe_fit`) and what it reads (`probe_target`:
    `evaluate.probe_target`); returns their paths."""
    from prelar.evaluate import plots

    docs.mkdir(parents=True, exist_ok=True)
    per_seed = summarize(points)
    paths = [docs / name for name in ("learning_curves.png", "curves.csv", "summary.csv", "summary.md")]
    paths.append(docs / "summary.json")
    paths[0].write_bytes(plots.png_bytes(learning_figure(points)))
    points.to_csv(paths[1], index=False)
    per_seed.to_csv(paths[2], index=False)
    columns = [c for c in per_seed.columns if c not in ("run", "seed")]
    compared = differences(per_seed, REFERENCE)
    table, versus, runs = _over_seeds(per_seed, columns, compared, COMPARED)
    transfer_text, transfer_metrics = _transfer_section(transfer) if len(transfer) else ("", {})
    transfer_csv, transfer_png = docs / "transfer.csv", docs / "transfer.png"
    if transfer_text:
        transfer.to_csv(transfer_csv, index=False)
        transfer_png.write_bytes(plots.png_bytes(_transfer_figure(transfer)))
        paths += [transfer_csv, transfer_png]
    else:  # no transfer (none asked, or no run to transfer): no earlier figure or table left beside it
        transfer_csv.unlink(missing_ok=True)
        transfer_png.unlink(missing_ok=True)
    paths[3].write_text(
        "Per run: mean over its seeds [95% Student-t interval over seeds; with 2 seeds, min and max]; for a "
        'first update, "k/n seeds" when only k of n seeds got there. `beats_copy_last_at`: the first update '
        "whose open-loop MSE over the horizon is below copying the last context frame; `probe_r2_0.5_at`: "
        f"the first update whose probe R² reaches {PROBE_TARGET}; `probe_margin_0.3_at`: the first update "
        f"whose probe R² is {PROBE_MARGIN} or more above the untrained encoder's; \"never\": not within the "
        "run. Final values at the last update.\n\n"
        "The probe's yardsticks, on the same clips and episode splits"
        + (
            " (the ridge fit also on the pre-training clips, `evaluate.probe_fit: pretraining`)"
            if probe_fit == "pretraining" else ""
        )
        + (
            " (the probe reads the end effector's motion: `evaluate.probe_target: hand_motion`)"
            if probe_target == "hand_motion" else ""
        )
        + ": an untrained encoder "
        "(`probe_r2_untrained`); the same ridge probe on one-step pixel differences pooled to 16x16 "
        f"(no model): R² {yardsticks[PIXELS]:.3f}; on the same inverse dynamics encoder trained with the "
        f"{TARGET_NAMES[probe_target]} of the pre-training clips "
        "(the ceiling, not in the papers): "
        f"R² {yardsticks[SUPERVISED]:.3f}"
        + (
            f"; and on the end effector's true motion between the two frames (from the simulator, no model): "
            f"R² {yardsticks[HAND_MOTION]:.3f}"
            if HAND_MOTION in yardsticks else ""
        )
        + ".\n\n"
        + _true_action_text(true_actions)
        + markdown(table)
        + (
            f"\n\nEach run minus `{REFERENCE}`, seed by seed (the same seed: the same batches, and the same "
            "initialisation of the modules they share), at the last update: mean difference [95% Student-t "
            "interval; with 2 seeds, min and max].\n\n" + markdown(versus.reset_index())
            if len(versus)
            else ""
        )
        + (f"\n\n{transfer_text}" if transfer_text else "")
        + "\n"
    )
    summary = {
        "runs": runs,
        f"minus_{REFERENCE}": differences_json(compared, "run"),
        **{f"probe_{name}_r2": r2 if np.isfinite(r2) else None for name, r2 in yardsticks.items()},
        "probe_fit": probe_fit,
        "true_action_model": true_actions,
        **({"transfer": transfer_metrics} if transfer_text else {}),
    }
    paths[4].write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return paths
