"""MLflow tracking: one run per training/evaluation stage, in a SQLite store, linked to git and DVC.

`params.mlflow.tracking_uri` is `sqlite:///mlflow.db` by default: a path relative to the working
directory (the repository root when DVC runs a stage). It is made absolute once, and artifacts go to
`mlruns/` next to the database, so a test pointing at a temporary folder writes nothing elsewhere.
Each run gets the flattened parameters, the git commit, and the hashes of its input data (the DVC md5
from `dvc.lock` when the folder is a tracked stage output, and always the md5 of its `manifest.parquet`).
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

_BATCH = 100  # MLflow's limit of params / tags per log_batch call


def resolve_tracking_uri(uri: str, root: str | Path = ".") -> str:
    """Make a relative `sqlite:///file.db` absolute against `root`; other URIs pass through."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        db = (Path(root) / uri[len(prefix) :]).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(db)
    return uri


def flatten(tree: Mapping[str, Any] | BaseModel, prefix: str = "") -> dict[str, str]:
    """`{"model": {"deter": 512}}` → `{"model.deter": "512"}` (MLflow params are flat strings)."""
    if isinstance(tree, BaseModel):
        tree = tree.model_dump()
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def git_commit(root: str | Path = ".") -> dict[str, str]:
    """The commit the code runs at, and whether the tree has uncommitted changes (empty outside git)."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"mlflow.source.git.commit": sha, "git.dirty": str(bool(dirty)).lower()}


def data_tags(path: str | Path, name: str = "data", root: str | Path = ".") -> dict[str, str]:
    """Tags identifying an input folder: its path, DVC md5 (from `dvc.lock`) and manifest md5, if present."""
    path = Path(path)
    tags = {f"{name}.path": str(path)}
    manifest = path / "manifest.parquet"
    if manifest.exists():
        tags[f"{name}.manifest_md5"] = hashlib.md5(manifest.read_bytes()).hexdigest()
    lock = Path(root) / "dvc.lock"
    if lock.exists():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage in stages.values():
            for out in stage.get("outs", []):
                if (Path(root) / out["path"]).resolve() == path.resolve() and "md5" in out:
                    tags[f"{name}.dvc_md5"] = out["md5"]
    return tags


class Run:
    """An MLflow run that only the main process writes to (`enabled=False` on the other ranks)."""

    def __init__(self, client, run_id: str | None):
        self.client = client
        self.run_id = run_id

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), _BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i : i + _BATCH])

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        if not self.enabled:
            return
        for p in paths:
            self.client.log_artifact(self.run_id, str(p), artifact_path)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + _BATCH])

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self.client.set_terminated(self.run_id, status)


def start_run(
    params: BaseModel,
    tracking_uri: str,
    experiment: str,
    run_name: str,
    tags: Mapping[str, str] | None = None,
    resume_run_id: str | None = None,
    enabled: bool = True,
) -> Run:
    """Open (or, given `resume_run_id` still in the store, reopen) a run and log params and tags."""
    if not enabled:
        return Run(None, None)
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    if resume_run_id is not None:
        try:
            client.get_run(resume_run_id)
        except MlflowException:
            resume_run_id = None
    if resume_run_id is not None:
        client.update_run(resume_run_id, status="RUNNING")
        run = Run(client, resume_run_id)
        run.set_tags(dict(tags or {}))
        return run
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///") :]).parent / "mlruns").as_uri()
        exp_id = client.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    run = Run(client, client.create_run(exp_id, run_name=run_name).info.run_id)
    flat = [Param(k, v[:6000]) for k, v in flatten(params).items()]
    for i in range(0, len(flat), _BATCH):
        client.log_batch(run.run_id, params=flat[i : i + _BATCH])
    run.set_tags({**git_commit(), **(tags or {})})
    return run
