"""RLBench source: listing and reading real PNG trees, numeric frame order, and every kind of bad input."""

import pickle
from multiprocessing import get_context

import numpy as np
import pytest
from media import corrupt_png, delete_frame, make_rlbench_tree, read_indices, truncate_file, write_png

from prelar.config import RLBenchSource
from prelar.data import rlbench
from prelar.data.clip import ClipRejected
from prelar.data.video import resize_frames

FRAMES = 12  # past 9: "10.png" sorts before "2.png" as text


@pytest.fixture
def tree(tmp_path):
    cams = make_rlbench_tree(
        tmp_path / "rlbench",
        tasks=("reach_target", "close_box"),
        episodes=2,
        cameras=("front", "wrist"),
        frames=FRAMES,
    )
    return tmp_path / "rlbench", cams


def _cfg(root, cameras=("front", "wrist")):
    return RLBenchSource(src=str(root), cameras=list(cameras))


def _reject_reason(ref, cfg):
    with pytest.raises(ClipRejected) as info:
        rlbench.load_clip(ref, cfg)
    assert info.value.path == ref.path
    return info.value.reason


def test_list_clips_is_sorted_with_meta(tree):
    root, _ = tree
    refs, rejects = rlbench.list_clips(_cfg(root, cameras=("wrist", "front")))
    assert rejects == []
    assert [r.id for r in refs[:4]] == [
        "close_box/variation0/episode0/wrist",
        "close_box/variation0/episode0/front",
        "close_box/variation0/episode1/wrist",
        "close_box/variation0/episode1/front",
    ]
    assert len(refs) == 8
    assert refs[-1].meta == {
        "source": "rlbench",
        "id": "reach_target/variation0/episode1/front",
        "task": "reach_target",
        "variation": 0,
        "episode": 1,
        "camera": "front",
    }
    assert refs[-1].path.endswith("reach_target/variation0/episodes/episode1/front_rgb")
    assert pickle.loads(pickle.dumps(refs[0])) == refs[0]


def test_episodes_and_variations_sort_numerically(tmp_path):
    make_rlbench_tree(tmp_path, variations=11, episodes=11, frames=1, size=8)
    refs, _ = rlbench.list_clips(_cfg(tmp_path, cameras=("front",)))
    assert [r.meta["episode"] for r in refs[:11]] == list(range(11))
    assert [r.meta["variation"] for r in refs[::11]] == list(range(11))


def test_frames_past_nine_are_in_numeric_order(tree):
    root, _ = tree
    cfg = _cfg(root)
    refs, _ = rlbench.list_clips(cfg)
    for ref in refs:
        clip = rlbench.load_clip(ref, cfg)
        assert clip.frames.shape == (FRAMES, 128, 128, 3) and clip.frames.dtype == np.uint8
        assert read_indices(clip.frames) == list(range(FRAMES))
        assert read_indices(resize_frames(clip.frames, 64, "squash")) == list(range(FRAMES))
        assert clip.meta == ref.meta


def test_missing_root_says_where_to_put_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found: put the RLBench task folders there .*--src"):
        rlbench.list_clips(_cfg(tmp_path / "nowhere"))


def test_gap_in_numbering_names_the_missing_frame(tree):
    root, cams = tree
    delete_frame(cams[0], 5)
    refs, _ = rlbench.list_clips(_cfg(root))
    assert (
        _reject_reason(refs[0], _cfg(root)) == f"missing frame 5.png: frames must run 0.png..{FRAMES - 1}.png"
    )


def test_corrupt_and_truncated_pngs_are_named(tree):
    root, cams = tree
    corrupt_png(cams[0] / "3.png")
    truncate_file(cams[1] / "10.png", 0.5)
    refs, _ = rlbench.list_clips(_cfg(root))
    assert "corrupt or unreadable PNG 3.png" in _reject_reason(refs[0], _cfg(root))
    assert "corrupt or unreadable PNG 10.png" in _reject_reason(refs[1], _cfg(root))


