"""Latent-action probe: how much of the true action the inferred latent action carries.

For clips that record their actions (the Meta-world source), a ridge regression (standardised inputs, its
penalty chosen by cross-validation over the fit episodes from `evaluate.probe_alphas`, or fixed by
`evaluate.probe_alpha`) maps the latent-action mean of q(ã_t | o_t, o_{t+1}) (PreLAR Eq. 3) to the true 4-d
action a_t. It is fit on some episodes and scored (R²) on the others (`evaluate.probe_test_fraction`): the
split is by episode (the cameras of one episode share its actions), never by frame. With
`evaluate.probe_fit: pretraining` the fit side also holds the pre-training split's clips (their actions are
stored but never trained on; `probe_fit_clips`), scored on the same test episodes: a probe with more data
to fit, whose R² shows how much of the default probe's shortfall is its few fit episodes. The same probe
on the inverse dynamics encoder of an untrained model (fresh initialisation with the evaluation seed) is the
baseline a learnt representation has to beat. Two yardsticks bracket it from the data: the same probe on
one-step pixel differences (`pixel_difference_probe`, no model), and on the same inverse dynamics encoder
trained *with* the true actions (`supervised_probe`: what two frames tell about the action when the encoder is
told what to look for; not in the papers).

What the probe reads out (`evaluate.probe_target`): the true action a_t (default, the papers' sense),
or the end effector's motion between the two frames, hand_{t+1} − hand_t (`hand_motion`: xyz and gripper
opening from the simulator's state, stored with Meta-world clips as `Clip.hand`; not in the papers). The
expert's action is a command: the arm follows it with a lag, against objects and the workspace's bounds,
and clipped actions saturate, so two frames show its motion, not all of the command. Every yardstick
above reads the same target (the supervised encoder is trained on it). With the action as target, one more
yardstick from the simulator: the same probe on the true hand motion (`hand_motion_probe`, no model), what
the motion the frames can show tells about the command.

One probe, one clip selection: pre-training's end-of-run evaluation and the `prelar evaluate probe` stage
both call `probe_clips` and `latent_action_probe`, so the same model gets the same R² in both.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prelar import config, device
from prelar.data.clip import Clip

UNTRAINED = "untrained"  # the method name of the untrained encoder's rows
PIXELS = "pixel_difference"  # the method name of the model-free yardstick's rows (`pixel_difference_probe`)
SUPERVISED = "supervised_inverse_dynamics"  # the method name of the ceiling's rows (`supervised_probe`)
HAND_MOTION = "true_hand_motion"  # the method name of the simulator's yardstick's rows (`hand_motion_probe`)
TARGET_NAMES = {"action": "true actions", "hand_motion": "true hand motion"}  # evaluate.probe_target in words


def probe_target(clip: Clip, target: str) -> np.ndarray | None:
    """What the probe reads out of clip's frame pairs, float32 [T-1, 4], or None when the clip lacks it:
    `target` "action" the true actions a_t, "hand_motion" the end effector's motion hand_{t+1} − hand_t."""
    if target == "action":
        return None if clip.actions is None else clip.actions.astype(np.float32)
    if target == "hand_motion":
        return None if clip.hand is None else np.diff(clip.hand.astype(np.float32), axis=0)
    raise ValueError(f"evaluate.probe_target: {target!r} is neither 'action' nor 'hand_motion'")


def episode_key(clip: Clip) -> str:
    """Clips with the same key show the same actions (one episode, several cameras)."""
    meta = clip.meta
    if "episode" in meta:
        return f"{meta.get('source')}/{meta.get('task')}/{meta['episode']}"
    return str(meta["id"])


