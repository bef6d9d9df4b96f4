"""Meta-world v3 tasks as gymnasium environments that observe 64x64 RGB frames from a fixed camera.

`make_env(task, seed)` builds the task's Sawyer environment the way Meta-world's `MT1` does (goal in the
low-dimensional state, episode length `max_steps`, 4-d actions in [-1, 1], `info["success"]` at each step)
with two differences that matter for learning from pixels:

- New object and goal positions at every reset, drawn from the environment's own seeded generator, so
  `reset(seed=s)` reproduces them. `gym.make("Meta-World/MT1")` instead picks one of 50 positions fixed when
  the benchmark is built, and its `reset(seed=...)` does not reseed them.
- Frames come upright: Meta-world's `corner` cameras are mounted rolled by 180 degrees (their image "up"
  axis points at the floor), so their images are rotated back by 180 degrees (a rotation, not a mirror:
  left and right stay as a real camera at that pose would see them).

Rendering quality is set in one place, `open_viewer`; its fast mode (no shadows, reflections or
multisampling) is what both pre-training data (`prelar.data.metaworld`) and fine-tuning use.
"""

from __future__ import annotations

import atexit
import difflib
import os
import threading
import weakref
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.envs.mujoco.mujoco_rendering import MujocoRenderer, OffScreenViewer
from metaworld.env_dict import ALL_V3_ENVIRONMENTS
from metaworld.policies import ENV_POLICY_MAP
from metaworld.policies.policy import Policy

# Cameras of Meta-world's Sawyer scene (metaworld/assets/objects/assets/xyz_base.xml), shared by every task.
CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")

_OPEN_ENVS: weakref.WeakSet[MetaworldEnv] = weakref.WeakSet()
# The process's one OpenGL context, which every env's viewer draws in (`SharedContextViewer`), with the
# process and thread that created it: it is current in that thread only, and a forked child cannot use it.
_gl_context: Any = None
_gl_pid: int | None = None
_gl_thread: int | None = None


def scripted_tasks() -> list[str]:
    """Every Meta-world v3 task that has a scripted expert policy (all 50 in metaworld 3.1.1), sorted."""
    return sorted(set(ALL_V3_ENVIRONMENTS) & set(ENV_POLICY_MAP))


def validate_task(task: str, param: str = "task") -> str:
    """Return `task` if it is a scripted Meta-world v3 task, else raise naming `param` and close matches."""
    tasks = scripted_tasks()
    if task not in tasks:
        close = difflib.get_close_matches(task, tasks, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"{param}: '{task}' is not a Meta-world v3 task with a scripted policy; {hint}"
            f"the {len(tasks)} tasks are listed by prelar.envs.scripted_tasks() (e.g. {tasks[0]}, {tasks[1]})"
        )
    return task


def validate_camera(camera: str, param: str = "camera") -> str:
    """Return `camera` if Meta-world's scene has it, else raise naming `param` and the cameras."""
    if camera not in CAMERAS:
        raise ValueError(f"{param}: '{camera}' is not a Meta-world camera; choose one of {list(CAMERAS)}")
    return camera


def expert_policy(task: str) -> Policy:
    """The scripted expert for `task`; `policy.get_action(state)` maps the 39-d state to an action."""
    return ENV_POLICY_MAP[validate_task(task)]()


def open_viewer(renderer: MujocoRenderer, fast: bool) -> OffScreenViewer:
    """Create `renderer`'s offscreen viewer at the chosen quality: the one place rendering quality is set.

    fast=True turns off what dominates the cost of a 64x64 frame on a CPU (software EGL): the 4096x4096
    shadow map (model.vis.quality.shadowsize, mjRND_SHADOW), 4x multisampling (model.vis.quality.offsamples)
    and planar reflections (mjRND_REFLECTION). The skybox stays, it is the background. The model's quality
    fields are read when the viewer's MjrContext is created, so they are set first; the scene flags after.
    fast=False keeps MuJoCo's (and Meta-world's) defaults. The viewer draws in the process's one OpenGL
    context (`SharedContextViewer`), kept where gymnasium's `renderer._get_viewer("rgb_array")` keeps its own.
    """
    if fast:
        renderer.model.vis.quality.shadowsize = 0
        renderer.model.vis.quality.offsamples = 0
    viewer = SharedContextViewer(
        renderer.model, renderer.data, renderer.width, renderer.height, renderer.max_geom, renderer._vopt
    )
    renderer.viewer = renderer._viewers["rgb_array"] = viewer
    renderer._set_cam_config()
    if fast:
        viewer.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        viewer.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    return viewer


