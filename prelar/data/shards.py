"""WebDataset shards of 64x64 clips: a deterministic, atomic writer and a pickle-free reader.

One tar sample is one clip. Its members, named `<key>.<field>`:

    frames.npy   uint8 [T, H, W, 3]
    actions.npy  float32 [T-1, A]   (optional)
    rewards.npy  float32 [T-1]      (optional)
    success.npy  bool [T-1]         (optional)
    hand.npy     float32 [T, 4]     (optional: the end effector per frame, `Clip.hand`)
    meta.json    the clip's meta (at least `source` and `id`)

The writer fixes everything a tar records besides the data (mtime 0, uid/gid 0, owner names, mode, member
order), so the same clips give byte-identical shards. A shard is written to `<name>.tmp` and renamed when
complete: a reader globbing `shard-*.tar` never sees a half-written one.

The reader decodes only the fields above, `.npy` with `allow_pickle=False`; a member of any other kind
(a pickle, for instance) is an error, never decoded.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from prelar import seeding
from prelar.data.clip import Clip

SHARD_PATTERN = "shard-{:06d}.tar"
SHARD_GLOB = "shard-[0-9][0-9][0-9][0-9][0-9][0-9].tar"
ARRAY_FIELDS = ("frames", "actions", "rewards", "success", "hand")
FIELDS = tuple(f"{name}.npy" for name in ARRAY_FIELDS) + ("meta.json",)


def sample_key(clip_id: str) -> str:
    """The tar key of a clip: its id with every run of characters other than [A-Za-z0-9_-] replaced by "_".

    WebDataset splits a member name at the first dot of its last path component, so a key has no dots
    (and no slashes, to keep shards flat).
    """
    return re.sub(r"[^A-Za-z0-9_-]+", "_", clip_id)


def frames_sha256(frames: np.ndarray) -> str:
    """sha256 of the frames' bytes (C order), recorded in the manifest to check clips end to end."""
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)
    return stream.getvalue()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"meta value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def meta_json(meta: dict[str, Any]) -> str:
    """The canonical JSON of a clip's meta (sorted keys, compact): what meta.json and the manifest hold."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), default=_json_default)


def encode_clip(clip: Clip) -> dict[str, Any]:
    """The tar sample of a clip: `__key__` plus the bytes of each field (deterministic)."""
    if "id" not in clip.meta:
        raise ValueError(f"clip meta {clip.meta!r} has no 'id'")
    sample: dict[str, Any] = {"__key__": sample_key(str(clip.meta["id"]))}
    for name in ARRAY_FIELDS:
        array = getattr(clip, name)
        if array is not None:
            sample[f"{name}.npy"] = _npy_bytes(array)
    sample["meta.json"] = meta_json(clip.meta).encode("utf-8")
    return sample


class ShardWriter:
    """Writes clips into `shard-000000.tar`, `shard-000001.tar`, ... of `clips_per_shard` clips each.

    Each shard is written as `<name>.tmp` and renamed once closed. `start_shard` continues a resumed run.
    `on_shard(path, keys)` is called after each rename (the ingest records its progress there).
    """

    def __init__(self, out_dir: str | Path, clips_per_shard: int, start_shard: int = 0, on_shard=None):
        if clips_per_shard < 1:
            raise ValueError(f"clips_per_shard must be >= 1, got {clips_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.clips_per_shard = clips_per_shard
        self.shard = start_shard
        self.on_shard = on_shard
        self._file = None
        self._tar = None  # webdataset's TarWriter of the open shard
        self._keys: list[str] = []

    @property
    def current_name(self) -> str:
        """File name of the shard the next clip goes into."""
        return SHARD_PATTERN.format(self.shard)

    def write(self, clip: Clip) -> str:
        """Append a clip; returns the name of the shard it went into."""
        sample = encode_clip(clip)
        if sample["__key__"] in self._keys:
            raise ValueError(f"duplicate sample key {sample['__key__']!r} in {self.current_name}")
        if self._tar is None:
            from webdataset import TarWriter  # here: importing webdataset imports torch (seconds)

            self._file = open(self.out_dir / (self.current_name + ".tmp"), "wb")
            self._tar = TarWriter(
                self._file, encoder=False, mtime=0, user="prelar", group="prelar", mode=0o444
            )
        self._tar.write(sample)
        self._keys.append(sample["__key__"])
        name = self.current_name
        if len(self._keys) == self.clips_per_shard:
            self.flush()
        return name

    def flush(self) -> None:
        """Close the open shard (if any) and rename it into place."""
        if self._tar is None:
            return
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        path = self.out_dir / self.current_name
        os.replace(str(path) + ".tmp", path)
        keys, self._keys, self._tar, self._file = self._keys, [], None, None
        self.shard += 1
        if self.on_shard is not None:
            self.on_shard(path, keys)

    def abort(self) -> None:
        """Drop the open shard's temporary file (after an error)."""
        if self._tar is not None:
            self._tar.close()
            self._file.close()
            Path(self._file.name).unlink(missing_ok=True)
            self._tar, self._file, self._keys = None, None, []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.flush()
        else:
            self.abort()


