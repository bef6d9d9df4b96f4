import numpy as np
import pytest
import torch
from test_pretrain import point_mass_clips, tiny_params

from prelar import config
from prelar.evaluate import probe
from prelar.world_model import WorldModel

TINY = config.Model(cnn_width=8, deter=32, hidden=32, stoch=4, classes=4, latent_action_dim=8)


def test_episodes_are_split_whole_never_by_camera_or_frame():
    clips = point_mass_clips(episodes=5, frames=6, cameras=2)
    keys = [probe.episode_key(c) for c in clips]
    assert len(set(keys)) == 5  # the two cameras of an episode share its key
    fit, test = probe.split_episodes(keys, test_fraction=0.4, seed=0)
    assert fit and test and not fit & test and fit | test == set(keys)
    assert (fit, test) == probe.split_episodes(keys, test_fraction=0.4, seed=0)
    with pytest.raises(ValueError, match="at least 2 episodes"):
        probe.split_episodes(keys[:2], test_fraction=0.5, seed=0)


def test_ridge_r2_tells_informative_from_uninformative_features():
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, (40, 4)).astype(np.float32) for _ in range(6)]
    mixing = rng.normal(size=(4, 8))
    informative = [a @ mixing + 0.01 * rng.normal(size=(40, 8)) for a in actions]
    noise = [rng.normal(size=(40, 8)) for _ in actions]
    keys = [str(i) for i in range(6)]
    r2, per_dim = probe.ridge_r2(informative, actions, [0, 1, 2, 3], [4, 5], 1.0, keys)
    assert r2 > 0.99 and len(per_dim) == 4
    assert probe.ridge_r2(noise, actions, [0, 1, 2, 3], [4, 5], 1.0, keys)[0] < 0.1


def test_cross_validation_folds_never_split_an_episode_across_its_cameras():
    """Features that only tell episodes apart (one random vector per episode, shared by its two cameras)
    carry nothing about the action of a new episode. Folds by clip would put one camera on each side, reward
    the smallest penalty (the other camera's frames are memorised) and score far below 0 on the test
    episodes; folds by episode choose the penalty that shrinks to the mean."""
    rng = np.random.default_rng(0)
    n_episodes, frames, dim = 12, 10, 128  # as many dimensions as a fold's fit frames: a ridge memorises
    features, actions, keys = [], [], []
    for e in range(n_episodes):
        episode_actions = rng.uniform(-1, 1, (frames, 4)).astype(np.float32)
        code = rng.normal(size=(frames, dim)).astype(np.float32)  # the episode's frames, seen by both cameras
        for _ in range(2):
            features.append(code + 0.01 * rng.normal(size=code.shape).astype(np.float32))
            actions.append(episode_actions)
            keys.append(f"episode{e}")
    fit_idx, test_idx = list(range(16)), list(range(16, 24))
    alphas = [1e-3, 1.0, 1e3, 1e6]
    r2, _ = probe.ridge_r2(features, actions, fit_idx, test_idx, alphas, keys)
    assert r2 > -0.2  # about what predicting the fit episodes' mean action scores
    by_clip = [str(i) for i in range(len(keys))]  # folds by clip, as before: the overfit penalty wins
    assert probe.ridge_r2(features, actions, fit_idx, test_idx, alphas, by_clip)[0] < -1
    with pytest.raises(ValueError, match="at least 2 fit episodes, got 1"):
        probe.ridge_r2(features, actions, [0, 1], test_idx, alphas, keys)


