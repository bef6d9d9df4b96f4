"""`prelar report`: gather the MLflow runs, aggregate them per method, write one self-contained HTML report.

What every stage must log so that the report finds it (the metric-name contract, defined only here):

| stage tag       | other tags         | metric (MLflow key)                  | metric step            |
|-----------------|--------------------|--------------------------------------|------------------------|
| finetune        | method, task, seed | `eval/success_rate` (history)        | environment step       |
| pretrain        | method, seed       | `train/<term>` (history), e.g.       | update                 |
|                 |                    | `train/total` (as prelar.pretrain)   |                        |
| probe           | method, seed       | `probe/r2`                           | any (latest is used)   |
| controllability | method, seed       | `controllability/delta_psnr_h{k}`    | k = open-loop horizon  |
| transfer        | method, seed       | `transfer/mse_k{K}`                  | K = fine-tuning updates|
| any             | method             | any `*.gif` artifact, e.g.           |                        |
|                 |                    | `figures/open_loop.gif`              |                        |

`delta_psnr_metric(k)` and `transfer_metric(K)` build the last two names. Runs are found by these metric
names, not by the `stage` tag (one evaluation run may log probe, ΔPSNR and transfer together), except
the `train/` losses, read only from `stage=pretrain` runs (fine-tuning may use the same prefix); `stage`,
git commit and `device` tags are shown in the runs table. FAILED/KILLED runs, runs without a `method`
tag, and success curves without a `task` tag are listed as skipped with the reason. When several runs
share a key ((method, task, seed) for success; (method, seed) otherwise), the latest one is used and the
others are listed as superseded.

Outputs in `report.out`: `report.html` (figures and GIFs embedded as base64), `figures/*.png`,
`gifs/*.gif`, and the plot data as CSV for `dvc plots show` with the templates `dvc_band.json` and
`dvc_runs.json` (see `prelar.evaluate.plots`): `curves.csv` (env_step, success, method, task, seed),
`published_curves.csv` (same columns), `aggregate_curve.csv` and `published_aggregate_curve.csv`
(env_step, method, source, iqm, low, high),
`task_curves.csv` (env_step, method, task, mean, low, high), `summary.csv` (the aggregate table),
`probe.csv` (method, seed, r2), `controllability.csv` (horizon, method, delta_psnr, low, high),
`transfer.csv` (updates, method, mse, low, high), `pretrain_losses.csv` (step, metric, value, method, seed).
Every CSV is written, with its header, even when its section was not run, so DVC outputs always exist.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import html
import importlib.metadata
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from prelar import config
from prelar.evaluate import plots
from prelar.evaluate.aggregate import aggregate, aggregate_curve, interval

log = logging.getLogger(__name__)

# ---- the metric-name contract -------------------------------------------------------------------------
TAG_STAGE = "stage"
TAG_METHOD = "method"
TAG_TASK = "task"
TAG_SEED = "seed"
TAG_GIT_COMMIT = "mlflow.source.git.commit"  # set by prelar.tracking.start_run
TAG_DEVICE = "device"
STAGES = ("pretrain", "finetune", "probe", "controllability", "transfer")
SUCCESS_RATE = "eval/success_rate"
PRETRAIN_PREFIX = "train/"  # pre-training losses, in runs tagged stage=pretrain
PROBE_R2 = "probe/r2"
DELTA_PSNR_PREFIX = "controllability/delta_psnr_h"
TRANSFER_PREFIX = "transfer/mse_k"
PREDICTION_GIF_SUFFIX = ".gif"  # sample predictions (prelar.evaluate.prediction writes open_loop.gif)
PUBLISHED_COLUMNS = ("method", "task", "seed", "env_step", "success")
PUBLISHED_SUFFIX = " (published)"


def delta_psnr_metric(horizon: int) -> str:
    """MLflow key of ΔPSNR (inferred minus shuffled latent actions) at open-loop horizon `horizon`."""
    return f"{DELTA_PSNR_PREFIX}{horizon}"


def transfer_metric(updates: int) -> str:
    """MLflow key of the action-conditioned open-loop MSE after `updates` offline fine-tuning updates."""
    return f"{TRANSFER_PREFIX}{updates}"


_DELTA_PSNR = re.compile(rf"^{re.escape(DELTA_PSNR_PREFIX)}(\d+)$")
_TRANSFER = re.compile(rf"^{re.escape(TRANSFER_PREFIX)}(\d+)$")
_COLUMNS = {
    "curves": ["env_step", "success", "method", "task", "seed"],
    "pretrain": ["step", "metric", "value", "method", "seed"],
    "probe": ["method", "seed", "r2"],
    "controllability": ["method", "seed", "horizon", "delta_psnr"],
    "transfer": ["method", "seed", "updates", "mse"],
}


@dataclass
class Collected:
    """Everything the report reads from MLflow, as long tables (`run_id`, `start` mark the source run)."""

    runs: list[dict] = field(default_factory=list)
    rows: dict[str, list[dict]] = field(default_factory=lambda: {name: [] for name in _COLUMNS})
    gifs: list[tuple[str, bytes]] = field(default_factory=list)  # (label, GIF bytes)
    skipped: list[str] = field(default_factory=list)
    store_note: str = ""

    def table(self, name: str) -> pd.DataFrame:
        return pd.DataFrame(self.rows[name], columns=[*_COLUMNS[name], "run_id", "start"])


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for other stores)."""
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


