"""The Meta-world env: frames, upright cameras, seeding, new positions per reset, success, GL contexts."""

import multiprocessing
import threading
import warnings

import mujoco
import numpy as np
import pytest

from prelar.envs import expert_policy, make_env, scripted_tasks


@pytest.fixture(scope="module")
def env():
    env = make_env("drawer-close-v3", seed=0, max_steps=20)
    yield env
    env.close()


def test_reset_and_step_shapes_dtypes_and_truncation(env):
    frame, info = env.reset(seed=0)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert info["state"].shape == (39,) and info["success"] is False
    assert frame.std() > 10  # a scene, not a blank buffer
    truncations = []
    for _ in range(20):
        frame, reward, terminated, truncated, info = env.step(np.array([2.0, 0.0, -3.0, 1.0]))  # clipped
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
        assert isinstance(reward, float) and 0.0 <= reward <= 10.0
        assert isinstance(info["success"], bool) and not terminated
        truncations.append(truncated)
    assert truncations == [False] * 19 + [True]
    assert env.action_space.shape == (4,) and env.observation_space.shape == (64, 64, 3)


def test_action_repeat_applies_each_action_k_times_and_sums_rewards():
    """One step of an env with action repeat 3 is three steps of a plain env: the same frame at the end,
    the rewards summed, and truncation after max_steps of its own steps (3 * max_steps simulator steps)."""
    plain = make_env("drawer-close-v3", seed=0, max_steps=12)
    repeated = make_env("drawer-close-v3", seed=0, max_steps=4, action_repeat=3)
    np.testing.assert_array_equal(plain.reset(seed=5)[0], repeated.reset(seed=5)[0])
    action = np.array([0.5, -0.3, 0.2, 0.0], np.float32)
    for step in range(4):
        frames, rewards = [], []
        for _ in range(3):
            frame, reward, _, truncated_plain, _ = plain.step(action)
            frames.append(frame)
            rewards.append(reward)
        frame, reward, terminated, truncated, info = repeated.step(action)
        np.testing.assert_array_equal(frame, frames[-1])
        assert reward == pytest.approx(sum(rewards))
        assert truncated == truncated_plain == (step == 3) and not terminated
    assert not np.array_equal(frames[0], frames[-1])  # the arm moved within one repeated step
    plain.close()
    repeated.close()
    with pytest.raises(ValueError, match="action_repeat: must be at least 1"):
        make_env("drawer-close-v3", seed=0, action_repeat=0)


def test_new_positions_every_reset_and_seed_reproduces_them(env):
    frame1, info1 = env.reset(seed=1)
    frame2, info2 = env.reset()
    frame3, info3 = env.reset(seed=1)
    obj1, obj2, obj3 = (info["state"][4:7] for info in (info1, info2, info3))  # the drawer's position
    assert np.abs(obj1 - obj2).max() > 1e-3
    np.testing.assert_array_equal(obj1, obj3)
    np.testing.assert_array_equal(frame1, frame3)
    assert not np.array_equal(frame1, frame2)
    # Another env of the same task, built with another seed, reproduces the episode from reset(seed=1).
    other = make_env("drawer-close-v3", seed=7, max_steps=20)
    np.testing.assert_array_equal(other.reset(seed=1)[0], frame1)
    other.close()


