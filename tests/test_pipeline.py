"""End to end: the real DVC pipeline (`dvc repro`) on the `tiny` profile, in a copy of the repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the working tree (tracked and untracked-but-not-ignored files) with `profile: tiny`."""
    dst = tmp_path_factory.mktemp("pipeline") / "repo"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["profile"] = "tiny"
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"]):
        _run(cmd, dst, env)
    return dst, env


@pytest.fixture(scope="module")
def reproduced(tiny_repo) -> tuple[Path, dict, str]:
    """The copy after one `dvc repro`, and what `dvc status` then says about the default pipeline (asked
    here, before a test's `dvc exp run` changes the workspace)."""
    repo, env = tiny_repo
    dvc = [sys.executable, "-m", "dvc"]
    _run([*dvc, "repro"], repo, env)
    return repo, env, _run([*dvc, "status", "dvc.yaml"], repo, env).stdout  # not external/


def test_dvc_repro_tiny_profile(reproduced):
    repo, env, status = reproduced
    dvc = [sys.executable, "-m", "dvc"]

    # Every stage of dvc.yaml (foreach and matrix expanded) ran and left its outputs.
    listed = _run([*dvc, "stage", "list", "--name-only"], repo, env).stdout.split()
    locked = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert sorted(listed) == sorted(locked), (listed, sorted(locked))
    expected = {"ingest_metaworld", "pretrain@prelar", "pretrain@apv", "evaluate_transfer", "report"}
    assert expected <= set(locked)
    for name, stage in locked.items():
        for out in stage.get("outs", []):
            path = repo / out["path"]
            assert path.exists(), f"stage {name}: output {path} missing"
            if path.suffix == ".json":
                assert json.loads(path.read_text()), f"stage {name}: metrics {path} empty"

    ingest = json.loads((repo / "metrics/ingest_metaworld.json").read_text())
    assert ingest["clips"] == 4 and ingest["rejects"] == 0  # tiny: 2 tasks x 2 episodes, 1 camera
    for variant in ("prelar", "prelar_no_cl", "prelar_no_cl_al", "apv"):
        trained = json.loads((repo / f"metrics/pretrain_{variant}.json").read_text())
        assert trained["step"] == 6 and np.isfinite(trained["train/total"]), trained
        assert (repo / f"runs/pretrain/{variant}/checkpoint.pt").stat().st_size > 0
    assert "untrained" in (repo / "runs/evaluate/probe/probe.csv").read_text()
    transfer = (repo / "runs/evaluate/transfer/transfer.csv").read_text()
    assert "prelar" in transfer and "apv" in transfer and "dreamerv2" in transfer
    curves = (repo / "runs/finetune/prelar/drawer-open-v3/seed0/curve.csv").read_text().splitlines()
    assert len(curves) >= 2  # header + at least one evaluation
    report = (repo / "reports/report.html").read_text()
    for method in ("prelar", "apv", "dreamerv2"):
        assert method in report
    assert "data:image/png;base64," in report

    # Everything was up to date: a second `dvc repro` would have run nothing (it decides by the same check).
    assert "up to date" in status.lower(), status


def test_readme_sweep_exp_run_exp_show_and_mlflow(reproduced):
    """The README's sweep over a pre-training parameter: the workspace's own run (β_r = 1, by `dvc
    repro`), then one `dvc exp run -S` per other value; `dvc exp show` lists the experiment with its value
    and metrics, and MLflow holds both runs, to compare."""
    import mlflow

    repo, env, _ = reproduced
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"]):
        _run(cmd, repo, env)  # `dvc exp run` commits the workspace's changes to an experiment ref
    metrics = repo / "metrics/pretrain_prelar.json"
    final = {1.0: json.loads(metrics.read_text())["train/total"]}  # beta_r -> final pre-training loss
    _run([*dvc, "exp", "run", "pretrain@prelar", "-S", "model.beta_r=0.5"], repo, env)

    shown = json.loads(_run([*dvc, "exp", "show", "--json"], repo, env).stdout)
    revs = [rev for base in shown for exp in base.get("experiments") or [] for rev in exp["revs"]]
    assert len(revs) == 1, shown
    data = revs[0]["data"]
    assert data["params"]["params.yaml"]["data"]["model"]["beta_r"] == 0.5, shown
    final[0.5] = data["metrics"]["metrics/pretrain_prelar.json"]["data"]["train/total"]
    assert final[0.5] != final[1.0]  # β_r weights the consistency term of the loss (Eq. 9)

    tracking = yaml.safe_load((repo / "params.yaml").read_text())["mlflow"]
    assert tracking["tracking_uri"] == "sqlite:///mlflow.db"  # relative: the repository root, where DVC runs
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(tracking["experiment"])
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.stage = 'pretrain' and tags.method = 'prelar'"
    )
    logged = {float(run.data.params["model.beta_r"]): run for run in runs}
    for value in final:
        run = logged[value]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["train/total"] == pytest.approx(final[value])