def collect(tracking_uri: str, experiment: str, gifs_per_method: int) -> Collected:
    """Read every run of `experiment` in the MLflow store at `tracking_uri` into tables."""
    out = Collected()
    db = _sqlite_path(tracking_uri)
    if db is not None and not db.exists():
        out.store_note = f"no MLflow store at {db} (tracking URI {tracking_uri}): no stage has logged yet"
        return out
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        out.store_note = (
            f"experiment '{experiment}' does not exist in {tracking_uri}: no stage has logged yet"
        )
        return out
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    gif_count: dict[str, int] = {}
    for run in tqdm(sorted(runs, key=lambda r: r.info.start_time or 0), desc="mlflow runs", unit="run"):
        _collect_run(client, run, out, gif_count, gifs_per_method)
    return out


def _collect_run(client, run, out: Collected, gif_count: dict[str, int], gifs_per_method: int) -> None:
    info, tags, metrics = run.info, run.data.tags, run.data.metrics
    method, task, seed = tags.get(TAG_METHOD), tags.get(TAG_TASK), tags.get(TAG_SEED, "?")
    out.runs.append(
        {
            "run_id": info.run_id,
            "name": info.run_name,
            "stage": tags.get(TAG_STAGE, ""),
            "method": method or "",
            "task": task or "",
            "seed": seed,
            "status": info.status,
            "started": datetime.datetime.fromtimestamp((info.start_time or 0) / 1000).isoformat(
                " ", "seconds"
            ),
            "git_commit": tags.get(TAG_GIT_COMMIT, "")[:10],
            "device": tags.get(TAG_DEVICE, ""),
        }
    )
    label = f"run {info.run_id[:8]} ({info.run_name})"
    if info.status in ("FAILED", "KILLED"):
        out.skipped.append(f"{label}: status {info.status}")
        return
    if not method:
        out.skipped.append(f"{label}: no `{TAG_METHOD}` tag")
        return
    key = {"method": method, "seed": seed, "run_id": info.run_id, "start": info.start_time or 0}
    if SUCCESS_RATE in metrics:
        if task:
            for m in client.get_metric_history(info.run_id, SUCCESS_RATE):
                out.rows["curves"].append({"env_step": m.step, "success": m.value, "task": task, **key})
        else:
            out.skipped.append(f"{label}: logs `{SUCCESS_RATE}` but has no `{TAG_TASK}` tag")
    for name in sorted(metrics):
        if name.startswith(PRETRAIN_PREFIX) and tags.get(TAG_STAGE) == "pretrain":
            for m in client.get_metric_history(info.run_id, name):
                out.rows["pretrain"].append({"step": m.step, "metric": name, "value": m.value, **key})
        elif name == PROBE_R2:
            out.rows["probe"].append({"r2": metrics[name], **key})
        elif match := _DELTA_PSNR.match(name):
            out.rows["controllability"].append({"horizon": int(match[1]), "delta_psnr": metrics[name], **key})
        elif match := _TRANSFER.match(name):
            out.rows["transfer"].append({"updates": int(match[1]), "mse": metrics[name], **key})
    if gif_count.get(method, 0) < gifs_per_method:
        for path in _find_artifacts(client, info.run_id, PREDICTION_GIF_SUFFIX):
            if gif_count.get(method, 0) >= gifs_per_method:
                break
            with tempfile.TemporaryDirectory() as tmp:
                data = Path(client.download_artifacts(info.run_id, path, tmp)).read_bytes()
            where = " ".join(filter(None, [method, f"seed {seed}", task]))
            out.gifs.append((f"{where}: {path} ({label})", data))
            gif_count[method] = gif_count.get(method, 0) + 1


