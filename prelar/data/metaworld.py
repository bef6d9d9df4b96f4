"""Meta-world scripted-expert videos as a data source: one clip per (task, camera, episode).

An episode is rendered by `prelar.envs.metaworld` (the environment fine-tuning uses, same camera and
render quality): the task's scripted expert acts, with Gaussian noise of std `cfg.action_noise` added to
each action (then clipped to [-1, 1]) so that episodes vary beyond their start positions. Everything
random in an episode (object/goal positions, action noise) comes from one seed derived from
(cfg.seed, task, episode), so a clip is byte-identical however and wherever it is rendered; the cameras of
one episode show the same trajectory. The downstream tasks (`cfg.exclude`) are never rendered.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np

from prelar import seeding
from prelar.config import ConfigError, MetaworldSource
from prelar.data.clip import Clip, ClipRef
from prelar.envs.metaworld import (
    MetaworldEnv,
    expert_policy,
    make_env,
    scripted_tasks,
    validate_camera,
    validate_task,
)

SOURCE = "metaworld"
_ENV_CACHE_SIZE = 4  # envs kept per process (ingest sends each worker runs of consecutive refs)


def selected_tasks(cfg: MetaworldSource) -> list[str]:
    """The tasks to render: `cfg.tasks` ("all": every scripted task not in `cfg.exclude`).

    A requested task that is unknown or excluded is a ConfigError naming `data.metaworld.tasks`.
    """
    known = scripted_tasks()
    unknown_excluded = sorted(set(cfg.exclude) - set(known))
    if unknown_excluded:
        raise ConfigError(
            f"data.metaworld.exclude: {unknown_excluded} are not Meta-world v3 tasks (a typo here would let "
            f"a downstream task into pre-training); use names from prelar.envs.scripted_tasks()"
        )
    if cfg.tasks == "all":
        return [task for task in known if task not in cfg.exclude]
    for task in cfg.tasks:
        try:
            validate_task(task, "data.metaworld.tasks")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if task in cfg.exclude:
            raise ConfigError(
                f"data.metaworld.tasks: '{task}' is in data.metaworld.exclude (by default the six "
                f"downstream tasks, which pre-training must not see); remove it from one of the two"
            )
    return list(dict.fromkeys(cfg.tasks))


def clip_id(task: str, camera: str, episode: int) -> str:
    """The clip's id, e.g. "metaworld/drawer-close-v3/corner/ep0003"."""
    return f"{SOURCE}/{task}/{camera}/ep{episode:04d}"


def list_clips(cfg: MetaworldSource) -> tuple[list[ClipRef], list[tuple[str, str]]]:
    """One ClipRef per (task, camera, episode), sorted by task, then episode, then camera; no rejects.
    Episodes are numbered from `cfg.first_episode`, so a second folder rendered with `first_episode` set to
    the first one's `episodes_per_task` adds new episodes (new ids) without rendering the first ones again.

    Nothing is rendered here; unknown or excluded tasks and unknown cameras raise ConfigError.
    """
    tasks = selected_tasks(cfg)
    for camera in cfg.cameras:
        try:
            validate_camera(camera, "data.metaworld.cameras")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    refs = []
    for task in tasks:
        for episode in range(cfg.first_episode, cfg.first_episode + cfg.episodes_per_task):
            for camera in cfg.cameras:
                cid = clip_id(task, camera, episode)
                refs.append(ClipRef(SOURCE, cid, cid, {"task": task, "camera": camera, "episode": episode}))
    return refs, []


def episode_seed(seed: int, task: str, episode: int) -> int:
    """A 32-bit seed for one episode (32 bits: the values every ingested episode was rendered with)."""
    return seeding.mix(seed, task, episode, bits=32)


_envs: OrderedDict[tuple, MetaworldEnv] = OrderedDict()


def _env(task: str, camera: str, cfg: MetaworldSource) -> MetaworldEnv:
    """This process's env for (task, camera, episode length, quality), the least recently used closed."""
    key = (task, camera, cfg.max_steps, cfg.fast_render, cfg.action_repeat)
    if key not in _envs:
        _envs[key] = make_env(
            task,
            seed=0,
            camera=camera,
            max_steps=cfg.max_steps,
            fast_render=cfg.fast_render,
            action_repeat=cfg.action_repeat,
        )
        if len(_envs) > _ENV_CACHE_SIZE:
            _envs.popitem(last=False)[1].close()
    _envs.move_to_end(key)
    return _envs[key]


def load_clip(ref: ClipRef, cfg: MetaworldSource) -> Clip:
    """Render one episode of the noisy scripted expert: cfg.max_steps + 1 frames (the reset frame first).

    The expert decides every `cfg.action_repeat` simulator steps and its (noisy) action is held in between:
    one frame step shows action_repeat steps of motion, and actions[t] is the action held from t to t+1.

    frames uint8 [T, 64, 64, 3]; actions float32 [T-1, 4] (actions[t] taken at frame t, led to frame t+1);
    rewards float32 [T-1]; success bool [T-1]; hand float32 [T, 4] (the end effector's xyz and the gripper's
    opening at each frame: state[0:4]); meta: source, id, task, camera, episode, seed (the episode's).
    """
    task, camera, episode = ref.meta["task"], ref.meta["camera"], ref.meta["episode"]
    seed = episode_seed(cfg.seed, task, episode)
    env = _env(task, camera, cfg)
    policy = expert_policy(task)
    noise = np.random.default_rng(seed)
    frame, info = env.reset(seed=seed)
    frames, actions, rewards, success, hand = [frame], [], [], [], [info["state"][:4]]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")  # the experts' gains
        for _ in range(cfg.max_steps):
            action = policy.get_action(info["state"]) + noise.normal(0.0, cfg.action_noise, 4)  # [4]
            action = np.clip(action, -1.0, 1.0).astype(np.float32)
            frame, reward, _, _, info = env.step(action)
            frames.append(frame)
            actions.append(action)
            rewards.append(reward)
            success.append(info["success"])
            hand.append(info["state"][:4])
    meta = {"source": SOURCE, "id": ref.id, "task": task, "camera": camera, "episode": episode, "seed": seed}
    return Clip(
        frames=np.stack(frames),  # [T, 64, 64, 3]
        actions=np.stack(actions),  # [T-1, 4]
        rewards=np.asarray(rewards, dtype=np.float32),  # [T-1]
        success=np.asarray(success, dtype=bool),  # [T-1]
        hand=np.asarray(hand, dtype=np.float32),  # [T, 4]
        meta=meta,
    )
