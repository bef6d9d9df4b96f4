"""Which command does a latent action read: a_t, or the previous one, a_{t-1}? And does a non-linear probe
read more than the ridge? Run from the repository root on the study's shards and checkpoints:

    python docs/study/probe_target/lag/probe_lag.py runs/study_gap/prelar_beta_a_0.01_lr6e-4_cos ...

Each argument is a study run's folder (seed0, seed1, seed2 inside). Writes probe_lag.csv beside this file:
one row per run, training seed, episode split (0-2), feature and target; R² on the held-out test episodes.
Rows of runs already in the file and not named here are kept (a run is named by its folder).
"""

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import r2_score
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from prelar import config
from prelar.evaluate import probe, stages

warnings.filterwarnings("ignore", category=UserWarning)  # the MLP's early stopping, the ridge's conditioning
params = config.load("params.yaml")
clips, _ = probe.probe_clips("datasets/shards/study", params)
keys = [probe.episode_key(c) for c in clips]
zero = np.zeros((1, 4), np.float32)
targets = {  # per clip, [T-1, 4], row t for the frame pair (o_t, o_t+1)
    "a_t": [c.actions for c in clips],
    "a_t-1": [np.concatenate([zero, c.actions[:-1]]) for c in clips],  # no command before the first: 0
    "hand_motion": [np.diff(c.hand, axis=0) for c in clips],
}


def mlp_r2(feats, y, fit_idx, test_idx, seed):
    """A 2 x 256 MLP (targets standardised, early stopping on 10% of the fit frames), R² on the test clips."""
    x_fit, y_fit = (np.concatenate([v[i] for i in fit_idx]) for v in (feats, y))
    x_test, y_test = (np.concatenate([v[i] for i in test_idx]) for v in (feats, y))
    scale = y_fit.std(0) + 1e-8
    mlp = MLPRegressor(hidden_layer_sizes=(256, 256), alpha=1.0, max_iter=500, early_stopping=True,
                       random_state=seed)
    model = make_pipeline(StandardScaler(), mlp).fit(x_fit, y_fit / scale)
    return r2_score(y_test, model.predict(x_test) * scale)


def indices(split):
    """(fit, test) clip indices of the probe's episode split `split` (the study's splits 0-2)."""
    fit, test = probe.split_episodes(keys, params.evaluate.probe_test_fraction, split)
    return [i for i, k in enumerate(keys) if k in fit], [i for i, k in enumerate(keys) if k in test]


def ridge_r2(x, y, split):
    return probe.ridge_r2(x, y, *splits[split], params.evaluate.probe_alphas, keys)[0]


splits = {split: indices(split) for split in (0, 1, 2)}
rows = []
for split in splits:  # the yardstick from the simulator: the true hand motion itself, no model
    for target in ("a_t", "a_t-1"):
        r2 = ridge_r2(targets["hand_motion"], targets[target], split)
        rows.append(("true hand motion", "-", split, "hand motion", "ridge", target, r2))
for run in map(Path, sys.argv[1:]):
    for seed_dir in sorted(run.glob("seed*")):
        [(_, _, model)] = stages.load_checkpoints([seed_dir], torch.device("cpu"))
        feats = probe.latent_action_features(model, clips, params.evaluate.precision)  # ã_t [T-1, A]
        both = [np.concatenate([f, np.concatenate([f[1:], f[-1:]])], 1) for f in feats]  # [ã_t, ã_t+1]
        for split in splits:
            for feature, x in (("latent action", feats), ("latent actions t, t+1", both)):
                for target, y in targets.items():
                    r2 = ridge_r2(x, y, split)
                    rows.append((run.name, seed_dir.name, split, feature, "ridge", target, r2))
            for target in ("a_t", "hand_motion"):
                r2 = mlp_r2(feats, targets[target], *splits[split], split)
                rows.append((run.name, seed_dir.name, split, "latent action", "mlp", target, r2))
        print(run.name, seed_dir.name, flush=True)
out = pd.DataFrame(rows, columns=["run", "seed", "split", "feature", "probe", "target", "r2"])
csv = Path(__file__).with_name("probe_lag.csv")
if csv.exists():  # keep the rows of runs not measured again here
    kept = pd.read_csv(csv, dtype=str, keep_default_na=False)  # verbatim
    out = pd.concat([kept[~kept.run.isin(out.run)], out], ignore_index=True)
    out = out.sort_values("run", key=lambda run: run != "true hand motion", kind="stable")  # yardstick first
out.to_csv(csv, index=False)
mean = out.astype({"r2": float}).groupby(["run", "seed", "feature", "probe", "target"]).r2.mean()  # splits
print(mean.groupby(["run", "feature", "probe", "target"]).agg(["mean", "min", "max"]).round(3).to_string())
