"""`prelar study`: pre-training runs with learning curves, and the study's figure and tables."""

import numpy as np
import pandas as pd
import pytest

from prelar import cli, config, study
from prelar.data.shards import write_shards
from tests.test_pretrain import REPO, point_mass_clips


def test_summary_finds_the_first_update_past_each_yardstick():
    points = pd.DataFrame(
        {
            "run": ["a"] * 3 + ["b"] * 3,
            "seed": [0] * 6,
            "step": [0, 100, 200] * 2,
            "frames": [0, 1000, 2000] * 2,
            "pred_mse_ratio": [3.0, 0.9, 0.8, 3.0, 2.0, 1.5],
            "probe_r2": [0.0, 0.2, 0.6, 0.0, 0.1, 0.1],
        }
    )
    rows = study.summarize(points).set_index("run")
    assert rows.loc["a", "beats_copy_last_at"] == 100 and rows.loc["a", "beats_copy_last_frames"] == 1000
    assert rows.loc["a", "probe_r2_0.5_at"] == 200 and rows.loc["a", "probe_r2"] == 0.6
    assert np.isinf(rows.loc["b", "beats_copy_last_at"]) and np.isinf(rows.loc["b", "probe_r2_0.5_at"])
    no_probe = study.summarize(points.assign(probe_r2=np.nan)).set_index("run")  # APV: no latent actions
    assert "probe_r2_0.5_at" not in no_probe or no_probe["probe_r2_0.5_at"].isna().all()


def test_study_trains_each_run_and_seed_then_writes_curves_and_summary(tmp_path, monkeypatch):
    write_shards(point_mass_clips(episodes=6), tmp_path / "shards", clips_per_shard=2)
    monkeypatch.chdir(tmp_path)
    common = [
        "--params", str(REPO / "params.yaml"), "--profile", "tiny",
        "--set", "study.steps=2", "--set", "study.curve_every=1", "--set", "study.seeds=[0, 1]",
        "--set", "loader.holdout_fraction=0.5", "--set", "pretrain.device=cpu",
        "--set", "pretrain.eval_clips=2",
        "--set", "study.runs={a: {variant: prelar, model: {beta_a: 0.1}}, b: {variant: apv}}",
        "--runs", "a", "b",  # `--set study.runs=` adds to the default runs; `--runs` picks
    ]  # fmt: skip
    assert cli.main(["study", "--shards", "shards", *common]) == 0
    docs = tmp_path / "docs/study"
    points = pd.read_csv(docs / "curves.csv")
    runs = sorted(set(zip(points["run"], points["seed"], strict=True)))
    assert runs == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert sorted(points["step"].unique()) == [0, 1, 2]
    assert points.loc[points["run"] == "b", "probe_r2"].isna().all()  # APV has no latent actions
    assert points.loc[points["run"] == "a", "probe_r2"].notna().all()
    summary = (docs / "summary.md").read_text()
    assert "| a | 0,1 |" in summary and "| b | 0,1 |" in summary
    assert "pixel differences pooled to 16x16 (no model): R² " in summary
    assert (docs / "learning_curves.png").stat().st_size > 10_000

    from prelar.checkpoint import load

    a0 = load(tmp_path / "runs/study/a/seed0/checkpoint.pt")
    assert a0["model_config"]["beta_a"] == 0.1 and a0["step"] == 2
    # a complete study is not trained again: only the summary is rewritten
    before = (tmp_path / "runs/study/a/seed0/checkpoint.pt").stat().st_mtime_ns
    assert cli.main(["study", "--summary-only", "--shards", "shards", *common]) == 0
    assert (tmp_path / "runs/study/a/seed0/checkpoint.pt").stat().st_mtime_ns == before


def test_a_study_run_must_name_a_registered_variant_and_model_keys():
    with pytest.raises(config.ConfigError, match="unknown_variant|not `model` parameters"):
        config.resolve({"study": {"runs": {"x": {"variant": "prelar", "model": {"beta_z": 1.0}}}}})
    with pytest.raises(config.ConfigError, match="contradict"):
        config.resolve({"study": {"runs": {"x": {"variant": "apv", "model": {"action_free": False}}}}})
