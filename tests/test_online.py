"""`prelar online`: fine-tuning runs per method and seed, their random-policy yardstick, figure and tables."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prelar import checkpoint, cli, config, online
from prelar.agent.finetune import EVAL_STREAM, Collector, evaluation_index

ROOT = Path(__file__).resolve().parents[1]


def test_summary_finds_first_success_and_pairs_methods_by_seed():
    curves = pd.DataFrame({
        "method": ["dreamerv2"] * 4 + ["prelar"] * 4,
        "seed": [0, 0, 1, 1] * 2,
        "env_step": [100, 200] * 4,
        "success": [0.0, 0.0, 0.0, 0.2, 0.1, 0.5, 0.0, 0.3],
        "return": [10.0, 20.0, 10.0, 30.0, 15.0, 40.0, 12.0, 35.0],
    })
    rows = online.summarize(curves).set_index(["method", "seed"])
    assert np.isinf(rows.loc[("dreamerv2", 0), "first_success_at"])
    assert rows.loc[("dreamerv2", 1), "first_success_at"] == 200
    assert rows.loc[("prelar", 0), "first_success_at"] == 100
    assert rows.loc[("prelar", 0), "mean_success"] == pytest.approx(0.3)
    versus = online.differences(online.summarize(curves), "dreamerv2").set_index("measurement")
    final = versus.loc["final_success"]  # seed 0: 0.5 - 0, seed 1: 0.3 - 0.2
    assert final["seeds"] == 2 and final["mean"] == pytest.approx(0.3)
    assert (final["low"], final["high"]) == pytest.approx((0.1, 0.5))  # 2 seeds: min and max
    stopped = (curves["method"] == "prelar") & (curves["seed"] == 1) & (curves["env_step"] == 200)
    unequal = online.differences(online.summarize(curves[~stopped]), "dreamerv2")  # prelar seed 1: 100 steps
    assert unequal.set_index("measurement").loc["final_success", "seeds"] == 1
    bands = online.bands(curves)
    point = bands.set_index(["method", "env_step", "measurement"]).loc[("prelar", 200, "return")]
    assert point["value"] == pytest.approx(37.5)


def test_online_values_must_be_plain_finetune_parameters():
    with pytest.raises(ValueError, match="'method'.* not plain finetune parameters"):
        config.Online(finetune={"method": "apv"})  # the study's own, as are seed, out and pretrained
    with pytest.raises(ValueError, match="'action_repeats'.* not plain finetune parameters"):
        config.Online(finetune={"action_repeats": 2})
    with pytest.raises(ValueError, match="action_repeat"):
        config.Online(finetune={"action_repeat": 0})
    with pytest.raises(ValueError, match="nope"):
        config.Online(methods=["dreamerv2", "nope"])
    with pytest.raises(ValueError, match="more than once"):
        config.Online(seeds=[0, 0])  # one folder read twice would narrow the interval
    with pytest.raises(ValueError, match="at least 1"):
        config.Online(methods=[])


def test_a_named_checkpoint_run_fine_tunes_its_method_from_its_own_checkpoint(capsys):
    params = config.override(config.load(ROOT / "params.yaml"), {
        "online.checkpoints": {"prelar_beta_a_0.01": {"method": "prelar", "pretrained": "s/seed0/ckpt.pt"}}
    })
    assert params.online.runs == ["dreamerv2", "apv", "prelar", "prelar_beta_a_0.01"]
    named = online.run_params(params, "prelar_beta_a_0.01", 2).finetune
    assert (named.method, named.pretrained, named.seed) == ("prelar", "s/seed0/ckpt.pt", 2)
    assert named.task == params.online.finetune["task"]  # the study's protocol, as for every other run
    default = online.run_params(params, "prelar", 2).finetune
    assert default.pretrained == str(Path(params.pretrain.out) / "prelar" / checkpoint.FILENAME)
    assert online.run_folder(params, "prelar_beta_a_0.01", 2) == Path("runs/online/prelar_beta_a_0.01/seed2")
    with pytest.raises(ValueError, match=r"\['prelar'\] are also online.methods"):
        config.Online(checkpoints={"prelar": {"method": "prelar", "pretrained": "x.pt"}})
    with pytest.raises(ValueError, match="dreamerv2 loads no pre-trained checkpoint"):
        config.Online(checkpoints={"scratch": {"method": "dreamerv2", "pretrained": "x.pt"}})
    assert cli.main(["online", "--params", str(ROOT / "params.yaml"), "--methods", "prelar_beta_a_0.1"]) != 0
    assert "['prelar_beta_a_0.1'] are not in online.methods or online.checkpoints" in capsys.readouterr().err


def test_random_policy_plays_the_evaluation_episodes_as_the_study_runs_them():
    cfg = config.Finetune(task="reach-v3", action_repeat=3, max_episode_steps=6, env_steps=12, eval_every=6,
                          eval_episodes=2)
    collector = Collector(cfg, seed_stream=EVAL_STREAM)
    assert collector.env.action_repeat == 3 and collector.env.sawyer.max_path_length == 18
    collector.reset(evaluation_index(12, 1))  # the last evaluation's second episode of seed 0 ...
    goal = collector.env.sawyer._target_pos.copy()
    collector.close()
    yardstick = online.random_policy(cfg, seeds=[0, 1])
    assert yardstick["episodes"] == 2 * 2 * 2  # seeds x evaluations x episodes
    assert 0.0 <= yardstick["success"] <= 1.0 and yardstick["return"] > 0  # Meta-world's rewards are positive
    assert online.random_policy(cfg, seeds=[0, 1]) == yardstick
    again = Collector(cfg, seed_stream=EVAL_STREAM)
    again.reset(evaluation_index(12, 1))  # ... has its goal where the agent's evaluation has it
    assert np.array_equal(again.env.sawyer._target_pos, goal)
    again.close()


def test_online_runs_each_method_and_seed_then_writes_curves_and_summary(
    pretrained, tmp_path, monkeypatch, capsys, new_mlflow_store
):
    folder = tmp_path / "runs/pretrain/prelar"  # where the default pipeline leaves PreLAR's checkpoint
    folder.mkdir(parents=True)
    shutil.copy(pretrained["prelar"], folder / checkpoint.FILENAME)
    monkeypatch.chdir(tmp_path)
    common = [
        "--params", str(ROOT / "params.yaml"), "--profile", "tiny",
        "--set", "online.finetune={task: reach-v3, action_repeat: 2, max_episode_steps: 9, "
                 "segment_length: 8, env_steps: 18, prefill: 9, train_every: 3, eval_every: 9, "
                 "eval_episodes: 1, log_every: 9}",
        "--set", "online.seeds=[0, 1]",
        "--set", "evaluate.horizon=3",  # open-loop windows of 5 + 3 frames fit the 10 of an episode
        "--set", f"mlflow.tracking_uri={new_mlflow_store(tmp_path)}",
        "--methods", "dreamerv2", "prelar",
    ]  # fmt: skip
    assert cli.main(["online", *common]) == 0
    docs = tmp_path / "docs/online"
    curves = pd.read_csv(docs / "curves.csv")
    runs = sorted(set(zip(curves["method"], curves["seed"], curves["env_step"], strict=True)))
    assert runs == [(m, s, step) for m in ("dreamerv2", "prelar") for s in (0, 1) for step in (9, 18)]
    saved = checkpoint.load(tmp_path / "runs/online/prelar/seed1/checkpoint.pt")
    ran = saved["extra"]["finetune"]
    assert (ran["task"], ran["action_repeat"], ran["seed"], ran["method"]) == ("reach-v3", 2, 1, "prelar")
    assert saved["extra"]["pretrained"] == str(Path("runs/pretrain/prelar") / checkpoint.FILENAME)
    metrics = json.loads((docs / "summary.json").read_text())  # what `dvc metrics show` reads
    assert metrics["task"] == "reach-v3" and metrics["random_policy"]["episodes"] == 2 * 2  # seeds x evals
    assert metrics["unfinished"] == []
    assert set(metrics["methods"]) == {"dreamerv2", "prelar"} and metrics["methods"]["prelar"]["seeds"] == 2
    sensitivity = {m: metrics["methods"][m]["delta_psnr"]["mean"] for m in ("prelar", "dreamerv2")}
    assert all(np.isfinite(v) and v != 0 for v in sensitivity.values())  # the fine-tuned models use actions
    assert metrics["minus_dreamerv2"]["prelar"]["delta_psnr"]["seeds"] == 2
    versus = metrics["minus_dreamerv2"]["prelar"]["mean_return"]
    means = {m: metrics["methods"][m]["mean_return"]["mean"] for m in ("prelar", "dreamerv2")}
    assert versus["seeds"] == 2 and versus["mean"] == pytest.approx(means["prelar"] - means["dreamerv2"])
    summary = (docs / "summary.md").read_text()
    assert "| prelar | 0,1 |" in summary and "random policy on the same evaluation episodes (4)" in summary
    assert (docs / "success_curves.png").stat().st_size > 10_000
    # a complete study is not run again: only the summary is rewritten
    before = (tmp_path / "runs/online/prelar/seed0/checkpoint.pt").stat().st_mtime_ns
    assert cli.main(["online", *common]) == 0
    assert (tmp_path / "runs/online/prelar/seed0/checkpoint.pt").stat().st_mtime_ns == before
    # a run that has not finished is left out of the summary, which says so
    curve = tmp_path / "runs/online/prelar/seed1/curve.csv"
    curve.write_text("".join(curve.read_text().splitlines(keepends=True)[:-1]))  # stopped after step 9
    assert cli.main(["online", "--summary-only", *common]) == 0
    metrics = json.loads((docs / "summary.json").read_text())
    assert metrics["unfinished"] == ["runs/online/prelar/seed1"]
    assert metrics["methods"]["prelar"]["seeds"] == 1
    assert "Not finished, left out: runs/online/prelar/seed1" in (docs / "summary.md").read_text()
    # a run folder that ran with other parameters is not summarized as if it were the study's
    capsys.readouterr()
    assert cli.main(["online", "--summary-only", *common, "--set", "online.finetune.action_repeat=3"]) != 0
    error = capsys.readouterr().err
    assert "dreamerv2/seed0: ran with other parameters (finetune.action_repeat: 2, now 3)" in error
    # nor one fine-tuned from another pre-trained checkpoint than the one its name points at now
    shutil.copy(pretrained["prelar_no_cl"], folder / checkpoint.FILENAME)
    assert cli.main(["online", "--summary-only", *common]) != 0
    error = capsys.readouterr().err
    assert "prelar/seed0: ran with other parameters (finetune.pretrained: 'runs/pretrain/prelar" in error
    assert "the run started from 'runs/pretrain/prelar" in error
    shutil.copy(pretrained["prelar"], folder / checkpoint.FILENAME)
    assert cli.main(["online", "--summary-only", *common]) == 0
    # episodes too short for the action-sensitivity windows: said before any run starts
    assert cli.main(["online", *common, "--set", "evaluate.horizon=6"]) != 0
    assert "episodes of 9 steps are shorter than one open-loop window" in capsys.readouterr().err