def test_cross_validation_chooses_the_penalty_grid_search_chooses():
    """`choose_alpha` fits all penalties at once per fold; scikit-learn's grid search, one by one, is the
    reference: the same penalty, whether features carry the action, barely do, or are noise."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    alphas = [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0]
    groups = np.repeat(np.arange(7), 30)
    y = rng.uniform(-1, 1, (len(groups), 4))
    chosen = []
    for signal in (1.0, 0.05, 0.0):
        x = signal * y @ rng.normal(size=(4, 16)) + rng.normal(size=(len(groups), 16))
        x[:, 0] *= 1e-4  # a near-constant dimension, as a latent action on its prior
        x = x.astype(np.float32)  # as the models' features
        search = GridSearchCV(
            make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": alphas},
            cv=GroupKFold(n_splits=5), scoring="r2",
        ).fit(x, y, groups=groups)  # fmt: skip
        assert probe.choose_alpha(x, y, groups, alphas) == search.best_params_["ridge__alpha"]
        chosen.append(search.best_params_["ridge__alpha"])
    assert len(set(chosen)) > 1  # the three cases do not all choose the same penalty


def test_untrained_baseline_is_the_trainers_initialisation():
    clips = point_mass_clips(episodes=4, frames=10, cameras=2)
    cfg = config.Evaluate(seeds=[0], precision="fp32")
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    fresh = WorldModel(TINY)  # what the trainer builds at step 0 with seed 0
    torch.manual_seed(1)
    other = WorldModel(TINY)
    models = {"same": fresh, "other": other}
    rows = {r["method"]: r for r in probe.latent_action_probe(models, clips, cfg, TINY, cpu)}
    assert rows["same"]["r2"] == rows[probe.UNTRAINED]["r2"]
    assert rows["same"]["test_episodes"] + rows["same"]["fit_episodes"] == 4
    assert rows["same"]["test_frames"] == 9 * 2 * rows["same"]["test_episodes"]
    assert rows["other"]["r2"] != rows[probe.UNTRAINED]["r2"]
    with pytest.raises(ValueError, match="at least 2 episodes, got 1"):
        probe.latent_action_probe({"same": fresh}, clips[:2], cfg, TINY, cpu)


def test_each_seed_draws_its_own_split_and_untrained_encoder():
    clips = point_mass_clips(episodes=6, frames=10, cameras=1)
    cfg = config.Evaluate(seeds=[0, 1], precision="fp32", probe_alpha=1.0)
    torch.manual_seed(0)
    rows = probe.latent_action_probe({"model": WorldModel(TINY)}, clips, cfg, TINY, torch.device("cpu"))
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("model", 0), (probe.UNTRAINED, 0), ("model", 1), (probe.UNTRAINED, 1)
    ]
    assert rows[0]["r2"] == rows[1]["r2"]  # seed 0: the untrained encoder is the trainer's initialisation
    assert rows[2]["r2"] != rows[3]["r2"]  # seed 1: another initialisation
    assert rows[0]["r2"] != rows[2]["r2"]  # and another split


def _panning_clips(episodes: int, frames: int) -> list:
    """A camera panning over a colour ramp by its 2-d action each step: the frame difference is the action."""
    from prelar.data.clip import Clip

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    clips = []
    for episode in range(episodes):
        actions = rng.uniform(-1, 1, (frames - 1, 2)).astype(np.float32)
        pos = np.concatenate([[[0.0, 0.0]], np.cumsum(actions, 0)])  # [T, 2]
        video = np.stack([np.stack([xx + 40 + 2 * x, yy + 40 + 2 * y, xx * 0 + 9], -1) for x, y in pos])
        meta = {"source": "pan", "id": f"pan/{episode}", "task": "pan", "episode": episode, "camera": "c"}
        clips.append(Clip(frames=np.clip(video, 0, 255).astype(np.uint8), actions=actions, meta=meta))
    return clips


def test_pixel_difference_yardstick_reads_visible_motion_and_nothing_from_a_still_video():
    clips = _panning_clips(episodes=6, frames=12)
    feats = probe.pixel_difference_features(clips)
    assert feats[0].shape == (11, 16 * 16 * 3)
    cfg = config.Evaluate(seeds=[0, 1], precision="fp32")
    rows = probe.pixel_difference_probe(clips, cfg)
    assert [(r["method"], r["seed"]) for r in rows] == [(probe.PIXELS, 0), (probe.PIXELS, 1)]
    assert min(r["r2"] for r in rows) > 0.8  # (uint8 rounding keeps it below 1)
    still = [c.__class__(frames=np.repeat(c.frames[:1], len(c.frames), 0), actions=c.actions, meta=c.meta)
             for c in clips]  # the same actions over a still video: nothing to read
    assert max(r["r2"] for r in probe.pixel_difference_probe(still, cfg)) < 0.05


def test_supervised_ceiling_learns_the_action_that_an_untrained_encoder_does_not_carry():
    clips = point_mass_clips(episodes=12, frames=16, cameras=1)
    train, held_out = clips[:8], clips[8:]  # trained on other episodes than those probed
    cfg = config.Evaluate(seeds=[0], precision="fp32", probe_test_fraction=0.5, probe_alpha=1.0)
    cpu = torch.device("cpu")
    rows = probe.supervised_probe(train, held_out, cfg, TINY, updates=300, batch_size=16, lr=1e-3, dev=cpu)
    assert [(r["method"], r["seed"]) for r in rows] == [(probe.SUPERVISED, 0)]
    untrained = probe.latent_action_probe({}, held_out, cfg, TINY, cpu)[0]
    assert rows[0]["r2"] > 0.15 and rows[0]["r2"] > untrained["r2"] + 0.25, (rows[0], untrained)
    with pytest.raises(ValueError, match="clips with the action"):
        probe.fit_inverse_dynamics([c.__class__(frames=c.frames, actions=None, meta=c.meta) for c in train],
                                   TINY, updates=1, batch_size=2, lr=1e-3, seed=0, dev=cpu)


def test_more_fit_episodes_read_more_of_the_action_on_the_same_test_episodes():
    clips = _panning_clips(episodes=16, frames=4)  # 3 actions an episode: 2 episodes fit a poor probe
    probed, extra = clips[:4], clips[4:]  # `evaluate.probe_fit: pretraining` adds the pre-training clips
    cfg = config.Evaluate(seeds=[0], precision="fp32", probe_test_fraction=0.5)
    narrow = probe.pixel_difference_probe(probed, cfg)[0]
    wide = probe.pixel_difference_probe(probed, cfg, extra)[0]
    assert (narrow["fit_episodes"], wide["fit_episodes"]) == (2, 14)
    assert narrow["test_frames"] == wide["test_frames"] == 2 * 3
    assert wide["r2"] > 0.7 and wide["r2"] > narrow["r2"] + 0.3, (narrow, wide)


def test_pretraining_fit_takes_the_pretraining_clips_and_never_a_scored_episode(tmp_path):
    from prelar.data.shards import iter_clips, write_shards

    shards = tmp_path / "shards"
    write_shards(point_mass_clips(episodes=8), shards, clips_per_shard=2)  # 2 cameras: 16 clips
    params = config.override(tiny_params("unused"), {  # (loader.holdout_fraction 0.5)
        "evaluate.min_holdout_episodes": 2, "evaluate.probe_fit": "pretraining", "evaluate.probe_alpha": 1.0,
        "evaluate.precision": "fp32", "evaluate.seeds": [0, 1, 2],
    })  # fmt: skip
    clips, split = probe.probe_clips(shards, params)
    scored = {probe.episode_key(c) for c in clips}
    training = list(iter_clips(shards, split="train", holdout_fraction=0.5))
    other_cameras = [c for c in training if probe.episode_key(c) in scored]
    assert split == "holdout" and other_cameras  # the held-out split is by clip: cameras of one episode part
    fit_clips = probe.probe_fit_clips(shards, params, clips, split)
    assert len(fit_clips) == len(training) - len(other_cameras)
    assert not scored & {probe.episode_key(c) for c in fit_clips}
    held_out = config.override(params, {"evaluate.probe_fit": "held_out"})
    assert probe.probe_fit_clips(shards, held_out, clips, split) == []
    with pytest.raises(config.ConfigError, match="probe's clips held out"):
        probe.probe_fit_clips(shards, params, clips, "all")
    _, keys, _, splits = probe._probe_data(clips, params.evaluate, training)  # other cameras too: dropped
    assert scored.isdisjoint(keys[len(clips):])
    for fit, test in splits.values():
        assert test <= scored and not fit & test and set(keys[len(clips):]) <= fit

    torch.manual_seed(0)
    model = {"model": WorldModel(params.model)}
    cpu = torch.device("cpu")
    narrow = probe.latent_action_probe(model, clips, params.evaluate, None, cpu)
    wide = probe.latent_action_probe(model, clips, params.evaluate, None, cpu, fit_clips)
    added = len({probe.episode_key(c) for c in fit_clips})
    for n, w in zip(narrow, wide, strict=True):  # the same test episodes, more to fit, another R²
        assert w["fit_episodes"] == n["fit_episodes"] + added
        assert (w["test_episodes"], w["test_frames"]) == (n["test_episodes"], n["test_frames"])
        assert w["r2"] != n["r2"]


def _walled_panning_clips(episodes: int, frames: int) -> list:
    """`_panning_clips` with walls: the camera (the "hand", `Clip.hand`) stops 1 step from its start, so a
    command beyond a wall shows no motion, as an arm's command does not against a table or an object."""
    from prelar.data.clip import Clip

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    clips = []
    for episode in range(episodes):
        actions = rng.uniform(-1, 1, (frames - 1, 2)).astype(np.float32)
        pos = [np.zeros(2, np.float32)]
        for action in actions:
            pos.append(np.clip(pos[-1] + action, -1, 1))
        hand = np.stack(pos)  # [T, 2]
        video = np.stack([np.stack([xx + 40 + 2 * x, yy + 40 + 2 * y, xx * 0 + 9], -1) for x, y in hand])
        meta = {"source": "pan", "id": f"pan/{episode}", "task": "pan", "episode": episode, "camera": "c"}
        pixels = np.clip(video, 0, 255).astype(np.uint8)
        clips.append(Clip(frames=pixels, actions=actions, hand=hand, meta=meta))
    return clips


