"""Offline transfer: fine-tune a world model with real actions on fixed downstream episodes and measure its
action-conditioned open-loop prediction error after K updates (the paper's claim, in miniature).

The model is the fine-tuning world model of `prelar.agent.model` (one `method` switch, the code online
fine-tuning runs): PreLAR's pre-trained model with an action encoder in the latent-action slot (inverse
dynamics dropped), APV's stacked action-conditional model on the action-free one, or DreamerV2's random
initialisation. It is trained with Eq. 11 (image, dynamics KL, reward heads, and the intrinsic bonus's
auxiliary head where the method has one) on segments replayed from the downstream episodes by
`prelar.agent.replay.Replay`, with `finetune`'s learning rate, clipping, architecture and its freeze of the
pre-trained encoder and RSSM for the first `finetune.freeze_updates` updates; only the precision and the
batch shape come from `evaluate`.

The error: on non-overlapping windows of CONTEXT + HORIZON frames, observe CONTEXT frames (with their
actions), then imagine HORIZON frames from the real actions alone (the prior's mode) and decode them;
squared error per predicted frame in [0, 1] pixels, and PSNR. Windows of held-out episodes (split by
episode) measure transfer; windows of the training episodes measure the fit.

Shape legend: B windows or segments, T time, A real action dims, H horizon.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from prelar import config, device
from prelar.agent.finetune import Agent
from prelar.agent.replay import Episode, Replay
from prelar.data.clip import Clip
from prelar.evaluate.prediction import CONTEXT, HORIZON, psnr
from prelar.evaluate.probe import episode_key, split_episodes
from prelar.world_model import WorldModel, evaluating, preprocess

WINDOW = CONTEXT + HORIZON


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


def windows(episodes: list[Episode], limit: int) -> dict[str, np.ndarray]:
    """Up to `limit` non-overlapping windows of WINDOW steps (in episode order), as `Replay.sample` batches:
    frames uint8 [B, WINDOW, 3, 64, 64], actions [B, WINDOW, A], rewards [B, WINDOW], is_first [B, WINDOW]."""
    picks = [(e, s) for e in episodes for s in range(0, len(e) - WINDOW + 1, WINDOW)][:limit]
    if not picks:
        raise ValueError(f"no episode has the {WINDOW} frames of one open-loop window")
    is_first = np.zeros((len(picks), WINDOW), bool)
    is_first[:, 0] = [s == 0 for _, s in picks]
    return {
        "frames": np.stack([e.frames[s : s + WINDOW] for e, s in picks]),
        "actions": np.stack([e.actions[s : s + WINDOW] for e, s in picks]),
        "rewards": np.stack([e.rewards[s : s + WINDOW] for e, s in picks]),
        "is_first": is_first,
    }


@torch.no_grad()
def predict(agent: Agent, batch: dict[str, np.ndarray], seed: int) -> torch.Tensor:
    """Action-conditioned open-loop prediction, float [B, HORIZON, 3, 64, 64] in [0, 1].

    Observes frames 0..CONTEXT−1 with their actions, then imagines CONTEXT..WINDOW−1 from the real actions
    alone (the prior's mode); later frames are never seen.
    """
    model, dev = agent.model, agent.device
    data = {k: torch.from_numpy(v).to(dev) for k, v in batch.items()}
    generator = torch.Generator(device=dev).manual_seed(seed)  # the context's posterior samples
    with evaluating(model), agent.autocast():
        images = preprocess(data["frames"][:, :CONTEXT])  # [B, CONTEXT, 3, 64, 64]
        action = model.latent_action(data["actions"])  # [B, T, L] (L = A without an action encoder)
        embed = model.world.encode(images)  # [B, CONTEXT, E]
        post, _ = model.world.observe(
            embed, action[:, :CONTEXT], data["is_first"][:, :CONTEXT], None, generator
        )
        state = {k: v[:, -1] for k, v in post.items()}
        features = []
        for t in range(CONTEXT, action.shape[1]):
            state = model.world.imagine_step(state, action[:, t], generator, sample=False)
            features.append(model.world.features(state))
        pred = model.world.decode(torch.stack(features, 1))  # [B, H, 3, 64, 64] in [−0.5, 0.5]
    return (pred.float() + 0.5).clamp(0, 1)


def open_loop_mse(agent: Agent, batch: dict[str, np.ndarray], seed: int) -> torch.Tensor:
    """Squared error of `predict` per window and predicted frame: [B, HORIZON] (pixels in [0, 1])."""
    truth = (
        torch.from_numpy(batch["frames"][:, CONTEXT:]).to(agent.device).float() / 255.0
    )  # [B, H, 3, 64, 64]
    return ((predict(agent, batch, seed) - truth) ** 2).mean(dim=(2, 3, 4))


def copy_last_mse(batch: dict[str, np.ndarray]) -> torch.Tensor:
    """The yardstick without a model: the last context frame repeated, squared error [B, HORIZON]."""
    frames = torch.from_numpy(batch["frames"]).float() / 255.0  # [B, T, 3, 64, 64]
    return ((frames[:, CONTEXT:] - frames[:, CONTEXT - 1 : CONTEXT]) ** 2).mean(dim=(2, 3, 4))


def world_model_update(agent: Agent, batch: dict[str, np.ndarray]) -> dict[str, float]:
    """One world-model step (Eq. 11), the first half of `Agent.update` (no actor-critic here)."""
    metrics, _ = agent.update_world_model(batch)
    agent.updates.add_(1)
    return metrics


@dataclass
class Curve:
    """Open-loop error of one (method, seed) at each K: mean MSE, PSNR (dB), and per-horizon MSE."""

    updates: list[int] = field(default_factory=list)
    mse: list[float] = field(default_factory=list)
    psnr: list[float] = field(default_factory=list)
    train_mse: list[float] = field(default_factory=list)
    mse_per_step: list[list[float]] = field(default_factory=list)  # [K][HORIZON]
    losses: list[float] = field(default_factory=list)  # Eq. 11 total of every update
    update_seconds: float = 0.0  # spent in updates (sampling included), not in measuring

    def add(self, k: int, test: torch.Tensor, train: torch.Tensor) -> None:
        self.updates.append(k)
        self.mse.append(test.mean().item())
        self.psnr.append(psnr(test).mean().item())
        self.train_mse.append(train.mean().item())
        self.mse_per_step.append(test.mean(0).tolist())


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
) -> Curve:
    """Fine-tune `method` (from `pretrained`, or from scratch for dreamerv2) on `train` for max(K) updates,
    measuring the open-loop error on `test` (and on `train`) at every K of `evaluate.transfer_updates`.

    `pretrained` is consumed (the fine-tuning model takes over its modules). `progress()` runs per update.
    """
    cfg = params.evaluate
    grid = sorted(set(cfg.transfer_updates))
    run_params = finetune_params(params, method, seed)
    dev = device.resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)  # the fresh parameters: action encoder, heads, stacked RSSM, or everything
        agent = Agent(run_params, pretrained, dev)
    length = cfg.transfer_segment_length
    replay = Replay(sum(len(e) for e in train), length)
    for episode in train:
        replay.add(episode, persist=False)
    rng = np.random.default_rng(seed)
    test_windows, train_windows = (
        windows(test, cfg.transfer_eval_windows),
        windows(train, cfg.transfer_eval_windows),
    )
    curve = Curve()
    for k in range(grid[-1] + 1):
        if k in grid:
            curve.add(k, open_loop_mse(agent, test_windows, seed), open_loop_mse(agent, train_windows, seed))
        if k < grid[-1]:
            t0 = time.perf_counter()
            metrics = world_model_update(agent, replay.sample(cfg.transfer_batch_size, rng))
            device.synchronize(dev)
            curve.update_seconds += time.perf_counter() - t0
            curve.losses.append(metrics["total"])
            if progress is not None:
                progress()
    return curve