class SharedContextViewer(OffScreenViewer):
    """gymnasium's offscreen viewer, drawing in the process's one OpenGL context instead of one of its own.

    With software OpenGL (Mesa's llvmpipe) the first MjrContext of a fresh context costs ~0.5 s against
    ~0.1 s in a context that has drawn before, and every env opened a context: evaluation and fine-tuning
    open envs by the dozen. Each viewer keeps its own MjrContext (its offscreen framebuffer, textures and
    meshes) and binds that framebuffer before it draws (`MetaworldEnv.render`); mjr_render resets the rest of
    the GL state it uses on every call. Fog stays off (its distances are set once per MjrContext, for the
    last model, in a shared context). The backend is gymnasium's choice (MUJOCO_GL), made once, by the first
    viewer of the process; envs render in the thread that created it (`_check_context_owner`). The context is
    freed at exit, after the envs still open.
    """

    def _get_opengl_backend(self, width: int, height: int) -> None:
        global _gl_context, _gl_pid, _gl_thread
        if _gl_context is None:
            super()._get_opengl_backend(width, height)
            _gl_context, _gl_pid, _gl_thread = self.opengl_context, os.getpid(), threading.get_ident()
            atexit.register(_close_open_envs)  # after mujoco.egl's own hook, so it runs before it (LIFO)
        else:
            self.backend = os.environ.get("MUJOCO_GL")
        self.opengl_context = _gl_context

    def free(self) -> None:
        """Nothing: the shared context outlives the viewers (gymnasium's `__del__` calls this)."""


def _close_open_envs() -> None:
    """At interpreter exit, free the envs still open, then the GL context (before mujoco.egl terminates the
    display)."""
    if os.getpid() == _gl_pid and threading.get_ident() == _gl_thread:  # a forked child must not touch it
        try:
            for env in list(_OPEN_ENVS):
                env.close()
        finally:
            _gl_context.free()


def _check_context_owner() -> None:
    """Refuse to render where the process's GL context cannot be used: in a process forked after its parent
    rendered (OpenGL (Mesa) would deadlock there), or in another thread than the one that created it."""
    if _gl_pid is not None and _gl_pid != os.getpid():
        raise RuntimeError(
            f"prelar.envs.metaworld: process {os.getpid()} was forked from process {_gl_pid} after it had "
            f"rendered with OpenGL, which cannot render again after a fork (it would hang). Start worker "
            f"processes with multiprocessing.get_context('spawn') or 'forkserver' instead of 'fork'."
        )
    if _gl_thread is not None and _gl_thread != threading.get_ident():
        raise RuntimeError(
            f"prelar.envs.metaworld: thread {threading.current_thread().name} cannot render: a process's "
            f"envs share one OpenGL context, which is current in the thread that opened the first env. Open "
            f"and step every env of a process in one thread (or use one process per rendering thread)."
        )


