"""The `prelar` command: one `--set` on every subcommand, flags as shorthands for parameters, errors that
name the key and end with a newline, and a run outside the repository on the built-in defaults."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from media import make_rlbench_tree

from prelar import cli

REPO = Path(__file__).resolve().parents[1]
PARAMS = str(REPO / "params.yaml")
PRELAR = Path(sys.executable).parent / "prelar"  # the installed command


@pytest.fixture(scope="module")
def rlbench(tmp_path_factory) -> Path:
    """Two RLBench episodes rendered by the front camera only (30 frames each)."""
    root = tmp_path_factory.mktemp("rlbench")
    make_rlbench_tree(root, episodes=2, cameras=("front",), frames=30, size=64)
    return root


def test_ingest_runs_outside_the_repository_on_the_built_in_defaults(rlbench, tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "elsewhere"  # no params.yaml here
    elsewhere.mkdir()
    out = tmp_path / "shards"
    args = ["ingest", "rlbench", "--src", str(rlbench), "--out", str(out)]
    # decoding in the main process: a worker would import torch again (the default, 2, is tested elsewhere)
    command = [str(PRELAR), *args, "--set", "data.shards.workers=0"]
    proc = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "built-in defaults" in line]
    assert notes == [f"prelar: no params.yaml in {elsewhere}; using the built-in defaults (prelar.config)"]
    assert "2 clips, 60 frames, 8 rejects" in proc.stdout  # the 4 other default cameras were not rendered
    assert pd.read_parquet(out / "manifest.parquet")["camera"].tolist() == ["front", "front"]

    monkeypatch.chdir(elsewhere)
    assert cli.main([*args, "--params", "missing.yaml"]) == 2  # an explicit parameter file must exist
    err = capsys.readouterr().err
    assert err.startswith("prelar: error: missing.yaml: parameter file not found;") and err.endswith("\n")


def test_set_works_for_ingest_and_report(rlbench, tmp_path, capsys):
    out = tmp_path / "shards"
    sets = [f"data.rlbench.src={rlbench}", "data.rlbench.cameras=[front]", "data.shards.workers=0"]
    argv = ["ingest", "rlbench", "--out", str(out), "--params", PARAMS]
    assert cli.main([*argv, *[f"--set={s}" for s in sets]]) == 0
    assert "2 clips, 60 frames, 0 rejects" in capsys.readouterr().out

    # `--set` wins over the flag that stands for the same parameter
    absent = tmp_path / "absent"
    code = cli.main(["ingest", "rlbench", "--src", str(rlbench), "--set", f"data.rlbench.src={absent}"])
    assert code == 2 and str(absent) in capsys.readouterr().err

    reports = tmp_path / "reports"
    store = f"mlflow.tracking_uri=sqlite:///{tmp_path / 'none.db'}"
    assert cli.main(["report", "--params", PARAMS, "--set", f"report.out={reports}", "--set", store]) == 0
    assert "no MLflow store at" in (reports / "report.html").read_text()


def test_a_bad_set_fails_naming_the_key(capsys):
    assert cli.main(["report", "--params", PARAMS, "--set", "report.outt=x"]) == 2
    err = capsys.readouterr().err
    assert err == "prelar: error: report.outt: unknown parameter 'report.outt'\n"
    assert cli.main(["ingest", "ssv2", "--params", PARAMS, "--set", "data.ssv2.frame_stride=every"]) == 2
    err = capsys.readouterr().err
    assert "data.ssv2.frame_stride: Input should be a valid integer" in err and err.endswith("\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", "--set", "report.out"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --set: 'report.out': expected KEY=VALUE" in err and err.endswith("\n")


@pytest.mark.parametrize(
    "command",
    [
        ["ingest", "metaworld"],
        ["ingest", "rlbench"],
        ["ingest", "ssv2"],
        ["pretrain"],
        ["finetune"],
        ["evaluate", "probe", "--checkpoints", "runs/pretrain/prelar"],
        ["evaluate", "controllability", "--checkpoints", "runs/pretrain/prelar"],
        ["evaluate", "transfer-data"],
        ["evaluate", "transfer"],
        ["report"],
    ],
)
def test_every_subcommand_takes_set_parsed_once_as_yaml(command):
    argv = [*command, "--set", "evaluate.seeds=[0, 1]", "--set", "data.ssv2.labels=null", "--profile", "tiny"]
    args = cli.build_parser(command[0]).parse_args(argv)
    assert args.set == [("evaluate.seeds", [0, 1]), ("data.ssv2.labels", None)]
    assert args.profile == "tiny" and args.params is None


def test_pretrain_refuses_parameters_that_are_another_variant(tmp_path, capsys):
    argv = ["pretrain", "--params", PARAMS, "--profile", "tiny", "--shards", str(tmp_path), "--out"]
    assert cli.main([*argv, str(tmp_path), "--set", "model.action_free=true"]) == 2  # default variant: prelar
    err = capsys.readouterr().err
    assert "variant 'prelar' is pre-trained with" in err and "--variant apv" in err and err.endswith("\n")
    assert not (tmp_path / "checkpoint.pt").exists()
