"""The online fine-tuning loop: methods, pre-trained weights, bad parameters, checkpoint/resume, outputs.

Tiny sizes (the `tiny` profile, episodes of 9 steps), real Meta-world rendering, real checkpoints.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from prelar import checkpoint, config
from prelar.agent.finetune import finetune
from prelar.agent.model import FinetuneModel, load_pretrained
from prelar.agent.replay import Replay
from prelar.world_model import WorldModel

ROOT = Path(__file__).resolve().parents[1]
EPISODE = 9  # env steps per episode in these tests


@pytest.fixture(scope="module")
def store(tmp_path_factory, new_mlflow_store) -> Path:
    """One MLflow store for the module."""
    folder = tmp_path_factory.mktemp("mlflow")
    new_mlflow_store(folder)
    return folder / "mlflow.db"


def _params(db: Path, **finetune) -> config.Params:
    base = config.load(ROOT / "params.yaml", "tiny")
    ft = {
        "max_episode_steps": EPISODE,
        "segment_length": 8,
        "prefill": EPISODE,
        "train_every": 3,
        "eval_every": EPISODE,
        "checkpoint_every": EPISODE,
        "log_every": EPISODE,
        "env_steps": 2 * EPISODE,
        **finetune,
    }
    return base.model_copy(
        update={
            "finetune": base.finetune.model_copy(update=ft),
            "mlflow": base.mlflow.model_copy(update={"tracking_uri": f"sqlite:///{db}"}),
        }
    )


def test_pretrained_weights_are_the_ones_trained(pretrained, store):
    params = _params(store)
    saved = checkpoint.load(pretrained["prelar"])["model"]
    fresh = WorldModel(params.model).state_dict()
    assert not torch.equal(saved["rssm.img_in_action.weight"], fresh["rssm.img_in_action.weight"])
    model, _ = load_pretrained("prelar", pretrained["prelar"], params.model)
    finetuned = FinetuneModel("prelar", params, model)
    ft = finetuned.state_dict()
    kept = [k for k in saved if not k.startswith("inverse_dynamics.")]
    assert len(kept) > 20
    for key in kept:
        torch.testing.assert_close(ft[f"world.{key}"], saved[key], rtol=0, atol=0)
    assert not any(k.startswith("world.inverse_dynamics") for k in ft)  # dropped (Eq. 10)
    layers = [m for m in finetuned.action_encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert layers[0].in_features == 4  # a fresh action encoder: real actions in, latent actions out
    assert layers[-1].out_features == params.model.latent_action_dim

    af_saved = checkpoint.load(pretrained["action_free"])["model"]
    apv = FinetuneModel("apv", params, load_pretrained("apv", pretrained["action_free"], params.model)[0])
    for key, value in af_saved.items():
        torch.testing.assert_close(apv.state_dict()[f"world.action_free.{key}"], value, rtol=0, atol=0)
        if key.startswith("decoder."):  # APV initialises the stacked model's decoder with the pre-trained one
            torch.testing.assert_close(apv.state_dict()[f"world.{key}"], value, rtol=0, atol=0)
    naive = FinetuneModel(
        "naive_ft", params, load_pretrained("naive_ft", pretrained["action_free"], params.model)[0]
    )
    for key, value in af_saved.items():
        torch.testing.assert_close(naive.state_dict()[f"world.{key}"], value, rtol=0, atol=0)
    assert "world.rssm.img_in_action.weight" in naive.state_dict()  # the new, action-conditional input


def test_bad_params_fail_at_start_naming_the_parameter(pretrained, store, tmp_path):
    raw = config.load(ROOT / "params.yaml").model_dump()
    raw["finetune"]["method"] = "dreamer"
    with pytest.raises(config.ConfigError, match="finetune.method"):
        config.resolve(raw, profile="cpu")
    cases = [
        ({"task": "drawer-opn-v3"}, "finetune.task.*drawer-open-v3"),
        ({"method": "prelar"}, "finetune.pretrained.*--pretrained"),
        (
            {"method": "prelar", "pretrained": str(pretrained["action_free"])},
            "finetune.pretrained.*action_free.*--method apv, naive_ft",
        ),
        (
            {"method": "prelar", "pretrained": str(pretrained["prelar_no_cl"])},
            "finetune.pretrained.*use_consistency.*--method prelar_no_cl",
        ),
        ({"method": "apv", "pretrained": str(tmp_path / "missing.pt")}, "no checkpoint here"),
        ({"segment_length": 50}, "finetune.segment_length"),
    ]
    for update, message in cases:
        with pytest.raises((config.ConfigError, FileNotFoundError), match=message):
            finetune(_params(store, **update), tmp_path / "run")
    params = _params(store, method="prelar", pretrained=str(pretrained["prelar"]))
    params = params.model_copy(update={"model": params.model.model_copy(update={"latent_action_dim": 5})})
    with pytest.raises(config.ConfigError, match="model.latent_action_dim: 8"):
        finetune(params, tmp_path / "run")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": 1}, foreign)
    with pytest.raises(config.ConfigError, match="finetune.pretrained: .*not a prelar checkpoint"):
        finetune(_params(store, method="apv", pretrained=str(foreign)), tmp_path / "run")


def _replay_arrays(folder: Path) -> list[dict[str, np.ndarray]]:
    out = []
    for path in sorted((folder / "replay").glob("*.npz")):
        with np.load(path) as data:
            out.append({k: data[k] for k in data.files})
    return out


def test_stop_and_resume_continues_the_same_run(pretrained, store, tmp_path):
    """2 episodes straight vs 1 episode, stop, then resume to 2: identical replay, weights and curve."""
    kwargs = {"method": "prelar", "pretrained": str(pretrained["prelar"])}
    whole = finetune(_params(store, env_steps=2 * EPISODE, **kwargs), tmp_path / "whole")
    half = finetune(_params(store, env_steps=EPISODE, **kwargs), tmp_path / "resumed")
    assert half["env_steps"] == EPISODE and half["episodes"] == 1
    seen = []
    resumed = finetune(
        _params(store, env_steps=2 * EPISODE, **kwargs), tmp_path / "resumed", on_checkpoint=seen.append
    )
    assert seen == [2 * EPISODE]  # continued from 1 episode
    assert resumed == whole
    # env steps 9..18, prefill 9: 2 pretrain updates, then one every 3 steps
    assert whole["updates"] == 2 + len(range(EPISODE, 2 * EPISODE + 1, 3))
    a, b = _replay_arrays(tmp_path / "whole"), _replay_arrays(tmp_path / "resumed")
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    sa = checkpoint.load(tmp_path / "whole" / "checkpoint.pt")
    sb = checkpoint.load(tmp_path / "resumed" / "checkpoint.pt")
    for key, value in sa["model"].items():
        torch.testing.assert_close(sb["model"][key], value, rtol=0, atol=0, msg=key)
    curve = list(csv.DictReader((tmp_path / "resumed" / "curve.csv").open()))
    assert [int(r["env_step"]) for r in curve] == [EPISODE, 2 * EPISODE]
    assert (tmp_path / "resumed" / "videos" / f"eval_{2 * EPISODE:08d}.gif").stat().st_size > 1000
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert metrics["env_steps"] == 2 * EPISODE and metrics["replay/bytes_per_step"] == 12309

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{store}")
    runs = mlflow.search_runs(
        experiment_names=["prelar"],
        filter_string=f"tags.method = 'prelar' and tags.out = '{tmp_path / 'resumed'}'",
    )
    assert len(runs) == 1  # the resumption reopened its run
    assert runs["tags.task"][0] == "drawer-open-v3" and runs["tags.seed"][0] == "0"
    assert {
        "metrics.eval/success_rate",
        "metrics.model/image_nll",
        "metrics.behavior/actor_loss",
        "metrics.model/aux_reward_nll",
        "metrics.perf/env_steps_per_s",
        "metrics.time/update_s",
    } <= set(runs.columns)


def test_killed_run_resumes_with_consistent_counters_and_replay(store, tmp_path):
    """SIGKILL a `prelar finetune` process between checkpoints, then run it again to the end."""
    out = tmp_path / "run"
    sets = {
        "finetune.max_episode_steps": EPISODE,
        "finetune.segment_length": 8,
        "finetune.prefill": EPISODE,
        "finetune.train_every": 3,
        "finetune.eval_every": 100,
        "finetune.checkpoint_every": 2 * EPISODE,
        "finetune.log_every": EPISODE,
        "mlflow.tracking_uri": f"sqlite:///{store}",
    }
    total = 4 * EPISODE
    cmd = [
        sys.executable,
        "-m",
        "prelar.cli",
        "finetune",
        "--params",
        str(ROOT / "params.yaml"),
        "--profile",
        "tiny",
        "--method",
        "dreamerv2",
        "--env-steps",
        str(total),
        "--out",
        str(out),
    ]
    cmd += [arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        # kill once an episode exists that the last checkpoint (taken every 2 episodes) does not count
        if (out / "checkpoint.pt").exists() and len(list((out / "replay").glob("*.npz"))) == 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=30) == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = checkpoint.load(out / "checkpoint.pt")
    assert killed_at["step"] == 2 * EPISODE and killed_at["extra"]["episodes"] == 2
    assert len(list((out / "replay").glob("*.npz"))) == 3  # one episode more than the checkpoint knows

    params = _params(store, method="dreamerv2", env_steps=total, eval_every=100, checkpoint_every=2 * EPISODE)
    result = finetune(params, out)
    assert result["env_steps"] == total and result["episodes"] == 4
    assert result["updates"] == 2 + len(range(EPISODE, total + 1, 3))
    replay = Replay(1000, 8, out / "replay")
    replay.restore(4)
    assert replay.steps == total + 4  # 4 episodes of 9 steps, 10 frames each


def test_a_run_saved_before_a_parameter_existed_resumes_when_it_has_its_default(tmp_path):
    from prelar.agent.finetune import _check_resumable

    cfg = config.Finetune()
    saved = {k: v for k, v in cfg.model_dump().items() if k != "action_repeat"}  # an older checkpoint
    _check_resumable(tmp_path / "checkpoint.pt", {"extra": {"finetune": saved}}, cfg)  # held the default, 1
    with pytest.raises(config.ConfigError, match=r"finetune.action_repeat: 1 → 2"):
        _check_resumable(tmp_path / "checkpoint.pt", {"extra": {"finetune": saved}},
                         cfg.model_copy(update={"action_repeat": 2}))


def test_a_run_resumes_only_from_the_pre_trained_checkpoint_it_started_from(tmp_path):
    import re

    from prelar.agent.finetune import _check_resumable

    first, other, moved = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "moved" / "a.pt"
    first.write_bytes(b"pre-trained once")
    other.write_bytes(b"pre-trained again")  # the same path re-pre-trained, or another run's checkpoint
    moved.parent.mkdir()
    moved.write_bytes(first.read_bytes())
    cfg = config.Finetune(pretrained=str(first))
    extra = {"finetune": cfg.model_dump(), "pretrained": str(first), "pretrained_config": {"deter": 32},
             "pretrained_md5": checkpoint.digest(first)}  # fmt: skip
    run = tmp_path / "run" / "checkpoint.pt"

    def resume(saved: dict, pretrained: Path) -> None:
        _check_resumable(run, {"extra": saved}, cfg.model_copy(update={"pretrained": str(pretrained)}))

    resume(extra, first)
    resume(extra, moved)  # the same bytes elsewhere
    with pytest.raises(config.ConfigError, match=re.escape(f"'{other}' has md5 {checkpoint.digest(other)}; "
                                                           f"the run started from '{first}'")):  # fmt: skip
        resume(extra, other)
    with pytest.raises(config.ConfigError, match=re.escape(f"'{tmp_path / 'c.pt'}' (no such file)")):
        resume(extra, tmp_path / "c.pt")
    first.write_bytes(other.read_bytes())  # overwritten in place: the path alone would not tell
    with pytest.raises(config.ConfigError, match="another pre-trained checkpoint"):
        resume(extra, first)
    first.unlink()  # gone: a started run no longer needs it, and its path is the run's
    resume(extra, first)
    older = {**extra, "pretrained_md5": None}  # saved before the md5 was recorded: the paths are compared
    resume(older, first)
    with pytest.raises(config.ConfigError, match=re.escape(f"'{other}'; the run started from '{first}'")):
        resume(older, other)
    scratch = {**extra, "pretrained_config": None}  # DreamerV2 from scratch loaded no checkpoint
    resume(scratch, other)


def test_a_model_pre_trained_with_true_actions_is_fine_tuned_with_every_weight_kept(store, tmp_path):
    params = _params(store)
    switches = {"true_actions": True, "use_action_kl": False, "use_consistency": False}
    cfg = params.model.model_copy(update={**switches, "latent_action_dim": 4})
    torch.manual_seed(3)
    saved = WorldModel(cfg)
    path = checkpoint.save(
        tmp_path / "true_action.pt", model=saved, optimizer=torch.optim.Adam(saved.parameters()), step=1,
        model_config=cfg.model_dump(), rng=[checkpoint.rng_state()], extra={"variant": "true_action"},
    )
    model, _ = load_pretrained("true_action", path, params.model)
    finetuned = FinetuneModel("true_action", params, model)
    # a PreLAR checkpoint written before `true_actions` existed still loads as PreLAR's (the key's default)
    old = checkpoint.load(tmp_path / "true_action.pt")
    plain = params.model.model_dump()
    plain.pop("true_actions")
    torch.manual_seed(3)
    prelar = WorldModel(params.model)
    old_path = checkpoint.save(
        tmp_path / "old_prelar.pt", model=prelar, optimizer=torch.optim.Adam(prelar.parameters()), step=1,
        model_config=plain, rng=old["rng"], extra={"variant": "prelar"},
    )
    assert load_pretrained("prelar", old_path, params.model)[0].cfg.latent_actions
    assert finetuned.action_encoder is None  # real actions straight into the pre-trained RSSM
    ft = finetuned.state_dict()
    for key, value in saved.state_dict().items():
        torch.testing.assert_close(ft[f"world.{key}"], value, rtol=0, atol=0)
