"""Ingest: shards, manifest, rejects, contact sheet, metrics; determinism; resume after kills; errors; CLI."""

import json
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from media import make_rlbench_tree, make_ssv2_labels, make_webm, read_indices
from PIL import Image
from pydantic import BaseModel

from prelar import cli, config
from prelar.config import Shards
from prelar.data import iter_clips
from prelar.data.clip import Clip, ClipRef, ClipRejected
from prelar.data.contact_sheet import GAP, LABEL_HEIGHT, sheet_size
from prelar.data.ingest import IngestError, ingest
from prelar.data.shards import frames_sha256, shard_paths

PARAMS = str(Path(__file__).parents[1] / "params.yaml")
KILL_ENV = "PRELAR_TEST_KILL_AT"  # index of the clip whose decoding SIGKILLs the decoding process


class SynthSource(BaseModel):
    """A tiny source of real frames: clip i has lengths[i] frames of height x width."""

    root: str
    lengths: list[int] = [12, 12, 3, 12, 12, 12, 12]
    corrupt: list[int] = [3]
    height: int = 96
    width: int = 128
    resize: str = "squash"


def list_clips(cfg: SynthSource):
    if not Path(cfg.root).is_dir():
        raise FileNotFoundError(f"{cfg.root}: no synthetic source here; create the folder")
    refs = [
        ClipRef("synth", f"synth/clip{i:02d}", f"{cfg.root}/clip{i:02d}", {"task": f"task{i % 2}"})
        for i in range(len(cfg.lengths))
    ]
    return refs, [(f"{cfg.root}/notes.txt", "not a video: unknown extension .txt")]


def load_clip(ref: ClipRef, cfg: SynthSource) -> Clip:
    """Frame t of clip i: red = 16 t, green = a top-to-bottom gradient, blue = 20 i."""
    i = int(ref.id[-2:])
    if os.environ.get(KILL_ENV) == str(i):
        os.kill(os.getpid(), signal.SIGKILL)
    if i in cfg.corrupt:
        raise ClipRejected(ref.path, "cannot decode: corrupt test file")
    T = cfg.lengths[i]
    frames = np.zeros((T, cfg.height, cfg.width, 3), np.uint8)
    frames[..., 0] = 16 * np.arange(T)[:, None, None]
    frames[..., 1] = np.linspace(0, 255, cfg.height).astype(np.uint8)[None, :, None]
    frames[..., 2] = 20 * i
    rewards = np.full(T - 1, 0.5, np.float32)
    actions = np.ones((T - 1, 4), np.float32) * i
    return Clip(frames=frames, actions=actions, rewards=rewards, success=np.arange(T - 1) == 2 * i,
                meta={"source": "synth", "id": ref.id, "label": f"label {i}"})


SOURCE = types.SimpleNamespace(list_clips=list_clips, load_clip=load_clip)
SHARDS = Shards(clips_per_shard=2, min_frames=8, workers=2, sheet_rows=3, sheet_columns=4)


@pytest.fixture
def root(tmp_path) -> Path:
    path = tmp_path / "raw"
    path.mkdir()
    return path


