"""`prelar finetune`: online world-model fine-tuning and behaviour learning on a Meta-world task.

One loop for every method (`finetune.method`, see `prelar.agent.model`), as APV/DreamerV2 run it:
`prefill` steps of uniformly random actions, then `pretrain_updates` updates at once, then one update
every `train_every` env steps (world model on replayed segments, Eq. 11; actor and critic in
imagination, supplementary Eq. 1–4), acting with the actor's samples; every `eval_every` env steps
`eval_episodes` episodes with the actor's mode. Success of an episode = any step with info["success"].

Outputs in the run folder: checkpoint.pt, replay/ (episodes, see `prelar.agent.replay`), curve.csv
(env_step, success, return), metrics.json, videos/eval_<step>.gif; MLflow: one run per
method/task/seed, tagged with them.

Resume: re-running with the same folder continues from `checkpoint.pt` (networks, optimisers, step and
update counters, evaluation curve, RNG states, bonus queue) and reloads the replay episodes it counted.
Checkpoints are taken at episode ends only (every `checkpoint_every` env steps and at the end of the
run), so a run killed mid-way restarts from the last episode end before its last checkpoint, and its
episode seeds (derived from the episode index) make the continued run the one it would have been.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from prelar import checkpoint, config, device, methods, seeding, tracking
from prelar import metrics as names
from prelar.agent.behavior import ActorCritic
from prelar.agent.model import ACTION_DIM, FinetuneModel, load_pretrained
from prelar.agent.replay import Episode, Replay
from prelar.world_model import WorldModel, evaluating

CURVE = "curve.csv"
# Seed streams (`seeding.mix(seed, stream, ...)`): the torch seed, the numpy generator of random actions and
# replay sampling, the training episodes, the evaluation episodes.
TORCH_STREAM, NUMPY_STREAM, TRAIN_STREAM, EVAL_STREAM = 0, 1, 2, 3
# Finetune parameters that may change between a run and its resumption (they do not alter what is learnt).
RESUMABLE = {
    "env_steps",
    "out",
    "log_every",
    "checkpoint_every",
    "device",
    "eval_every",
    "eval_episodes",
    "video_fps",
    "pretrained",  # compared by what the file holds, not by its path (`other_pretrained`)
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=list(methods.METHODS), default=None, help="finetune.method")
    parser.add_argument(
        "--task", default=None, help="Meta-world v3 task, e.g. drawer-open-v3 (finetune.task)"
    )
    parser.add_argument("--seed", type=int, default=None, help="finetune.seed")
    parser.add_argument(
        "--pretrained",
        default=None,
        help="checkpoint of `prelar pretrain` (finetune.pretrained; default: the method's variant "
        "in pretrain.out, e.g. runs/pretrain/apv/checkpoint.pt for apv and naive_ft)",
    )
    parser.add_argument("--env-steps", type=int, default=None, help="env steps in total (finetune.env_steps)")
    parser.add_argument(
        "--out", default=None, help="run folder (default: finetune.out/<method>/<task>/seed<N>)"
    )


def updates(params: config.Params, args: argparse.Namespace) -> dict[str, Any]:
    """The `finetune` parameters the flags stand for (`--set` applies after them)."""
    named = ("method", "task", "seed", "pretrained", "env_steps")
    return {f"finetune.{k}": getattr(args, k) for k in named if getattr(args, k) is not None}


def run(params: config.Params, args: argparse.Namespace) -> int:
    finetune(with_pretrained(params), args.out)
    return 0


def with_pretrained(params: config.Params) -> config.Params:
    """`params` with `finetune.pretrained` defaulted to its method's variant in `pretrain.out` (e.g.
    runs/pretrain/apv/checkpoint.pt for apv) where the method loads one and none is given."""
    method = methods.method(params.finetune.method)
    if params.finetune.pretrained is not None or not method.pretrained:
        return params
    default = Path(params.pretrain.out) / method.variant / checkpoint.FILENAME
    return config.override(params, {"finetune.pretrained": str(default)})


def default_out(cfg: config.Finetune) -> Path:
    return Path(cfg.out) / cfg.method / cfg.task / f"seed{cfg.seed}"


def validate(params: config.Params) -> None:
    """Reject parameters that cannot work, before anything is built; the message names the key and the fix."""
    from prelar.envs.metaworld import validate_camera, validate_task

    cfg = params.finetune
    try:
        validate_task(cfg.task, "finetune.task")
        validate_camera(cfg.camera, "finetune.camera")
    except ValueError as err:
        raise config.ConfigError(str(err)) from None
    if cfg.max_episode_steps + 1 < cfg.segment_length:
        raise config.ConfigError(
            f"finetune.segment_length: segments of {cfg.segment_length} steps do not fit in an episode of "
            f"{cfg.max_episode_steps + 1} frames; lower it or raise finetune.max_episode_steps"
        )
    if cfg.segment_length < cfg.bonus.window and methods.method(cfg.method).bonus:
        raise config.ConfigError(
            f"finetune.bonus.window: {cfg.bonus.window} is longer than a segment "
            f"({cfg.segment_length}); lower it"
        )
    for key in ("env_steps", "train_every", "batch_size", "eval_every", "checkpoint_every", "log_every"):
        if getattr(cfg, key) < 1:
            raise config.ConfigError(f"finetune.{key}: must be at least 1, got {getattr(cfg, key)}")


class Agent(nn.Module):
    """What the online loop drives: the fine-tuning model (`prelar.agent.model`, with its optimiser and
    world-model update) and the actor-critic that acts on its states and learns in its imagination."""

    def __init__(self, params: config.Params, pretrained: nn.Module | None, dev: torch.device):
        super().__init__()
        cfg = params.finetune
        self.cfg = cfg
        self.model = FinetuneModel(cfg.method, params, pretrained)
        self.behavior = ActorCritic(self.model.feat_dim, ACTION_DIM, cfg.behavior)
        self.to(dev)
        self.device = dev

    @torch.no_grad()
    def act(self, frame: np.ndarray, prev_action: np.ndarray, is_first: bool, state, explore: bool):
        """frame uint8 [64, 64, 3], a_{t-1} [A] → (action [A], new latent state)."""
        dev = self.device
        # contiguous: a permuted HWC view (odd strides) sends CPU convolutions down a ~10x slower path
        frame_t = torch.from_numpy(frame).permute(2, 0, 1).contiguous()[None].to(dev)  # [1, 3, 64, 64]
        action_t = torch.from_numpy(prev_action)[None].to(dev)  # [1, A]
        with evaluating(self), self.model.autocast():
            state = self.model.observe_step(frame_t, action_t, torch.tensor([is_first], device=dev), state)
            policy = self.behavior.actor(self.model.features(state))
            action = policy.rsample() if explore else policy.mode()
        return action[0].float().cpu().numpy(), state

    def update(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        """One world-model step (Eq. 11) and one actor-critic step from its posterior states."""
        t0 = time.perf_counter()
        metrics, start = self.model.update(batch)
        device.synchronize(self.device)
        metrics = {f"model/{k}": v for k, v in metrics.items()}
        metrics["time/world_model_s"] = time.perf_counter() - t0
        start = {k: v.flatten(0, 1) for k, v in start.items()}  # [B·T, ..]: every posterior state starts
        ac = self.behavior.update(
            start,
            self.model.imagine_step,
            self.model.features,
            self.model.task_reward,
            self.model,
            self.model.autocast,
        )
        metrics.update({k if k.startswith("time/") else f"behavior/{k}": v for k, v in ac.items()})
        metrics["time/update_s"] = time.perf_counter() - t0
        return metrics


class Collector:
    """One Meta-world env stepped one action at a time, building the current episode for the replay."""

    def __init__(self, cfg: config.Finetune, seed_stream: int):
        from prelar.envs.metaworld import make_env

        self.cfg = cfg
        self.stream = seed_stream
        self.env = make_env(
            cfg.task,
            seed=seeding.mix(cfg.seed, seed_stream),
            camera=cfg.camera,
            max_steps=cfg.max_episode_steps,
            fast_render=cfg.fast_render,
            action_repeat=cfg.action_repeat,
        )

    def reset(self, index: int) -> None:
        """Start episode `index` (its object and goal positions depend only on seed and index)."""
        frame, _ = self.env.reset(seed=seeding.mix(self.cfg.seed, self.stream, index))
        self.frames = [frame]
        self.actions = [np.zeros(ACTION_DIM, np.float32)]
        self.rewards = [0.0]
        self.success = [False]
        self.state = None

    @property
    def frame(self) -> np.ndarray:
        return self.frames[-1]

    def step(self, action: np.ndarray) -> bool:
        """Apply `action`; True when the episode has ended."""
        frame, reward, terminated, truncated, info = self.env.step(action)
        self.frames.append(frame)
        self.actions.append(np.asarray(action, np.float32))
        self.rewards.append(reward)
        self.success.append(bool(info["success"]))
        return terminated or truncated or len(self.frames) > self.cfg.max_episode_steps

    def episode(self) -> Episode:
        return Episode(
            frames=np.stack(self.frames).transpose(0, 3, 1, 2).copy(),  # [T, 3, 64, 64]
            actions=np.stack(self.actions),
            rewards=np.asarray(self.rewards, np.float32),
            success=np.asarray(self.success),
        )

    def close(self) -> None:
        self.env.close()


def run_episode(agent: Agent, collector: Collector, index: int, explore: bool) -> Episode:
    """A whole episode with the agent's policy (evaluation: `explore=False`, the actor's mode)."""
    collector.reset(index)
    done = False
    while not done:
        done = collector.step(agent_action(agent, collector, explore))
    return collector.episode()


def agent_action(agent: Agent, collector: Collector, explore: bool) -> np.ndarray:
    """The agent's next action in the collector's current episode (updating the episode's latent state)."""
    first = len(collector.frames) == 1
    action, collector.state = agent.act(
        collector.frame, collector.actions[-1], first, collector.state, explore
    )
    return action


def _write_gif(path: Path, frames: np.ndarray, fps: int) -> None:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, list(frames.transpose(0, 2, 3, 1)), duration=1000 / fps, loop=0)


