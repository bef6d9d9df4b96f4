"""Video data: sources (Meta-world, RLBench, SSv2) → 64x64 WebDataset shards → training segments."""

from prelar.data.clip import Clip, ClipRef, ClipRejected

__all__ = ["Clip", "ClipRef", "ClipRejected", "iter_clips"]


def iter_clips(path, **kwargs):
    """Iterate the clips of a shard directory (or glob); see `prelar.data.shards.iter_clips`."""
    from prelar.data.shards import iter_clips as _iter_clips

    return _iter_clips(path, **kwargs)
