"""The metric-name contract: the MLflow tags and metric keys that the stages log and the report reads.

The one home of these names: the producers (`prelar.pretrain`, `prelar.agent.finetune`,
`prelar.evaluate.stages`) log under them and `prelar.evaluate.runs` reads them back.

| stage tag       | other tags         | metric (MLflow key)                  | metric step            |
|-----------------|--------------------|--------------------------------------|------------------------|
| finetune        | method, task, seed | `eval/success_rate` (history)        | environment step       |
| pretrain        | method, seed       | `train/<term>` (history), e.g.       | update                 |
|                 |                    | `train/total`                        |                        |
| pretrain        | method, seed       | `curve/<measurement>` (history), e.g.| update                 |
|                 |                    | `curve/probe_r2`, `curve/pred_mse`   |                        |
| probe           | method, seed       | `probe/r2`                           | any (latest is used)   |
| controllability | method, seed       | `controllability/delta_psnr_h{k}`    | k = open-loop horizon  |
| transfer        | method, seed       | `transfer/mse_k{K}`                  | K = fine-tuning updates|
| any             | method             | any `*.gif` artifact, e.g.           |                        |
|                 |                    | `figures/open_loop.gif`              |                        |

The evaluation stages log the other names below beside these (MLflow shows them; the report does not read
them). Training diagnostics (`grad_norm/`, `perf/`, `time/`, `model/`, `behavior/`, `episode/`,
`replay/`, and pre-training's final check `pred_*`, `delta_psnr*` from `prelar.evaluate.prediction`)
are named where they are logged: nothing reads them but MLflow's UI and the stage's metrics.json.
"""

from __future__ import annotations

import re

# ---- tags (`method` values are the names of `prelar.methods`) ----
TAG_STAGE = "stage"
TAG_METHOD = "method"
TAG_TASK = "task"
TAG_SEED = "seed"
TAG_DEVICE = "device"
TAG_STUDY_RUN = "study.run"  # a `prelar study` run's name (of `study.runs`, or `scratch`)
TAG_SETTINGS = "settings"  # the digest of the settings a kept measurement was made with
PRETRAIN_STAGE = "pretrain"  # the `stage` whose `train/` metrics are pre-training losses

# ---- fine-tuning (`prelar.agent.finetune`) ----
SUCCESS_RATE = "eval/success_rate"  # mean success over the evaluation episodes
RETURN = "eval/return"

# ---- pre-training (`prelar.pretrain`) ----
PRETRAIN_PREFIX = "train/"  # + loss term, e.g. train/total (fine-tuning may use the prefix too)
CURVE_PREFIX = "curve/"  # + a held-out measurement of `prelar.evaluate.curves`, e.g. curve/probe_r2
# The learning-curve figure (report and `prelar study`): metric, title, yardstick (a constant or a metric),
# log scale
CURVE_PANELS = [
    (f"{CURVE_PREFIX}probe_r2", "probe R² (dashed: untrained)", f"{CURVE_PREFIX}probe_r2_untrained", False),
    (f"{CURVE_PREFIX}delta_psnr", "ΔPSNR own vs another clip's actions (dB)", 0.0, False),
    (f"{CURVE_PREFIX}pred_mse_ratio", "open-loop MSE / copy-last-frame MSE", 1.0, True),
    (f"{CURVE_PREFIX}kl_action", "action KL (nats)", None, False),
    (f"{CURVE_PREFIX}kl_dyn", "dynamics KL (nats)", None, False),
    (f"{CURVE_PREFIX}consistency_agreement", "consistency: ordering agreement", 0.5, False),
]

# ---- evaluation stages (`prelar.evaluate.stages`) ----
PROBE_R2 = "probe/r2"
PROBE_FIT_EPISODES = "probe/fit_episodes"
PROBE_TEST_EPISODES = "probe/test_episodes"
DELTA_PSNR_PREFIX = "controllability/delta_psnr_h"
DELTA_PSNR_MEAN = "controllability/delta_psnr_mean"  # over horizons
TRANSFER_PREFIX = "transfer/mse_k"
TRANSFER_FINAL_LOSS = "transfer/final_loss"
PREDICTION_GIF_SUFFIX = ".gif"  # sample predictions (prelar.evaluate.prediction writes open_loop.gif)


def probe_r2_dim(dim: int) -> str:
    """MLflow key of the probe's R² on action dimension `dim`."""
    return f"probe/r2_dim{dim}"


def delta_psnr_metric(horizon: int) -> str:
    """MLflow key of ΔPSNR (inferred minus shuffled latent actions) at open-loop horizon `horizon`."""
    return f"{DELTA_PSNR_PREFIX}{horizon}"


def transfer_metric(updates: int) -> str:
    """MLflow key of the action-conditioned open-loop MSE after `updates` offline fine-tuning updates."""
    return f"{TRANSFER_PREFIX}{updates}"


def transfer_psnr_metric(updates: int) -> str:
    """MLflow key of the open-loop PSNR after `updates` offline fine-tuning updates."""
    return f"transfer/psnr_k{updates}"


def transfer_train_mse_metric(updates: int) -> str:
    """MLflow key of the open-loop MSE on the fine-tuning episodes after `updates` updates."""
    return f"transfer/train_mse_k{updates}"


_DELTA_PSNR = re.compile(rf"^{re.escape(DELTA_PSNR_PREFIX)}(\d+)$")
_TRANSFER = re.compile(rf"^{re.escape(TRANSFER_PREFIX)}(\d+)$")


def delta_psnr_horizon(name: str) -> int | None:
    """The horizon k of a `delta_psnr_metric(k)` key; None for any other name."""
    match = _DELTA_PSNR.match(name)
    return int(match[1]) if match else None


def transfer_updates(name: str) -> int | None:
    """The K of a `transfer_metric(K)` key; None for any other name."""
    match = _TRANSFER.match(name)
    return int(match[1]) if match else None
