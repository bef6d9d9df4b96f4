"""`prelar evaluate <what>` end to end: tiny models pre-trained for two steps on point-mass shards, two
rendered Meta-world downstream episodes, a temporary MLflow store read back with `mlflow.search_runs`."""

import json
from pathlib import Path

import mlflow
import pytest
import torch
from test_pretrain import point_mass_clips, tiny_params

from prelar import checkpoint, cli, config, pretrain, tracking
from prelar.data.shards import write_shards
from prelar.evaluate import stages
from prelar.metrics import delta_psnr_metric, transfer_metric

REPO = Path(__file__).resolve().parents[1]
HORIZON = config.Evaluate().horizon


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and two threads crawl when another process holds a core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def work(tmp_path_factory, new_mlflow_store) -> dict:
    """Point-mass shards with actions, PreLAR and APV checkpoints (2 steps each), a tmp MLflow store."""
    root = tmp_path_factory.mktemp("evaluate")
    write_shards(point_mass_clips(episodes=6), root / "shards", clips_per_shard=4)
    uri = new_mlflow_store(root)
    params = tiny_params(uri, steps=2)
    pretrain.pretrain(params, root / "shards", root / "prelar")
    apv = config.override(params, pretrain.variant_updates(params, "apv"))
    pretrain.pretrain(apv, root / "shards", root / "apv", variant="apv")
    return {"root": root, "uri": uri}


def _cli(work: dict, *args: str) -> int:
    sets = [
        f"mlflow.tracking_uri={work['uri']}",
        "mlflow.experiment=evaluate-test",
        "evaluate.device=cpu",
        "loader.holdout_fraction=0.75",  # most clips held out: controllability finds >= 2 held-out episodes
        "data.shards.workers=0",
        "evaluate.transfer_episodes=2",
        "evaluate.transfer_test_fraction=0.5",
        "evaluate.transfer_updates=[0,2]",
    ]
    return cli.main(
        ["evaluate", *args, "--params", str(REPO / "params.yaml"), "--profile", "tiny"]
        + [f"--set={s}" for s in sets]
    )


def _runs(work: dict, stage: str):
    uri = tracking.resolve_tracking_uri(work["uri"])
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["evaluate-test"], filter_string=f"tags.stage = '{stage}'")


def test_checkpoints_are_named_by_the_variant_they_record(work, tmp_path):
    root = work["root"]
    loaded = stages.load_checkpoints([root / "prelar", root / "apv" / "checkpoint.pt"], torch.device("cpu"))
    assert [(name, path) for name, path, _ in loaded] == [
        ("prelar", root / "prelar" / "checkpoint.pt"),
        ("apv", root / "apv" / "checkpoint.pt"),
    ]
    ckpt = checkpoint.load(root / "prelar" / "checkpoint.pt")
    del ckpt["extra"]["variant"]  # a checkpoint that does not say what it is: no guessing from switches
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    with pytest.raises(config.ConfigError, match="records no known pre-training variant"):
        stages.load_checkpoints([tmp_path], torch.device("cpu"))


def test_probe_skips_action_free_models_and_logs_r2_per_method(work, capsys, tmp_path):
    out, metrics_path = work["root"] / "probe", work["root"] / "metrics" / "probe.json"
    code = _cli(
        work,
        "probe",
        "--checkpoints",
        str(work["root"] / "prelar"),
        str(work["root"] / "apv"),
        "--shards",
        str(work["root"] / "shards"),
        "--out",
        str(out),
        "--metrics",
        str(metrics_path),
    )
    assert code == 0
    assert "skipping" in capsys.readouterr().out
    metrics = json.loads(metrics_path.read_text())
    assert metrics.pop("seconds") > 0  # timings only in the --metrics file, not in the output (its DVC hash)
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert set(metrics["probe_r2"]) == {"prelar", "untrained"} and list(metrics["skipped"]) == [
        str(work["root"] / "apv" / "checkpoint.pt")
    ]
    assert metrics["clip_split"] == "all"  # the held-out clips hold fewer than min_holdout_episodes episodes
    assert metrics["clips"] == 8 and metrics["episodes"] == 4  # tiny: probe_clips 8, two cameras per episode
    assert (out / "probe_r2.png").stat().st_size > 0 and (out / "probe.csv").exists()
    runs = _runs(work, "probe")
    assert sorted(runs["tags.method"]) == ["prelar", "untrained"]
    assert set(runs["tags.seed"]) == {"0"} and runs["metrics.probe/r2"].notna().all()
    prelar = runs[runs["tags.method"] == "prelar"].iloc[0]
    assert prelar["metrics.probe/r2"] == pytest.approx(metrics["probe_r2"]["prelar"]["mean"])
    # pre-training's end-of-run probe is the same probe on the same clips: the same number for the same model
    params = config.override(
        config.load(REPO / "params.yaml", profile="tiny"),
        {"evaluate.device": "cpu", "loader.holdout_fraction": 0.75, "pretrain.eval_clips": 0},
    )
    model, _ = checkpoint.load_world_model(work["root"] / "prelar" / "checkpoint.pt")
    end_of_run = pretrain.evaluate(model.eval(), params, work["root"] / "shards", tmp_path)
    stage = metrics["probe_r2"]
    assert end_of_run["probe_r2"] == pytest.approx(stage["prelar"]["mean"], abs=1e-9)
    assert end_of_run["probe_r2_untrained"] == pytest.approx(stage["untrained"]["mean"], abs=1e-9)


