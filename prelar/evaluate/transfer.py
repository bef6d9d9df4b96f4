"""Offline transfer: fine-tune a world model with real actions on fixed downstream episodes and measure its
action-conditioned open-loop prediction error after K updates (the paper's claim, in miniature).

The model is the fine-tuning world model of `prelar.agent.model` (one `method` switch, the code online
fine-tuning runs): PreLAR's pre-trained model with an action encoder in the latent-action slot (inverse
dynamics dropped), APV's stacked action-conditional model on the action-free one, or DreamerV2's random
initialisation. It is trained with Eq. 11 (image, dynamics KL, reward heads, and the intrinsic bonus's
auxiliary head where the method has one) by its own `update`, on segments replayed from the downstream
episodes by `prelar.agent.replay.Replay`, with `finetune`'s learning rate, clipping, architecture and its
freeze of the pre-trained encoder and RSSM for the first `finetune.freeze_updates` updates; only the
precision and the batch shape come from `evaluate`. No actor-critic is built: nothing here acts.

The error: on non-overlapping windows of `evaluate.context` + `evaluate.horizon` frames
(`prediction.windows`), observe the context (with its actions), then imagine the horizon from the real
actions alone, through the model's action encoder where it has one (`prediction.open_loop_frame_mse`: the
prior's mode, squared error per predicted frame in [0, 1] pixels), and PSNR. Windows of held-out episodes
(split by episode) measure transfer; windows of the training episodes measure the fit. The yardstick is
`prediction.copy_last_frame_mse` on the same held-out windows.

Shape legend: B windows or segments, T time, A real action dims, H horizon.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from prelar import config, device
from prelar import metrics as names
from prelar.agent.model import FinetuneModel
from prelar.agent.replay import Episode, Replay
from prelar.data.clip import Clip
from prelar.evaluate.prediction import copy_last_frame_mse, open_loop_frame_mse, psnr, windows
from prelar.evaluate.probe import episode_key, split_episodes
from prelar.world_model import WorldModel, evaluating


def to_episode(clip: Clip) -> Episode:
    """A clip with actions and rewards → a replay episode (step t holds o_t and a_{t−1}; a_{−1} = 0)."""
    if clip.actions is None or clip.rewards is None:
        raise ValueError(f"{clip.meta.get('id')}: offline transfer needs clips with actions and rewards")
    T = len(clip.frames)
    actions = np.zeros((T, clip.actions.shape[1]), np.float32)  # [T, A]
    actions[1:] = clip.actions
    rewards = np.zeros(T, np.float32)
    rewards[1:] = clip.rewards
    success = np.zeros(T, bool)
    if clip.success is not None:
        success[1:] = clip.success
    frames = np.ascontiguousarray(clip.frames.transpose(0, 3, 1, 2))  # [T, 3, 64, 64]
    return Episode(frames=frames, actions=actions, rewards=rewards, success=success)


def split(clips: list[Clip], test_fraction: float, seed: int) -> tuple[list[Episode], list[Episode]]:
    """(fine-tuning, held-out) episodes, split by episode (a clip's cameras stay on one side)."""
    keys = [episode_key(c) for c in clips]
    fit, _ = split_episodes(keys, test_fraction, seed)
    train = [to_episode(c) for c, k in zip(clips, keys, strict=True) if k in fit]
    test = [to_episode(c) for c, k in zip(clips, keys, strict=True) if k not in fit]
    return train, test


def episode_windows(episodes: list[Episode], cfg: config.Evaluate) -> dict[str, np.ndarray]:
    """Up to `transfer_eval_windows` open-loop windows of the episodes (`prediction.windows`): frames uint8
    [B, window, 3, 64, 64], actions [B, window, A], rewards and is_first [B, window]."""
    return windows([vars(e) for e in episodes], cfg.window, cfg.transfer_eval_windows)


def copy_last(test: list[Episode], cfg: config.Evaluate) -> torch.Tensor:
    """The transfer's yardstick: `prediction.copy_last_frame_mse` [B, H] on the held-out windows."""
    return copy_last_frame_mse(torch.from_numpy(episode_windows(test, cfg)["frames"]), cfg.context)


@torch.no_grad()
def open_loop_error(
    model: FinetuneModel, batch: dict[str, np.ndarray], context: int, seed: int
) -> torch.Tensor:
    """`prediction.open_loop_frame_mse` [B, H] of the fine-tuning model on windows `batch`: its real actions
    go through the action encoder (or straight into the RSSM), the context's posterior samples from `seed`."""
    data = {k: torch.from_numpy(batch[k]).to(model.device) for k in ("frames", "actions", "is_first")}
    with evaluating(model), model.autocast():
        action = model.latent_action(data["actions"])  # [B, T, L] (L = A without an action encoder)
        return open_loop_frame_mse(model.world, data["frames"], action, context, data["is_first"], seed)


@dataclass
class Curve:
    """Open-loop error of one (method, seed) at each K: mean MSE, PSNR (dB), and per-horizon MSE."""

    updates: list[int] = field(default_factory=list)
    mse: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    train_mse: list[float] = field(default_factory=list)
    mse_per_step: list[list[float]] = field(default_factory=list)  # [K][H]
    losses: list[float] = field(default_factory=list)  # Eq. 11 total of every update
    update_seconds: float = 0.0  # spent in updates (sampling included), not in measuring

    def add(self, k: int, test: torch.Tensor, train: torch.Tensor) -> None:
        self.updates.append(k)
        self.mse.append(test.mean().item())
        self.psnr.append(psnr(test).mean().item())
        self.train_mse.append(train.mean().item())
        self.mse_per_step.append(test.mean(0).tolist())

    def logged(self) -> list[tuple[int, dict[str, float]]]:
        """(K, its MLflow metrics) per measured K: held-out MSE and PSNR, the fine-tuning episodes' MSE; at
        the last K also the Eq. 11 loss of the last update."""
        logged = [
            (k, {names.transfer_metric(k): mse, names.transfer_psnr_metric(k): db,
                 names.transfer_train_mse_metric(k): fit})
            for k, mse, db, fit in zip(self.updates, self.mse, self.psnr, self.train_mse, strict=True)
        ]  # fmt: skip
        if self.losses:
            logged[-1][1][names.TRANSFER_FINAL_LOSS] = self.losses[-1]
        return logged


def finetune_params(params: config.Params, method: str, seed: int) -> config.Params:
    """`params` with the fine-tuning section set for one offline transfer run."""
    cfg = params.finetune.model_copy(
        update={
            "method": method,
            "seed": seed,
            "precision": params.evaluate.precision,
            "device": params.evaluate.device,
            "batch_size": params.evaluate.transfer_batch_size,
            "segment_length": params.evaluate.transfer_segment_length,
        }
    )
    return params.model_copy(update={"finetune": cfg})


def transfer(
    method: str,
    pretrained: WorldModel | None,
    params: config.Params,
    train: list[Episode],
    test: list[Episode],
    seed: int,
    progress: Callable[[], None] | None = None,
    measure: Callable[[int, FinetuneModel], None] | None = None,
) -> Curve:
    """Fine-tune `method` (from `pretrained`, or from scratch for dreamerv2) on `train` for max(K) updates,
    measuring the open-loop error on `test` (and on `train`) at every K of `evaluate.transfer_updates`.

    `pretrained` is consumed (the fine-tuning model takes over its modules). `progress()` runs per update;
    `measure(K, model)` at every K, after the error, for the caller's own measurements of the model.
    """
    cfg = params.evaluate
    grid = sorted(set(cfg.transfer_updates))
    run_params = finetune_params(params, method, seed)
    dev = device.resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)  # the fresh parameters: action encoder, heads, stacked RSSM, or everything
        model = FinetuneModel(method, run_params, pretrained).to(dev)
    replay = Replay(sum(len(e) for e in train), cfg.transfer_segment_length)
    for episode in train:
        replay.add(episode, persist=False)
    rng = np.random.default_rng(seed)
    test_windows, train_windows = episode_windows(test, cfg), episode_windows(train, cfg)
    curve = Curve()
    for k in range(grid[-1] + 1):
        if k in grid:
            test_error = open_loop_error(model, test_windows, cfg.context, seed)  # [B, H]
            curve.add(k, test_error, open_loop_error(model, train_windows, cfg.context, seed))
            if measure is not None:
                measure(k, model)
        if k < grid[-1]:
            t0 = time.perf_counter()
            metrics, _ = model.update(replay.sample(cfg.transfer_batch_size, rng))
            device.synchronize(dev)
            curve.update_seconds += time.perf_counter() - t0
            curve.losses.append(metrics["total"])
            if progress is not None:
                progress()
    return curve
