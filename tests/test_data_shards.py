"""Shards: deterministic bytes, atomic writes, round trip, a reader that never unpickles, held-out split."""

import io
import pickle
import tarfile

import numpy as np
import pytest
from webdataset import TarWriter

from prelar.data import iter_clips
from prelar.data.clip import Clip
from prelar.data.shards import ShardWriter, in_holdout, read_shard, sample_key, shard_paths, write_shards


def make_clip(i: int, frames: int = 6, with_actions: bool = True) -> Clip:
    """Frame t of clip i: red = t, green = row, blue = i (so order, orientation and identity are visible)."""
    video = np.zeros((frames, 64, 64, 3), np.uint8)
    video[..., 0] = np.arange(frames)[:, None, None]
    video[..., 1] = np.arange(64)[None, :, None]
    video[..., 2] = i
    rng = np.random.default_rng(i)
    return Clip(
        frames=video,
        actions=rng.uniform(-1, 1, (frames - 1, 4)).astype(np.float32) if with_actions else None,
        rewards=rng.uniform(0, 10, frames - 1).astype(np.float32) if with_actions else None,
        success=(np.arange(frames - 1) > 2) if with_actions else None,
        meta={"source": "test", "id": f"test/task-a/ep{i:03d}.corner", "episode": i,
              "score": np.float32(0.5)},
    )


def test_same_clips_give_byte_identical_shards(tmp_path):
    clips = [make_clip(i) for i in range(5)]
    first = write_shards(clips, tmp_path / "a", clips_per_shard=2)
    second = write_shards(clips, tmp_path / "b", clips_per_shard=2)
    assert [p.name for p in first] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    with tarfile.open(first[0]) as tar:
        members = tar.getmembers()
    key = sample_key("test/task-a/ep000.corner")
    assert key == "test_task-a_ep000_corner"
    fields = ["actions.npy", "frames.npy", "meta.json", "rewards.npy", "success.npy"]
    assert [m.name for m in members[:5]] == [f"{key}.{field}" for field in fields]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "prelar", 0o444)}


def test_round_trip_keeps_arrays_and_meta(tmp_path):
    clips = [make_clip(0), make_clip(1, with_actions=False)]
    write_shards(clips, tmp_path, clips_per_shard=8)
    back = list(iter_clips(tmp_path))
    assert len(back) == 2
    for clip, got in zip(clips, back, strict=True):
        np.testing.assert_array_equal(got.frames, clip.frames)
        assert got.frames.dtype == np.uint8
        assert got.meta == {**clip.meta, "score": 0.5}
    np.testing.assert_array_equal(back[0].actions, clips[0].actions)
    np.testing.assert_array_equal(back[0].rewards, clips[0].rewards)
    np.testing.assert_array_equal(back[0].success, clips[0].success)
    assert back[1].actions is None and back[1].rewards is None and back[1].success is None
    assert back[0].actions.dtype == np.float32 and back[0].success.dtype == bool


def test_interrupted_write_leaves_no_complete_looking_shard(tmp_path):
    with pytest.raises(RuntimeError, match="interrupted"):
        with ShardWriter(tmp_path, clips_per_shard=2) as writer:
            for i in range(3):
                writer.write(make_clip(i))
            assert (tmp_path / "shard-000001.tar.tmp").exists()  # the open shard is a temporary
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar"]
    assert [c.meta["episode"] for c in iter_clips(tmp_path)] == [0, 1]
    # A stray temporary (a killed writer) is never taken for a shard.
    (tmp_path / "shard-000001.tar.tmp").write_bytes(b"partial")
    assert shard_paths(tmp_path) == [tmp_path / "shard-000000.tar"]
    assert shard_paths(str(tmp_path / "shard-*")) == [tmp_path / "shard-000000.tar"]


def test_duplicate_key_in_a_shard_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="duplicate sample key"):
        write_shards([make_clip(0), make_clip(0)], tmp_path, clips_per_shard=4)


class _Payload:
    """Unpickling this creates a marker file: proof that something unpickled it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def _write_raw(path, members: dict[str, bytes]) -> None:
    with open(path, "wb") as stream, TarWriter(stream, encoder=False, mtime=0) as tar:
        tar.write({"__key__": "evil", **members})


def _npy(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=True)
    return stream.getvalue()


def test_reader_never_unpickles(tmp_path):
    marker = tmp_path / "unpickled"
    good = {"frames.npy": _npy(make_clip(0).frames), "meta.json": b'{"id": "evil", "source": "x"}'}
    payload = pickle.dumps(_Payload(str(marker)))
    pickle.loads(payload).close()  # the payload is live: unpickling it does create the marker
    assert marker.exists()
    marker.unlink()

    _write_raw(tmp_path / "pyd.tar", {**good, "pyd": payload})
    with pytest.raises(ValueError, match=r"pyd\.tar: sample 'evil' has member\(s\) \['pyd'\].*never pickles"):
        list(read_shard(tmp_path / "pyd.tar"))

    object_array = np.array([_Payload(str(marker))], dtype=object)
    _write_raw(tmp_path / "npy.tar", {**good, "frames.npy": _npy(object_array)})
    with pytest.raises(ValueError, match=r"evil\.frames\.npy is not a plain array"):
        list(read_shard(tmp_path / "npy.tar"))
    assert not marker.exists()


def test_missing_shards_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shards.*prelar ingest"):
        shard_paths(tmp_path)
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        shard_paths(tmp_path / "nothing-*.tar")


def test_holdout_split_is_stable_and_partitions(tmp_path):
    ids = [f"clip{i}" for i in range(4000)]
    held = [i for i in ids if in_holdout(i, 0.1)]
    assert 0.08 < len(held) / len(ids) < 0.12
    assert held == [i for i in ids if in_holdout(i, 0.1)]  # stable
    assert set(held) <= {i for i in ids if in_holdout(i, 0.3)}  # nested in a larger fraction
    assert not any(in_holdout(i, 0.0) for i in ids)

    clips = [make_clip(i) for i in range(40)]
    write_shards(clips, tmp_path, clips_per_shard=16)
    train = [c.meta["id"] for c in iter_clips(tmp_path, split="train", holdout_fraction=0.25)]
    holdout = [c.meta["id"] for c in iter_clips(tmp_path, split="holdout", holdout_fraction=0.25)]
    assert holdout and train and not set(train) & set(holdout)
    assert sorted(train + holdout) == sorted(c.meta["id"] for c in clips)
    assert all(in_holdout(i, 0.25) for i in holdout)
    with pytest.raises(ValueError, match="holdout_fraction"):
        list(iter_clips(tmp_path, split="train"))


def test_the_end_effector_states_travel_with_the_clip(tmp_path):
    clip = make_clip(0)
    clip.hand = np.random.default_rng(0).normal(size=(len(clip.frames), 4)).astype(np.float32)
    write_shards([clip, make_clip(1)], tmp_path, clips_per_shard=8)
    back = list(iter_clips(tmp_path))
    np.testing.assert_array_equal(back[0].hand, clip.hand)
    assert back[0].hand.dtype == np.float32 and back[1].hand is None  # optional, as the actions
