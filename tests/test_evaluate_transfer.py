"""Offline transfer on real (tiny) rendered Meta-world downstream episodes: replay format, open-loop
prediction that never sees the future, the freeze of pre-trained parts, and that fine-tuning fits."""

from pathlib import Path

import numpy as np
import pytest
import torch

from prelar import config
from prelar.agent.model import FinetuneModel
from prelar.agent.replay import Replay
from prelar.data import metaworld
from prelar.data.clip import Clip
from prelar.evaluate import prediction, stages, transfer
from prelar.world_model import WorldModel

REPO = Path(__file__).resolve().parents[1]
EVALUATE = config.Evaluate()
CONTEXT, HORIZON, WINDOW = EVALUATE.context, EVALUATE.horizon, EVALUATE.window


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and two threads crawl when another process holds a core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _params(**evaluate) -> config.Params:
    params = config.load(REPO / "params.yaml", profile="tiny")
    cfg = params.evaluate.model_copy(update={"device": "cpu", "transfer_episodes": 3, **evaluate})
    return params.model_copy(update={"evaluate": cfg})


@pytest.fixture(scope="module")
def clips():
    """Three 26-frame drawer-open-v3 episodes of the noisy scripted expert (the transfer-data source)."""
    params = _params(transfer_max_steps=25)
    source = stages.transfer_source(params, "unused")
    refs, _ = metaworld.list_clips(source)
    return [metaworld.load_clip(ref, source) for ref in refs]


def test_episodes_follow_the_replay_convention_and_split_by_episode(clips):
    episode = transfer.to_episode(clips[0])
    assert episode.frames.shape == (26, 3, 64, 64)
    np.testing.assert_array_equal(episode.actions[0], 0)  # a_{-1} = 0
    np.testing.assert_array_equal(episode.actions[1:], clips[0].actions)  # step t holds a_{t-1}
    np.testing.assert_array_equal(episode.rewards[1:], clips[0].rewards)
    np.testing.assert_array_equal(episode.frames[3], clips[0].frames[3].transpose(2, 0, 1))
    train, test = transfer.split(clips, 0.34, seed=0)
    assert len(train) == 2 and len(test) == 1
    held_out = {e.frames.tobytes() for e in test}
    assert not held_out & {e.frames.tobytes() for e in train}

    batch = transfer.episode_windows(train, EVALUATE.model_copy(update={"transfer_eval_windows": 5}))
    assert batch["frames"].shape == (2, WINDOW, 3, 64, 64)  # one 25-frame window per episode
    assert batch["actions"].shape == (2, WINDOW, 4) and batch["rewards"].shape == (2, WINDOW)
    assert batch["is_first"][:, 0].all() and not batch["is_first"][:, 1:].any()
    short = [transfer.to_episode(Clip(c.frames[:10], c.actions[:9], c.rewards[:9])) for c in clips]
    with pytest.raises(ValueError, match="25 frames"):
        transfer.episode_windows(short, EVALUATE)


def test_open_loop_prediction_uses_actions_and_never_sees_later_frames(clips):
    torch.manual_seed(0)
    model = FinetuneModel("dreamerv2", transfer.finetune_params(_params(), "dreamerv2", 0), None)
    batch = transfer.episode_windows([transfer.to_episode(c) for c in clips], EVALUATE)

    def predict(batch) -> torch.Tensor:  # what `transfer.open_loop_error` scores: float [B, H, 3, 64, 64]
        data = {k: torch.from_numpy(v) for k, v in batch.items()}
        with model.autocast():
            action = model.latent_action(data["actions"])
            return prediction.predict(model.world, data["frames"], action, CONTEXT, data["is_first"]).float()

    pred = predict(batch)
    assert pred.shape == (3, HORIZON, 3, 64, 64)
    truth = torch.from_numpy(batch["frames"][:, CONTEXT:])
    error = transfer.open_loop_error(model, batch, CONTEXT, seed=0)  # [B, H]
    torch.testing.assert_close(error, prediction.frame_mse(pred, truth))

    future_noise = {**batch, "frames": batch["frames"].copy()}
    future_noise["frames"][:, CONTEXT:] = np.random.default_rng(0).integers(
        0, 256, future_noise["frames"][:, CONTEXT:].shape, dtype=np.uint8
    )
    torch.testing.assert_close(predict(future_noise), pred, rtol=0, atol=0)

    other_actions = {**batch, "actions": batch["actions"].copy()}
    other_actions["actions"][:, CONTEXT:] *= -1
    assert (predict(other_actions) - pred).abs().max() > 1e-4