def test_controllability_logs_delta_psnr_per_horizon(work):
    out = work["root"] / "controllability"
    code = _cli(
        work,
        "controllability",
        "--checkpoints",
        str(work["root"] / "prelar"),
        "--shards",
        str(work["root"] / "shards"),
        "--out",
        str(out),
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["clip_split"] == "holdout" and metrics["windows"] >= 2
    assert (out / "delta_psnr.png").stat().st_size > 0
    runs = _runs(work, "controllability")
    assert list(runs["tags.method"]) == ["prelar"]
    client = mlflow.MlflowClient()
    history = client.get_metric_history(runs["run_id"][0], delta_psnr_metric(HORIZON))
    assert [m.step for m in history] == [HORIZON]
    steps = {k for k in range(1, HORIZON + 1) if f"metrics.{delta_psnr_metric(k)}" in runs}
    assert steps == set(range(1, HORIZON + 1))


def test_transfer_data_and_transfer_end_to_end(work):
    data = work["root"] / "downstream"
    assert _cli(work, "transfer-data", "--out", str(data)) == 0
    ingest = json.loads((data / "metrics.json").read_text())
    assert ingest["clips"] == 2 and ingest["rejects"] == 0 and (data / "contact_sheet.png").exists()

    out = work["root"] / "transfer"
    code = _cli(
        work,
        "transfer",
        "--checkpoints",
        str(work["root"] / "prelar"),
        str(work["root"] / "apv"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--metrics",
        str(work["root"] / "transfer.json"),
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    timed = json.loads((work["root"] / "transfer.json").read_text())
    assert {"seconds", "run_seconds", "updates_per_s"} <= set(timed) - set(metrics)  # not in the output
    assert set(metrics["mse"]) == {"prelar", "apv", "dreamerv2"}
    assert all(set(v) == {"k0", "k2"} for v in metrics["mse"].values())
    assert metrics["splits"]["0"] == {"train_episodes": 1, "test_episodes": 1}
    assert metrics["copy_last_frame"]["mse"] > 0
    assert (out / "transfer_mse.png").stat().st_size > 0 and (out / "transfer_psnr.png").exists()
    runs = _runs(work, "transfer")
    assert sorted(runs["tags.method"]) == ["apv", "dreamerv2", "prelar"]
    for K in (0, 2):
        assert runs[f"metrics.{transfer_metric(K)}"].notna().all()
    scratch = runs[runs["tags.method"] == "dreamerv2"].iloc[0]
    assert scratch["metrics." + transfer_metric(2)] == pytest.approx(metrics["mse"]["dreamerv2"]["k2"])


def test_bad_inputs_fail_with_one_line(work, capsys):
    missing = work["root"] / "nowhere"
    assert _cli(work, "probe", "--checkpoints", str(missing), "--shards", str(work["root"] / "shards")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere/checkpoint.pt" in err and "prelar pretrain" in err

    assert _cli(work, "transfer", "--data", str(missing), "--out", str(work["root"] / "t")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nowhere" in err and "transfer-data" in err

    # a downstream task that pre-training also renders would measure nothing about transfer
    code = _cli(
        work, "transfer-data", "--out", str(missing), "--set", "evaluate.transfer_tasks=[drawer-close-v3]"
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "evaluate.transfer_tasks" in err and "drawer-close-v3" in err
    assert not missing.exists()