def split_episodes(keys: list[str], test_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Disjoint (fit, test) sets of episode keys; at least one of each."""
    unique = sorted(set(keys))
    if len(unique) < 2:
        raise ValueError(f"the probe needs clips of at least 2 episodes, got {len(unique)}")
    order = np.random.default_rng(seed).permutation(len(unique))
    n_test = min(len(unique) - 1, max(1, round(test_fraction * len(unique))))
    test = {unique[i] for i in order[:n_test]}
    return set(unique) - test, test


def select_clips(
    shards, params: config.Params, limit: int, min_episodes: int, min_frames: int = 2
) -> tuple[list[Clip], str]:
    """Up to `limit` clips with actions and >= `min_frames` frames: from the held-out split
    (`loader.holdout_fraction`) if it holds `min_episodes` episodes, else from every clip.
    Returns (clips, "holdout" | "all")."""
    from prelar.data.shards import iter_clips

    def take(split: str | None) -> list[Clip]:
        clips = []
        for clip in iter_clips(shards, split=split, holdout_fraction=params.loader.holdout_fraction):
            if clip.actions is not None and len(clip.frames) >= min_frames:
                clips.append(clip)
            if len(clips) == limit:
                break
        return clips

    held_out = take("holdout")
    if len({episode_key(c) for c in held_out}) >= min_episodes:
        return held_out, "holdout"
    clips = take(None)
    if not clips:
        raise config.ConfigError(
            f"{shards}: no clip with actions and at least {min_frames} frames; ingest Meta-world shards "
            f"(`prelar ingest metaworld`) or point --shards at them"
        )
    return clips, "all"


def probe_clips(shards, params: config.Params) -> tuple[list[Clip], str]:
    """The probe's clips (`evaluate.probe_clips`, held out if they hold `evaluate.min_holdout_episodes`)."""
    cfg = params.evaluate
    return select_clips(shards, params, cfg.probe_clips, cfg.min_holdout_episodes)


def probe_fit_clips(shards, params: config.Params, clips: list[Clip], split: str) -> list[Clip]:
    """The clips the probe fits on besides the fit episodes of its own `clips` (`probe_clips`, taken from
    `split`): none under `evaluate.probe_fit: held_out`; under `pretraining`, the clips with actions of the
    pre-training split (`loader.holdout_fraction`) except other cameras of the probe's own episodes. A
    ConfigError when `pretraining` finds none to add: the probe's clips are not held out (`split` "all"),
    or no pre-training clip has actions."""
    from prelar.data.shards import iter_clips

    if params.evaluate.probe_fit == "held_out":
        return []
    if split != "holdout":
        raise config.ConfigError(
            f"{shards}: evaluate.probe_fit=pretraining needs the probe's clips held out of pre-training, but "
            f"the held-out split holds fewer than evaluate.min_holdout_episodes="
            f"{params.evaluate.min_holdout_episodes} episodes; raise loader.holdout_fraction or set "
            "evaluate.probe_fit=held_out"
        )
    own = {episode_key(c) for c in clips}
    train = iter_clips(shards, split="train", holdout_fraction=params.loader.holdout_fraction)
    added = [c for c in train if c.actions is not None and len(c.frames) >= 2 and episode_key(c) not in own]
    if not added:
        raise config.ConfigError(
            f"{shards}: evaluate.probe_fit=pretraining found no pre-training clip with actions to fit on; "
            "set evaluate.probe_fit=held_out"
        )
    return added


@torch.no_grad()
def latent_action_features(model: nn.Module, clips: list[Clip], precision: str) -> list[np.ndarray]:
    """Latent-action means per clip: float32 [T-1, A] (ã_t inferred from frames t and t+1), computed in
    `precision` (autocast, `prelar.device.autocast`)."""
    dev = next(model.parameters()).device
    features = []
    with device.autocast(dev, precision):
        for clip in clips:
            frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2)[None].to(dev)  # [1,T,3,64,64]
            mean, _ = model.infer_latent_actions(frames)  # [1,T-1,A]
            features.append(mean[0].float().cpu().numpy())
    return features