def test_ingest_writes_shards_manifest_rejects_metrics_and_sheet(root, tmp_path):
    out = tmp_path / "shards"
    metrics_path = tmp_path / "m/ingest.json"
    summary = ingest(SOURCE, SynthSource(root=str(root)), SHARDS, out, metrics_path=metrics_path)
    assert sorted(p.name for p in out.iterdir()) == [
        "contact_sheet.png", "manifest.parquet", "metrics.json", "rejects.parquet",
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar",
    ]
    assert not (tmp_path / "shards.partial").exists()

    manifest = pd.read_parquet(out / "manifest.parquet")
    assert manifest["id"].tolist() == [f"synth/clip{i:02d}" for i in (0, 1, 4, 5, 6)]
    assert manifest["shard"].tolist() == [f"shard-00000{i}.tar" for i in (0, 0, 1, 1, 2)]
    assert manifest["task"].tolist() == ["task0", "task1", "task0", "task1", "task0"]
    assert manifest["label"].tolist() == ["label 0", "label 1", "label 4", "label 5", "label 6"]
    assert manifest["camera"].isna().all()
    assert (manifest["frames"] == 12).all()
    assert (manifest["orig_height"] == 96).all() and (manifest["orig_width"] == 128).all()
    assert manifest["has_actions"].all()
    assert manifest["success"].tolist() == [True, True, True, True, False]  # success[t] = (t == 2i), t < 11
    assert manifest["return"].tolist() == [5.5] * 5

    clips = list(iter_clips(out))
    assert [c.meta["id"] for c in clips] == manifest["id"].tolist()
    for clip, sha in zip(clips, manifest["sha256"], strict=True):
        assert clip.frames.shape == (12, 64, 64, 3) and clip.frames.dtype == np.uint8
        assert frames_sha256(clip.frames) == sha
        np.testing.assert_array_equal(clip.frames[:, 0, 0, 0], 16 * np.arange(12))  # order kept
        assert clip.frames[0, -1, 0, 1] > clip.frames[0, 0, 0, 1] + 200  # upright: bright bottom
        assert clip.meta["orig_height"] == 96 and clip.actions.shape == (11, 4)

    rejects = pd.read_parquet(out / "rejects.parquet")
    assert set(zip(rejects["path"], rejects["reason"], strict=True)) == {
        (f"{root}/notes.txt", "not a video: unknown extension .txt"),
        (f"{root}/clip02", "too short: 3 frames < min 8"),
        (f"{root}/clip03", "cannot decode: corrupt test file"),
    }

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == {"clips": 5, "rejects": 3, "frames": 60}  # no timings in the output: its hash is fixed
    timed = json.loads(metrics_path.read_text())
    assert timed.pop("seconds") > 0 and timed.pop("frames_per_s") > 0 and timed == metrics
    assert "5 clips, 60 frames, 3 rejects" in str(summary) and "too short: 1" in str(summary)

    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
    assert (sheet.shape[1], sheet.shape[0]) == sheet_size(3, 4, 64)
    # Rows: clips 0, 4, 6 (evenly spread); columns: frames 0, 4, 7, 11 (evenly spread in time).
    for row, clip_index in enumerate((0, 4, 6)):
        top = GAP + row * (LABEL_HEIGHT + 64 + GAP) + LABEL_HEIGHT
        for col, t in enumerate((0, 4, 7, 11)):
            tile = sheet[top : top + 64, GAP + col * (64 + GAP) : GAP + col * (64 + GAP) + 64]
            assert tile[32, 32, 0] == 16 * t and tile[32, 32, 2] == 20 * clip_index
            assert tile[-1, 32, 1] > tile[0, 32, 1] + 200


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes): what DVC hashes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_input_gives_byte_identical_output_whatever_the_workers(root, tmp_path):
    cfg = SynthSource(root=str(root), resize="center_crop")
    ingest(SOURCE, cfg, SHARDS, tmp_path / "a", metrics_path=tmp_path / "a.json")
    ingest(SOURCE, cfg, SHARDS.model_copy(update={"workers": 0}), tmp_path / "b")
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert "metrics.json" in a and len(a) == 7  # 3 shards, manifest, rejects, sheet, metrics
    assert a.keys() == b.keys() and all(a[name] == b[name] for name in a), [n for n in a if a[n] != b[n]]