def test_hand_motion_target_reads_what_the_frames_show_and_the_command_less():
    clips = _walled_panning_clips(episodes=12, frames=16)
    cfg = config.Evaluate(seeds=[0, 1], precision="fp32")
    motion_cfg = cfg.model_copy(update={"probe_target": "hand_motion"})
    np.testing.assert_array_equal(probe.probe_target(clips[0], "hand_motion"), np.diff(clips[0].hand, axis=0))
    on_motion = np.mean([r["r2"] for r in probe.pixel_difference_probe(clips, motion_cfg)])
    on_action = np.mean([r["r2"] for r in probe.pixel_difference_probe(clips, cfg)])
    assert on_motion > 0.8 and on_motion > on_action + 0.1, (on_motion, on_action)
    # the simulator's yardstick: the true motion reads the command only as far as the walls let it show
    rows = probe.hand_motion_probe(clips, cfg)
    assert [(r["method"], r["seed"]) for r in rows] == [(probe.HAND_MOTION, 0), (probe.HAND_MOTION, 1)]
    told = np.mean([r["r2"] for r in rows])
    assert 0.3 < told < 0.95 and abs(told - on_action) < 0.15, (told, on_action)
    with pytest.raises(ValueError, match="a yardstick of the action"):
        probe.hand_motion_probe(clips, motion_cfg)


