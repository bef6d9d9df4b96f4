"""`prelar online`: does online RL move, and does pre-training help it? Every method of `online.methods` x
`online.seeds` is fine-tuned (`prelar.agent.finetune`) on one task with the values of `online.finetune` on
top of the `finetune` section, from the default pipeline's pre-trained checkpoints, into
`online.out/<method>/seed<seed>` and MLflow experiment `online.experiment`; a run already complete is not
run again (an interrupted run resumes from its checkpoint). Its yardstick: a uniformly random policy on the
same task, over `online.random_episodes` episodes. Then, in `online.docs`:

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
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from prelar import config
from prelar.over_seeds import cell, estimate, interval, json_value, markdown

REFERENCE = "dreamerv2"  # the method every other is compared with, seed by seed: no pre-training
MEASURED = ("final_success", "mean_success", "final_return", "mean_return")
RANDOM_STREAM = 4  # seed stream of the random policy's episodes (finetune's collector 2, evaluator 3)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods of online.methods")
    parser.add_argument(
        "--summary-only", action="store_true", help="only redraw the figure and tables from the runs on disk"
    )


def run_params(params: config.Params, method: str, seed: int) -> config.Params:
    """The parameters of one run: `online.finetune` on top of `finetune`, its method, seed, MLflow
    experiment, and the method's default pre-trained checkpoint."""
    from prelar.agent.finetune import with_pretrained

    updates = {f"finetune.{k}": v for k, v in params.online.finetune.items()}
    updates.update({
        "finetune.method": method,
        "finetune.seed": seed,
        "mlflow.experiment": params.online.experiment,
    })
    return with_pretrained(config.override(params, updates))


def run_folder(params: config.Params, method: str, seed: int) -> Path:
    return Path(params.online.out) / method / f"seed{seed}"


def run(params: config.Params, args: argparse.Namespace) -> int:
    online = params.online
    chosen = args.methods or list(online.methods)
    unknown = sorted(set(chosen) - set(online.methods))
    if unknown:
        raise config.ConfigError(f"--methods: {unknown} are not in online.methods ({online.methods})")
    if not args.summary_only:
        from prelar.agent.finetune import finetune

        for seed in online.seeds:  # every method of seed 0 first: a short study still compares them all
            for method in chosen:
                print(f"online: {method} seed {seed}", flush=True)
                finetune(run_params(params, method, seed), run_folder(params, method, seed))
    curves = collect(params, chosen)
    base = run_params(params, online.methods[0], online.seeds[0]).finetune
    yardstick = random_policy(base, online.random_episodes)
    written = write_summary(curves, Path(online.docs), yardstick, base)
    print(f"online: {', '.join(str(p) for p in written)}")
    return 0


def collect(params: config.Params, methods: list[str]) -> pd.DataFrame:
    """Every evaluation of the runs on disk: method, seed, env_step, success, return."""
    from prelar.agent.finetune import CURVE

    tables = []
    for method in methods:
        for seed in params.online.seeds:
            path = run_folder(params, method, seed) / CURVE
            if path.exists():
                tables.append(pd.read_csv(path).assign(method=method, seed=seed))
    if not tables:
        raise config.ConfigError(
            f"no success curves under {params.online.out}/<method>/seed<seed>/{CURVE}: "
            "run `prelar online` first"
        )
    table = pd.concat(tables, ignore_index=True)
    return table[["method", "seed", "env_step", "success", "return"]]


def random_policy(cfg: config.Finetune, episodes: int) -> dict[str, float]:
    """The yardstick: success rate and mean return of uniformly random actions in `episodes` episodes of the
    task as `cfg` runs it (the same length and action repeat; episodes of their own seed stream)."""
    from prelar.agent.finetune import Collector

    rng = np.random.default_rng(cfg.seed)
    successes, returns = [], []
    with contextlib.closing(Collector(cfg, seed_stream=RANDOM_STREAM)) as collector:
        for index in range(episodes):
            collector.reset(index)
            while not collector.step(rng.uniform(-1, 1, 4).astype(np.float32)):
                pass
            episode = collector.episode()
            successes.append(float(episode.success.any()))
            returns.append(float(episode.rewards.sum()))
    return {"episodes": episodes, "success": float(np.mean(successes)), "return": float(np.mean(returns))}


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
    """Each method minus `reference`, paired by seed among seeds run for as many env steps: rows method,
    measurement, seeds, mean, low, high (`interval` of the differences)."""
    rows = []
    base = per_seed[per_seed["method"] == reference].set_index("seed")
    for method, frame in per_seed[per_seed["method"] != reference].groupby("method", sort=False):
        frame = frame.set_index("seed")
        common = frame.index.intersection(base.index)
        common = common[frame.loc[common, "env_steps"].to_numpy() == base.loc[common, "env_steps"].to_numpy()]
        for key in MEASURED:
            if common.empty:
                continue
            mean, low, high = interval(frame.loc[common, key] - base.loc[common, key])
            rows.append({"method": method, "measurement": key, "seeds": len(common), "mean": mean,
                         "low": low, "high": high})
    return pd.DataFrame(rows, columns=["method", "measurement", "seeds", "mean", "low", "high"])


