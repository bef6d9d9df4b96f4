"""MLflow tracking: one run per training/evaluation stage, in a SQLite store, linked to git and DVC.

Every stage opens its run with `stage_run`, the one run context: named `stage/method/...`, ended FINISHED,
FAILED on an exception or KILLED on SIGTERM/SIGINT, reopened by id when a stage resumes from its checkpoint.
The experiment is tagged as model development, so the MLflow UI opens on its runs (not on GenAI traces).

`params.mlflow.tracking_uri` is `sqlite:///mlflow.db` by default: a path relative to the working
directory (the repository root when DVC runs a stage). It is made absolute once, and artifacts go to
`mlruns/` next to the database, so a test pointing at a temporary folder writes nothing elsewhere.
Each run gets the flattened parameters, the git commit, and the hashes of its input data (the DVC md5
from `dvc.lock` when the folder is a tracked stage output, and always the md5 of its `manifest.parquet`).
"""

from __future__ import annotations

import functools
import hashlib
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel

if TYPE_CHECKING:
    from prelar import config

_BATCH = 100  # MLflow's limit of params / tags per log_batch call
TAG_GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own tag for the commit (shown in its UI)
METRICS = "metrics.json"  # a stage's final metrics, in its output folder (DVC reads a copy)
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}  # the UI opens on the runs table


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
    """Tags: the commit the code runs at, and whether the tree has uncommitted changes (none outside git)."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {TAG_GIT_COMMIT: sha, "git.dirty": str(bool(dirty)).lower()}


@functools.lru_cache(maxsize=4)
def _lock_stages(lock: str, mtime_ns: int) -> dict[str, Any]:
    """The stages of a `dvc.lock`, parsed once per version of the file (it grows with every stage run)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster on a large lock file
    return (yaml.load(Path(lock).read_text(), Loader=loader) or {}).get("stages", {})


def data_tags(path: str | Path, name: str = "data", root: str | Path = ".") -> dict[str, str]:
    """Tags identifying an input folder: its path, DVC md5 (from `dvc.lock`) and manifest md5, if present."""
    path = Path(path)
    tags = {f"{name}.path": str(path)}
    manifest = path / "manifest.parquet"
    if manifest.exists():
        tags[f"{name}.manifest_md5"] = hashlib.md5(manifest.read_bytes()).hexdigest()
    lock = Path(root) / "dvc.lock"
    if lock.exists():
        for stage in _lock_stages(str(lock.resolve()), lock.stat().st_mtime_ns).values():
            for out in stage.get("outs", []):
                if (Path(root) / out["path"]).resolve() == path.resolve() and "md5" in out:
                    tags[f"{name}.dvc_md5"] = out["md5"]
    return tags


class Run:
    """The open MLflow run of a stage, as `stage_run` yields it (a no-op on ranks other than the main one)."""

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


class _Signalled(BaseException):
    """Raised in the main thread by `stage_run`'s SIGTERM/SIGINT handler (not an `Exception`, like
    KeyboardInterrupt, so no `except Exception` on the way swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _raising_on_signals() -> Iterator[None]:
    """While open, SIGTERM and SIGINT raise `_Signalled` where their handlers are the defaults (a handler
    someone installed, or SIG_IGN as `nohup` sets it, stays as it is); the previous handlers come back after.
    Only the main thread can install handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame) -> None:
        raise _Signalled(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _experiment_id(client, name: str, uri: str) -> str:
    """The experiment's id, created (artifacts in `mlruns/` next to a SQLite store) if missing; tagged with
    EXPERIMENT_TAGS either way."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///") :]).parent / "mlruns").as_uri()
        try:
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except MlflowException:  # e.g. another process created it meanwhile (two `prelar online` at once)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    for key, value in EXPERIMENT_TAGS.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


@contextmanager
def stage_run(
    params: config.Params,
    name: str,
    tags: Mapping[str, str],
    *,
    resume_run_id: str | None = None,
    enabled: bool = True,
) -> Iterator[Run]:
    """The MLflow run of one stage, named `stage/method/...` (e.g. `finetune/prelar/drawer-open-v3/seed0`),
    in `params.mlflow.experiment` of `params.mlflow.tracking_uri`.

    A new run gets the flattened `params`; `resume_run_id`, if still in the store, is reopened instead
    (same id, params as first logged). Both get `tags` and the git commit. The run ends FINISHED when the
    block completes, FAILED when it raises, KILLED on SIGTERM or SIGINT (or KeyboardInterrupt), which then
    propagate as `SystemExit(128 + signal)` or KeyboardInterrupt, the exit codes a shell expects.
    `enabled=False` (ranks other than the main one) yields a run that logs nothing.
    """
    if not enabled:
        yield Run(None, None)
        return
    import mlflow
    from mlflow.entities import Param, RunStatus
    from mlflow.entities.lifecycle_stage import LifecycleStage
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(params.mlflow.tracking_uri)
    mlflow.set_tracking_uri(uri)  # what `mlflow.start_run` writes to
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, params.mlflow.experiment, uri)
    if resume_run_id is not None:
        try:
            if client.get_run(resume_run_id).info.lifecycle_stage != LifecycleStage.ACTIVE:
                resume_run_id = None
        except MlflowException:  # not in this store (e.g. a new database)
            resume_run_id = None
    tags = {**git_commit(), **tags}
    start = mlflow.start_run(run_id=resume_run_id, experiment_id=experiment_id, run_name=name, tags=tags)
    with start as active:
        run = Run(client, active.info.run_id)
        if resume_run_id is None:
            flat = [Param(k, v[:6000]) for k, v in flatten(params).items()]
            for i in range(0, len(flat), _BATCH):
                client.log_batch(run.run_id, params=flat[i : i + _BATCH])
        try:
            with _raising_on_signals():
                yield run
        except (_Signalled, KeyboardInterrupt) as stop:
            mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))  # the `with` then leaves the status as is
            if isinstance(stop, KeyboardInterrupt):
                raise
            if stop.signum == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise SystemExit(128 + stop.signum) from None
