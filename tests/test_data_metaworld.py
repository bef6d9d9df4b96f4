"""The Meta-world scripted-video source: listing, clip convention, determinism, expert success, errors."""

import multiprocessing

import numpy as np
import pytest

from prelar.config import DOWNSTREAM_TASKS, ConfigError, MetaworldSource
from prelar.data.metaworld import episode_seed, list_clips, load_clip
from prelar.envs import make_env

TINY = MetaworldSource(tasks=["drawer-close-v3", "button-press-v3"], episodes_per_task=2, max_steps=12)


def test_listing_all_tasks_excludes_the_downstream_tasks():
    cfg = MetaworldSource(episodes_per_task=3, cameras=["corner", "topview"])
    refs, rejects = list_clips(cfg)
    tasks = {ref.meta["task"] for ref in refs}
    assert rejects == []
    assert len(tasks) == 50 - len(DOWNSTREAM_TASKS) and not tasks & set(DOWNSTREAM_TASKS)
    assert len(refs) == len(tasks) * 3 * 2 and len({ref.id for ref in refs}) == len(refs)
    assert refs[0].id == "metaworld/assembly-v3/corner/ep0000" and refs[1].id.endswith("topview/ep0000")
    assert refs[0].meta == {"task": "assembly-v3", "camera": "corner", "episode": 0}


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"tasks": ["drawer-open-v3"]}, r"tasks: 'drawer-open-v3' is in data.metaworld.exclude"),
        ({"tasks": ["drawer-clos-v3"]}, r"data.metaworld.tasks: 'drawer-clos-v3'.*drawer-close-v3"),
        ({"cameras": ["cornr"]}, r"data.metaworld.cameras: 'cornr'"),
        ({"exclude": ["reach-v2"]}, r"data.metaworld.exclude: \['reach-v2'\]"),
    ],
)
def test_bad_task_or_camera_is_a_config_error(update, message):
    with pytest.raises(ConfigError, match=message):
        list_clips(MetaworldSource(**update))