def test_pretrained_encoder_and_rssm_are_frozen_for_the_first_updates(clips):
    params = _params()
    assert params.finetune.freeze_updates == 2
    torch.manual_seed(0)
    pretrained = WorldModel(params.model)
    model = FinetuneModel("prelar", transfer.finetune_params(params, "prelar", 0), pretrained)
    replay = Replay(200, params.evaluate.transfer_segment_length)
    for clip in clips:
        replay.add(transfer.to_episode(clip), persist=False)
    rng = np.random.default_rng(0)

    def snapshot():
        return {k: v.detach().clone() for k, v in model.named_parameters()}

    start = snapshot()
    for _ in range(2):
        model.update(replay.sample(2, rng))
    frozen = snapshot()
    for name in ("world.encoder.", "world.rssm."):
        assert all(torch.equal(start[k], frozen[k]) for k in start if k.startswith(name)), name
    assert any(not torch.equal(start[k], frozen[k]) for k in start if k.startswith("action_encoder."))
    model.update(replay.sample(2, rng))  # the third update trains them too
    assert int(model.updates) == 3
    assert any(not torch.equal(frozen[k], v) for k, v in snapshot().items() if k.startswith("world.rssm."))


def test_fine_tuning_from_scratch_lowers_the_error_on_its_episodes(clips):
    params = _params(transfer_updates=[0, 100], transfer_batch_size=4)
    train = [transfer.to_episode(c) for c in clips[:2]]
    test = [transfer.to_episode(clips[2])]
    calls, measured = [], {}
    windows = transfer.episode_windows(train, params.evaluate)  # >= 2 windows: ΔPSNR swaps their actions
    frames, actions = torch.from_numpy(windows["frames"]), torch.from_numpy(windows["actions"])

    def measure(k, model):  # the learning curves' measurement, on the transfer's own training windows
        measured[k] = prediction.real_action_prediction(model, frames, actions, CONTEXT)

    curve = transfer.transfer("dreamerv2", None, params, train, test, 0, lambda: calls.append(1), measure)
    assert curve.updates == [0, 100] and len(calls) == len(curve.losses) == 100
    assert sorted(measured) == [0, 100]  # at every K, on the model as it is then
    assert [measured[k]["pred_mse"] for k in (0, 100)] == pytest.approx(curve.train_mse, rel=1e-4)
    assert all(np.isfinite(m["delta_psnr"]) for m in measured.values())
    assert curve.train_mse[1] < 0.9 * curve.train_mse[0]
    assert all(np.isfinite(curve.mse)) and len(curve.mse_per_step[0]) == HORIZON
    # PSNR is averaged per frame: by Jensen at least the PSNR of the mean squared error
    assert all(db >= -10 * np.log10(mse) for db, mse in zip(curve.psnr, curve.mse, strict=True))


def test_copy_last_frame_baseline_is_exact_for_a_still_video(clips):
    frames = torch.from_numpy(transfer.episode_windows([transfer.to_episode(clips[0])], EVALUATE)["frames"])
    still = frames[:, :1].repeat(1, WINDOW, 1, 1, 1)
    assert prediction.copy_last_frame_mse(still, CONTEXT).abs().max() == 0
    assert prediction.copy_last_frame_mse(frames, CONTEXT).shape == (1, HORIZON)
    assert prediction.copy_last_frame_mse(frames, CONTEXT)[0, -1] > 0  # the drawer moves
