"""Training segments: shapes, contiguous windows, disjoint ranks and workers, held-out and short clips."""

import logging
from itertools import islice

import numpy as np
import pytest
import torch

from prelar.config import Loader
from prelar.data.clip import Clip
from prelar.data.segments import SegmentDataset, make_loader
from prelar.data.shards import in_holdout, write_shards


def make_clip(i: int, frames: int) -> Clip:
    """Frame t of clip i: red = t, green = i, blue = a top-to-bottom gradient."""
    video = np.zeros((frames, 64, 64, 3), np.uint8)
    video[..., 0] = np.arange(frames)[:, None, None]
    video[..., 1] = i
    video[..., 2] = np.arange(64)[None, :, None]
    return Clip(frames=video, meta={"source": "test", "id": f"test/clip{i:03d}"})


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """24 clips of 20..43 frames in 6 shards of 4."""
    path = tmp_path_factory.mktemp("shards")
    write_shards([make_clip(i, 20 + i) for i in range(24)], path, clips_per_shard=4)
    return path


CFG = Loader(segment_length=8, batch_size=4, workers=0, shuffle_buffer=16, holdout_fraction=0.2)


def test_batches_are_uint8_segments_of_contiguous_frames(shards):
    loader = make_loader(shards, CFG, with_meta=True)
    for batch in islice(loader, 5):
        frames = batch["frames"]
        assert frames.shape == (4, 8, 3, 64, 64) and frames.dtype == torch.uint8
        for b in range(4):
            clip_index = int(batch["id"][b][-3:])
            t = frames[b, :, 0, 0, 0].long()  # red: the frame index
            assert t.tolist() == list(range(int(batch["offset"][b]), int(batch["offset"][b]) + 8))
            assert int(t[-1]) < 20 + clip_index  # inside the clip
            assert (frames[b, :, 1] == clip_index).all()
            assert frames[b, 0, 2, -1, 0] == 63 and frames[b, 0, 2, 0, 0] == 0  # upright


def test_plain_batches_with_two_workers(shards):
    cfg = CFG.model_copy(update={"workers": 2})
    batch = next(iter(make_loader(shards, cfg)))
    assert isinstance(batch, torch.Tensor) and batch.shape == (4, 8, 3, 64, 64) and batch.dtype == torch.uint8


def _ids(shards, rank, world_size, workers, batches):
    cfg = CFG.model_copy(update={"workers": workers})
    loader = make_loader(shards, cfg, rank=rank, world_size=world_size, seed=1, with_meta=True)
    ids_by_stream: dict[int, set[str]] = {}
    for batch in islice(loader, batches):
        for clip_id, stream in zip(batch["id"], batch["stream"].tolist(), strict=True):
            ids_by_stream.setdefault(stream, set()).add(clip_id)
    return ids_by_stream


@pytest.mark.parametrize(
    ("world_size", "workers"), [(2, 0), (2, 2), (8, 0)], ids=["by-shard", "by-shard-workers", "by-clip"]
)
def test_ranks_and_workers_read_disjoint_clips(shards, world_size, workers):
    # 6 shards: 2 or 4 streams get whole shards; 8 streams get clips by index modulo 8.
    streams: dict[int, set[str]] = {}
    for rank in range(world_size):
        streams.update(_ids(shards, rank, world_size, workers, batches=8))
    assert len(streams) == world_size * max(workers, 1)
    seen = [i for ids in streams.values() for i in ids]
    assert len(seen) == len(set(seen))  # no clip in two streams
    assert all(not in_holdout(i, CFG.holdout_fraction) for i in seen)


def test_holdout_clips_are_never_trained_on_and_all_others_are(shards):
    held = {f"test/clip{i:03d}" for i in range(24) if in_holdout(f"test/clip{i:03d}", 0.2)}
    assert 0 < len(held) < 12
    ids = set().union(*_ids(shards, 0, 1, 0, batches=40).values())
    assert ids == {f"test/clip{i:03d}" for i in range(24)} - held


def test_same_seed_same_stream_other_seed_other_stream(shards):
    def first(seed):
        return next(iter(make_loader(shards, CFG, seed=seed)))

    assert torch.equal(first(3), first(3))
    assert not torch.equal(first(3), first(4))


def test_short_clips_are_skipped_with_a_warning_count(tmp_path, caplog):
    write_shards([make_clip(0, 5), make_clip(1, 12), make_clip(2, 6)], tmp_path, clips_per_shard=3)
    dataset = SegmentDataset(tmp_path, segment_length=8, shuffle_buffer=1, holdout_fraction=0.0)
    with caplog.at_level(logging.WARNING):
        items = list(islice(dataset, 6))
    assert all(item.shape == (8, 3, 64, 64) for item in items)
    assert {int(item[0, 1, 0, 0]) for item in items} == {1}
    assert "skipped 2 of 3 training clips shorter than segment_length=8" in caplog.text


def test_no_usable_clip_is_an_error(tmp_path):
    write_shards([make_clip(0, 5)], tmp_path, clips_per_shard=1)
    dataset = SegmentDataset(tmp_path, segment_length=8, shuffle_buffer=4, holdout_fraction=0.0)
    with pytest.raises(RuntimeError, match="no training clip of >= 8 frames"):
        next(iter(dataset))
    with pytest.raises(ValueError, match="rank 2"):
        SegmentDataset(tmp_path, segment_length=8, shuffle_buffer=4, holdout_fraction=0.0, rank=2,
                       world_size=2)


def test_with_actions_each_segment_carries_the_actions_between_its_frames(tmp_path):
    """actions[t] leads from frame t to t + 1: a segment of frames t0..t0+7 carries actions t0..t0+6."""
    clips = []
    for i in range(6):
        clip = make_clip(i, 20 + i)
        steps = np.arange(19 + i, dtype=np.float32)
        actions = np.stack([steps, np.full_like(steps, i)], -1)  # [T-1, 2]: (step, clip)
        clips.append(Clip(frames=clip.frames, actions=actions, meta=clip.meta))
    write_shards(clips, tmp_path / "with", clips_per_shard=2)
    cfg = CFG.model_copy(update={"holdout_fraction": 0.0})
    for batch in islice(make_loader(tmp_path / "with", cfg, with_meta=True, with_actions=True), 3):
        assert batch["actions"].shape == (4, 7, 2) and batch["actions"].dtype == torch.float32
        for b in range(4):
            t = batch["frames"][b, :-1, 0, 0, 0].float()  # red: the frame index
            assert torch.equal(batch["actions"][b, :, 0], t)
            assert (batch["actions"][b, :, 1] == int(batch["id"][b][-3:])).all()
    frames, actions = next(iter(make_loader(tmp_path / "with", cfg, with_actions=True)))  # plain: a pair
    assert frames.shape == (4, 8, 3, 64, 64) and actions.shape == (4, 7, 2)

    write_shards([make_clip(i, 20) for i in range(2)], tmp_path / "without", clips_per_shard=2)
    with pytest.raises(ValueError, match=r"shard-000000.tar: clip test/clip000 has no actions"):
        next(iter(make_loader(tmp_path / "without", cfg, with_actions=True)))
