"""Latent-action probe: how much of the true action the inferred latent action carries.

For clips that record their actions (the Meta-world source), a ridge regression (standardised inputs, its
penalty chosen by cross-validation over the fit episodes) maps
the latent-action mean of q(ã_t | o_t, o_{t+1}) (PreLAR Eq. 3) to the true 4-d action a_t. It is fit on some
episodes and scored (R²) on the others: the split is by episode (the cameras of one episode share its
actions), never by frame. The same probe on the inverse dynamics encoder of an untrained model (fresh
initialisation with the same seed) is the baseline a learnt representation has to beat.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from prelar.data.clip import Clip


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


@torch.no_grad()
def latent_action_features(model: nn.Module, clips: list[Clip]) -> list[np.ndarray]:
    """Latent-action means per clip: float32 [T-1, A] (ã_t inferred from frames t and t+1)."""
    dev = next(model.parameters()).device
    features = []
    for clip in clips:
        frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2)[None].to(dev)  # [1,T,3,64,64]
        mean, _ = model.infer_latent_actions(frames)  # [1,T-1,A]
        features.append(mean[0].float().cpu().numpy())
    return features


ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 8))  # ridge penalties tried when `alpha` is None


def ridge_r2(
    features: list[np.ndarray],
    actions: list[np.ndarray],
    fit_idx: list[int],
    test_idx: list[int],
    alpha: float | None = None,
) -> tuple[float, list[float]]:
    """Standardised ridge fit on clips `fit_idx`, scored on clips `test_idx`: (mean R², R² per dimension).

    alpha None: the penalty is chosen from `ALPHAS` by cross-validation over the fit clips, grouped by clip
    (frames of one clip never sit on both sides of a fold). Standardising near-constant latent dimensions
    (a latent action squeezed onto its N(0, I) prior) blows up their noise; a fixed small penalty then
    overfits and scores far below 0 on new episodes, where the chosen penalty shrinks towards R² ≈ 0.
    """
    x_fit = np.concatenate([features[i] for i in fit_idx])
    y_fit = np.concatenate([actions[i] for i in fit_idx])
    x_test = np.concatenate([features[i] for i in test_idx])
    y_test = np.concatenate([actions[i] for i in test_idx])
    probe = make_pipeline(StandardScaler(), Ridge(alpha=1.0 if alpha is None else alpha))
    if alpha is None and len(fit_idx) >= 2:
        groups = np.concatenate([np.full(len(features[i]), i) for i in fit_idx])
        search = GridSearchCV(
            probe, {"ridge__alpha": ALPHAS}, cv=GroupKFold(n_splits=min(5, len(fit_idx))), scoring="r2"
        )
        probe = search.fit(x_fit, y_fit, groups=groups).best_estimator_
    else:
        probe.fit(x_fit, y_fit)
    pred = probe.predict(x_test)
    return float(r2_score(y_test, pred)), [float(v) for v in r2_score(y_test, pred, multioutput="raw_values")]


def untrained_like(model: nn.Module, seed: int) -> nn.Module:
    """A fresh model of the same config, initialised as the trainer does (torch seed `seed`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = type(model)(copy.deepcopy(model.cfg))
    return fresh.to(next(model.parameters()).device).eval()


def latent_action_probe(
    model: nn.Module,
    clips: list[Clip],
    *,
    seed: int = 0,
    test_fraction: float = 0.3,
    alpha: float | None = None,
) -> dict[str, Any]:
    """R² of a ridge probe latent action → true action on held-out episodes, trained and untrained.

    Clips without actions are ignored. Returns `probe_r2`, `probe_r2_untrained`, `probe_r2_dim{i}`, the
    episode and frame counts, or `probe_skipped` with the reason when there are too few episodes.
    """
    clips = [c for c in clips if c.actions is not None]
    keys = [episode_key(c) for c in clips]
    try:
        fit, test = split_episodes(keys, test_fraction, seed)
    except ValueError as err:
        return {"probe_skipped": f"{err} with true actions"}
    fit_idx = [i for i, k in enumerate(keys) if k in fit]
    test_idx = [i for i, k in enumerate(keys) if k in test]
    actions = [c.actions.astype(np.float32) for c in clips]  # [T-1,4] each
    was_training = model.training
    model.eval()
    r2, per_dim = ridge_r2(latent_action_features(model, clips), actions, fit_idx, test_idx, alpha)
    model.train(was_training)
    r2_untrained, _ = ridge_r2(
        latent_action_features(untrained_like(model, seed), clips), actions, fit_idx, test_idx, alpha
    )
    result = {
        "probe_r2": r2,
        "probe_r2_untrained": r2_untrained,
        "probe_fit_episodes": len(fit),
        "probe_test_episodes": len(test),
        "probe_test_frames": int(sum(len(actions[i]) for i in test_idx)),
    }
    result.update({f"probe_r2_dim{i}": v for i, v in enumerate(per_dim)})
    return result