class _Means:
    """Running sums of logged scalars, read out as means."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1

    def pop(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums, self.counts = {}, {}
        return out


def finetune(
    params: config.Params,
    out: str | Path | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune `params.finetune.method` on `params.finetune.task` up to `env_steps`, resuming from `out`.

    `on_checkpoint(env_step)` is called after each checkpoint is written. Returns the final metrics.
    """
    cfg = params.finetune
    validate(params)
    out = Path(out) if out is not None else default_out(cfg)
    out.mkdir(parents=True, exist_ok=True)
    dev = device.resolve_device(cfg.device)
    precision = device.choose_precision(cfg.precision, dev)
    print(f"finetune: {precision.name} on {dev} ({precision.reason})")
    path = out / checkpoint.FILENAME
    ckpt = checkpoint.load(path, map_location=dev) if path.exists() else None
    if ckpt is not None:
        _check_resumable(path, ckpt, cfg)
    torch.manual_seed(seeding.mix(cfg.seed, TORCH_STREAM))
    if ckpt is None:
        loads = methods.method(cfg.method).pretrained and Path(cfg.pretrained or "").is_file()
        md5 = checkpoint.digest(cfg.pretrained) if loads else None
        pretrained, pre_ckpt = load_pretrained(cfg.method, cfg.pretrained, params.model)
        extra: dict[str, Any] = {
            "curve": [],
            "prefilled": False,
            "mlflow_run_id": None,
            "pretrained": cfg.pretrained,
            "pretrained_md5": md5,
            "pretrained_step": pre_ckpt.get("step"),
            "pretrained_config": pre_ckpt.get("model_config"),
        }
        agent = Agent(params, pretrained, dev)
    else:
        extra = {
            k: ckpt["extra"][k]
            for k in (
                "curve",
                "prefilled",
                "mlflow_run_id",
                "pretrained",
                "pretrained_step",
                "pretrained_config",
            )
        }
        extra["pretrained_md5"] = ckpt["extra"].get("pretrained_md5")  # None: saved before it was recorded
        agent = restored_agent(params, ckpt, dev)
    replay = Replay(cfg.replay_capacity, cfg.segment_length, out / "replay")
    rng = np.random.default_rng(seeding.mix(cfg.seed, NUMPY_STREAM))
    step = 0
    if ckpt is not None:
        agent.model.optimizer.load_state_dict(ckpt["optimizer"])
        agent.behavior.load_optimizers_state(ckpt["extra"]["behavior_opt"])
        checkpoint.set_rng_state(ckpt["rng"][0])
        rng.bit_generator.state = ckpt["extra"]["numpy_rng"]
        replay.restore(ckpt["extra"]["episodes"])
        step = ckpt["step"]
    else:
        replay.restore(0)  # clears episodes a killed run wrote before its first checkpoint

    tags = {
        names.TAG_STAGE: "finetune",
        names.TAG_METHOD: cfg.method,
        names.TAG_TASK: cfg.task,
        names.TAG_SEED: str(cfg.seed),
        "out": str(out),
        "pretrained": str(extra["pretrained"]),
        "precision": precision.name,
        "precision.reason": precision.reason,
    }

    def save() -> None:
        checkpoint.save(
            path,
            model=agent,
            optimizer=agent.model.optimizer,
            step=step,
            model_config={"method": cfg.method, **agent.model.world.cfg.model_dump()},
            rng=[checkpoint.rng_state()],
            extra={
                **extra,
                "episodes": replay.added,
                "numpy_rng": rng.bit_generator.state,
                "behavior_opt": agent.behavior.optimizers_state(),
                "finetune": cfg.model_dump(),
            },
        )
        _write_curve(out / CURVE, extra["curve"])
        if on_checkpoint is not None:
            on_checkpoint(step)

    collector = Collector(cfg, seed_stream=TRAIN_STREAM)
    evaluator = Collector(cfg, seed_stream=EVAL_STREAM)
    collector.reset(replay.added)
    means, perf = _Means(), _Means()
    episode_return, last_saved = 0.0, step
    bar = tqdm(
        total=cfg.env_steps, initial=step, desc=f"finetune {cfg.method} {cfg.task}", dynamic_ncols=True
    )
    with (
        tracking.stage_run(
            params,
            f"finetune/{cfg.method}/{cfg.task}/seed{cfg.seed}",
            tags,
            resume_run_id=extra["mlflow_run_id"],
        ) as mlflow_run,
        bar,
        contextlib.closing(collector),
        contextlib.closing(evaluator),
    ):
        extra["mlflow_run_id"] = mlflow_run.run_id  # a resumption reopens it
        while step < cfg.env_steps:
            t0 = time.perf_counter()
            if step < cfg.prefill:
                action = rng.uniform(-1, 1, ACTION_DIM).astype(np.float32)
            else:
                action = agent_action(agent, collector, explore=True)
            done = collector.step(action)
            step += 1
            bar.update(1)
            perf.add({"time/env_step_s": time.perf_counter() - t0})
            if done:
                episode = collector.episode()
                replay.add(episode)
                episode_return = float(episode.rewards.sum())
                mlflow_run.log_metrics(
                    {
                        "episode/return": episode_return,
                        "episode/success": float(episode.success.any()),
                        "episode/length": len(episode) - 1,
                    },
                    step=step,
                )
            if step >= cfg.prefill and replay.segments:
                n = 0
                if not extra["prefilled"]:
                    n, extra["prefilled"] = cfg.pretrain_updates, True
                n += step % cfg.train_every == 0
                for _ in range(n):
                    means.add(agent.update(replay.sample(cfg.batch_size, rng)))
            if step % cfg.eval_every == 0:
                extra["curve"].append(evaluate(agent, evaluator, step, out, mlflow_run))
            if step % cfg.log_every == 0:
                logged = {**means.pop(), **perf.pop()}
                if "time/env_step_s" in logged:
                    logged["perf/env_steps_per_s"] = 1.0 / logged["time/env_step_s"]
                logged["replay/steps"] = replay.steps
                mlflow_run.log_metrics(logged, step=step)
                bar.set_postfix(ret=f"{episode_return:.0f}", updates=int(agent.model.updates))
            if done:
                if step - last_saved >= cfg.checkpoint_every:
                    save()
                    last_saved = step
                collector.reset(replay.added)
        if len(collector.frames) > 1:  # a run that ends mid-episode keeps the steps it took
            if len(collector.frames) >= cfg.segment_length:
                replay.add(collector.episode())
            else:
                print(
                    f"finetune: the last {len(collector.frames) - 1} steps (an episode shorter than a "
                    f"segment) are not stored; make finetune.env_steps a multiple of "
                    f"finetune.max_episode_steps to keep them"
                )
        if step != last_saved or not path.exists():
            save()
        curve = extra["curve"]
        result = {
            "method": cfg.method,
            "task": cfg.task,
            "seed": cfg.seed,
            "env_steps": step,
            "updates": int(agent.model.updates),
            "episodes": replay.added,
            "final_success": curve[-1]["success"] if curve else None,
            "final_return": curve[-1]["return"] if curve else None,
            "replay/bytes_per_step": replay.nbytes / max(replay.steps, 1),
        }
        (out / tracking.METRICS).write_text(json.dumps(result, indent=2) + "\n")
        mlflow_run.log_artifacts([out / tracking.METRICS, out / CURVE])
    return result


