"""The runs the report reads: ours from the MLflow store (by the names of `prelar.metrics`), published ones
from a CSV.

Runs are found by their metric names, not by the `stage` tag (one evaluation run may log probe, ΔPSNR and
transfer together), except the `train/` losses and `curve/` learning curves, read only from `stage=pretrain`
runs (fine-tuning may use the same prefix). FAILED/KILLED runs, runs without a `method` tag, and success
curves without a `task` tag are listed as skipped with the reason. Methods are shown by their registered
label (`prelar.methods`).
"""

from __future__ import annotations

import datetime
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from prelar import config, methods, tracking
from prelar import metrics as names

PUBLISHED_COLUMNS = ("method", "task", "seed", "env_step", "success")
PUBLISHED_SUFFIX = " (published)"
COLUMNS = {
    "curves": ["env_step", "success", "method", "task", "seed"],
    "pretrain": ["step", "metric", "value", "method", "seed"],
    "learning": ["step", "metric", "value", "method", "seed"],
    "probe": ["method", "seed", "r2"],
    "controllability": ["method", "seed", "horizon", "delta_psnr"],
    "transfer": ["method", "seed", "updates", "mse"],
}


@dataclass
class Collected:
    """Everything the report reads from MLflow, as long tables (`run_id`, `start` mark the source run)."""

    runs: list[dict] = field(default_factory=list)
    rows: dict[str, list[dict]] = field(default_factory=lambda: {name: [] for name in COLUMNS})
    gifs: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, GIF bytes)
    skipped: list[str] = field(default_factory=list)
    store_note: str = ""

    def table(self, name: str) -> pd.DataFrame:
        return pd.DataFrame(self.rows[name], columns=[*COLUMNS[name], "run_id", "start"])

    def latest(self) -> dict[str, pd.DataFrame]:
        """Every table (its `COLUMNS`, sorted by key) from the latest run of each key: (method, task, seed)
        for success curves, (method, seed) otherwise; the superseded runs are listed in `skipped`."""
        out = {}
        for name, columns in COLUMNS.items():
            keys = ["method", "task", "seed"] if name == "curves" else ["method", "seed"]
            table = latest_only(
                self.table(name), keys, "success curve" if name == "curves" else name, self.skipped
            )
            order = [*keys, "env_step"] if name == "curves" else keys
            out[name] = table.sort_values(order, kind="stable")[columns]
        return out


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
    method, task, seed = tags.get(names.TAG_METHOD), tags.get(names.TAG_TASK), tags.get(names.TAG_SEED, "?")
    out.runs.append(
        {
            "run_id": info.run_id,
            "name": info.run_name,
            "stage": tags.get(names.TAG_STAGE, ""),
            "method": method or "",
            "task": task or "",
            "seed": seed,
            "status": info.status,
            "started": datetime.datetime.fromtimestamp((info.start_time or 0) / 1000).isoformat(
                " ", "seconds"
            ),
            "git_commit": tags.get(tracking.TAG_GIT_COMMIT, "")[:10],
            "device": tags.get(names.TAG_DEVICE, ""),
        }
    )
    label = f"run {info.run_id[:8]} ({info.run_name})"
    if info.status in ("FAILED", "KILLED"):
        out.skipped.append(f"{label}: status {info.status}")
        return
    if not method:
        out.skipped.append(f"{label}: no `{names.TAG_METHOD}` tag")
        return
    shown = methods.label(method)
    key = {"method": shown, "seed": seed, "run_id": info.run_id, "start": info.start_time or 0}
    if names.SUCCESS_RATE in metrics:
        if task:
            for m in client.get_metric_history(info.run_id, names.SUCCESS_RATE):
                out.rows["curves"].append({"env_step": m.step, "success": m.value, "task": task, **key})
        else:
            out.skipped.append(f"{label}: logs `{names.SUCCESS_RATE}` but has no `{names.TAG_TASK}` tag")
    pretraining = tags.get(names.TAG_STAGE) == names.PRETRAIN_STAGE
    for name in sorted(metrics):
        table = "pretrain" if name.startswith(names.PRETRAIN_PREFIX) else "learning"
        if pretraining and name.startswith((names.PRETRAIN_PREFIX, names.CURVE_PREFIX)):
            for m in client.get_metric_history(info.run_id, name):
                out.rows[table].append({"step": m.step, "metric": name, "value": m.value, **key})
        elif name == names.PROBE_R2:
            out.rows["probe"].append({"r2": metrics[name], **key})
        elif (horizon := names.delta_psnr_horizon(name)) is not None:
            out.rows["controllability"].append({"horizon": horizon, "delta_psnr": metrics[name], **key})
        elif (updates := names.transfer_updates(name)) is not None:
            out.rows["transfer"].append({"updates": updates, "mse": metrics[name], **key})
    if gif_count.get(shown, 0) < gifs_per_method:
        for path in _find_artifacts(client, info.run_id, names.PREDICTION_GIF_SUFFIX):
            if gif_count.get(shown, 0) >= gifs_per_method:
                break
            with tempfile.TemporaryDirectory() as tmp:
                data = Path(client.download_artifacts(info.run_id, path, tmp)).read_bytes()
            where = " ".join(filter(None, [shown, f"seed {seed}", task]))
            out.gifs.append((f"{where}: {path} ({label})", data))
            gif_count[shown] = gif_count.get(shown, 0) + 1


def _find_artifacts(client, run_id: str, suffix: str, path: str | None = None) -> list[str]:
    """Paths of the run's artifacts whose name ends with `suffix`, searched recursively."""
    found = []
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            found.extend(_find_artifacts(client, run_id, suffix, item.path))
        elif item.path.endswith(suffix):
            found.append(item.path)
    return found


def latest_only(table: pd.DataFrame, keys: list[str], what: str, skipped: list[str]) -> pd.DataFrame:
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
    shown = table["method"].map(methods.label) + PUBLISHED_SUFFIX
    table = table.assign(method=shown, success=table["success"].astype(float))
    return table.assign(env_step=table["env_step"].astype(int))