def write_shards(clips: Iterable[Clip], out_dir: str | Path, clips_per_shard: int) -> list[Path]:
    """Write clips into shards of `out_dir`; returns the shard paths."""
    paths: list[Path] = []
    with ShardWriter(out_dir, clips_per_shard, on_shard=lambda path, keys: paths.append(path)) as writer:
        for clip in clips:
            writer.write(clip)
    return paths


def shard_paths(path_or_glob: str | Path | Iterable[str | Path]) -> list[Path]:
    """Complete shards named by a shard directory, a tar, a glob, or a list of those (each sorted)."""
    if not isinstance(path_or_glob, str | Path):
        return [p for item in path_or_glob for p in shard_paths(item)]
    path = Path(path_or_glob)
    if path.is_dir():
        found = sorted(path.glob(SHARD_GLOB))
        if not found:
            raise FileNotFoundError(f"{path}: no shards ({SHARD_GLOB}); run `prelar ingest` to write them")
        return found
    if path.is_file():
        return [path]
    found = sorted(Path(p) for p in glob.glob(str(path_or_glob)) if not p.endswith(".tmp"))
    if not found:
        raise FileNotFoundError(f"{path_or_glob}: no shard matches; run `prelar ingest` to write them")
    return found


def decode_sample(sample: dict[str, Any], where: str) -> Clip:
    """A Clip from a raw WebDataset sample (member bytes by field); only the known fields are decoded."""
    key = sample["__key__"]
    unknown = sorted(k for k in sample if not k.startswith("__") and k not in FIELDS)
    if unknown:
        raise ValueError(
            f"{where}: sample {key!r} has member(s) {unknown} this reader does not decode "
            f"(it reads only {list(FIELDS)}, never pickles); remove them or rewrite it with `prelar ingest`"
        )
    if "frames.npy" not in sample or "meta.json" not in sample:
        raise ValueError(f"{where}: sample {key!r} lacks frames.npy or meta.json; rewrite the shard")
    arrays = {}
    for name in ARRAY_FIELDS:
        data = sample.get(f"{name}.npy")
        if data is not None:
            try:
                arrays[name] = np.load(io.BytesIO(data), allow_pickle=False)
            except ValueError as err:
                raise ValueError(f"{where}: {key}.{name}.npy is not a plain array ({err})") from None
    frames = arrays["frames"]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{where}: {key}.frames.npy is {frames.dtype} {frames.shape}, not uint8 [T,H,W,3]")
    meta = json.loads(sample["meta.json"].decode("utf-8"))
    return Clip(
        frames=frames,
        actions=arrays.get("actions"),
        rewards=arrays.get("rewards"),
        success=arrays.get("success"),
        hand=arrays.get("hand"),
        meta=meta,
    )


def _tar_members(path: str | Path) -> Iterator[dict[str, Any]]:
    """Regular members of a tar as WebDataset file samples {fname, data, __url__}.

    Random access (`r:`) reads each member in one call, several times faster than WebDataset's
    streaming reader for members of megabytes.
    """
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.isreg():
                yield {"fname": member.name, "data": tar.extractfile(member).read(), "__url__": str(path)}


def read_shard(path: str | Path) -> Iterator[Clip]:
    """The clips of one shard, in order (members grouped into samples by WebDataset's `group_by_keys`)."""
    from webdataset.tariterators import group_by_keys  # here: importing webdataset imports torch (seconds)

    for sample in group_by_keys(_tar_members(path)):
        yield decode_sample(sample, str(path))


def in_holdout(clip_id: str, fraction: float) -> bool:
    """Whether a clip belongs to the held-out split: its id's seed (`seeding.mix`), as a fraction of its
    range, below `fraction` (so a larger fraction holds out a superset)."""
    return seeding.mix(clip_id, bits=64) / 2**64 < fraction


def iter_clips(
    path_or_glob: str | Path | Iterable[str | Path],
    *,
    split: Literal["train", "holdout"] | None = None,
    holdout_fraction: float | None = None,
) -> Iterator[Clip]:
    """The clips of a shard directory (or tar, glob, list), in shard order.

    split: None for every clip, "train" or "holdout" for one side of `in_holdout(id, holdout_fraction)`.
    """
    if split is not None and holdout_fraction is None:
        raise ValueError("iter_clips: split needs holdout_fraction (params.yaml loader.holdout_fraction)")
    for path in shard_paths(path_or_glob):
        for clip in read_shard(path):
            if split is None or in_holdout(str(clip.meta["id"]), holdout_fraction) == (split == "holdout"):
                yield clip