def _ingest_in_subprocess(root: Path, out: Path, kill_at: int) -> subprocess.CompletedProcess:
    script = (
        "import sys, types; sys.path.insert(0, sys.argv[1]);"
        "from test_data_ingest import SOURCE, SHARDS, SynthSource;"
        "from prelar.data.ingest import ingest;"
        "ingest(SOURCE, SynthSource(root=sys.argv[2]), SHARDS.model_copy(update={'workers': 0}), sys.argv[3])"
    )
    env = {**os.environ, KILL_ENV: str(kill_at)}
    args = [sys.executable, "-c", script, str(Path(__file__).parent), str(root), str(out)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def test_killed_ingest_leaves_nothing_complete_and_a_rerun_resumes(root, tmp_path):
    out = tmp_path / "shards"
    proc = _ingest_in_subprocess(root, out, kill_at=5)  # dies decoding clip 5: clips 0, 1 | 4 written
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists()
    partial = tmp_path / "shards.partial"
    assert sorted(p.name for p in partial.iterdir()) == [
        ".progress", "shard-000000.tar", "shard-000001.tar.tmp"
    ]
    assert shard_paths(partial) == [partial / "shard-000000.tar"]

    summary = ingest(SOURCE, SynthSource(root=str(root)), SHARDS, out)
    assert summary.clips == 5 and len(summary.rejects) == 3
    assert not partial.exists()
    ingest(SOURCE, SynthSource(root=str(root)), SHARDS, tmp_path / "reference")
    for name in ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "manifest.parquet",
                 "rejects.parquet"]:
        assert (out / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name


def test_dead_worker_is_an_error_not_a_hang_and_a_rerun_completes(root, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    monkeypatch.setenv(KILL_ENV, "6")
    with pytest.raises(IngestError, match="decode worker died"):
        ingest(SOURCE, SynthSource(root=str(root)), SHARDS, out)
    assert not out.exists()
    monkeypatch.delenv(KILL_ENV)
    assert ingest(SOURCE, SynthSource(root=str(root)), SHARDS, out).clips == 5


def test_rerun_replaces_a_previous_output(root, tmp_path):
    out = tmp_path / "shards"
    ingest(SOURCE, SynthSource(root=str(root)), SHARDS, out)
    ingest(SOURCE, SynthSource(root=str(root), lengths=[12, 12]), SHARDS, out)
    assert len(shard_paths(out)) == 1 and len(pd.read_parquet(out / "manifest.parquet")) == 2
    assert not (tmp_path / "shards.old").exists() and not (tmp_path / "shards.partial").exists()


def test_no_valid_clip_is_an_error_and_writes_nothing(root, tmp_path):
    out = tmp_path / "shards"
    cfg = SynthSource(root=str(root), lengths=[3, 5, 12], corrupt=[2])
    with pytest.raises(IngestError, match=r"no valid clips \(4 rejected: too short: 2, .*\); nothing"):
        ingest(SOURCE, cfg, SHARDS, out)
    assert not out.exists() and not (tmp_path / "shards.partial").exists()


def test_missing_root_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no synthetic source here"):
        ingest(SOURCE, SynthSource(root=str(tmp_path / "absent")), SHARDS, tmp_path / "shards")
    assert not (tmp_path / "shards").exists()


def test_cli_ingests_real_metaworld_episodes(tmp_path, capsys):
    out = tmp_path / "mw"
    sets = ["--set", "data.metaworld.tasks=[drawer-close-v3]", "--set", "data.metaworld.episodes_per_task=2",
            "--set", "data.metaworld.max_steps=25", "--params", PARAMS]
    code = cli.main(["ingest", "metaworld", "--out", str(out), "--set", "data.shards.workers=1", *sets])
    assert code == 0
    assert "2 clips, 52 frames, 0 rejects" in capsys.readouterr().out
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert manifest["task"].tolist() == ["drawer-close-v3"] * 2
    assert manifest["camera"].tolist() == ["corner"] * 2
    clip = next(iter_clips(out))
    assert clip.frames.shape == (26, 64, 64, 3) and clip.actions.shape == (25, 4)
    assert clip.frames.std() > 10  # a rendered scene, not a blank image

    # Rendered again in this process (not a worker): the same bytes, file for file, so the same DVC hash.
    # (Across CPUs the renderer's pixels may differ: the manifest's per-clip sha256 shows which clips.)
    again = tmp_path / "again"
    code = cli.main(["ingest", "metaworld", "--out", str(again), "--set", "data.shards.workers=0", *sets])
    assert code == 0 and _files(again) == _files(out)


def test_cli_exit_codes_for_missing_root_and_no_valid_clip(tmp_path, capsys):
    code = cli.main(["ingest", "rlbench", "--src", str(tmp_path / "absent"), "--out", str(tmp_path / "o"),
                     "--params", PARAMS])
    assert code == 2
    assert str(tmp_path / "absent") in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

    sets = {"data.metaworld.tasks": ["drawer-close-v3"], "data.metaworld.episodes_per_task": 1,
            "data.metaworld.max_steps": 3, "data.metaworld.out": str(tmp_path / "short"),
            "data.shards.workers": 0}
    from prelar.data.ingest import ingest_from_cli

    args = types.SimpleNamespace(source="metaworld", metrics=None)
    assert ingest_from_cli(config.override(config.load(PARAMS), sets), args) == 1  # 4 frames < min_frames 26
    assert "no valid clips (1 rejected: too short: 1)" in capsys.readouterr().err



def test_cli_ingests_real_rlbench_pngs_and_ssv2_webms(tmp_path, capsys):
    rlbench = tmp_path / "rlbench"
    make_rlbench_tree(rlbench, episodes=2, cameras=("front", "wrist"), frames=30, size=(96, 128))
    make_rlbench_tree(rlbench, tasks=("short_task",), frames=10, size=(96, 128))
    out = tmp_path / "rl_shards"
    args = ["--src", str(rlbench), "--set", "data.rlbench.cameras=[front, wrist]",
            "--set", "data.rlbench.resize=center_crop", "--out", str(out), "--set", "data.shards.workers=2",
            "--params", PARAMS]
    assert cli.main(["ingest", "rlbench", *args]) == 0
    printed = capsys.readouterr().out
    assert "4 clips, 120 frames, 2 rejects (" in printed
    assert "too short: 1" in printed and "no wrist_rgb folder (camera not rendered? " in printed
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert manifest["camera"].tolist() == ["front", "wrist"] * 2
    assert (manifest["orig_height"] == 96).all() and (manifest["orig_width"] == 128).all()
    for clip in iter_clips(out):
        assert clip.frames.shape == (30, 64, 64, 3) and read_indices(clip.frames) == list(range(30))

    videos = tmp_path / "ssv2"
    for clip_id, frames in (("101", 30), ("7", 28), ("55", 12)):
        make_webm(videos / f"{clip_id}.webm", frames=frames, height=120, width=214)
    labels = make_ssv2_labels(tmp_path / "train.json", ["7", "55", "101"])
    out = tmp_path / "ssv2_shards"
    args = ["--src", str(videos), "--labels", str(labels), "--out", str(out), "--set=data.shards.workers=0"]
    assert cli.main(["ingest", "ssv2", *args, "--params", PARAMS]) == 0
    assert "2 clips, 58 frames, 1 rejects (too short: 1)" in capsys.readouterr().out
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert manifest["id"].tolist() == ["7", "101"]
    assert manifest["label"].tolist() == ["Pushing cup from left to right"] * 2
    assert [read_indices(c.frames) for c in iter_clips(out)] == [list(range(28)), list(range(30))]


def test_arrays_of_the_wrong_length_reject_the_clip_by_name():
    from prelar.data.ingest import validate

    frames = np.zeros((5, 8, 8, 3), np.uint8)
    validate(Clip(frames=frames, actions=np.zeros((4, 4)), hand=np.zeros((5, 4))), "a/clip", min_frames=2)
    with pytest.raises(ClipRejected, match="a/clip: bad hand: 4 states for 5 frames, expected T"):
        validate(Clip(frames=frames, hand=np.zeros((4, 4))), "a/clip", min_frames=2)
    with pytest.raises(ClipRejected, match="bad actions: 5 steps for 5 frames, expected T-1"):
        validate(Clip(frames=frames, actions=np.zeros((5, 4))), "a/clip", min_frames=2)


def test_a_partial_run_of_a_version_that_stored_other_fields_is_not_resumed(root, monkeypatch):
    from prelar.data import ingest as module

    refs = list_clips(SynthSource(root=str(root)))[0]
    now = module._fingerprint(refs, SynthSource(root=str(root)), SHARDS)
    monkeypatch.setattr(module, "ARRAY_FIELDS", ("frames", "actions", "rewards", "success"))  # before `hand`
    assert module._fingerprint(refs, SynthSource(root=str(root)), SHARDS) != now
