"""`prelar study`: pre-training runs with learning curves, and the study's figure and tables."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from prelar import cli, config, over_seeds, study
from prelar.data.shards import write_shards
from prelar.evaluate import probe
from tests.test_pretrain import REPO, point_mass_clips


def test_summary_finds_the_first_update_past_each_yardstick():
    points = pd.DataFrame(
        {
            "run": ["a"] * 3 + ["b"] * 3,
            "seed": [0] * 6,
            "step": [0, 100, 200] * 2,
            "frames": [0, 1000, 2000] * 2,
            "pred_mse_ratio": [3.0, 0.9, 0.8, 3.0, 2.0, 1.5],
            "probe_r2": [0.0, 0.4, 0.6, 0.0, 0.1, 0.1],
            "probe_r2_untrained": [0.05] * 6,
        }
    )
    rows = study.summarize(points).set_index("run")
    assert rows.loc["a", "beats_copy_last_at"] == 100 and rows.loc["a", "beats_copy_last_frames"] == 1000
    assert rows.loc["a", "probe_r2_0.5_at"] == 200 and rows.loc["a", "probe_r2"] == 0.6
    assert rows.loc["a", "probe_margin_0.3_at"] == 100  # 0.4 is 0.35 above the untrained encoder's 0.05
    assert np.isinf(rows.loc["b", "beats_copy_last_at"]) and np.isinf(rows.loc["b", "probe_r2_0.5_at"])
    assert np.isinf(rows.loc["b", "probe_margin_0.3_at"])
    lower = study.summarize(points.assign(probe_r2_untrained=-0.25)).set_index("run")  # 0.1: +0.35
    assert lower.loc["b", "probe_margin_0.3_at"] == 100
    no_probe = study.summarize(points.assign(probe_r2=np.nan)).set_index("run")  # APV: no latent actions
    assert "probe_r2_0.5_at" not in no_probe or no_probe["probe_r2_0.5_at"].isna().all()


def test_cells_give_a_t_interval_over_three_seeds_and_count_seeds_that_never_got_there():
    cell = over_seeds.cell(pd.Series([1.0, 2.0, 3.0]))  # mean 2, s = 1: 2 +- 4.303 / sqrt(3)
    assert cell == "2 [-0.484, 4.48]"
    assert over_seeds.cell(pd.Series([0.1, 0.3])) == "0.2 [0.1, 0.3]"
    assert over_seeds.cell(pd.Series([400.0, np.inf, 600.0])) == "2/3 seeds: 500"
    assert over_seeds.cell(pd.Series([np.inf, np.inf])) == "never"
    assert over_seeds.cell(pd.Series([np.nan])) == "—"


def test_differences_pair_runs_by_seed():
    per_seed = pd.DataFrame(
        {
            "run": ["prelar"] * 3 + ["apv"] * 3,
            "seed": [0, 1, 2, 2, 0, 1],  # apv's seeds listed in another order: paired by seed, not by row
            "pred_mse_ratio": [1.0, 1.2, 1.4, 1.5, 1.1, 1.3],
            "delta_psnr": [0.5, 0.4, 0.6] + [np.nan] * 3,  # APV has no latent actions
            "updates": [100] * 6,
        }
    )
    rows = study.differences(per_seed, "prelar")
    assert rows["measurement"].tolist() == ["pred_mse_ratio"]
    row = rows.iloc[0]
    assert row["run"] == "apv" and row["seeds"] == 3
    assert row["mean"] == pytest.approx(0.1) and row["low"] == pytest.approx(0.1)  # +0.1 in every seed
    unfinished = per_seed.assign(updates=[100, 100, 100, 40, 100, 100])  # apv seed 2 stopped early
    assert study.differences(unfinished, "prelar").iloc[0]["seeds"] == 2


def test_the_figure_lines_runs_up_by_frames_seen_when_their_batches_differ():
    def points(run: str, frames_per_update: int, steps: list[int]) -> pd.DataFrame:
        return pd.DataFrame(
            {"run": run, "seed": 0, "step": steps, "frames": [s * frames_per_update for s in steps],
             "delta_psnr": [0.1 * s / 100 for s in steps]}
        )

    def ax_of(table: pd.DataFrame):
        fig = study.learning_figure(table)
        (ax,) = [ax for ax in fig.axes if ax.get_title().startswith("ΔPSNR")]
        return ax, {line.get_label(): np.asarray(line.get_xdata(), float) for line in ax.get_lines()}

    same = pd.concat([points("a", 256, [0, 100, 200]), points("b", 256, [0, 100])])
    ax, lines = ax_of(same)
    assert ax.get_xlabel() == "update"
    np.testing.assert_allclose(lines["a s0"], [0, 100, 200])
    larger_batch = pd.concat([points("a", 256, [0, 100, 200]), points("b", 512, [0, 100])])
    ax, lines = ax_of(larger_batch)
    assert ax.get_xlabel() == "frames seen (thousands)"
    np.testing.assert_allclose(lines["a s0"], [0, 25.6, 51.2])
    np.testing.assert_allclose(lines["b s0"], [0, 51.2])  # b's update 100 lines up with a's 200


def test_transfer_summary_pairs_each_run_with_scratch_of_its_seed():
    rows = pd.DataFrame(
        {
            "run": ["prelar"] * 4 + ["scratch"] * 4,
            "seed": [0, 0, 1, 1, 1, 1, 0, 0],  # scratch's seeds in another order: paired by seed, not by row
            "updates": [0, 10] * 4,
            "mse": [0.02, 0.01, 0.03, 0.012, 0.06, 0.024, 0.04, 0.02],
            "psnr": [20.0] * 8,
            "copy_last_mse": [0.005] * 4 + [0.005] * 4,
        }
    )
    table = study.transfer_summary(rows).set_index(["run", "seed"])
    assert table.loc[("prelar", 0), "vs_scratch_k0"] == pytest.approx(0.5)  # 0.02 / 0.04
    assert table.loc[("prelar", 1), "vs_scratch_k10"] == pytest.approx(0.5)  # 0.012 / 0.024
    assert table.loc[("prelar", 0), "vs_copy_last"] == pytest.approx(2.0)  # at the last K: 0.01 / 0.005
    assert table.loc[("scratch", 0), "mse_k10"] == 0.02
    assert pd.isna(table.loc[("scratch", 0), "vs_scratch_k0"])  # scratch is the yardstick
    assert (table["updates"] == 10).all()
    diverged = study.transfer_summary(rows.assign(mse=rows["mse"].where(rows["run"] == "prelar", 0.0)))
    assert diverged["vs_scratch_k10"].isna().all()  # a ratio to 0 is no value (summary.json has no inf)


def test_study_trains_each_run_and_seed_then_writes_curves_and_summary(tmp_path, monkeypatch, capsys):
    clips = [  # with Meta-world's 4-d actions and rewards, as the true-action world model needs (Eq. 11)
        dataclasses.replace(c, actions=np.pad(c.actions, ((0, 0), (0, 2))), rewards=-np.abs(c.actions).sum(1))
        for c in point_mass_clips(episodes=6)
    ]
    write_shards(clips, tmp_path / "shards", clips_per_shard=2)
    monkeypatch.chdir(tmp_path)
    common = [
        "--params", str(REPO / "params.yaml"), "--profile", "tiny",
        "--set", "study.steps=2", "--set", "study.curve_every=1", "--set", "study.seeds=[0, 1]",
        "--set", "loader.holdout_fraction=0.5", "--set", "pretrain.device=cpu",
        "--set", "pretrain.eval_clips=2",
        "--set", "study.supervised_updates=2", "--set", "study.supervised_batch_size=4",
        "--set", "study.true_action_updates=2",
        "--set", "study.transfer_updates=[0, 2]", "--set", "study.transfer_episodes=3",
        "--set", "study.runs={prelar: {model: {beta_a: 0.1}}}",  # `--set study.runs=` updates the runs ...
        "--runs", "prelar", "apv",  # ... and `--runs` picks
    ]  # fmt: skip
    assert cli.main(["study", "--shards", "shards", *common]) == 0
    docs = tmp_path / "docs/study"
    points = pd.read_csv(docs / "curves.csv")
    runs = sorted(set(zip(points["run"], points["seed"], strict=True)))
    assert runs == [("apv", 0), ("apv", 1), ("prelar", 0), ("prelar", 1)]
    assert sorted(points["step"].unique()) == [0, 1, 2]
    assert points.loc[points["run"] == "apv", "probe_r2"].isna().all()  # APV has no latent actions
    assert points.loc[points["run"] == "prelar", "probe_r2"].notna().all()
    summary = (docs / "summary.md").read_text()
    assert "| prelar | 0,1 |" in summary and "| apv | 0,1 |" in summary
    assert "pixel differences pooled to 16x16 (no model): R² " in summary
    assert "true actions of the pre-training clips (the ceiling, not in the papers): R² " in summary
    metrics = json.loads((docs / "summary.json").read_text())  # what `dvc metrics show` reads
    assert set(metrics["runs"]) == {"prelar", "apv"} and metrics["runs"]["prelar"]["seeds"] == 2
    ratio = metrics["runs"]["prelar"]["pred_mse_ratio"]
    assert ratio["low"] <= ratio["mean"] <= ratio["high"]
    assert metrics["runs"]["apv"]["probe_r2"] is None  # APV: no latent actions
    assert {"probe_pixel_difference_r2", "probe_supervised_inverse_dynamics_r2"} <= set(metrics)
    assert metrics["probe_fit"] == "held_out" and "probe_fit: pretraining" not in summary
    true_actions = metrics["true_action_model"]  # trained with the clips' actions, kept with its settings
    assert true_actions["updates"] == 2 and true_actions["windows"] >= 2
    assert true_actions["pred_mse_ratio"] == pytest.approx(
        true_actions["pred_mse"] / true_actions["pred_copy_last_frame_mse"]
    )
    assert np.isfinite(true_actions["delta_psnr"]) and "true actions" in summary
    kept = tmp_path / "runs/study/true_actions/seed0.json"
    assert json.loads(kept.read_text())["measured"] == true_actions
    versus = metrics["minus_prelar"]["apv"]["pred_mse_ratio"]  # paired by seed
    apv_ratio = metrics["runs"]["apv"]["pred_mse_ratio"]["mean"]
    assert versus["seeds"] == 2 and versus["mean"] == pytest.approx(apv_ratio - ratio["mean"])
    assert "Each run minus `prelar`" in summary
    assert (docs / "learning_curves.png").stat().st_size > 10_000

    # offline transfer: each run's checkpoint and scratch, seed by seed, on downstream episodes rendered at
    # the study data's action repeat
    source = json.loads((tmp_path / "runs/study/downstream/rendered_from.json").read_text())["source"]
    assert source["tasks"] == ["drawer-open-v3"] and source["action_repeat"] == 4  # study.data's
    assert source["episodes_per_task"] == 3
    rows = pd.read_csv(docs / "transfer.csv")
    assert sorted(set(zip(rows["run"], rows["seed"], strict=True))) == [
        ("apv", 0), ("apv", 1), ("prelar", 0), ("prelar", 1), ("scratch", 0), ("scratch", 1)
    ]  # fmt: skip
    assert sorted(rows["updates"].unique()) == [0, 2]
    assert rows.groupby("seed")["copy_last_mse"].nunique().eq(1).all()  # one seed: the same held-out windows
    scratch = rows[rows["run"] == "scratch"].set_index(["seed", "updates"])["mse"]
    prelar = rows[rows["run"] == "prelar"].set_index(["seed", "updates"])["mse"]
    transferred = metrics["transfer"]["runs"]
    assert set(transferred) == {"prelar", "apv", "scratch"}
    ratio = (prelar / scratch).xs(2, level="updates")  # per seed
    assert transferred["prelar"]["vs_scratch_k2"]["mean"] == pytest.approx(ratio.mean())
    assert transferred["scratch"]["vs_scratch_k2"] is None
    assert metrics["transfer"]["minus_prelar"]["apv"]["vs_scratch_k2"]["seeds"] == 2
    assert "## Offline transfer" in summary and (docs / "transfer.png").stat().st_size > 10_000
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("prelar-study")  # study.experiment
    logged = client.search_runs([experiment.experiment_id], "tags.stage = 'transfer'")
    assert len(logged) == 6  # two runs and scratch, seeds 0 and 1
    (one,) = [r for r in logged if r.info.run_name == "study/prelar/seed1/transfer"]
    assert one.data.metrics["transfer/mse_k2"] == pytest.approx(prelar[1, 2])

    from prelar.checkpoint import load

    prelar0 = load(tmp_path / "runs/study/prelar/seed0/checkpoint.pt")
    assert prelar0["model_config"]["beta_a"] == 0.1 and prelar0["step"] == 2
    # a complete study is not trained again: only the summary is rewritten
    (transfer_kept,) = (tmp_path / "runs/study/scratch/seed1/transfer").glob("*.json")
    outputs = (tmp_path / "runs/study/prelar/seed0/checkpoint.pt", kept, transfer_kept)
    before = [path.stat().st_mtime_ns for path in outputs]
    assert cli.main(["study", "--summary-only", "--shards", "shards", *common]) == 0
    assert [path.stat().st_mtime_ns for path in outputs] == before
    # other settings: measured again
    again = ["study", "--summary-only", "--shards", "shards", *common, "--set", "study.true_action_updates=1"]
    assert cli.main(again) == 0
    assert json.loads(kept.read_text())["measured"]["updates"] == 1
    assert transfer_kept.stat().st_mtime_ns == before[2]  # the transfer's settings did not change
    longer = [*again, "--set", "study.transfer_updates=[0, 3]", "--runs", "prelar"]
    assert cli.main(longer) == 0  # other transfer settings: measured, and kept beside the first
    assert len(list(transfer_kept.parent.glob("*.json"))) == 2 and transfer_kept.exists()
    assert sorted(pd.read_csv(docs / "transfer.csv")["updates"].unique()) == [0, 3]
    capsys.readouterr()
    assert cli.main([*again, "--set", "study.transfer_updates=[]"]) == 0  # the summary without a transfer
    assert "no offline transfer (study.transfer_updates is empty)" in capsys.readouterr().out
    assert "## Offline transfer" not in (docs / "summary.md").read_text()
    assert not (docs / "transfer.csv").exists() and not (docs / "transfer.png").exists()
    kept_before = kept.read_text()
    assert cli.main([*again, "--set", "study.true_action_updates=0"]) == 0  # the summary without it
    assert "no true-action world model (study.true_action_updates is 0)" in capsys.readouterr().out
    assert "yardstick from labels: not measured" in (docs / "summary.md").read_text()
    assert json.loads((docs / "summary.json").read_text())["true_action_model"] is None
    assert kept.read_text() == kept_before  # the kept measurement stays for the settings it was made with
    unfinished = [*again, "--set", "study.steps=3"]  # every checkpoint is at update 2 of 3 now
    assert cli.main(unfinished) == 0
    said = capsys.readouterr().out
    assert "no offline transfer of prelar seed 0: its checkpoint is at update 2 of 3" in said
    assert "## Offline transfer" not in (docs / "summary.md").read_text()
    assert not (docs / "transfer.csv").exists() and not (docs / "transfer.png").exists()  # none left stale
    checkpoint = tmp_path / "runs/study/prelar/seed0/checkpoint.pt"
    checkpoint.rename(checkpoint.with_suffix(".moved"))  # a run whose curves came without its checkpoint
    assert cli.main(["study", "--summary-only", "--shards", "shards", *common]) == 0
    said = capsys.readouterr().out
    missing = "no offline transfer of prelar seed 0: no checkpoint at runs/study/prelar/seed0/checkpoint.pt"
    assert missing in said
    rows = pd.read_csv(docs / "transfer.csv")
    assert sorted(set(zip(rows["run"], rows["seed"], strict=True))) == [
        ("apv", 0), ("apv", 1), ("prelar", 1), ("scratch", 0), ("scratch", 1)
    ]  # fmt: skip


def test_the_study_renders_its_own_shards_and_says_how_when_they_are_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = "{tasks: [button-press-v3], episodes_per_task: 1, max_steps: 26, action_repeat: 2}"
    common = ["--params", str(REPO / "params.yaml"), "--set", f"study.data={data}"]
    common += ["--set", "data.shards.workers=0"]
    assert cli.main(["study", "--runs", "prelar", *common]) == 2
    assert "prelar ingest metaworld --study" in capsys.readouterr().err
    assert cli.main(["ingest", "metaworld", "--study", *common]) == 0
    manifest = pd.read_parquet(tmp_path / "datasets/shards/study/manifest.parquet")  # study.data.out
    assert manifest["id"].tolist() == ["metaworld/button-press-v3/corner/ep0000"]
    assert manifest["frames"].tolist() == [27]
    assert not (tmp_path / "datasets/shards/metaworld").exists()  # the default shards are left alone
    assert cli.main(["ingest", "metaworld", "--study", "--out", "elsewhere", *common]) == 0
    assert (tmp_path / "elsewhere/manifest.parquet").exists()
    with pytest.raises(config.ConfigError, match=r"study.data.*'action_repeats'.*not data.metaworld"):
        config.resolve({"study": {"data": {"action_repeats": 4, "out": "s"}}})
    with pytest.raises(config.ConfigError, match=r"study.data.*action_repeat.*greater than 0"):
        config.resolve({"study": {"data": {"action_repeat": 0, "out": "s"}}})
    with pytest.raises(config.ConfigError, match=r"study.data.*own `out`"):
        config.resolve({"study": {"data": {"action_repeat": 4}}})
    same = config.resolve({"study": {"data": {"out": "datasets/shards/metaworld"}}})
    with pytest.raises(config.ConfigError, match=r"study.data.out.*also data.metaworld.out"):
        same.study.source(same.data.metaworld)


def test_a_study_run_must_name_a_registered_variant_and_model_keys():
    with pytest.raises(config.ConfigError, match="unknown_variant|not `model` parameters"):
        config.resolve({"study": {"runs": {"x": {"variant": "prelar", "model": {"beta_z": 1.0}}}}})
    with pytest.raises(config.ConfigError, match="contradict"):
        config.resolve({"study": {"runs": {"x": {"variant": "apv", "model": {"action_free": False}}}}})
    with pytest.raises(config.ConfigError, match=r"\['batch'\] are not `loader` parameters"):
        config.resolve({"study": {"runs": {"x": {"loader": {"batch": 32}}}}})
    with pytest.raises(config.ConfigError, match=r"`pretrain` \['steps'\]: the study sets these"):
        config.resolve({"study": {"runs": {"x": {"pretrain": {"steps": 10}}}}})
    with pytest.raises(config.ConfigError, match=r"`loader` \['holdout_fraction'\]: the study sets these"):
        config.resolve({"study": {"runs": {"x": {"loader": {"holdout_fraction": 0.5}}}}})
    with pytest.raises(config.ConfigError, match=r"lr_schedule"):  # a bad value fails at load, not mid-study
        config.resolve({"study": {"runs": {"x": {"pretrain": {"lr_schedule": "cosin"}}}}})
    with pytest.raises(config.ConfigError, match=r"batch_size"):
        config.resolve({"study": {"runs": {"x": {"loader": {"batch_size": "large"}}}}})


def test_a_study_run_sets_its_own_batch_and_learning_rate_and_only_its_own():
    params = config.resolve(
        {
            "study": {
                "steps": 7,
                "runs": {
                    "b32": {"loader": {"batch_size": 32}, "pretrain": {"lr": 6e-4}, "model": {"beta_a": 0.1}},
                    "plain": {"model": {"beta_a": 0.01}},
                },
            }
        }
    )
    b32, plain = study.run_params(params, "b32", 1), study.run_params(params, "plain", 1)
    assert (b32.loader.batch_size, b32.pretrain.lr, b32.model.beta_a) == (32, 6e-4, 0.1)
    assert (plain.loader.batch_size, plain.pretrain.lr) == (params.loader.batch_size, params.pretrain.lr)
    assert b32.pretrain.steps == plain.pretrain.steps == 7 and b32.seed == 1


def test_the_yardsticks_fit_their_probe_as_the_runs_did_or_refuse(tmp_path):
    write_shards(point_mass_clips(episodes=8), tmp_path, clips_per_shard=2)
    params = config.resolve({
        "loader": {"holdout_fraction": 0.5},
        "model": {"cnn_width": 8, "deter": 32, "hidden": 32, "stoch": 4, "classes": 4},
        "evaluate": {"min_holdout_episodes": 2, "probe_fit": "pretraining", "precision": "fp32",
                     "device": "cpu"},
        "study": {"supervised_updates": 2, "supervised_batch_size": 4},
    })  # fmt: skip
    old = pd.DataFrame({"run": ["prelar", "apv"], "seed": 0, "step": 0, "probe_r2": [0.1, None]})
    with pytest.raises(config.ConfigError, match=r"on \[0\] pre-training clips.*probe_fit=pretraining"):
        study.probe_yardsticks(params, [str(tmp_path)], old)  # curves from before the count: held_out
    clips, split = probe.probe_clips([str(tmp_path)], params)
    fit = len(probe.probe_fit_clips([str(tmp_path)], params, clips, split))
    wide = old.assign(probe_fit_clips=[fit, None])  # (the action-free run has no probe)
    yardsticks = study.probe_yardsticks(params, [str(tmp_path)], wide)
    held_out = config.override(params, {"evaluate.probe_fit": "held_out"})
    default = study.probe_yardsticks(held_out, [str(tmp_path)], old)
    assert set(yardsticks) == set(default) == {probe.PIXELS, probe.SUPERVISED}  # no hand states here
    assert yardsticks[study.PIXELS] != default[study.PIXELS]  # fit on more clips
    motion = config.override(held_out, {"evaluate.probe_target": "hand_motion"})
    with pytest.raises(config.ConfigError, match=r"read \['action'\], the yardsticks would read 'hand_m"):
        study.probe_yardsticks(motion, [str(tmp_path)], old)  # curves from before the target: the action