def restored_agent(params: config.Params, ckpt: dict[str, Any], dev: torch.device) -> Agent:
    """The agent of a fine-tuning checkpoint: its architecture from the saved pre-trained model config (none
    for dreamerv2), every weight from the checkpoint."""
    saved = ckpt["extra"]["pretrained_config"]
    agent = Agent(params, None if saved is None else WorldModel(config.Model(**saved)), dev)
    agent.load_state_dict(ckpt["model"])
    return agent


def evaluate(agent: Agent, evaluator: Collector, step: int, out: Path, mlflow_run) -> dict[str, float]:
    """`eval_episodes` episodes with the actor's mode (the first saved as a GIF) → a curve row."""
    cfg = agent.cfg
    returns, successes = [], []
    for i in range(cfg.eval_episodes):
        episode = run_episode(agent, evaluator, index=evaluation_index(step, i), explore=False)
        returns.append(float(episode.rewards.sum()))
        successes.append(float(episode.success.any()))
        if i == 0:
            video = out / "videos" / f"eval_{step:08d}.gif"
            _write_gif(video, episode.frames, cfg.video_fps)
            mlflow_run.log_artifacts([video], "videos")
    row = {"env_step": step, "success": float(np.mean(successes)), "return": float(np.mean(returns))}
    mlflow_run.log_metrics({names.SUCCESS_RATE: row["success"], names.RETURN: row["return"]}, step=step)
    return row