def test_clips_without_the_end_effector_name_the_fix_when_the_probe_reads_its_motion():
    clips = point_mass_clips(episodes=4, frames=6, cameras=1)  # actions, no hand states
    cfg = config.Evaluate(seeds=[0], precision="fp32", probe_target="hand_motion")
    with pytest.raises(ValueError, match=r"probe_target=hand_motion: 4 clip\(s\) lack it.*ingest them again"):
        probe.latent_action_probe({}, clips, cfg, TINY, torch.device("cpu"))
    with pytest.raises(ValueError, match="ingest them again"):
        probe.hand_motion_probe(clips, config.Evaluate(seeds=[0]))


def test_supervised_ceiling_is_trained_on_the_probes_target():
    clips = point_mass_clips(episodes=8, frames=16, cameras=1, with_hand=True)  # motion: 3 px per unit action
    cpu = torch.device("cpu")

    def error(net, target):  # mean squared error of the network's output against `target`
        got = np.concatenate(probe.inverse_dynamics_features(net, clips))
        return float(np.mean((got - np.concatenate([probe.probe_target(c, target) for c in clips])) ** 2))

    nets = {t: probe.fit_inverse_dynamics(clips, TINY, updates=100, batch_size=16, lr=3e-3, seed=0, dev=cpu,
                                          target=t) for t in ("action", "hand_motion")}
    assert error(nets["hand_motion"], "hand_motion") < error(nets["action"], "hand_motion") / 3
    assert error(nets["action"], "action") < error(nets["hand_motion"], "action") / 3
    still = [c.__class__(frames=c.frames, actions=c.actions, meta=c.meta) for c in clips]
    with pytest.raises(ValueError, match="clips with the hand_motion"):
        probe.fit_inverse_dynamics(still, TINY, updates=1, batch_size=2, lr=1e-3, seed=0, dev=cpu,
                                   target="hand_motion")


def test_the_ceiling_does_not_depend_on_the_targets_units():
    """A hand moves centimetres a frame: the same fit on targets 100x smaller predicts them 100x smaller."""
    clips = point_mass_clips(episodes=4, frames=10, cameras=1)
    small = [c.__class__(frames=c.frames, actions=c.actions / 100, meta=c.meta) for c in clips]
    cpu = torch.device("cpu")
    fits = [probe.fit_inverse_dynamics(c, TINY, updates=20, batch_size=8, lr=3e-3, seed=0, dev=cpu)
            for c in (clips, small)]
    big, tiny = (np.concatenate(probe.inverse_dynamics_features(net, clips)) for net in fits)
    assert big.std() > 0.05  # it learnt something of unit scale
    np.testing.assert_allclose(tiny * 100, big, rtol=0.1, atol=0.01)  # (rounding, amplified by the fit)
