"""Benchmark: the fine-tuning loop's collection speed, update time and replay memory.

For each size (`cpu`: params.yaml's base values; `paper`: the `paper` profile) it builds the PreLAR
fine-tuning agent (a freshly initialised world model stands in for the pre-trained one: same sizes,
same cost), then measures on the real Meta-world task:
  - collection: env steps/s with the agent acting (encoder + RSSM filter + actor per step, render
    included), and the share of an env step spent rendering (the same frames rendered again alone);
  - update: seconds per update (world model Eq. 11 + imagination + actor-critic), with the share of
    each, on segments of a real episode replayed `batch_size` times;
  - replay: bytes per stored step against the 12,288-byte floor of one uint8 64x64x3 frame.

    python bench/bench_finetune.py [--sizes cpu paper] [--steps 100] [--updates 3] [--batch B]

At the paper's size one update of batch 50 x 50 needs well over 20 GB on a CPU: measure it with a smaller
`--batch` there (the update time grows about linearly with the batch).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from prelar import config
from prelar.agent.finetune import Agent, Collector, agent_action
from prelar.agent.replay import Replay
from prelar.world_model import WorldModel

FRAME_FLOOR = 64 * 64 * 3  # bytes of one uint8 frame


def time_updates(
    agent: Agent, replay: Replay, batch_size: int, updates: int, rng: np.random.Generator
) -> dict[str, float]:
    """Mean seconds of `updates` updates (after one warm-up) on segments sampled from `replay`, and the share
    of each phase: world model (Eq. 11), imagination, actor-critic (the agent times them, synchronised)."""
    agent.update(replay.sample(batch_size, rng))  # warm-up
    times: dict[str, list[float]] = {}
    for _ in range(updates):
        for k, v in agent.update(replay.sample(batch_size, rng)).items():
            if k.startswith("time/"):
                times.setdefault(k, []).append(v)
    mean = {k: float(np.mean(v)) for k, v in times.items()}
    update = mean["time/update_s"]
    return {
        "update_s": update,
        "share_world_model": mean["time/world_model_s"] / update,
        "share_imagination": mean["time/imagine_s"] / update,
        "share_actor_critic": mean["time/actor_critic_s"] / update,
    }


def bench_size(params: config.Params, steps: int, updates: int) -> dict[str, float]:
    cfg = params.finetune.model_copy(
        update={"method": "prelar", "max_episode_steps": max(steps, params.finetune.segment_length)}
    )
    params = params.model_copy(update={"finetune": cfg})
    torch.manual_seed(0)
    agent = Agent(params, WorldModel(params.model), torch.device("cpu"))
    collector = Collector(cfg, seed_stream=0)

    collector.reset(0)
    agent_action(agent, collector, explore=True)  # warm-up
    collector.reset(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        collector.step(agent_action(agent, collector, explore=True))
    acting = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    for _ in range(steps):
        collector.env.render()
    render = (time.perf_counter() - t0) / steps
    while len(collector.frames) < cfg.segment_length:  # a real episode long enough for one segment
        collector.step(collector.env.action_space.sample())
    replay = Replay(cfg.replay_capacity, cfg.segment_length)
    replay.add(collector.episode(), persist=False)
    collector.close()

    timed = time_updates(agent, replay, cfg.batch_size, updates, np.random.default_rng(0))
    return {
        "params_world_model_M": sum(p.numel() for p in agent.model.parameters()) / 1e6,
        "params_actor_critic_M": sum(p.numel() for p in agent.behavior.parameters()) / 1e6,
        "batch": f"{cfg.batch_size}x{cfg.segment_length}",
        "env_steps_per_s": 1.0 / acting,
        "render_share_of_env_step": render / acting,
        **timed,
        # One update every train_every steps: env steps/s of the whole loop (acting + training).
        "loop_env_steps_per_s": cfg.train_every / (cfg.train_every * acting + timed["update_s"]),
        "replay_bytes_per_step": replay.nbytes / replay.steps,
        "replay_overhead_vs_frame": replay.nbytes / replay.steps / FRAME_FLOOR,
        "replay_capacity_GB": cfg.replay_capacity * replay.nbytes / replay.steps / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--sizes", nargs="+", default=["cpu", "paper"], help="profiles of params.yaml")
    parser.add_argument("--steps", type=int, default=100, help="env steps timed while acting")
    parser.add_argument("--updates", type=int, default=3, help="updates timed (after one warm-up)")
    parser.add_argument(
        "--batch", type=int, default=None, help="segments per update (default: the profile's; paper: 50)"
    )
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    results = {}
    for size in args.sizes:
        params = config.load(args.params, profile=size)
        if args.batch is not None:
            params = params.model_copy(
                update={"finetune": params.finetune.model_copy(update={"batch_size": args.batch})}
            )
        updates = args.updates if size != "paper" else 1
        results[size] = bench_size(params, args.steps, updates)
        print(size, json.dumps(results[size], indent=1), flush=True)
    print(json.dumps({"bench": "finetune", "torch_threads": torch.get_num_threads(), **results}))


if __name__ == "__main__":
    main()