def _find_artifacts(client, run_id: str, suffix: str, path: str | None = None) -> list[str]:
    """Paths of the run's artifacts whose name ends with `suffix`, searched recursively."""
    found = []
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            found.extend(_find_artifacts(client, run_id, suffix, item.path))
        elif item.path.endswith(suffix):
            found.append(item.path)
    return found


def _latest_only(table: pd.DataFrame, keys: list[str], what: str, skipped: list[str]) -> pd.DataFrame:
    """Keep, for each key, the rows of the most recently started run; record the superseded runs."""
    if table.empty:
        return table
    latest = table.sort_values("start").groupby(keys, sort=False)["run_id"].last().rename("latest")
    table = table.join(latest, on=keys)
    for (run_id, newer), _ in table[table["run_id"] != table["latest"]].groupby(["run_id", "latest"]):
        skipped.append(f"run {run_id[:8]}: {what} superseded by the later run {newer[:8]}")
    return table[table["run_id"] == table["latest"]].drop(columns=["latest"])


def read_published(path: str | Path) -> pd.DataFrame:
    """Published raw results (columns method, task, seed, env_step, success), methods labelled published."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: published results not found; fix report.published_results")
    table = pd.read_csv(path, dtype={"seed": str, "method": str, "task": str})
    missing = [c for c in PUBLISHED_COLUMNS if c not in table.columns]
    if missing:
        raise config.ConfigError(
            f"{path}: published results lack column(s) {missing}; the CSV needs the columns "
            f"{', '.join(PUBLISHED_COLUMNS)} (one row per evaluation)"
        )
    table = table[list(PUBLISHED_COLUMNS)]
    bad = table[pd.to_numeric(table["success"], errors="coerce").isna()]
    if not bad.empty:
        raise config.ConfigError(f"{path}: column 'success' is not numeric in row(s) {list(bad.index[:5])}")
    table = table.assign(method=table["method"] + PUBLISHED_SUFFIX, success=table["success"].astype(float))
    return table.assign(env_step=table["env_step"].astype(int))


# ---- aggregation ---------------------------------------------------------------------------------------
def _run_matrix(curves: pd.DataFrame, value: str = "success") -> tuple[list[str], np.ndarray]:
    """Final score of every run of one method as [runs, tasks] (NaN pads tasks with fewer seeds)."""
    final = curves.sort_values("env_step").groupby(["task", "seed"]).last().reset_index()
    tasks = sorted(final["task"].unique())
    per_task = [final.loc[final["task"] == t, value].to_numpy() for t in tasks]
    matrix = np.full((max(len(v) for v in per_task), len(tasks)), np.nan)
    for j, values in enumerate(per_task):
        matrix[: len(values), j] = values
    return tasks, matrix


def _curve_tensor(curves: pd.DataFrame, tasks: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Success of every run at every evaluation step as [runs, tasks, steps] (NaN where not evaluated)."""
    steps = np.sort(curves["env_step"].unique())
    seeds = curves.groupby("task")["seed"].nunique()
    tensor = np.full((int(seeds.max()), len(tasks), len(steps)), np.nan)
    for j, task in enumerate(tasks):
        part = curves[curves["task"] == task]
        for i, (_, run) in enumerate(part.groupby("seed")):
            tensor[i, j, np.searchsorted(steps, run["env_step"].to_numpy())] = run["success"].to_numpy()
    return steps, tensor