def ridge_r2(
    features: list[np.ndarray],
    actions: list[np.ndarray],
    fit_idx: list[int],
    test_idx: list[int],
    alpha: float | Sequence[float],
    keys: Sequence[str],
) -> tuple[float, list[float]]:
    """Standardised ridge fit on clips `fit_idx`, scored on clips `test_idx`: (mean R², R² per dimension).

    alpha: the ridge penalty, or the penalties the cross-validation over the fit clips chooses from,
    grouped by episode (`keys`, one per clip, `episode_key`): the frames of one episode, from any of its
    cameras, never sit on both sides of a fold, as the test episodes never share one with the fit side (a
    camera of a fit episode in the held-out fold would show the penalty an action it has already seen, and
    reward the overfit one the test episodes punish). Standardising near-constant
    latent dimensions (a latent action squeezed onto its N(0, I) prior) blows up their noise; a fixed small
    penalty then overfits and scores far below 0 on new episodes, where the chosen penalty shrinks towards
    R² ≈ 0.
    """
    # here, not at the top: importing scikit-learn takes seconds, and the stages that only split episodes
    # (controllability, transfer) never fit a probe
    from sklearn.metrics import r2_score

    x_fit = np.concatenate([features[i] for i in fit_idx])
    y_fit = np.concatenate([actions[i] for i in fit_idx])
    x_test = np.concatenate([features[i] for i in test_idx])
    y_test = np.concatenate([actions[i] for i in test_idx])
    if not isinstance(alpha, int | float):
        episodes = {k: j for j, k in enumerate(dict.fromkeys(keys[i] for i in fit_idx))}  # in clip order
        if len(episodes) < 2:
            raise ValueError(
                f"the probe's cross-validation needs at least 2 fit episodes, got {len(episodes)}; "
                f"set evaluate.probe_alpha"
            )
        groups = np.concatenate([np.full(len(features[i]), episodes[keys[i]]) for i in fit_idx])
        alpha = choose_alpha(x_fit, y_fit, groups, list(alpha))
    pred = _ridges(x_fit, y_fit, [alpha]).predict(x_test)
    return float(r2_score(y_test, pred)), [float(v) for v in r2_score(y_test, pred, multioutput="raw_values")]


def choose_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alphas: list[float]) -> float:
    """The penalty of `alphas` with the best R² averaged over grouped folds (`GroupKFold`, at most 5): what
    scikit-learn's `GridSearchCV(make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": alphas},
    cv=GroupKFold(...), scoring="r2")` chooses (ties: the first), with one pipeline fit per fold for all
    penalties instead of one per fold and penalty (tests/test_evaluate_probe.py compares the two). Up to
    rounding: two penalties whose cross-validated R² agree to ~1e-7 (float32 features) may resolve the
    other way round, and the test R² then differs by as little."""
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold

    scores = np.zeros(len(alphas))
    for fit, held_out in GroupKFold(n_splits=min(5, len(np.unique(groups)))).split(x, y, groups):
        pred = _ridges(x[fit], y[fit], alphas).predict(x[held_out])  # [N, len(alphas) * D]
        per_target = r2_score(np.tile(y[held_out], (1, len(alphas))), pred, multioutput="raw_values")
        scores += per_target.reshape(len(alphas), -1).mean(1)  # "r2" scoring: the mean over the D targets
    return alphas[int(np.argmax(scores))]


