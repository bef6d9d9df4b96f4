"""Data only, no model: how well does the hand's true motion over one frame step read the command a_t, and
the previous one a_{t-1}, when the expert's action is held for r simulator steps per frame? Renders 2
episodes of 50 frame steps per pre-training task at each r (the study's shards hold r = 4):

    MUJOCO_GL=egl python docs/study/probe_target/lag/action_repeat.py 4 8

A ridge (penalty by cross-validation) fit on episode 0 of every task, R² on episode 1; frame steps t >= 1.
"""

import sys
import warnings

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score

from prelar import config
from prelar.data import metaworld

warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")  # the experts' gains
params = config.load("params.yaml")
for repeat in map(int, sys.argv[1:]):
    update = {"action_repeat": repeat, "episodes_per_task": 2, "max_steps": 50}
    cfg = params.data.metaworld.model_copy(update=update)
    refs, _ = metaworld.list_clips(cfg)
    clips = [metaworld.load_clip(ref, cfg) for ref in refs]
    motion = np.concatenate([np.diff(c.hand, axis=0)[1:] for c in clips])  # hand_t+1 - hand_t, t >= 1
    episode = np.concatenate([np.full(len(c.actions) - 1, c.meta["episode"]) for c in clips])
    fit, test = episode == 0, episode == 1
    read = {}
    for name, y in (("a_t", [c.actions[1:] for c in clips]), ("a_t-1", [c.actions[:-1] for c in clips])):
        y = np.concatenate(y)
        ridge = RidgeCV(alphas=np.logspace(-6, 2, 9)).fit(motion[fit], y[fit])
        read[name] = round(r2_score(y[test], ridge.predict(motion[test])), 3)
    clipped = float((np.abs(np.concatenate([c.actions for c in clips])) >= 0.999).mean())
    print(f"action repeat {repeat}: {len(clips)} clips; the true motion reads R² {read}; "
          f"{clipped:.0%} of the action's components clipped at ±1", flush=True)