class MetaworldEnv(gym.Env):
    """A Meta-world v3 task observed through one camera: uint8 [size, size, 3] frames, 4-d actions in [-1, 1].

    `info` holds `success` (bool, from Meta-world's evaluation of the step) and `state` (the 39-d
    low-dimensional state the scripted policies read: hand, gripper, objects, previous frame, goal).
    With `action_repeat` k each step applies its action k times (k simulator steps, one rendered frame), sums
    their rewards and reports success if any of them succeeded; the other `info` entries (and `state`) are the
    last simulator step's. Episodes end by truncation after `max_steps` steps (k * max_steps simulator
    steps, so a repeat never runs past the end).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task: str,
        seed: int = 0,
        camera: str = "corner",
        size: int = 64,
        max_steps: int = 500,
        fast_render: bool = True,
        action_repeat: int = 1,
    ):
        self.task = validate_task(task)
        self.camera = validate_camera(camera)
        if max_steps < 1:
            raise ValueError(f"max_steps: must be at least 1, got {max_steps}")
        if action_repeat < 1:
            raise ValueError(f"action_repeat: must be at least 1, got {action_repeat}")
        self.max_steps = max_steps
        self.action_repeat = action_repeat
        self.render_mode = "rgb_array"
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)

        # gymnasium picks the OpenGL backend when the viewer is created: headless EGL unless the user set one.
        os.environ.setdefault("MUJOCO_GL", "egl")
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
        _check_context_owner()
        sawyer = ALL_V3_ENVIRONMENTS[task](
            render_mode="rgb_array", camera_name=camera, width=size, height=size
        )
        # As in Meta-world's goal-observable envs and MT1: the goal is part of the state (experts read it).
        sawyer._partially_observable = False
        del sawyer.sawyer_observation_space  # a cached property: recomputed for the observable goal
        sawyer._set_task_called = True
        sawyer._freeze_rand_vec = False  # new object/goal positions at every reset ...
        sawyer.seeded_rand_vec = True  # ... drawn from sawyer.np_random, which `seed` sets
        sawyer.max_path_length = max_steps * action_repeat
        sawyer.seed(seed)
        self.sawyer = sawyer
        self._viewer: OffScreenViewer | None = open_viewer(sawyer.mujoco_renderer, fast_render)
        _OPEN_ENVS.add(self)
        self._upside_down = self._camera_upside_down()

    def _camera_upside_down(self) -> bool:
        """Whether the camera's image "up" axis points below the horizon (then frames are rotated by 180°)."""
        mujoco.mj_forward(self.sawyer.model, self.sawyer.data)
        camera_id = self.sawyer.mujoco_renderer.camera_id
        up = self.sawyer.data.cam_xmat[camera_id].reshape(3, 3)[:, 1]  # camera y axis in world coordinates
        return bool(up[2] < 0)

    def render(self) -> np.ndarray:
        """Render the current state: uint8 [size, size, 3], upright (what `reset` and `step` return)."""
        _check_context_owner()
        if self._viewer is None:
            raise RuntimeError(f"MetaworldEnv({self.task}): render after close()")
        self._viewer.make_context_current()  # envs share the context: bind this env's framebuffer
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._viewer.con)
        frame = self._viewer.render(render_mode="rgb_array", camera_id=self.sawyer.mujoco_renderer.camera_id)
        if self._upside_down:
            frame = frame[::-1, ::-1]  # [S, S, 3]
        return np.ascontiguousarray(frame)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode with new object/goal positions; `seed` reseeds them (and the action space)."""
        super().reset(seed=seed)
        if seed is not None:
            self.sawyer.seed(seed)
        # Start from MuJoCo's reset state, so that an episode never depends on the ones before it.
        mujoco.mj_resetData(self.sawyer.model, self.sawyer.data)
        state, _ = self.sawyer.reset()
        return self.render(), {"state": state, "success": False}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)  # [4]
        total, success = 0.0, False
        for _ in range(self.action_repeat):
            state, reward, terminated, truncated, info = self.sawyer.step(action)
            total += float(reward)
            success = success or bool(info["success"])
        info = {**info, "success": success, "state": state}
        return self.render(), total, bool(terminated), bool(truncated), info

    def close(self) -> None:
        """Free the env's MjrContext (idempotent); unlike gymnasium's close, later envs can still render."""
        if self._viewer is None:
            return
        _check_context_owner()
        viewer, self._viewer = self._viewer, None
        self.sawyer.mujoco_renderer._viewers.clear()
        viewer.make_context_current()
        viewer.con.free()
        _OPEN_ENVS.discard(self)


def make_env(
    task: str,
    seed: int,
    camera: str = "corner",
    size: int = 64,
    max_steps: int = 500,
    fast_render: bool = True,
    action_repeat: int = 1,
) -> MetaworldEnv:
    """A Meta-world v3 task (e.g. "drawer-close-v3") seen as uint8 [size, size, 3] frames (see module doc)."""
    return MetaworldEnv(
        task,
        seed,
        camera=camera,
        size=size,
        max_steps=max_steps,
        fast_render=fast_render,
        action_repeat=action_repeat,
    )
