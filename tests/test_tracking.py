"""prelar.tracking: the one MLflow run context of every stage, on a real SQLite store in a temporary folder;
the KILLED case signals a real subprocess that holds a run open."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
from mlflow import MlflowClient

from prelar import config, tracking


@pytest.fixture(scope="module")
def store(tmp_path_factory, new_mlflow_store) -> str:
    return new_mlflow_store(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture()
def params(store, request) -> config.Params:
    return config.Params(
        mlflow={"tracking_uri": store, "experiment": request.node.name}
    )  # one experiment each


def _client(params: config.Params) -> MlflowClient:
    return MlflowClient(tracking.resolve_tracking_uri(params.mlflow.tracking_uri))


def test_a_completed_block_is_finished_named_tagged_and_in_a_model_development_experiment(params):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with tracking.stage_run(params, "pretrain/prelar", {"stage": "pretrain", "method": "prelar"}) as run:
        assert _client(params).get_run(run.run_id).info.status == "RUNNING"
        assert signal.getsignal(signal.SIGTERM) not in before  # the run's own handlers, for its duration
        run.log_metrics({"train/total": 1.5}, step=3)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    client = _client(params)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "pretrain/prelar"
    assert got.data.tags["stage"] == "pretrain" and got.data.tags["method"] == "prelar"
    assert got.data.params["model.deter"] == str(params.model.deter)
    assert got.data.metrics["train/total"] == 1.5
    experiment = client.get_experiment_by_name(params.mlflow.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_experiment_another_process_creates_meanwhile_is_joined(params):
    """Two `prelar online` started together both find no experiment, and both create it: one must join."""
    uri = tracking.resolve_tracking_uri(params.mlflow.tracking_uri)
    made = MlflowClient(uri).create_experiment(params.mlflow.experiment)  # the other process, just now

    class LookedBefore(MlflowClient):
        looked = False

        def get_experiment_by_name(self, name):
            if not self.looked:  # our first look came before the other process's create
                self.looked = True
                return None
            return super().get_experiment_by_name(name)

    assert tracking._experiment_id(LookedBefore(uri), params.mlflow.experiment, uri) == made
    experiment = _client(params).get_experiment(made)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_exception_fails_the_run_and_propagates(params):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ZeroDivisionError):
        with tracking.stage_run(params, "evaluate/probe/prelar/seed0", {"stage": "probe"}) as run:
            raise ZeroDivisionError
    assert _client(params).get_run(run.run_id).info.status == "FAILED"
    assert signal.getsignal(signal.SIGTERM) == before


def test_keyboard_interrupt_kills_the_run(params):
    with pytest.raises(KeyboardInterrupt):
        with tracking.stage_run(
            params, "finetune/dreamerv2/drawer-open-v3/seed0", {"stage": "finetune"}
        ) as run:
            raise KeyboardInterrupt
    assert _client(params).get_run(run.run_id).info.status == "KILLED"


def test_a_resumed_run_is_reopened_by_id_with_its_first_params(params):
    with tracking.stage_run(params, "pretrain/apv", {"stage": "pretrain", "attempt": "1"}) as first:
        first.log_metrics({"train/total": 2.0}, step=1)
    changed = params.model_copy(update={"seed": params.seed + 1})
    with tracking.stage_run(
        changed, "pretrain/apv", {"stage": "pretrain", "attempt": "2"}, resume_run_id=first.run_id
    ) as second:
        assert _client(params).get_run(second.run_id).info.status == "RUNNING"
        second.log_metrics({"train/total": 1.0}, step=2)
    assert second.run_id == first.run_id
    client = _client(params)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["attempt"] == "2"
    assert run.data.params["seed"] == str(params.seed)  # params stay as first logged
    assert [m.step for m in client.get_metric_history(first.run_id, "train/total")] == [1, 2]
    assert len(client.search_runs([run.info.experiment_id])) == 1
    # an id the store does not hold (a new database) starts a new run
    with tracking.stage_run(params, "pretrain/apv", {}, resume_run_id="0" * 32) as third:
        pass
    assert third.run_id != first.run_id and client.get_run(third.run_id).info.status == "FINISHED"


def test_a_disabled_run_logs_nothing_and_leaves_signals_alone(params):
    before = signal.getsignal(signal.SIGTERM)
    with tracking.stage_run(params, "pretrain/prelar", {}, enabled=False) as run:
        assert not run.enabled and signal.getsignal(signal.SIGTERM) == before
        run.log_metrics({"x": 1.0}, step=0)
    assert _client(params).get_experiment_by_name(params.mlflow.experiment) is None


HOLD_A_RUN = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from prelar import config, tracking

    # as started from a shell: a parent that ignores SIGINT (a pytest-xdist worker does) passes SIG_IGN on
    signal.signal(signal.SIGINT, signal.default_int_handler)
    params = config.Params(mlflow={"tracking_uri": sys.argv[1], "experiment": sys.argv[3]})
    with tracking.stage_run(params, "pretrain/prelar", {"stage": "pretrain"}) as run:
        Path(sys.argv[2] + ".tmp").write_text(run.run_id)
        os.replace(sys.argv[2] + ".tmp", sys.argv[2])
        time.sleep(60)
    """
)


@pytest.mark.parametrize(
    ("signum", "returncode"), [(signal.SIGTERM, 128 + 15), (signal.SIGINT, -signal.SIGINT)]
)
def test_a_signalled_process_leaves_a_killed_run_and_exits_as_signalled(params, tmp_path, signum, returncode):
    """SIGTERM exits 143 (128 + 15) after unwinding; SIGINT as Python's KeyboardInterrupt does (by SIGINT)."""
    started = tmp_path / "run_id"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOLD_A_RUN,
            params.mlflow.tracking_uri,
            str(started),
            params.mlflow.experiment,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while not started.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert started.exists(), proc.communicate(timeout=30)[1].decode()[-2000:]
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == returncode, proc.stderr.read().decode()[-2000:]
    assert _client(params).get_run(started.read_text()).info.status == "KILLED"