def _band_rows(steps, est: np.ndarray, statistic: str, **keys) -> list[dict]:
    """Rows {env_step, **keys, statistic, low, high} of a [3, steps] estimate, skipping steps without one."""
    return [
        {"env_step": int(step), **keys, statistic: est[0, k], "low": est[1, k], "high": est[2, k]}
        for k, step in enumerate(steps)
        if np.isfinite(est[0, k])
    ]

def summarize(curves: pd.DataFrame, reps: int, seed: int, confidence: float) -> dict[str, pd.DataFrame]:
    """Aggregate table, aggregate IQM curves and per-task mean curves, each with stratified-bootstrap CIs."""
    summary, agg_rows, task_rows = [], [], []
    for method, part in curves.groupby("method", sort=True):
        tasks, matrix = _run_matrix(part)
        result = aggregate({method: matrix}, reps=reps, seed=seed, confidence=confidence)[method]
        final_steps = part.groupby(["task", "seed"])["env_step"].max()
        source = "published" if method.endswith(PUBLISHED_SUFFIX) else "ours"
        summary.append(
            {
                "method": method,
                "source": source,
                "tasks": len(tasks),
                "runs": result["runs"],
                "iqm": result["iqm"],
                "iqm_low": result["iqm_ci"][0],
                "iqm_high": result["iqm_ci"][1],
                "mean": result["mean"],
                "mean_low": result["mean_ci"][0],
                "mean_high": result["mean_ci"][1],
                "final_env_step": _span(final_steps.min(), final_steps.max()),
                "task_list": ", ".join(tasks),
            }
        )
        steps, tensor = _curve_tensor(part, tasks)
        est = aggregate_curve(tensor, "iqm", reps, seed, confidence)  # [3, steps]
        agg_rows += _band_rows(steps, est, "iqm", method=method, source=source)
        for j, task in enumerate(tasks):
            est = aggregate_curve(tensor[:, j : j + 1], "mean", reps, seed, confidence)
            task_rows += _band_rows(steps, est, "mean", method=method, task=task)
    return {
        "summary": pd.DataFrame(summary, columns=_SUMMARY_COLUMNS),
        "aggregate_curve": pd.DataFrame(
            agg_rows, columns=["env_step", "method", "source", "iqm", "low", "high"]
        ),
        "task_curves": pd.DataFrame(task_rows, columns=["env_step", "method", "task", "mean", "low", "high"]),
    }


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}–{high}"


_SUMMARY_COLUMNS = [
    "method",
    "source",
    "tasks",
    "runs",
    "iqm",
    "iqm_low",
    "iqm_high",
    "mean",
    "mean_low",
    "mean_high",
    "final_env_step",
    "task_list",
]


def mean_by(table: pd.DataFrame, x: str, value: str, reps: int, seed: int, confidence: float) -> pd.DataFrame:
    """Mean over seeds of `value` per (x, method), with a bootstrap interval over seeds."""
    rows = []
    for (xv, method), part in table.groupby([x, "method"], sort=True):
        point, low, high = interval(part[[value]].to_numpy(), "mean", reps, seed, confidence, name=method)
        rows.append({x: xv, "method": method, value: point, "low": low, "high": high})
    return pd.DataFrame(rows, columns=[x, "method", value, "low", "high"])