def evaluation_index(step: int, i: int) -> int:
    """The episode index (of the EVAL_STREAM) of the `i`-th evaluation episode at env step `step`."""
    return step * 1000 + i


def _write_curve(path: Path, rows: list[dict[str, float]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["env_step", "success", "return"])
        writer.writeheader()
        writer.writerows(rows)


def _check_resumable(path: Path, ckpt: dict[str, Any], cfg: config.Finetune) -> None:
    """A run folder continues only the run it holds: the learning parameters must be the same."""
    diff = differences(ckpt["extra"], cfg, RESUMABLE, " →")
    if diff:
        raise config.ConfigError(
            f"{path}: this run folder holds a run with other parameters or another pre-trained checkpoint "
            f"({', '.join(diff)}); use another --out "
            "(`prelar online`: online.out), or delete the folder to start afresh"
        )


def differences(extra: dict[str, Any], cfg: config.Finetune, ignored: set[str], sep: str) -> list[str]:
    """What differs between the fine-tuning run whose checkpoint's `extra` this is and `cfg`, one line each
    ("finetune.<key>: <then><sep> <now>"): every parameter not in `ignored` (a key added since the run was
    saved held its default then), and the pre-trained checkpoint (`other_pretrained`)."""
    saved = {**config.Finetune().model_dump(), **extra.get("finetune", {})}
    now = cfg.model_dump()
    diff = [
        f"finetune.{k}: {saved[k]!r}{sep} {now[k]!r}"
        for k in sorted(now)
        if k not in ignored and saved[k] != now[k]
    ]
    if other := other_pretrained(extra, cfg.pretrained):
        diff.append(other)
    return diff


def other_pretrained(extra: dict[str, Any], pretrained: str | None) -> str | None:
    """Why `pretrained` is not the pre-trained checkpoint that a fine-tuning run started from (`extra`: the
    run's checkpoint's); None if it is, or if the run loaded none (DreamerV2 from scratch).

    The same checkpoint is the same bytes (the md5 recorded when the run started), wherever it lies now. A
    run saved before the md5 was recorded compares the resolved paths instead, and so does a run whose
    checkpoint is no longer on disk: a run needs it only to start, so the same path, gone, is accepted."""
    if extra.get("pretrained_config") is None:
        return None
    was, md5 = extra.get("pretrained"), extra.get("pretrained_md5")
    now = Path(pretrained) if pretrained else None
    if now is not None and now.is_file() and md5 is not None:
        digest = checkpoint.digest(now)
        if digest == md5:
            return None
        return f"finetune.pretrained: {pretrained!r} has md5 {digest}; the run started from {was!r}, {md5}"
    if now is not None and was is not None and Path(was).resolve() == now.resolve():
        return None
    gone = " (no such file)" if now is not None and not now.is_file() else ""
    return f"finetune.pretrained: {pretrained!r}{gone}; the run started from {was!r}"