def _ridges(x: np.ndarray, y: np.ndarray, alphas: list[float]):
    """Standardised ridge regressions of `y` [N, D] on `x`, one per penalty, fit at once: scikit-learn's
    Ridge takes a penalty per target, so the targets are `y` repeated, penalty k on copy k (every target is
    solved on its own); the prediction's columns k·D … (k+1)·D − 1 are penalty k's."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    penalties = np.repeat(np.asarray(alphas, dtype=np.float64), y.shape[1])
    return make_pipeline(StandardScaler(), Ridge(alpha=penalties)).fit(x, np.tile(y, (1, len(alphas))))


def untrained_like(model_cfg: config.Model, seed: int, dev: torch.device) -> nn.Module:
    """A fresh world model of `model_cfg` on `dev`, initialised as the trainer does (torch seed `seed`)."""
    from prelar.world_model import WorldModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = WorldModel(copy.deepcopy(model_cfg))
    return fresh.to(dev).eval()


def latent_action_probe(
    models: dict[str, nn.Module],
    clips: list[Clip],
    cfg: config.Evaluate,
    untrained: config.Model | None,
    dev: torch.device,
    fit_clips: Sequence[Clip] = (),
) -> list[dict[str, Any]]:
    """R² of the ridge probe latent action → target (`cfg.probe_target`: the true action by default) on
    held-out episodes, for each model (method → world model with latent actions) and for an untrained
    encoder of config `untrained` built on `dev` (method `UNTRAINED`; None: none), per seed of `cfg.seeds`
    (the seed draws the episode split and the untrained initialisation). Features are computed in
    `cfg.precision`. `fit_clips` (`probe_fit_clips`) join every split's fit side (a clip of one of the
    probe's own episodes never does).

    Clips without actions are ignored. Returns one row per (method, seed): method, seed, r2, r2_dim{i},
    fit_episodes, test_episodes, test_frames. Raises ValueError when the clips hold fewer than 2 episodes,
    or when a clip with actions lacks the target (shards from before `Clip.hand` was stored).
    """
    clips, keys, targets, splits = _probe_data(clips, cfg, fit_clips)
    features = {m: latent_action_features(model, clips, cfg.precision) for m, model in models.items()}
    rows = []
    for seed, split in splits.items():
        baseline = {}
        if untrained is not None:
            fresh = untrained_like(untrained, seed, dev)
            baseline[UNTRAINED] = latent_action_features(fresh, clips, cfg.precision)
        for method, feats in {**features, **baseline}.items():
            rows.append(_probe_row(method, seed, feats, targets, keys, split, cfg))
    return rows


def pixel_difference_features(clips: list[Clip], pool: int = 4) -> list[np.ndarray]:
    """A model-free feature for the probe: the frame difference o_{t+1} − o_t in [−1, 1], averaged over
    `pool` x `pool` pixel blocks, float32 [T-1, (64 / pool)² · 3] per clip."""
    out = []
    for clip in clips:
        frames = clip.frames.astype(np.float32) / 255.0  # [T, H, W, 3]
        diff = frames[1:] - frames[:-1]
        t, h, w, c = diff.shape
        out.append(diff.reshape(t, h // pool, pool, w // pool, pool, c).mean((2, 4)).reshape(t, -1))
    return out


def pixel_difference_probe(
    clips: list[Clip], cfg: config.Evaluate, fit_clips: Sequence[Clip] = ()
) -> list[dict[str, Any]]:
    """The probe's yardstick from the data alone: the same ridge probe, clips, `fit_clips` and splits as
    `latent_action_probe`, on `pixel_difference_features` (method `PIXELS`), per seed of `cfg.seeds`. How much
    of the target a linear read-out of the raw one-step motion recovers."""
    return _feature_probe(PIXELS, pixel_difference_features, clips, cfg, fit_clips)


def hand_motion_probe(
    clips: list[Clip], cfg: config.Evaluate, fit_clips: Sequence[Clip] = ()
) -> list[dict[str, Any]]:
    """The probe's yardstick from the simulator: the same ridge probe, clips, `fit_clips` and splits as
    `latent_action_probe`, on the true motion of the end effector hand_{t+1} − hand_t (method `HAND_MOTION`),
    per seed of `cfg.seeds`: how much of the action the motion two frames can show tells a linear read-out.
    With `evaluate.probe_target` "action" only (on its own motion the read-out is exact); ValueError when a
    clip lacks `hand`."""
    if cfg.probe_target != "action":
        raise ValueError(f"the true hand motion is a yardstick of the action, not of {cfg.probe_target!r}")
    motions = functools.partial(_required, target="hand_motion", what="the true-hand-motion yardstick")
    return _feature_probe(HAND_MOTION, motions, clips, cfg, fit_clips)


def _feature_probe(method, featurize, clips, cfg: config.Evaluate, fit_clips: Sequence[Clip]) -> list[dict]:
    """Rows of the ridge probe on `featurize(clips)` (no model), per seed of `cfg.seeds`."""
    clips, keys, targets, splits = _probe_data(clips, cfg, fit_clips)
    feats = featurize(clips)
    return [_probe_row(method, seed, feats, targets, keys, split, cfg) for seed, split in splits.items()]


def fit_inverse_dynamics(
    clips: list[Clip], model_cfg: config.Model, updates: int, batch_size: int, lr: float, seed: int,
    dev: torch.device, target: str = "action",
) -> nn.Module:
    """An inverse dynamics encoder of `model_cfg`'s sizes (PreLAR Eq. 3's network) regressed onto the
    probe's `target` (`probe_target`; the true action a_t by default): the mean of its Gaussian → the target
    standardised per dimension over `clips` by mean squared error, `updates` Adam steps on `batch_size` frame
    pairs drawn uniformly from `clips` (those with the target), initialised and drawn with `seed`; in eval
    mode. Standardised, so that the fit does not depend on the target's units: a hand's motion spreads ~1.5 cm
    a frame, ~40x less than an action's components, and Adam's steps would swamp it. The network keeps the
    standardisation (`target_center`, `target_scale`) for `inverse_dynamics_features` to undo. ValueError when
    no clip has the target."""
    from tqdm import tqdm

    from prelar.nets import InverseDynamics
    from prelar.world_model import preprocess

    clips = [c for c in clips if probe_target(c, target) is not None and len(c.frames) >= 2]
    if not clips:
        raise ValueError(f"the supervised inverse dynamics needs clips with the {target} (Meta-world shards)")
    frames = [torch.from_numpy(c.frames).permute(0, 3, 1, 2) for c in clips]  # [T,3,64,64] uint8
    targets = [probe_target(c, target) for c in clips]  # [T-1, A]
    every = np.concatenate(targets)
    center, scale = every.mean(0), np.maximum(every.std(0), 1e-8)  # [A]
    goals = [torch.from_numpy((y - center) / scale) for y in targets]  # standardised [T-1, A]
    pairs = np.array([(i, t) for i, g in enumerate(goals) for t in range(len(g))])
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = InverseDynamics(model_cfg.cnn_width, model_cfg.hidden, goals[0].shape[1],
                              model_cfg.latent_action_min_std, norm=model_cfg.resnet_norm).to(dev)
    net.register_buffer("target_center", torch.from_numpy(center).to(dev))
    net.register_buffer("target_scale", torch.from_numpy(scale).to(dev))
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in tqdm(range(updates), desc="supervised inverse dynamics", unit="update", mininterval=10):
        batch = pairs[rng.integers(len(pairs), size=batch_size)]
        obs = torch.stack([frames[i][t] for i, t in batch]).to(dev)
        next_obs = torch.stack([frames[i][t + 1] for i, t in batch]).to(dev)
        goal = torch.stack([goals[i][t] for i, t in batch]).to(dev)
        mean, _ = net(preprocess(obs), preprocess(next_obs))
        loss = nn.functional.mse_loss(mean, goal)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return net.eval()


@torch.no_grad()
def inverse_dynamics_features(net: nn.Module, clips: list[Clip]) -> list[np.ndarray]:
    """The target `fit_inverse_dynamics`' network predicts per clip, in the target's units: float32 [T-1, A]
    (from frames t, t+1)."""
    from prelar.world_model import preprocess

    dev = next(net.parameters()).device
    out = []
    for clip in clips:
        images = preprocess(torch.from_numpy(clip.frames).permute(0, 3, 1, 2).to(dev))  # [T,3,64,64]
        standardised = net(images[:-1], images[1:])[0].float()  # [T-1, A]
        out.append((standardised * net.target_scale + net.target_center).cpu().numpy())
    return out


def supervised_probe(
    train_clips: list[Clip], clips: list[Clip], cfg: config.Evaluate, model_cfg: config.Model, updates: int,
    batch_size: int, lr: float, dev: torch.device, fit_clips: Sequence[Clip] = (),
) -> list[dict[str, Any]]:
    """The probe's ceiling: per seed of `cfg.seeds`, an inverse dynamics encoder fit to the probe's target
    (`cfg.probe_target`) of `train_clips` (`fit_inverse_dynamics`, the seed's initialisation and batches;
    clips of an episode among `clips` are left out), then the same ridge probe, clips, `fit_clips` and splits
    as `latent_action_probe` on its predictions (method `SUPERVISED`). A latent action learnt without labels
    from the same frames, read out linearly, has no reason to beat it. (`fit_clips` drawn from `train_clips`
    fit the ridge on the encoder's own training frames, where its predictions are better than on new ones: a
    read-out of 4 numbers that then shrinks them less than the test episodes would want, so the ceiling errs
    low.)"""
    scored = {episode_key(c) for c in clips}
    clips, keys, targets, splits = _probe_data(clips, cfg, fit_clips)
    train_clips = [c for c in train_clips if episode_key(c) not in scored]  # never an episode it scores
    rows = []
    for seed, split in splits.items():
        net = fit_inverse_dynamics(
            train_clips, model_cfg, updates, batch_size, lr, seed, dev, cfg.probe_target
        )
        feats = inverse_dynamics_features(net, clips)
        rows.append(_probe_row(SUPERVISED, seed, feats, targets, keys, split, cfg))
    return rows


_REINGEST = (
    "shards written before the end effector's states were stored (hand.npy); ingest them again "
    "(`prelar ingest metaworld`, `--study` for the study's shards: the same frames) or set "
    "evaluate.probe_target=action"
)


def _required(clips: list[Clip], target: str, what: str) -> list[np.ndarray]:
    """`probe_target(c, target)` of every clip; ValueError naming `what` and the fix when one lacks it."""
    values = [probe_target(c, target) for c in clips]
    missing = [c.meta.get("id") for c, y in zip(clips, values, strict=True) if y is None]
    if missing:
        raise ValueError(f"{what}: {len(missing)} clip(s) lack it (e.g. {missing[0]}): {_REINGEST}")
    return values


def _probe_data(clips: list[Clip], cfg: config.Evaluate, fit_clips: Sequence[Clip] = ()):
    """The probe's clips (those with actions) followed by `fit_clips` (those with actions), their episode
    keys, targets [T-1, 4] (`probe_target` of `cfg.probe_target`) and, per seed of `cfg.seeds`, the (fit,
    test) episode split of the probe's clips, the fit side joined by the episodes of `fit_clips` (never one of
    the probe's own). ValueError naming the fix when a clip with actions lacks the target."""
    clips = [c for c in clips if c.actions is not None]
    own = [episode_key(c) for c in clips]
    scored = set(own)
    extra = [c for c in fit_clips if c.actions is not None and episode_key(c) not in scored]
    clips = clips + extra
    keys = own + [episode_key(c) for c in extra]
    targets = _required(clips, cfg.probe_target, f"evaluate.probe_target={cfg.probe_target}")
    splits = {}
    for seed in cfg.seeds:
        fit, test = split_episodes(own, cfg.probe_test_fraction, seed)
        splits[seed] = (fit | set(keys[len(own):]), test)
    return clips, keys, targets, splits


def _probe_row(method, seed, feats, targets, keys, split, cfg: config.Evaluate) -> dict[str, Any]:
    """One row of the probe: ridge fit on the `split`'s fit episodes, R² on its test episodes."""
    fit, test = split
    fit_idx = [i for i, k in enumerate(keys) if k in fit]
    test_idx = [i for i, k in enumerate(keys) if k in test]
    alpha = cfg.probe_alpha if cfg.probe_alpha is not None else cfg.probe_alphas
    r2, per_dim = ridge_r2(feats, targets, fit_idx, test_idx, alpha, keys)
    return {
        "method": method,
        "seed": seed,
        "r2": r2,
        **{f"r2_dim{i}": v for i, v in enumerate(per_dim)},
        "fit_episodes": len(fit),
        "test_episodes": len(test),
        "test_frames": int(sum(len(targets[i]) for i in test_idx)),
    }
