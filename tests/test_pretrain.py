"""The pre-training trainer on tiny real shards of a point-mass video world (a square moved by actions)."""

import hashlib
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from prelar import checkpoint, cli, config, pretrain, tracking
from prelar.data.clip import Clip
from prelar.data.shards import write_shards
from prelar.evaluate.prediction import evaluate_prediction
from prelar.world_model import WorldModel

REPO = Path(__file__).resolve().parents[1]


def point_mass_clips(
    episodes: int, frames: int = 30, cameras: int = 2, seed: int = 0, with_hand: bool = False
) -> list[Clip]:
    """Episodes of a 10x10 square on a textured 64x64 background, moved 3 px per unit of its 2-d action.

    The second camera is the mirror image of the first: the same actions, another view (one episode,
    several clips, as in Meta-world). Pixel (0, 0) spells (episode, camera, 0): the clip of any segment.
    `with_hand`: the square's position per frame is stored as the clip's end effector (`Clip.hand`).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    background = np.stack([xx * 2, yy * 2, (xx + yy) % 64 + 64], -1).astype(np.uint8)  # [64,64,3]
    clips = []
    for episode in range(episodes):
        actions = np.clip(np.cumsum(rng.normal(0, 0.5, (frames - 1, 2)), 0) * 0.3, -1, 1).astype(np.float32)
        pos = rng.uniform(10, 44, 2)
        video, hand = [], []
        for t in range(frames):
            hand.append(pos.astype(np.float32))
            frame = background.copy()
            x, y = np.round(pos).astype(int)
            frame[y : y + 10, x : x + 10] = (255, 40, 40)
            video.append(frame)
            if t < frames - 1:
                pos = np.clip(pos + 3 * actions[t], 0, 54)
        video = np.stack(video)  # [T,64,64,3]
        for camera in range(cameras):
            view = video.copy() if camera == 0 else video[:, :, ::-1].copy()
            view[:, 0, 0] = (episode, camera, 0)
            meta = {
                "source": "pointmass",
                "id": f"pointmass/ep{episode:03d}/cam{camera}",
                "task": "pointmass",
                "episode": episode,
                "camera": f"cam{camera}",
            }
            clips.append(Clip(frames=np.ascontiguousarray(view), actions=actions, meta=meta,
                              hand=np.stack(hand) if with_hand else None))
    return clips


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    write_shards(point_mass_clips(episodes=6, with_hand=True), out, clips_per_shard=2)
    return out


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory, new_mlflow_store) -> str:
    return new_mlflow_store(tmp_path_factory.mktemp("mlflow"))


def tiny_params(tracking_uri: str, **pretrain_overrides) -> config.Params:
    raw = {
        "mlflow": {"tracking_uri": tracking_uri, "experiment": "test"},
        "loader": {
            "segment_length": 8,
            "batch_size": 4,
            "workers": 0,
            "shuffle_buffer": 8,
            "holdout_fraction": 0.5,
        },
        "model": {
            "cnn_width": 8,
            "deter": 32,
            "hidden": 32,
            "stoch": 4,
            "classes": 4,
            "latent_action_dim": 8,
        },
        "pretrain": {
            "steps": 4,
            "log_every": 2,
            "checkpoint_every": 2,
            "precision": "fp32",
            "device": "cpu",
            "eval_clips": 0,
            "probe": False,
            **pretrain_overrides,
        },
    }
    return config.resolve(raw)


def _parameters(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path)["model"]


def test_resume_continues_bit_exactly_like_an_uninterrupted_run(shards, tracking_uri, tmp_path):
    full = pretrain.pretrain(tiny_params(tracking_uri), shards, tmp_path / "full")
    # interrupted after step 3, between two checkpoint_every=2 boundaries: the stream replays one batch
    pretrain.pretrain(tiny_params(tracking_uri, steps=3), shards, tmp_path / "split")
    assert checkpoint.load(tmp_path / "split" / "checkpoint.pt")["step"] == 3
    resumed = pretrain.pretrain(tiny_params(tracking_uri), shards, tmp_path / "split")
    a, b = _parameters(tmp_path / "full" / "checkpoint.pt"), _parameters(tmp_path / "split" / "checkpoint.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert full["step"] == resumed["step"] == 4
    torch.manual_seed(0)
    initial = WorldModel(tiny_params(tracking_uri).model).state_dict()  # the trainer's initialisation
    assert any(not torch.equal(initial[n], a[n]) for n in initial)  # training moved them: the test can fail


def test_beta_a_warmup_weighs_each_update_and_resumes_on_schedule(shards, tracking_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    params = config.override(tiny_params(tracking_uri, log_every=1), {"model.beta_a_warmup": 2})
    pretrain.pretrain(config.override(params, {"pretrain.steps": 2}), shards, tmp_path, run_name="warm")
    pretrain.pretrain(params, shards, tmp_path, run_name="warm")  # resumed at update 3
    run_id = checkpoint.load(tmp_path / "checkpoint.pt")["extra"]["mlflow_run_id"]
    client = MlflowClient(tracking.resolve_tracking_uri(tracking_uri))
    history = client.get_metric_history(run_id, "train/beta_a")
    assert {m.step: m.value for m in history} == {1: 0.0, 2: 0.5, 3: 1.0, 4: 1.0}  # (the end logs it again)


def test_learning_rate_constant_or_cosine_annealed_to_zero():
    constant = config.Pretrain(lr=6e-4, steps=2000)
    cosine = config.Pretrain(lr=6e-4, steps=2000, lr_schedule="cosine")
    assert [pretrain.learning_rate(constant, step) for step in (0, 1999)] == [6e-4, 6e-4]
    values = [pretrain.learning_rate(cosine, step) for step in (0, 500, 1000, 1500, 2000)]
    assert values == pytest.approx([6e-4, 6e-4 * (2 + 2**0.5) / 4, 3e-4, 6e-4 * (2 - 2**0.5) / 4, 0.0])


def test_cosine_learning_rate_steps_each_update_and_resumes_on_schedule(
    shards, tracking_uri, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    used = []  # the rate each Adam step actually applies
    adam_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    params = config.override(
        tiny_params(tracking_uri, log_every=1, lr=1e-3), {"pretrain.lr_schedule": "cosine"}
    )

    class Interrupted(Exception):
        """Stands for a kill between two checkpoints."""

    def interrupt_after_update_3(step, frames, model):
        if step == 3:
            raise Interrupted  # before update 3 is logged or saved: the checkpoint is update 2's

    with pytest.raises(Interrupted):
        pretrain.pretrain(params, shards, tmp_path, run_name="cos", callback=interrupt_after_update_3)
    with pytest.raises(config.ConfigError, match=r"learning-rate schedule .*pretrain.steps"):
        pretrain.pretrain(config.override(params, {"pretrain.steps": 8}), shards, tmp_path, run_name="cos")
    pretrain.pretrain(params, shards, tmp_path, run_name="cos")  # resumed at update 3 of 4
    # update k of 4 steps Adam with lr · (1 + cos(π (k - 1) / 4)) / 2, the resumed half included
    expected = [1e-3, 0.8536e-3, 0.5e-3, 0.1464e-3]
    assert used == pytest.approx([*expected[:3], *expected[2:]], rel=1e-3)  # update 3 ran twice
    run_id = checkpoint.load(tmp_path / "checkpoint.pt")["extra"]["mlflow_run_id"]
    client = MlflowClient(tracking.resolve_tracking_uri(tracking_uri))
    logged = {m.step: m.value for m in client.get_metric_history(run_id, "train/lr")}
    assert logged == pytest.approx(dict(enumerate(expected, start=1)), rel=1e-3)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(shards, tracking_uri, tmp_path):
    pretrain.pretrain(tiny_params(tracking_uri, steps=2), shards, tmp_path)
    path = tmp_path / "checkpoint.pt"
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(pretrain.NonFiniteLossError, match=r"non-finite .*checkpoint.pt \(step 2\)"):
        pretrain.pretrain(tiny_params(tracking_uri, steps=4, lr=1e30), shards, tmp_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, shards: str, out: str, uri: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    seen, final = [], {}

    def record(step, frames, model):
        seen.append({tuple(code) for code in frames[:, 0, :2, 0, 0].tolist()})  # (episode, camera) each
        final.update({k: v.detach().clone() for k, v in model.named_parameters()})

    pretrain.pretrain(tiny_params(uri, steps=3), shards, out, callback=record)
    torch.save(
        {"seen": seen, "final": final}, Path(out) / f"rank{rank}.pt"
    )  # only rank 0 writes a checkpoint


def test_ddp_two_gloo_ranks_read_different_clips_and_stay_in_sync(shards, tracking_uri, tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(shards), str(tmp_path), tracking_uri), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    seen = [r["seen"] for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 3
    clips = [set().union(*s) for s in seen]
    assert clips[0] and clips[1] and not clips[0] & clips[1]  # the ranks read different clips
    ckpt = checkpoint.load(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 3 and len(ckpt["rng"]) == 2  # rank 0 saved, with both ranks' random states
    torch.manual_seed(0)
    initial = WorldModel(tiny_params(tracking_uri).model).state_dict()  # the trainer's initialisation
    # parameters are all-reduced; BatchNorm running statistics are per rank (DDP broadcasts rank 0's)
    for name, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][name]), name
        assert torch.equal(value, ckpt["model"][name]), name
    assert any(not torch.equal(initial[n], ckpt["model"][n]) for n in initial)  # and they did train


def test_cli_end_to_end_writes_metrics_figures_and_an_mlflow_run(shards, tracking_uri, tmp_path):
    out = tmp_path / "apv"
    code = cli.main(
        [
            "pretrain",
            "--params",
            str(REPO / "params.yaml"),
            "--profile",
            "tiny",
            "--shards",
            str(shards),
            "--out",
            str(out),
            "--steps",
            "2",
            "--run-name",
            "apv-test",
            "--variant",
            "apv",
            "--set",
            f"mlflow.tracking_uri={tracking_uri}",
            "--set",
            "loader.workers=0",
            "--set",
            "loader.holdout_fraction=0.5",
            "--set",
            "pretrain.device=cpu",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 2 and metrics["perf/frames_per_s"] > 0
    assert metrics["pred_clips"] >= 1 and np.isfinite(metrics["pred_psnr"])
    assert "probe_skipped" in metrics  # APV's action-free model has no latent actions
    assert (out / "figures" / "open_loop.gif").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.resolve_tracking_uri(tracking_uri))
    run = client.search_runs(
        [client.get_experiment_by_name("prelar").experiment_id],
        filter_string="attributes.run_name = 'apv-test'",
    )[0]
    assert run.data.params["model.action_free"] == "True"
    assert run.data.tags["shards.0.path"] == str(shards)
    assert "train/image_nll" in run.data.metrics and "grad_norm/encoder" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint.pt", "metrics.json", "figures"} <= artifacts


def test_set_rejects_unknown_keys_and_bad_values():
    params = config.resolve({})
    assert config.override(params, {"model.deter": 64}).model.deter == 64
    with pytest.raises(config.ConfigError, match="unknown parameter 'model.detr'"):
        config.override(params, {"model.detr": 64})
    with pytest.raises(config.ConfigError, match="invalid value"):
        config.override(params, {"pretrain.precision": "fp16"})


def test_tracking_uri_is_made_absolute_against_the_working_directory(tmp_path):
    uri = tracking.resolve_tracking_uri("sqlite:///runs/mlflow.db", root=tmp_path)
    assert uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}" and (tmp_path / "runs").is_dir()
    assert tracking.resolve_tracking_uri("http://host:5000") == "http://host:5000"
    assert tracking.flatten({"model": {"deter": 1, "sub": {"x": [1, 2]}}}) == {
        "model.deter": "1",
        "model.sub.x": "[1, 2]",
    }


def test_a_final_evaluation_that_raises_fails_the_run_and_a_rerun_reopens_it(shards, tracking_uri, tmp_path):
    from mlflow.tracking import MlflowClient

    (tmp_path / "figures").write_text("a file where the evaluation's figures folder goes")
    with pytest.raises(FileExistsError):
        pretrain.pretrain(tiny_params(tracking_uri, steps=2, eval_clips=2), shards, tmp_path)
    run_id = checkpoint.load(tmp_path / "checkpoint.pt")["extra"]["mlflow_run_id"]  # training itself finished
    client = MlflowClient(tracking.resolve_tracking_uri(tracking_uri))
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.info.run_name == "pretrain/prelar"
    (tmp_path / "figures").unlink()
    result = pretrain.pretrain(tiny_params(tracking_uri, steps=2, eval_clips=2), shards, tmp_path)
    assert result["pred_clips"] >= 1
    assert client.get_run(run_id).info.status == "FINISHED"  # the same run, reopened by its id


def test_learning_curves_measure_held_out_data_from_the_start_and_end_on_the_final_metrics(
    shards, tracking_uri, tmp_path
):
    from mlflow.tracking import MlflowClient

    from prelar.evaluate import curves

    params = tiny_params(tracking_uri, steps=4, eval_clips=2, probe=True, curve_every=2)
    result = pretrain.pretrain(params, shards, tmp_path)
    rows = curves.read(tmp_path / curves.CSV)
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    assert [int(r["frames"]) for r in rows] == [0, 2 * 4 * 8, 4 * 4 * 8]  # batch 4 x segment 8 per update
    for row in rows:
        mse, copy_last = float(row["pred_mse"]), float(row["pred_copy_last_frame_mse"])
        assert float(row["pred_mse_ratio"]) == pytest.approx(mse / copy_last)
        assert float(row["kl_action"]) > 0 and float(row["kl_dyn"]) >= 0
        assert row["probe_r2_untrained"] == rows[0]["probe_r2_untrained"]  # measured once
    assert len({row["pred_copy_last_frame_mse"] for row in rows}) == 1  # the same held-out windows
    assert rows[0]["pred_mse"] != rows[-1]["pred_mse"] and rows[0]["probe_r2"] != rows[-1]["probe_r2"]
    for key in ("pred_mse", "probe_r2", "kl_action", "delta_psnr"):  # the last point is the final evaluation
        assert float(rows[-1][key]) == pytest.approx(result[key], rel=1e-6), key

    client = MlflowClient(tracking.resolve_tracking_uri(tracking_uri))
    run_id = checkpoint.load(tmp_path / "checkpoint.pt")["extra"]["mlflow_run_id"]
    history = client.get_metric_history(run_id, "curve/probe_r2")
    assert sorted(m.step for m in history) == [0, 2, 4]

    # a resumed run continues the curve from its checkpoint
    longer = tiny_params(tracking_uri, steps=6, eval_clips=2, probe=True, curve_every=2)
    pretrain.pretrain(longer, shards, tmp_path)
    assert [int(r["step"]) for r in curves.read(tmp_path / curves.CSV)] == [0, 2, 4, 6]

    # ... and refuses, before any update, to go on with a probe of other clips (one curve, one probe)
    fewer = tiny_params(tracking_uri, steps=8, eval_clips=2, probe=True, curve_every=2)
    fewer = config.override(fewer, {"evaluate.probe_clips": 6})
    with pytest.raises(config.ConfigError, match=r"curves.csv: its probe was measured on .*probe_clips=6"):
        pretrain.pretrain(fewer, shards, tmp_path)
    other = config.override(longer, {"pretrain.steps": 8, "evaluate.probe_target": "hand_motion"})
    with pytest.raises(config.ConfigError, match=r"'probe_target': 'action'.*probe_target=hand_motion"):
        pretrain.pretrain(other, shards, tmp_path)  # nor one of another target
    assert {r["probe_target"] for r in curves.read(tmp_path / curves.CSV)} == {"action"}  # each point

    # a curve of the hand's motion says so, resumes as such, and refuses the action
    motion = tmp_path / "motion"
    pretrain.pretrain(config.override(other, {"pretrain.steps": 2}), shards, motion)
    pretrain.pretrain(config.override(other, {"pretrain.steps": 4}), shards, motion)
    rows = curves.read(motion / curves.CSV)
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    assert {r["probe_target"] for r in rows} == {"hand_motion"}
    with pytest.raises(config.ConfigError, match=r"'probe_target': 'hand_motion'.*probe_target=action"):
        pretrain.pretrain(config.override(longer, {"pretrain.steps": 8}), shards, motion)
    assert checkpoint.load(tmp_path / "checkpoint.pt")["step"] == 6
    assert [int(r["step"]) for r in curves.read(tmp_path / curves.CSV)] == [0, 2, 4, 6]


def test_the_true_action_variant_trains_and_predicts_with_the_clips_actions(tracking_uri, tmp_path):
    """The yardstick from labels: the same loop with each segment's true actions in the latent action's
    place; its curves measure prediction and ΔPSNR with the held-out clips' own vs another clip's actions."""
    from prelar.agent.model import load_pretrained
    from prelar.evaluate import curves

    shards = tmp_path / "shards"  # one camera per episode: the held-out clips' actions all differ
    write_shards(point_mass_clips(episodes=8, cameras=1), shards, clips_per_shard=2)
    params = tiny_params(tracking_uri, eval_clips=4, probe=True, curve_every=2)
    true_action = {"model.true_actions": True, "model.use_action_kl": False, "model.use_consistency": False}
    wrong_dims = config.override(params, true_action)  # latent_action_dim 8, the point mass's actions 2
    with pytest.raises(config.ConfigError, match="true actions have 2 dims.*model.latent_action_dim: 2"):
        pretrain.pretrain(wrong_dims, shards, tmp_path / "wrong", variant="true_action")
    params = config.override(params, {**true_action, "model.latent_action_dim": 2})
    # the curves' windows carry the actions between their frames: actions[t] leads from frame t to t + 1
    monitor = curves.Monitor(params, [shards], params.model, torch.device("cpu"))
    held_out = curves.held_out_clips([shards], params)
    window = params.evaluate.window
    assert monitor.actions.shape == (len(held_out), window - 1, 2) and monitor.windows.shape[1] == window
    for clip, actions in zip(held_out, monitor.actions, strict=True):
        np.testing.assert_array_equal(actions, clip.actions[: window - 1])
    with pytest.raises(ValueError, match=r"true actions \[N, T-1, A\]"):  # predicting needs them
        evaluate_prediction(WorldModel(params.model), monitor.windows, None, params.evaluate.context)
    result = pretrain.pretrain(params, shards, tmp_path / "run", variant="true_action")
    rows = curves.read(tmp_path / "run" / curves.CSV)
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    assert all(int(float(r["pred_clips"])) >= 2 and float(r["delta_psnr"]) != 0 for r in rows)  # reads them
    assert "kl_action" not in rows[0] and "probe_r2" not in rows[0]
    assert result["probe_skipped"].startswith("no latent actions")
    ckpt = checkpoint.load(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["extra"]["variant"] == "true_action" and "rssm.img_in_action.weight" in ckpt["model"]

    # fine-tuned with real actions, every pre-trained weight is kept (nothing starts fresh, unlike naive_ft)
    ft_params = config.override(params, {"model.latent_action_dim": 4})
    with pytest.raises(config.ConfigError, match="true actions of 2 dims; the environment's have 4"):
        load_pretrained("true_action", tmp_path / "run" / "checkpoint.pt", ft_params.model)
    with pytest.raises(config.ConfigError, match="has model switches .*true_actions"):
        load_pretrained("prelar_no_cl_al", tmp_path / "run" / "checkpoint.pt", ft_params.model)
