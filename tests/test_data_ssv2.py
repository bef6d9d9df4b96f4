"""SSv2 source: real VP9 webm files and labels JSON; decord and PyAV decoding; every kind of bad input."""

import json
import shutil
from multiprocessing import get_context

import numpy as np
import pytest
from media import (
    corrupt_bytes,
    make_non_video,
    make_ssv2_labels,
    make_webm,
    make_zero_byte,
    read_indices,
    truncate_file,
)

from prelar.config import SSv2Source
from prelar.data import ssv2
from prelar.data.clip import ClipRef, ClipRejected
from prelar.data.ssv2 import LabelsError

GOOD = {"2": 30, "10": 40, "11": 27}  # id -> frames; "10" after "2": ids sort numerically


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A folder of good and bad `.webm` files, written once for the module (tests copy what they modify)."""
    root = tmp_path_factory.mktemp("ssv2") / "videos"
    for clip_id, frames in GOOD.items():
        make_webm(root / f"{clip_id}.webm", frames=frames, width=427 if clip_id != "11" else 320)
    make_webm(root / "20.webm", frames=30, codec="libaom-av1")  # decord 0.6 has no AV1 decoder
    truncate_file(make_webm(root / "21.webm", frames=40, texture=True), 0.5)
    make_zero_byte(root / "22.webm")
    make_non_video(root / "23.webm")
    corrupt_bytes(make_webm(root / "24.webm", frames=40, texture=True), start_fraction=0.5, length=300)
    return root


def _cfg(root, labels=None, **kw):
    return SSv2Source(src=str(root), labels=str(labels) if labels else None, **kw)


def _ref(root, clip_id):
    refs, _ = ssv2.list_clips(_cfg(root))
    return next(r for r in refs if r.id == clip_id)


def _reason(root, clip_id, **kw):
    with pytest.raises(ClipRejected) as info:
        ssv2.load_clip(_ref(root, clip_id), _cfg(root, **kw))
    assert info.value.path.endswith(f"{clip_id}.webm")
    return info.value.reason


def test_list_without_labels_is_numeric_and_unlabelled(videos):
    refs, rejects = ssv2.list_clips(_cfg(videos))
    assert rejects == []
    assert [r.id for r in refs] == ["2", "10", "11", "20", "21", "22", "23", "24"]
    assert refs[0].meta == {
        "source": "ssv2",
        "id": "2",
        "label": None,
        "template": None,
        "placeholders": None,
    }
    assert [r.id for r in ssv2.list_clips(_cfg(videos, max_clips=2))[0]] == ["2", "10"]


def test_labels_join_and_rejects(videos, tmp_path):
    entry = {"id": "10", "label": "Putting pen into mug", "template": "Putting [something] into [something]",
             "placeholders": ["pen", "mug"]}  # fmt: skip
    labels = make_ssv2_labels(tmp_path / "train.json", [entry, "2", "99"])
    refs, rejects = ssv2.list_clips(_cfg(videos, labels))
    assert [r.id for r in refs] == ["2", "10"]
    assert refs[1].meta == {"source": "ssv2", **entry}
    reasons = {path.rsplit("/", 1)[1]: reason for path, reason in rejects}
    assert reasons["99.webm"] == "listed in labels train.json but no 99.webm"
    assert reasons["11.webm"].startswith("not in labels train.json (another split?)")
    assert len(rejects) == 1 + 6  # every file in the folder is a clip or a reject
    clip = ssv2.load_clip(refs[1], _cfg(videos, labels))
    assert clip.meta["label"] == "Putting pen into mug" and clip.meta["placeholders"] == ["pen", "mug"]


def test_bad_labels_files_are_named(videos, tmp_path):
    broken = tmp_path / "something-something-v2-train.json"
    broken.write_text('[{"id": "2", "label": ')
    with pytest.raises(LabelsError, match="something-something-v2-train.json: not valid JSON"):
        ssv2.list_clips(_cfg(videos, broken))
    class_index = tmp_path / "labels.json"
    class_index.write_text(json.dumps({"Putting [something] into [something]": "0"}))
    with pytest.raises(LabelsError, match="labels.json maps templates to class numbers"):
        ssv2.list_clips(_cfg(videos, class_index))
    no_id = tmp_path / "validation.json"
    no_id.write_text(json.dumps([{"label": "x"}]))
    with pytest.raises(LabelsError, match="validation.json: entry 0 has no 'id' field"):
        ssv2.list_clips(_cfg(videos, no_id))
    with pytest.raises(FileNotFoundError, match="labels: null"):
        ssv2.list_clips(_cfg(videos, tmp_path / "missing.json"))


def test_missing_folder_says_where_to_put_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"put the <id>.webm files there .*--src"):
        ssv2.list_clips(_cfg(tmp_path / "nowhere"))


def test_good_clips_decode_in_order_with_decord(videos):
    for clip_id, frames in GOOD.items():
        clip = ssv2.load_clip(_ref(videos, clip_id), _cfg(videos))
        assert clip.frames.dtype == np.uint8
        assert clip.frames.shape == (frames, 240, 427 if clip_id != "11" else 320, 3)
        assert read_indices(clip.frames) == list(range(frames))
        assert clip.meta["decoder"] == "decord" and clip.meta["decord_error"] is None
        assert clip.meta["fps"] == pytest.approx(12.0)


def test_decord_and_pyav_agree(videos):
    ref = _ref(videos, "10")
    by_decord = ssv2.load_clip(ref, _cfg(videos, decoder="decord")).frames
    pyav = ssv2.load_clip(ref, _cfg(videos, decoder="pyav"))
    assert pyav.meta["decoder"] == "pyav"
    assert pyav.frames.shape == by_decord.shape == (40, 240, 427, 3)
    assert read_indices(pyav.frames) == list(range(40))
    assert (
        np.abs(pyav.frames.astype(int) - by_decord.astype(int)).mean() < 3
    )  # same frames, YUV->RGB rounding


def test_frame_stride(videos):
    for decoder in ("decord", "pyav"):
        clip = ssv2.load_clip(_ref(videos, "10"), _cfg(videos, frame_stride=3, decoder=decoder))
        assert read_indices(clip.frames) == list(range(0, 40, 3))


def test_pyav_fallback_when_decord_fails(videos):
    clip = ssv2.load_clip(_ref(videos, "20"), _cfg(videos))
    assert clip.meta["decoder"] == "pyav"
    assert "cannot find video stream" in clip.meta["decord_error"]
    assert read_indices(clip.frames) == list(range(30))
    assert _reason(videos, "20", decoder="decord").startswith("undecodable av1 video (decord: DECORDError")


def test_zero_byte_and_non_video(videos):
    assert _reason(videos, "22") == "empty file (0 bytes): re-download it"
    assert _reason(videos, "23").startswith("not a readable video container (InvalidDataError")


def test_truncated_video_is_rejected_by_both_decoders(videos):
    for decoder in ("auto", "pyav"):
        assert "truncated or damaged: decodable frames cover 1." in _reason(videos, "21", decoder=decoder)


def test_damaged_payload_is_rejected_by_pyav_not_concealed(videos):
    # FFmpeg's own VP9 decoder returns 40 garbage frames without an error here (and so does decord on
    # this file); the PyAV path decodes VP9 with libvpx, which refuses the damaged packet.
    assert _reason(videos, "24", decoder="pyav").startswith("undecodable vp9 video (PyAV: InvalidDataError")


def test_file_removed_after_listing(videos, tmp_path):
    shutil.copy(videos / "2.webm", tmp_path / "5.webm")
    ref = _ref(tmp_path, "5")
    (tmp_path / "5.webm").unlink()
    with pytest.raises(ClipRejected, match="cannot read the file"):
        ssv2.load_clip(ref, _cfg(tmp_path))


def _load_or_reason(args: tuple[ClipRef, SSv2Source]):
    ref, cfg = args
    try:
        clip = ssv2.load_clip(ref, cfg)
        return clip.meta["decoder"], read_indices(clip.frames)
    except ClipRejected as err:
        return "rejected", err.reason


def test_worker_pool_survives_bad_files(videos):
    cfg = _cfg(videos)
    refs, _ = ssv2.list_clips(cfg)
    with get_context("spawn").Pool(2) as pool:
        results = dict(
            zip([r.id for r in refs], pool.map(_load_or_reason, [(r, cfg) for r in refs]), strict=True)
        )
    for clip_id, frames in GOOD.items():
        assert results[clip_id] == ("decord", list(range(frames)))
    assert results["20"] == ("pyav", list(range(30)))
    assert {results[i][0] for i in ("21", "22", "23")} == {"rejected"}