def test_clip_shapes_and_actions_lead_from_frame_t_to_t_plus_1():
    ref = list_clips(TINY)[0][0]
    clip = load_clip(ref, TINY)
    assert clip.frames.shape == (13, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.actions.shape == (12, 4) and clip.actions.dtype == np.float32
    assert np.abs(clip.actions).max() <= 1.0
    assert clip.rewards.shape == (12,) and clip.rewards.dtype == np.float32
    assert clip.success.shape == (12,) and clip.success.dtype == bool
    assert clip.hand.shape == (13, 4) and clip.hand.dtype == np.float32  # one end-effector state a frame
    seed = episode_seed(TINY.seed, "drawer-close-v3", 0)
    assert clip.meta == {
        "source": "metaworld",
        "id": "metaworld/drawer-close-v3/corner/ep0000",
        "task": "drawer-close-v3",
        "camera": "corner",
        "episode": 0,
        "seed": seed,
    }
    # Replaying the recorded actions in a fresh env reproduces every frame: actions[t] led to frame t+1.
    env = make_env("drawer-close-v3", seed=123, max_steps=12)
    replay = [env.reset(seed=seed)] + [env.step(action) for action in clip.actions]
    env.close()
    np.testing.assert_array_equal(np.stack([step[0] for step in replay]), clip.frames)
    hand = np.stack([step[-1]["state"][:4] for step in replay]).astype(np.float32)  # end effector per frame
    np.testing.assert_array_equal(hand, clip.hand)


def test_the_hand_moves_with_the_action_it_was_given_but_not_exactly_as_commanded():
    """hand[t + 1] − hand[t] is the motion actions[t] caused (the arm's xyz follows its xyz command), and
    the expert's noisy, clipped command is not all visible in it (`evaluate.probe_target: hand_motion`)."""
    cfg = MetaworldSource(tasks=["reach-v3", "button-press-v3"], exclude=[], episodes_per_task=2,
                          max_steps=40, action_repeat=4)
    clips = [load_clip(ref, cfg) for ref in list_clips(cfg)[0]]
    actions = np.concatenate([c.actions for c in clips])[:, :3]  # [N, 3] xyz commands
    motion = np.concatenate([np.diff(c.hand, axis=0) for c in clips])[:, :3]  # [N, 3] xyz displacements
    same = [np.corrcoef(actions[:, k], motion[:, k])[0, 1] for k in range(3)]
    later = [np.corrcoef(actions[1:, k], motion[:-1, k])[0, 1] for k in range(3)]  # the next action instead
    assert min(same) > 0.3, same
    assert np.mean(same) > np.mean(later) + 0.1, (same, later)  # aligned: no motion before its command
    assert max(same) < 0.95, same  # a command, not the displacement itself


def test_action_repeat_holds_the_experts_action_between_frames():
    """With action repeat 4 a clip's frame step is 4 simulator steps: replaying its actions in an env with the
    same repeat reproduces every frame, the arm moves farther per frame, and the expert still succeeds."""
    cfg = MetaworldSource(tasks=["button-press-v3"], episodes_per_task=1, max_steps=30, action_noise=0.0)
    held = cfg.model_copy(update={"action_repeat": 4})
    plain, clip = (load_clip(list_clips(c)[0][0], c) for c in (cfg, held))
    assert clip.frames.shape == (31, 64, 64, 3) and clip.actions.shape == (30, 4)
    env = make_env("button-press-v3", seed=0, max_steps=30, action_repeat=4)
    replay = [env.reset(seed=clip.meta["seed"])[0]] + [env.step(action)[0] for action in clip.actions]
    env.close()
    np.testing.assert_array_equal(np.stack(replay), clip.frames)

    def motion(c):  # mean absolute one-step pixel change over the first 10 frame steps
        return np.abs(np.diff(c.frames[:11].astype(int), axis=0)).mean()

    assert motion(clip) > 2 * motion(plain)
    assert clip.success.any() and not plain.success.any()  # 120 simulator steps press it, 30 do not


def test_clips_are_byte_identical_whatever_was_rendered_before():
    refs = list_clips(TINY)[0]
    first = load_clip(refs[0], TINY)
    other = load_clip(refs[1], TINY)  # the same cached env, another episode in between
    again = load_clip(refs[0], TINY)
    np.testing.assert_array_equal(first.frames, again.frames)
    np.testing.assert_array_equal(first.actions, again.actions)
    assert not np.array_equal(first.frames[0], other.frames[0])  # new positions per episode
    reseeded = load_clip(refs[0], TINY.model_copy(update={"seed": 1}))
    assert not np.array_equal(first.frames[0], reseeded.frames[0])
    assert episode_seed(0, "drawer-close-v3", 0) == 2415351070  # pinned: a change would change every dataset


def test_a_later_folder_adds_new_episodes_identical_to_rendering_them_all_at_once():
    more = TINY.model_copy(update={"tasks": ["drawer-close-v3"], "first_episode": 2, "episodes_per_task": 2})
    refs = list_clips(more)[0]
    assert [ref.id[-6:] for ref in refs] == ["ep0002", "ep0003"]
    at_once = TINY.model_copy(update={"tasks": ["drawer-close-v3"], "episodes_per_task": 4})
    later, together = load_clip(refs[1], more), load_clip(list_clips(at_once)[0][3], at_once)
    assert later.meta == together.meta and later.meta["episode"] == 3
    np.testing.assert_array_equal(later.frames, together.frames)
    np.testing.assert_array_equal(later.actions, together.actions)
    with pytest.raises(ValueError, match="first_episode"):
        MetaworldSource(first_episode=-1)


def test_clips_render_identically_in_spawned_worker_processes():
    refs = list_clips(TINY)[0][:2]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        clips = pool.starmap(load_clip, [(ref, TINY) for ref in refs])
    for ref, clip in zip(refs, clips, strict=True):
        np.testing.assert_array_equal(clip.frames, load_clip(ref, TINY).frames)


def test_noise_free_scripted_expert_succeeds_on_an_easy_task():
    cfg = MetaworldSource(tasks=["button-press-v3"], episodes_per_task=1, max_steps=90, action_noise=0.0)
    clip = load_clip(list_clips(cfg)[0][0], cfg)
    assert clip.success.any() and not clip.success[0]
    assert clip.rewards[-1] > clip.rewards[0]
    noisy = load_clip(list_clips(cfg)[0][0], cfg.model_copy(update={"action_noise": 0.1}))
    assert np.abs(noisy.actions - clip.actions).mean() > 0.02  # the noise is there