def _object_centroid(env, body: int, offset: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """(row, col) centroid of the pixels where `body`, moved by `offset`, differs from `empty` (no body)."""
    model, data = env.sawyer.model, env.sawyer.data
    model.body_pos[body] += offset
    mujoco.mj_forward(model, data)
    frame = env.render()
    model.body_pos[body] -= offset
    rows, cols = np.nonzero(np.abs(frame.astype(int) - empty).sum(-1) > 30)
    assert len(rows) > 30, "the object is not visible from this camera"
    return np.array([rows.mean(), cols.mean()])


@pytest.mark.parametrize("camera", ["corner", "corner2", "corner3", "behindGripper"])
def test_frames_are_upright_and_not_mirrored(camera):
    """Raise the drawer: it must move up in the frame. Move it to the camera's right: it must move right.

    "Right" is the horizontal direction forward x world-up, independent of how the camera is rolled, so a
    frame upside down fails the first check and a mirrored one the second.
    """
    env = make_env("drawer-close-v3", seed=0, camera=camera)
    env.reset(seed=0)
    model, data = env.sawyer.model, env.sawyer.data
    body = model.body("drawer").id
    forward = -data.cam_xmat[model.camera(camera).id].reshape(3, 3)[:, 2]  # cameras look along -z
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    model.body_pos[body, 2] -= 10.0  # below the floor: out of sight
    mujoco.mj_forward(model, data)
    empty = env.render()
    model.body_pos[body, 2] += 10.0
    base = _object_centroid(env, body, np.zeros(3), empty)
    raised = _object_centroid(env, body, np.array([0.0, 0.0, 0.15]), empty)
    moved_right = _object_centroid(env, body, 0.15 * right, empty)
    env.close()
    assert raised[0] < base[0] - 3, f"{camera}: raising the object moved it down the frame (upside down)"
    assert moved_right[1] > base[1] + 3, f"{camera}: moving the object right moved it left (mirrored)"


def test_scripted_expert_succeeds_and_success_flag_reports_it():
    env = make_env("button-press-v3", seed=0, max_steps=80)
    policy = expert_policy("button-press-v3")
    _, info = env.reset(seed=0)
    successes = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(80):
            _, _, _, _, info = env.step(policy.get_action(info["state"]))
            successes.append(info["success"])
    env.close()
    assert not successes[0] and any(successes)


def test_two_envs_in_one_process_render_their_own_scene():
    """Envs share the process's GL context, each drawing into its own framebuffer: rendering one must not
    draw into the other's, and a frame is the one a fresh process (a context of its own) renders."""
    a = make_env("drawer-close-v3", seed=0)
    b = make_env("button-press-v3", seed=0)
    assert a._viewer.opengl_context is b._viewer.opengl_context
    frame_a, _ = a.reset(seed=3)  # rendered while b's context was the current one
    b.reset(seed=3)
    np.testing.assert_array_equal(a.render(), frame_a)
    a.close()
    b.close()
    b.close()  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        b.render()
    alone = make_env("drawer-close-v3", seed=0)  # closing an env does not break later envs
    np.testing.assert_array_equal(alone.reset(seed=3)[0], frame_a)
    alone.close()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        np.testing.assert_array_equal(pool.apply(_first_frame, ("drawer-close-v3", 3)), frame_a)


def _first_frame(task: str, seed: int) -> np.ndarray:
    env = make_env(task, seed=0)
    frame = env.reset(seed=seed)[0]
    env.close()
    return frame


def test_fast_render_is_close_to_default_quality():
    frames = {}
    for fast in (True, False):
        e = make_env("drawer-close-v3", seed=0, fast_render=fast)
        frames[fast] = e.reset(seed=0)[0].astype(int)
        e.close()
    difference = np.abs(frames[True] - frames[False]).mean()
    assert 0 < difference < 12  # no shadows or antialiasing, same scene


def test_unknown_task_and_camera_errors_name_the_parameter_and_close_matches():
    with pytest.raises(ValueError, match=r"task: 'drawer-clse-v3'.*drawer-close-v3"):
        make_env("drawer-clse-v3", seed=0)
    with pytest.raises(ValueError, match=r"task: 'drawer-close-v2'.*drawer-close-v3"):
        make_env("drawer-close-v2", seed=0)
    with pytest.raises(ValueError, match=r"camera: 'cornr'.*corner"):
        make_env("drawer-close-v3", seed=0, camera="cornr")
    assert len(scripted_tasks()) == 50 and "drawer-close-v3" in scripted_tasks()


_INHERITED = {}  # what a forked child sees of its parent's envs


def _render_inherited_env():
    return _INHERITED["env"].reset(seed=0)[0].sum()


def _make_env_in_child():
    return make_env("drawer-close-v3", seed=0).reset(seed=0)[0].sum()


@pytest.mark.parametrize("child", [_render_inherited_env, _make_env_in_child])
def test_rendering_in_a_process_forked_after_rendering_is_a_clear_error(env, child):
    env.reset(seed=0)  # this process has rendered: a forked child cannot (Mesa would hang)
    _INHERITED["env"] = env
    with multiprocessing.get_context("fork").Pool(1) as pool:
        result = pool.apply_async(child)
        with pytest.raises(RuntimeError, match="spawn"):
            result.get(timeout=60)


def test_rendering_from_another_thread_is_a_clear_error(env):
    env.reset(seed=0)  # the process's GL context is current in this thread
    raised = []

    def render_elsewhere():
        try:
            env.render()
        except RuntimeError as err:
            raised.append(str(err))

    worker = threading.Thread(target=render_elsewhere, name="elsewhere")
    worker.start()
    worker.join(timeout=60)
    assert raised and "elsewhere" in raised[0] and "one thread" in raised[0]
    assert env.render().shape == (64, 64, 3)  # still renders in its own thread