def bands(curves: pd.DataFrame) -> pd.DataFrame:
    """Per method, evaluation and measurement: the mean over seeds and its `interval` (columns method,
    env_step, measurement, value, low, high)."""
    rows = []
    for (method, step), frame in curves.groupby(["method", "env_step"], sort=True):
        for key, label in (("success", "success rate"), ("return", "return")):
            mean, low, high = interval(frame[key])
            rows.append({"method": method, "env_step": step, "measurement": label, "value": mean,
                         "low": low, "high": high})
    return pd.DataFrame(rows)


def write_summary(
    curves: pd.DataFrame, docs: Path, yardstick: dict[str, float], cfg: config.Finetune
) -> list[Path]:
    """The figure and tables in `docs`, beside the random policy's `yardstick`; returns their paths."""
    from prelar.evaluate import plots

    docs.mkdir(parents=True, exist_ok=True)
    paths = [docs / name for name in ("success_curves.png", "curves.csv", "summary.md", "summary.json")]
    title = (
        f"{cfg.task}: {cfg.max_episode_steps}-step episodes, action repeat {cfg.action_repeat}; mean over "
        "seeds, 95% t-interval; grey: random policy"
    )
    figure = plots.band_panels(
        bands(curves), "env_step", "value", "measurement", "env steps", "", title, sharey=False,
        yardsticks={"success rate": yardstick["success"], "return": yardstick["return"]},
    )
    paths[0].write_bytes(plots.png_bytes(figure))
    curves.to_csv(paths[1], index=False)
    per_seed = summarize(curves)
    columns = [c for c in per_seed.columns if c not in ("method", "seed")]
    grouped = per_seed.groupby("method", sort=False)
    table = grouped[columns].agg(cell).reset_index()
    table.insert(1, "seeds", grouped["seed"].agg(lambda s: ",".join(str(v) for v in sorted(s))).to_numpy())
    compared = differences(per_seed, REFERENCE)
    versus = compared.assign(
        difference=[estimate(r.mean, r.low, r.high, r.seeds) for r in compared.itertuples()]
    ).pivot(index="method", columns="measurement", values="difference")
    versus = versus.reindex(columns=[c for c in MEASURED if c in versus])
    paths[2].write_text(
        f"Online RL on {cfg.task}: {cfg.env_steps:,} env steps of {cfg.action_repeat} simulator steps, "
        f"episodes of {cfg.max_episode_steps} env steps, one update every {cfg.train_every} env steps after "
        f"{cfg.prefill} random ones; success = any step of an evaluation episode (the actor's mode, "
        f"{cfg.eval_episodes} episodes every {cfg.eval_every} env steps).\n\n"
        f"Yardstick: a uniformly random policy, {yardstick['episodes']} episodes: success "
        f"{yardstick['success']:.3g}, return {yardstick['return']:.3g}.\n\n"
        "Per method: mean over its seeds [95% Student-t interval over seeds; with 2 seeds, min and max]; "
        '`first_success_at`: the first evaluation with non-zero success, "k/n seeds" when only k of n seeds '
        'got there, "never" when none did; `mean_*`: over the run\'s evaluations (the area under its '
        "curve).\n\n"
        + markdown(table)
        + (
            f"\n\nEach method minus `{REFERENCE}` (no pre-training), seed by seed (the same seed: the same "
            "evaluation episodes): mean difference [95% Student-t interval].\n\n"
            + markdown(versus.reset_index())
            if len(versus)
            else ""
        )
        + "\n"
    )
    summary: dict[str, Any] = {
        "task": cfg.task,
        "random_policy": yardstick,
        "methods": {
            method: {"seeds": len(frame), **{c: json_value(frame[c]) for c in columns}}
            for method, frame in grouped
        },
        f"minus_{REFERENCE}": {
            method: {
                row.measurement: {"seeds": int(row.seeds), "mean": row.mean, "low": row.low, "high": row.high}
                for row in frame.itertuples()
            }
            for method, frame in compared.groupby("method", sort=False)
        },
    }
    paths[3].write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return paths
