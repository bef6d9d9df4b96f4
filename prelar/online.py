"""`prelar online`: does online RL move, and does pre-training help it? Every method of `online.methods` x
`online.seeds` is fine-tuned (`prelar.agent.finetune`) on one task with the values of `online.finetune` on
top of the `finetune` section, from the default pipeline's pre-trained checkpoints, into
`online.out/<method>/seed<seed>` and MLflow experiment `online.experiment`; so is every named run of
`online.checkpoints` (a method from another checkpoint, e.g. a study run's), into `online.out/<name>/...`.
A run already complete is not run again (an interrupted run resumes from its checkpoint). Its yardstick: a
uniformly random policy on the same evaluation episodes (every evaluation of every seed). Then, from every
complete run on disk of those runs x `online.seeds` (a run folder that ran with other parameters is an
error; unfinished runs are left out and listed), in `online.docs` (a run is a row named as in the config):

- `success_curves.png`: success rate and return against env steps, the mean over seeds with its 95%
  interval per method, the random policy as a grey line;
- `curves.csv`: every evaluation (method, seed, env_step, success, return);
- `summary.md` / `summary.json` (the DVC metrics): per method, the first env step with non-zero success,
  the final and the mean (over evaluations) success and return, as the mean and its 95% interval over
  seeds; each method minus `dreamerv2`, seed by seed (the same seed: the same evaluation episodes).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from prelar import config, seeding
from prelar.over_seeds import (
    cell,
    differences_json,
    estimate,
    interval,
    json_value,
    markdown,
    paired_differences,
)

if TYPE_CHECKING:
    from prelar.agent.replay import Episode

REFERENCE = "dreamerv2"  # the method every other is compared with, seed by seed: no pre-training
MEASURED = ("final_success", "mean_success", "final_return", "mean_return", "delta_psnr")
RATE = (0.0, 1.0)  # a success rate's range: its intervals are clipped to it
BOUNDS = {"final_success": RATE, "mean_success": RATE}
RANDOM_ACTIONS = 4  # seed stream of the random policy's actions (finetune's streams are 0-3)
# finetune parameters that do not change what a run learns or how it is evaluated
# (pretrained: compared by what the file holds, `finetune.other_pretrained`)
UNCOMPARED = {"out", "log_every", "checkpoint_every", "device", "video_fps", "pretrained", "env_steps"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="run only these of online.methods and online.checkpoints (the summary: all)",
    )
    parser.add_argument(
        "--summary-only", action="store_true", help="only redraw the figure and tables from the runs on disk"
    )


def run_params(params: config.Params, name: str, seed: int) -> config.Params:
    """The parameters of run `name` (a method of `online.methods` or a run of `online.checkpoints`):
    `online.finetune` on top of `finetune`, its method, seed, MLflow experiment, and its pre-trained
    checkpoint (the method's default one for a method)."""
    from prelar.agent.finetune import with_pretrained

    updates = {f"finetune.{k}": v for k, v in params.online.finetune.items()}
    spec = params.online.checkpoints.get(name)
    updates.update({
        "finetune.method": spec.method if spec else name,
        "finetune.seed": seed,
        "mlflow.experiment": params.online.experiment,
    })
    if spec:
        updates["finetune.pretrained"] = spec.pretrained
    return with_pretrained(config.override(params, updates))


def run_folder(params: config.Params, name: str, seed: int) -> Path:
    return Path(params.online.out) / name / f"seed{seed}"


def run(params: config.Params, args: argparse.Namespace) -> int:
    online = params.online
    chosen = args.methods or online.runs
    unknown = sorted(set(chosen) - set(online.runs))
    if unknown:
        raise config.ConfigError(
            f"--methods: {unknown} are not in online.methods or online.checkpoints ({online.runs})"
        )
    base = run_params(params, online.runs[0], online.seeds[0]).finetune
    if base.eval_every > base.env_steps:
        raise config.ConfigError(
            f"online.finetune: eval_every {base.eval_every} > env_steps {base.env_steps}: the runs would "
            "have no evaluation; lower eval_every"
        )
    windows_per_episode(base, params.evaluate)  # before hours of runs: the summary's ΔPSNR needs a window
    if not args.summary_only:
        from prelar.agent.finetune import finetune

        for seed in online.seeds:  # every method of seed 0 first: a short study still compares them all
            for method in chosen:
                print(f"online: {method} seed {seed}", flush=True)
                finetune(run_params(params, method, seed), run_folder(params, method, seed))
    curves, unfinished = collect(params)
    for folder in unfinished:
        print(f"online: {folder} is not finished (left out of the summary); run `prelar online` to finish it")
    yardstick = random_policy(base, online.seeds)
    runs = list(dict.fromkeys(zip(curves["method"], curves["seed"], strict=True)))
    sensitivity = action_sensitivity(params, runs)
    written = write_summary(curves, Path(online.docs), yardstick, base, sensitivity, unfinished)
    print(f"online: {', '.join(str(p) for p in written)}")
    return 0


def collect(params: config.Params) -> tuple[pd.DataFrame, list[str]]:
    """Every evaluation of the complete runs on disk (method, seed, env_step, success, return), up to
    `env_steps`, and the folders of unfinished runs. A run that ran with other parameters than the study's
    now is a ConfigError naming its folder."""
    from prelar import checkpoint
    from prelar.agent.finetune import CURVE, differences

    tables, unfinished = [], []
    for method in params.online.runs:
        for seed in params.online.seeds:
            folder = run_folder(params, method, seed)
            if not (folder / CURVE).exists():
                continue
            cfg = run_params(params, method, seed).finetune
            extra = checkpoint.load(folder / checkpoint.FILENAME, map_location="cpu")["extra"]
            changed = differences(extra, cfg, UNCOMPARED, ", now")
            if changed:
                raise config.ConfigError(
                    f"{folder}: ran with other parameters ({', '.join(changed)}); delete the folder to run "
                    "it again, or give online.out another folder"
                )
            curve = pd.read_csv(folder / CURVE)
            if curve.empty or curve["env_step"].max() < cfg.env_steps:
                unfinished.append(str(folder))
                continue
            tables.append(curve[curve["env_step"] <= cfg.env_steps].assign(method=method, seed=seed))
    if not tables:
        raise config.ConfigError(
            f"no complete runs under {params.online.out}/<method>/seed<seed>/{CURVE}: "
            "run `prelar online` first"
        )
    table = pd.concat(tables, ignore_index=True)
    return table[["method", "seed", "env_step", "success", "return"]], unfinished


def random_episodes(cfg: config.Finetune, seeds: list[int]) -> Iterator[Episode]:
    """Uniformly random actions on the evaluation episodes of `cfg` (every evaluation, `eval_episodes` each)
    for each of `seeds`: the episodes the agents are evaluated on, as `cfg` runs them (length, action
    repeat), in that order."""
    from prelar.agent.finetune import ACTION_DIM, EVAL_STREAM, Collector, evaluation_index

    for seed in seeds:
        seeded = cfg.model_copy(update={"seed": seed})
        rng = np.random.default_rng(seeding.mix(seed, RANDOM_ACTIONS))
        with contextlib.closing(Collector(seeded, seed_stream=EVAL_STREAM)) as collector:
            for step in range(cfg.eval_every, cfg.env_steps + 1, cfg.eval_every):
                for i in range(cfg.eval_episodes):
                    collector.reset(evaluation_index(step, i))
                    while not collector.step(rng.uniform(-1, 1, ACTION_DIM).astype(np.float32)):
                        pass
                    yield collector.episode()


def random_policy(cfg: config.Finetune, seeds: list[int]) -> dict[str, float]:
    """The yardstick: success rate and mean return of `random_episodes`."""
    successes, returns = [], []
    for episode in random_episodes(cfg, seeds):
        successes.append(float(episode.success.any()))
        returns.append(float(episode.rewards.sum()))
    return {
        "episodes": len(successes),
        "success": float(np.mean(successes)),
        "return": float(np.mean(returns)),
    }


def windows_per_episode(cfg: config.Finetune, ev: config.Evaluate) -> int:
    """Open-loop windows of `evaluate.window` frames in one episode of `cfg`; a ConfigError if none fits."""
    fit = (cfg.max_episode_steps + 1) // ev.window
    if fit == 0:
        raise config.ConfigError(
            f"online.finetune.max_episode_steps: episodes of {cfg.max_episode_steps} steps are shorter than "
            f"one open-loop window (evaluate.context + evaluate.horizon = {ev.window} frames); lower those "
            "or lengthen the episodes"
        )
    return fit


def action_sensitivity(params: config.Params, runs: list[tuple[str, int]]) -> pd.DataFrame:
    """How much each run's fine-tuned world model listens to the action: `prediction.swapped_action_psnr`
    (mean over the horizon, dB; 0 = the prediction ignores the action) of its final checkpoint on the same
    `evaluate.controllability_windows` windows of `evaluate.window` frames for every run, cut from the
    random policy's episodes of the first seed (real actions, through the method's action encoder where it
    has one). One row per run: method, seed, delta_psnr."""
    import torch

    from prelar import checkpoint
    from prelar.agent.finetune import restored_agent
    from prelar.evaluate.prediction import real_action_prediction, windows

    ev = params.evaluate
    base = run_params(params, *runs[0]).finetune
    needed = -(-ev.controllability_windows // windows_per_episode(base, ev))
    episodes = list(itertools.islice(random_episodes(base, params.online.seeds[:1]), needed))
    data = windows([vars(e) for e in episodes], ev.window, ev.controllability_windows)
    frames, actions = torch.from_numpy(data["frames"]), torch.from_numpy(data["actions"])
    rows = []
    for method, seed in runs:
        ckpt = checkpoint.load(run_folder(params, method, seed) / checkpoint.FILENAME, map_location="cpu")
        model = restored_agent(run_params(params, method, seed), ckpt, torch.device("cpu")).model
        delta = real_action_prediction(model, frames, actions, ev.context)["delta_psnr"]
        rows.append({"method": method, "seed": seed, "delta_psnr": delta})
    return pd.DataFrame(rows)


def summarize(curves: pd.DataFrame) -> pd.DataFrame:
    """One row per method and seed: env steps, the first with non-zero success (inf: none), final and mean
    success and return over its evaluations."""
    rows = []
    for (method, seed), frame in curves.groupby(["method", "seed"], sort=False):
        frame = frame.sort_values("env_step")
        hits = frame[frame["success"] > 0]
        rows.append({
            "method": method,
            "seed": seed,
            "env_steps": int(frame["env_step"].iloc[-1]),
            "first_success_at": float(hits["env_step"].iloc[0]) if len(hits) else float("inf"),
            "final_success": float(frame["success"].iloc[-1]),
            "mean_success": float(frame["success"].mean()),
            "final_return": float(frame["return"].iloc[-1]),
            "mean_return": float(frame["return"].mean()),
        })
    return pd.DataFrame(rows)


def differences(per_seed: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each method minus `reference`, paired by seed (the same seed: the same evaluation episodes) among
    seeds run for as many env steps (`over_seeds.paired_differences`), of the `MEASURED` it has."""
    measured = tuple(m for m in MEASURED if m in per_seed.columns)
    return paired_differences(per_seed, "method", reference, "env_steps", measured)


def bands(curves: pd.DataFrame) -> pd.DataFrame:
    """Per method, evaluation and measurement: the mean over seeds and its `interval` (columns method,
    env_step, measurement, value, low, high)."""
    rows = []
    for (method, step), frame in curves.groupby(["method", "env_step"], sort=True):
        for key, label, bounds in (("success", "success rate", RATE), ("return", "return", None)):
            mean, low, high = interval(frame[key], bounds)
            rows.append({"method": method, "env_step": step, "measurement": label, "value": mean,
                         "low": low, "high": high})
    return pd.DataFrame(rows)


def write_summary(
    curves: pd.DataFrame,
    docs: Path,
    yardstick: dict[str, float],
    cfg: config.Finetune,
    sensitivity: pd.DataFrame,
    unfinished: list[str] = (),
) -> list[Path]:
    """The figure and tables in `docs`, beside the random policy's `yardstick` (and the `unfinished` runs
    left out), with each run's `action_sensitivity`; returns their paths."""
    from prelar.evaluate import plots

    docs.mkdir(parents=True, exist_ok=True)
    paths = [docs / name for name in ("success_curves.png", "curves.csv", "summary.md", "summary.json")]
    title = (
        f"{cfg.task}: {cfg.max_episode_steps}-step episodes, action repeat {cfg.action_repeat}; mean over "
        "seeds, 95% t-interval (2 seeds: min-max); grey: random policy"
    )
    figure = plots.band_panels(
        bands(curves), "env_step", "value", "measurement", "env steps", "", title, sharey=False,
        yardsticks={"success rate": yardstick["success"], "return": yardstick["return"]},
    )
    paths[0].write_bytes(plots.png_bytes(figure))
    curves.to_csv(paths[1], index=False)
    per_seed = summarize(curves).merge(sensitivity, on=["method", "seed"], how="left")
    columns = [c for c in per_seed.columns if c not in ("method", "seed")]
    grouped = per_seed.groupby("method", sort=False)
    table = grouped[columns].agg({c: lambda v, c=c: cell(v, BOUNDS.get(c)) for c in columns}).reset_index()
    table.insert(1, "seeds", grouped["seed"].agg(lambda s: ",".join(str(v) for v in sorted(s))).to_numpy())
    compared = differences(per_seed, REFERENCE)
    versus = compared.assign(
        difference=[estimate(r.mean, r.low, r.high, r.seeds) for r in compared.itertuples()]
    ).pivot(index="method", columns="measurement", values="difference")
    order = [method for method in table["method"] if method in versus.index]
    versus = versus.reindex(index=order, columns=[c for c in MEASURED if c in versus])
    paths[2].write_text(
        f"Online RL on {cfg.task}: {cfg.env_steps:,} env steps of {cfg.action_repeat} simulator steps, "
        f"episodes of {cfg.max_episode_steps} env steps, one update every {cfg.train_every} env steps after "
        f"{cfg.prefill} random ones; success = any step of an evaluation episode (the actor's mode, "
        f"{cfg.eval_episodes} episodes every {cfg.eval_every} env steps).\n\n"
        f"Yardstick: a uniformly random policy on the same evaluation episodes ({yardstick['episodes']}): "
        f"success {yardstick['success']:.3g}, return {yardstick['return']:.3g}.\n\n"
        + "".join(f"Not finished, left out: {folder}.\n\n" for folder in unfinished)
        + "Per method: mean over its seeds [95% Student-t interval over seeds, success rates clipped to "
        "[0, 1]; with 2 seeds, min and max]; "
        '`first_success_at`: the first evaluation with non-zero success, "k/n seeds" when only k of n seeds '
        'got there, "never" when none did; `mean_*`: over the run\'s evaluations (the area under its '
        "curve); `delta_psnr`: how much the final world model's open-loop prediction depends on the action, "
        "its PSNR (dB) with each window's own actions minus with another window's, over the imagined "
        "frames, on the same windows of the random policy's episodes for every run (0: the action is "
        "ignored).\n\n"
        + markdown(table)
        + (
            f"\n\nEach method minus `{REFERENCE}` (no pre-training), seed by seed (the same seed: the same "
            "evaluation episodes): mean difference [95% Student-t interval; with 2 seeds, min and max].\n\n"
            + markdown(versus.reset_index())
            if len(versus)
            else ""
        )
        + "\n"
    )
    summary: dict[str, Any] = {
        "task": cfg.task,
        "random_policy": yardstick,
        "unfinished": list(unfinished),
        "methods": {
            method: {"seeds": len(frame), **{c: json_value(frame[c], BOUNDS.get(c)) for c in columns}}
            for method, frame in grouped
        },
        f"minus_{REFERENCE}": differences_json(compared, "method"),
    }
    paths[3].write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return paths