# ---- HTML ----------------------------------------------------------------------------------------------
_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;font-size:0.9em;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f0f0f0}img{max-width:100%;border:1px solid #eee}.not-run{color:#a33;font-style:italic}
.note{color:#555;font-size:0.9em}.gifs figure{display:inline-block;margin:0.5em;text-align:center}
.gifs img{width:256px;image-rendering:pixelated}pre{background:#f6f6f6;padding:0.7em;overflow-x:auto}"""


def _summary_table(summary: pd.DataFrame, ci: str) -> pd.DataFrame:
    """The aggregate table as shown: intervals as "[low, high]" next to their point estimates."""
    shown = {
        "method": summary["method"],
        "source": summary["source"],
        "tasks": summary["tasks"],
        "runs": summary["runs"],
    }
    for stat, name in (("iqm", "IQM"), ("mean", "mean")):
        shown[name] = summary[stat]
        shown[f"{name} {ci} CI"] = [
            f"[{lo:.3f}, {hi:.3f}]"
            for lo, hi in zip(summary[f"{stat}_low"], summary[f"{stat}_high"], strict=True)
        ]
    shown["final env step"] = summary["final_env_step"]
    shown["tasks evaluated"] = summary["task_list"]
    return pd.DataFrame(shown)


class _Page:
    """Accumulates the HTML body and the figure/GIF files beside it."""

    def __init__(self, out: Path):
        self.out = out
        self.parts: list[str] = []
        (out / "figures").mkdir(parents=True, exist_ok=True)
        (out / "gifs").mkdir(parents=True, exist_ok=True)

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def heading(self, text: str) -> None:
        self.add(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str, cls: str = "note") -> None:
        self.add(f'<p class="{cls}">{html.escape(text)}</p>')

    def not_run(self, what: str) -> None:
        self.add(f'<p class="not-run">Not run: {html.escape(what)}</p>')

    def figure(self, name: str, fig) -> None:
        data = plots.png_bytes(fig)
        (self.out / "figures" / f"{name}.png").write_bytes(data)
        self.add(f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">')

    def table(self, frame: pd.DataFrame) -> None:
        self.add(frame.to_html(index=False, escape=True, float_format=lambda v: f"{v:.3f}", border=0))

    def gif(self, index: int, caption: str, data: bytes) -> None:
        (self.out / "gifs" / f"prediction_{index}.gif").write_bytes(data)
        self.add(
            f'<figure><img alt="prediction {index}" src="data:image/gif;base64,'
            f'{base64.b64encode(data).decode()}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        )

    def write(self, title: str) -> Path:
        path = self.out / "report.html"
        path.write_text(
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>\n"
            + "\n".join(self.parts)
            + "\n</body></html>\n"
        )
        return path


def _machine(tracking_uri: str, experiment: str, profile: str) -> pd.DataFrame:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown (not a git checkout)"
    versions = []
    for pkg in ("torch", "numpy", "pandas", "scipy", "mlflow", "matplotlib"):
        try:
            versions.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{pkg} (not installed)")
    rows = [
        (
            "command",
            shlex.join(["prelar", *sys.argv[1:]])
            if Path(sys.argv[0]).name == "prelar"
            else shlex.join(sys.argv),
        ),
        ("profile", profile),
        ("written", datetime.datetime.now().isoformat(" ", "seconds")),
        ("host", platform.node()),
        ("platform", platform.platform()),
        ("python", sys.version.split()[0]),
        ("CPU cores", str(os.cpu_count())),
        ("packages", ", ".join(versions)),
        ("git commit", commit),
        ("MLflow store", f"{tracking_uri} (experiment '{experiment}')"),
    ]
    return pd.DataFrame(rows, columns=["", "value"])


def write_report(
    params: config.Params,
    out: str | Path,
    tracking_uri: str,
    experiment: str,
    published: str | None,
) -> Path:
    """Collect, aggregate, plot and write the report into `out`; returns the HTML path."""
    cfg = params.report
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats = {"reps": cfg.bootstrap_reps, "seed": params.seed, "confidence": cfg.confidence}
    published_table = read_published(published) if published else None
    got = collect(tracking_uri, experiment, cfg.gifs_per_method)
    curves = _latest_only(got.table("curves"), ["method", "task", "seed"], "success curve", got.skipped)
    tables = {
        name: _latest_only(got.table(name), ["method", "seed"], name, got.skipped)
        for name in ("pretrain", "probe", "controllability", "transfer")
    }
    both = (
        pd.concat([curves[_COLUMNS["curves"]], published_table], ignore_index=True)
        if published_table is not None
        else curves[_COLUMNS["curves"]]
    )
    agg = summarize(both, **stats)
    controllability = mean_by(tables["controllability"], "horizon", "delta_psnr", **stats)
    transfer = mean_by(tables["transfer"], "updates", "mse", **stats)

    curves.sort_values(["method", "task", "seed", "env_step"])[_COLUMNS["curves"]].to_csv(
        out / "curves.csv", index=False
    )
    (published_table if published_table is not None else pd.DataFrame(columns=PUBLISHED_COLUMNS)).to_csv(
        out / "published_curves.csv", index=False
    )
    agg["summary"].to_csv(out / "summary.csv", index=False)
    agg["task_curves"].to_csv(out / "task_curves.csv", index=False)
    ours = agg["aggregate_curve"]["source"] == "ours"  # apart: published x-axes are ~100x longer
    agg["aggregate_curve"][ours].to_csv(out / "aggregate_curve.csv", index=False)
    agg["aggregate_curve"][~ours].to_csv(out / "published_aggregate_curve.csv", index=False)
    tables["probe"] = tables["probe"].sort_values(["method", "seed"])
    tables["probe"][_COLUMNS["probe"]].to_csv(out / "probe.csv", index=False)
    tables["pretrain"][_COLUMNS["pretrain"]].to_csv(out / "pretrain_losses.csv", index=False)
    controllability.to_csv(out / "controllability.csv", index=False)
    transfer.to_csv(out / "transfer.csv", index=False)
    (out / "dvc_band.json").write_text(plots.DVC_TEMPLATE_BAND)
    (out / "dvc_runs.json").write_text(plots.DVC_TEMPLATE_RUNS)

    page = _Page(out)
    if got.store_note:
        page.text(got.store_note, cls="not-run")
    ci = f"{100 * cfg.confidence:.0f}%"
    page.heading("Aggregate success rate (final evaluation)")
    if agg["summary"].empty:
        page.not_run(f"no fine-tuning run logged `{SUCCESS_RATE}` and no published results were given")
    else:
        page.text(
            f"IQM (25% trimmed mean over all runs x tasks) and mean, with {ci} stratified-bootstrap "
            f"intervals ({cfg.bootstrap_reps} replicates, runs resampled within each task; rliable "
            f"protocol). Each run's score is its last `{SUCCESS_RATE}` evaluation."
        )
        page.table(_summary_table(agg["summary"], ci))
        if agg["summary"]["task_list"].nunique() > 1:
            page.text(
                "Methods were run on different task sets: their aggregates are not directly comparable."
            )
        page.figure("interval_estimates", plots.interval_estimates(agg["summary"]))
        page.heading("Learning curves")
        page.figure(
            "aggregate_curves",
            plots.band_panels(
                agg["aggregate_curve"],
                "env_step",
                "iqm",
                "source",
                "environment steps",
                "IQM success rate",
                f"Aggregate IQM across tasks ({ci} CI)",
            ),
        )
        task_curves = agg["task_curves"]
        published_rows = task_curves["method"].str.endswith(PUBLISHED_SUFFIX)
        panels = task_curves["task"].where(~published_rows, task_curves["task"] + PUBLISHED_SUFFIX)
        page.figure(
            "task_curves",
            plots.band_panels(
                task_curves.assign(panel=panels),
                "env_step",
                "mean",
                "panel",
                "environment steps",
                "success rate",
                f"Per-task mean over seeds ({ci} CI)",
            ),
        )
    page.heading("Pre-training losses")
    if tables["pretrain"].empty:
        page.not_run(f"no run tagged stage=pretrain logged metrics named `{PRETRAIN_PREFIX}*`")
    else:
        page.figure("pretrain_losses", plots.histories(tables["pretrain"], "Pre-training losses per run"))
    page.heading("Latent-action probe")
    if tables["probe"].empty:
        page.not_run(f"no run logged `{PROBE_R2}` (stage=probe)")
    else:
        page.text(
            "Ridge regression from the latent-action mean to the true 4-d action on held-out episodes: "
            "R² (higher: latent actions carry the real action). Bars: mean over seeds; dots: seeds."
        )
        page.figure(
            "probe_r2", plots.points_per_method(tables["probe"], "r2", "R²", "Latent-action probe R²")
        )
        page.table(tables["probe"][_COLUMNS["probe"]])
    page.heading("Controllability (ΔPSNR)")
    if controllability.empty:
        page.not_run(f"no run logged `{DELTA_PSNR_PREFIX}<k>` (stage=controllability)")
    else:
        page.text(
            "Open-loop PSNR with inferred latent actions minus PSNR with latent actions shuffled across "
            f"the batch, per horizon (higher: the model uses its actions). Mean over seeds, {ci} CI."
        )
        page.figure(
            "delta_psnr",
            plots.band_panels(
                controllability,
                "horizon",
                "delta_psnr",
                None,
                "open-loop horizon (frames)",
                "ΔPSNR (dB)",
                "ΔPSNR",
            ),
        )
        page.table(controllability)
    page.heading("Offline transfer")
    if transfer.empty:
        page.not_run(f"no run logged `{TRANSFER_PREFIX}<K>` (stage=transfer)")
    else:
        page.text(
            "Action-conditioned open-loop prediction MSE after K fine-tuning updates with real actions "
            f"on fixed downstream episodes (lower is better). Mean over seeds, {ci} CI."
        )
        page.figure(
            "transfer_mse",
            plots.band_panels(
                transfer, "updates", "mse", None, "fine-tuning updates K", "open-loop MSE", "Offline transfer"
            ),
        )
        page.table(transfer)
    page.heading("Sample predictions")
    if not got.gifs:
        page.not_run(f"no run has an artifact named `*{PREDICTION_GIF_SUFFIX}`")
    else:
        page.add('<div class="gifs">')
        for i, (caption, data) in enumerate(got.gifs):
            page.gif(i, caption, data)
        page.add("</div>")
    page.heading("Runs")
    if got.runs:
        page.table(pd.DataFrame(got.runs))
    else:
        page.not_run("no MLflow runs")
    if got.skipped:
        page.add("<p>Skipped:</p><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in got.skipped) + "</ul>")
    page.heading("Machine and command")
    page.table(_machine(tracking_uri, experiment, params.profile))
    page.add(f"<pre>mlflow ui --backend-store-uri {html.escape(tracking_uri)}</pre>")
    return page.write("prelar report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="output folder (report.out)")
    parser.add_argument(
        "--published-results",
        default=None,
        help="CSV of published results: method, task, seed, env_step, success (report.published_results)",
    )
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (mlflow.tracking_uri)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (mlflow.experiment)")


def run(params: config.Params, args: argparse.Namespace) -> int:
    tracking_uri = args.tracking_uri or params.mlflow.tracking_uri
    path = write_report(
        params,
        out=args.out or params.report.out,
        tracking_uri=tracking_uri,
        experiment=args.experiment or params.mlflow.experiment,
        published=args.published_results or params.report.published_results,
    )
    print(f"report: {path.resolve()}  (open file://{path.resolve()} in a browser)")
    print(f"MLflow: mlflow ui --backend-store-uri {tracking_uri}   (then open http://127.0.0.1:5000)")
    return 0