def test_non_png_bytes_under_a_frame_name_are_rejected(tree):
    root, cams = tree
    (cams[0] / "4.png").write_text("not an image")
    from PIL import Image

    Image.new("RGB", (128, 128)).save(cams[1] / "6.png", format="JPEG")  # a JPEG named .png
    refs, _ = rlbench.list_clips(_cfg(root))
    assert "4.png" in _reject_reason(refs[0], _cfg(root))
    assert _reject_reason(refs[1], _cfg(root)) == "6.png is not a PNG (it is JPEG)"


def test_junk_files_are_ignored(tree):
    root, cams = tree
    (cams[0] / ".DS_Store").write_bytes(b"\x00\x01")
    (cams[0] / "notes.txt").write_text("rendered with RLBench 1.2")
    (cams[0] / "0.jpg").write_bytes(b"junk")
    refs, _ = rlbench.list_clips(_cfg(root))
    assert read_indices(rlbench.load_clip(refs[0], _cfg(root)).frames) == list(range(FRAMES))


def test_inconsistent_frame_sizes_are_rejected(tree):
    root, cams = tree
    write_png(cams[0] / "7.png", 7, 64, 64)
    refs, _ = rlbench.list_clips(_cfg(root))
    assert _reject_reason(refs[0], _cfg(root)) == "frame 7.png is 64x64 but 0.png is 128x128"


def test_empty_camera_folder_is_rejected(tree):
    root, cams = tree
    for png in cams[0].glob("*.png"):
        png.unlink()
    (cams[0] / "readme.txt").write_text("x")
    refs, _ = rlbench.list_clips(_cfg(root))
    assert (
        _reject_reason(refs[0], _cfg(root))
        == "empty camera folder: no <i>.png frames; found only ['readme.txt']"
    )


def test_odd_resolution_is_fine(tmp_path):
    make_rlbench_tree(tmp_path, frames=3, size=(97, 130))
    refs, _ = rlbench.list_clips(_cfg(tmp_path, cameras=("front",)))
    clip = rlbench.load_clip(refs[0], _cfg(tmp_path))
    assert clip.frames.shape == (3, 97, 130, 3)
    assert read_indices(resize_frames(clip.frames, 64, "center_crop")) == [0, 1, 2]


def test_layout_problems_are_listed_as_rejects(tree):
    root, _ = tree
    (root / "stray_folder" / "stuff").mkdir(parents=True)  # not a task
    (root / "reach_target" / "variation1" / "episodes").mkdir(parents=True)  # no episodes
    refs, rejects = rlbench.list_clips(_cfg(root, cameras=("front", "overhead")))
    reasons = dict(rejects)
    assert reasons[str(root / "stray_folder")].startswith("no variation<N>/ folders")
    assert reasons[str(root / "reach_target" / "variation1")] == "no episodes/episode<M>/ folders"
    overhead = str(root / "close_box" / "variation0" / "episodes" / "episode0" / "overhead_rgb")
    assert reasons[overhead].startswith("no overhead_rgb folder")
    assert len(refs) == 4 and len(rejects) == 2 + 4


def test_all_variations_layout(tmp_path):
    make_rlbench_tree(tmp_path, frames=2, size=16)
    (tmp_path / "reach_target" / "variation0").rename(tmp_path / "reach_target" / "all_variations")
    refs, rejects = rlbench.list_clips(_cfg(tmp_path, cameras=("front",)))
    assert rejects == [] and [r.id for r in refs] == ["reach_target/all_variations/episode0/front"]
    assert refs[0].meta["variation"] is None


def _load_or_reason(args):
    ref, cfg = args
    try:
        return read_indices(rlbench.load_clip(ref, cfg).frames)
    except ClipRejected as err:
        return err.reason


def test_load_clip_in_spawned_worker_pool(tree):
    root, cams = tree
    delete_frame(cams[2], 0)
    cfg = _cfg(root)
    refs, _ = rlbench.list_clips(cfg)
    with get_context("spawn").Pool(2) as pool:
        results = pool.map(_load_or_reason, [(ref, cfg) for ref in refs])
    assert results[2] == f"missing frame 0.png: frames must run 0.png..{FRAMES - 1}.png"
    assert all(r == list(range(FRAMES)) for i, r in enumerate(results) if i != 2)
