"""Ingest: list a source's clips, decode them in worker processes, resize, validate, write WebDataset shards.

A source is any object (a module such as `prelar.data.metaworld`) with two functions:

    list_clips(cfg) -> (refs: list[ClipRef], rejects: list[(path, reason)])   FileNotFoundError if no root
    load_clip(ref, cfg) -> Clip                                               or raises ClipRejected

The output folder holds `shard-000000.tar`, ... (see `prelar.data.shards`), `manifest.parquet` (one row per
clip), `rejects.parquet` (path, reason), `contact_sheet.png` and `metrics.json` (counts only: the folder is
a function of the inputs, so its DVC hash is the same on every run; the timings go to the `--metrics` file).
It is built in `<out>.partial/` and renamed to `<out>` only when complete, so a half-finished run never
looks finished. A rerun after an interruption resumes from the last complete shard when the source lists
the same clips under the same parameters (a fingerprint recorded in `<out>.partial/.progress/`), else
starts over; the result is byte-identical to an uninterrupted run.

Decoding runs in a `ProcessPoolExecutor` (`shards.workers` processes; 0 decodes in this process) whose
ordered `map` keeps the output independent of the number of workers. Unlike `multiprocessing.Pool`, which
waits forever when a worker dies, a worker killed by a crashing decoder or renderer ends the run with an
IngestError (and the complete shards kept for the rerun).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import time
import types
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from prelar.data.clip import Clip, ClipRef, ClipRejected
from prelar.data.contact_sheet import contact_sheet
from prelar.data.shards import ARRAY_FIELDS, ShardWriter, frames_sha256, meta_json, read_shard, sample_key
from prelar.data.video import resize_frames

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("id", pa.string()),
        ("key", pa.string()),
        ("task", pa.string()),
        ("label", pa.string()),
        ("camera", pa.string()),
        ("frames", pa.int64()),
        ("orig_height", pa.int64()),
        ("orig_width", pa.int64()),
        ("shard", pa.string()),
        ("sha256", pa.string()),
        ("has_actions", pa.bool_()),
        ("success", pa.bool_()),  # any step successful (Meta-world); null where the source has no success
        ("return", pa.float64()),  # sum of rewards; null where the source has no rewards
        ("meta", pa.string()),  # the full meta.json of the clip
    ]
)
REJECTS_SCHEMA = pa.schema([("path", pa.string()), ("reason", pa.string())])


class IngestError(RuntimeError):
    """An ingest that produced nothing usable; the message is one line saying why."""


@dataclass
class IngestSummary:
    out: Path
    clips: int
    frames: int
    seconds: float
    rejects: list[tuple[str, str]] = field(default_factory=list)

    @property
    def frames_per_s(self) -> float:
        return self.frames / max(self.seconds, 1e-9)

    def reject_kinds(self) -> str:
        """Rejects counted by kind, the reason up to its first colon: "too short: 3, bad frames: 1"."""
        kinds = Counter(reason.split(":")[0] for _, reason in self.rejects)
        return ", ".join(f"{kind}: {n}" for kind, n in kinds.most_common()) or "none"

    def metrics(self) -> dict[str, Any]:
        """What the output holds: the same inputs give the same numbers (written into the output folder)."""
        return {"clips": self.clips, "rejects": len(self.rejects), "frames": self.frames}

    def timings(self) -> dict[str, float]:
        """How fast it went: differs run to run, so kept out of the output folder (its DVC hash)."""
        return {"seconds": round(self.seconds, 3), "frames_per_s": round(self.frames_per_s, 1)}

    def __str__(self) -> str:
        return (
            f"{self.out}: {self.clips} clips, {self.frames} frames, "
            f"{len(self.rejects)} rejects ({self.reject_kinds()}); "
            f"{self.seconds:.1f} s, {self.frames_per_s:.0f} frames/s"
        )


def validate(clip: Clip, path: str, min_frames: int) -> None:
    """Raise ClipRejected unless the frames are uint8 RGB [T, H, W, 3], T >= min_frames, arrays T-1 long
    (`hand` T long)."""
    frames = clip.frames
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        kind = getattr(frames, "dtype", type(frames).__name__)
        raise ClipRejected(path, f"bad frames: {kind}, expected uint8")
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[1:3], default=0) < 1:
        raise ClipRejected(path, f"bad frames: shape {frames.shape}, expected RGB [T, H, W, 3]")
    if len(frames) < min_frames:
        raise ClipRejected(path, f"too short: {len(frames)} frames < min {min_frames}")
    for name in ("actions", "rewards", "success"):
        array = getattr(clip, name)
        if array is not None and len(array) != len(frames) - 1:
            raise ClipRejected(path, f"bad {name}: {len(array)} steps for {len(frames)} frames, expected T-1")
    if clip.hand is not None and len(clip.hand) != len(frames):
        raise ClipRejected(path, f"bad hand: {len(clip.hand)} states for {len(frames)} frames, expected T")


def transcode(ref: ClipRef, source, source_cfg, shards_cfg) -> Clip:
    """Decode one clip, validate it and resize its frames to `shards_cfg.size` (raises ClipRejected)."""
    clip = source.load_clip(ref, source_cfg)
    validate(clip, ref.path, shards_cfg.min_frames)
    height, width = clip.frames.shape[1:3]
    policy = getattr(source_cfg, "resize", "squash")
    frames = resize_frames(clip.frames, shards_cfg.size, policy)  # [T, size, size, 3]
    meta = {**ref.meta, **clip.meta, "source": ref.source, "id": ref.id}
    meta.update(orig_height=height, orig_width=width)
    arrays = {"actions": clip.actions, "rewards": clip.rewards, "success": clip.success, "hand": clip.hand}
    return Clip(frames=frames, **arrays, meta=meta)


_WORKER: dict[str, Any] = {}


def _resolve(source):
    return importlib.import_module(source) if isinstance(source, str) else source


def _init_worker(source, source_cfg, shards_cfg) -> None:
    _WORKER.update(source=_resolve(source), source_cfg=source_cfg, shards_cfg=shards_cfg)


def _transcode_in_worker(ref: ClipRef) -> Clip | tuple[str, str]:
    """The transcoded clip, or (path, reason) of a reject (ClipRejected itself does not pickle)."""
    try:
        return transcode(ref, _WORKER["source"], _WORKER["source_cfg"], _WORKER["shards_cfg"])
    except ClipRejected as rejected:
        return rejected.path, rejected.reason


def _manifest_row(clip: Clip, shard: str) -> dict[str, Any]:
    meta = clip.meta
    return {
        "source": meta["source"],
        "id": meta["id"],
        "key": sample_key(meta["id"]),
        "task": meta.get("task"),
        "label": meta.get("label"),
        "camera": meta.get("camera"),
        "frames": len(clip.frames),
        "orig_height": int(meta["orig_height"]),
        "orig_width": int(meta["orig_width"]),
        "shard": shard,
        "sha256": frames_sha256(clip.frames),
        "has_actions": clip.actions is not None,
        "success": None if clip.success is None else bool(np.any(clip.success)),
        "return": None if clip.rewards is None else float(np.sum(clip.rewards, dtype=np.float64)),
        "meta": meta_json(meta),
    }


def _dedupe(refs: list[ClipRef]) -> tuple[list[ClipRef], list[tuple[str, str]]]:
    """Refs whose shard key is new; the others become rejects (keys must be unique across the output)."""
    seen: dict[str, str] = {}
    kept, rejects = [], []
    for ref in refs:
        key = sample_key(ref.id)
        if key in seen:
            rejects.append((ref.path, f"duplicate key: id {ref.id!r} maps to {key!r} like {seen[key]!r}"))
        else:
            seen[key] = ref.id
            kept.append(ref)
    return kept, rejects


def _fingerprint(refs: list[ClipRef], source_cfg, shards_cfg) -> str:
    """Identifies what the output will contain: the listed clips, every parameter that changes bytes, and the
    fields a clip is stored with (a partial run from a version that stored fewer is not resumed)."""
    spec = {
        "fields": ARRAY_FIELDS,
        "refs": [[r.source, r.id, r.path] for r in refs],
        "source_cfg": source_cfg.model_dump(mode="json"),
        "shards": shards_cfg.model_dump(mode="json", exclude={"workers"}),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


@dataclass
class _Progress:
    """Clips and rejects of a run, checkpointed to `<out>.partial/.progress/` each time a shard is complete.

    A checkpoint moves the pending rows and rejects (those since the last one) into `rows` and `rejects`;
    after an interruption, `_resume` rebuilds this object from the checkpoints of the complete shards.
    """

    work: Path
    shard: int = 0  # number of complete shards
    next_ref: int = 0  # index of the first ref not yet accounted for
    seconds: float = 0.0  # ingest time before this run (resumed runs)
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[tuple[str, str]] = field(default_factory=list)
    pending_rows: list[dict[str, Any]] = field(default_factory=list)
    pending_rejects: list[tuple[str, str]] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.seconds + time.perf_counter() - self.start

    def checkpoint(self, path: Path, keys: list[str]) -> None:
        """ShardWriter's `on_shard`: record what the shard just renamed into place holds."""
        record = {
            "next_ref": self.next_ref,
            "rows": self.pending_rows,
            "rejects": self.pending_rejects,
            "seconds": self.elapsed(),
        }
        _write_json(self.work / ".progress" / f"{path.stem}.json", record)
        self.shard += 1
        self.settle()

    def settle(self) -> None:
        """Move the pending rows and rejects to the accounted ones."""
        self.rows += self.pending_rows
        self.rejects += self.pending_rejects
        self.pending_rows, self.pending_rejects = [], []


def _shard_number(name: str) -> int | None:
    """N for `shard-N.tar` (a shard) or `shard-N.json` (its progress record), else None."""
    match = re.fullmatch(r"shard-(\d{6})\.(tar|json)", name)
    return int(match.group(1)) if match else None


def _resume(work: Path, fingerprint: str) -> _Progress:
    """Clean `work` of anything incomplete and return the progress its complete shards record."""
    progress_dir = work / ".progress"
    run_file = progress_dir / "run.json"
    state = _Progress(work)
    if run_file.exists() and json.loads(run_file.read_text()).get("fingerprint") == fingerprint:
        while (record := progress_dir / f"shard-{state.shard:06d}.json").exists() and (
            work / f"shard-{state.shard:06d}.tar"
        ).exists():
            done = json.loads(record.read_text())
            state.rows += done["rows"]
            state.rejects += [tuple(r) for r in done["rejects"]]
            state.next_ref, state.seconds = done["next_ref"], done["seconds"]
            state.shard += 1
        for path in [*work.iterdir(), *progress_dir.iterdir()]:
            number = _shard_number(path.name)
            if path.name.endswith(".tmp") or (number is not None and number >= state.shard):
                path.unlink()
        if state.shard:
            log.info("%s: resuming after %d complete shards (%d clips)", work, state.shard, len(state.rows))
        return state
    if work.exists():
        shutil.rmtree(work)
    progress_dir.mkdir(parents=True)
    _write_json(run_file, {"fingerprint": fingerprint})
    return state


def _write_contact_sheet(work: Path, rows: list[dict[str, Any]], shards_cfg) -> None:
    """Read back a few clips (evenly spread over the manifest) from their shards and tile them."""
    count = min(shards_cfg.sheet_rows, len(rows))
    picks = sorted(set(np.linspace(0, len(rows) - 1, count).round().astype(int).tolist()))
    wanted = {rows[i]["key"]: i for i in picks}
    found: dict[int, Clip] = {}
    for shard in sorted({rows[i]["shard"] for i in picks}):
        for clip in read_shard(work / shard):
            if sample_key(clip.meta["id"]) in wanted:
                found[wanted[sample_key(clip.meta["id"])]] = clip
    clips = [found[i] for i in picks]
    labels = [
        " ".join(str(v) for v in (c.meta["id"], c.meta.get("label")) if v is not None)[:80] for c in clips
    ]
    sheet = contact_sheet([c.frames for c in clips], labels, shards_cfg.sheet_columns)
    sheet.save(work / "contact_sheet.png")


def _publish(work: Path, out: Path) -> None:
    """Swap the finished `work` folder into `out` (the old `out`, if any, is removed)."""
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(work, out)
    if old.exists():
        shutil.rmtree(old)


def ingest(
    source,
    source_cfg,
    shards_cfg,
    out_dir: str | Path,
    metrics_path: str | Path | None = None,
) -> IngestSummary:
    """Transcode every clip of `source` into shards in `out_dir`; returns the summary (also in metrics.json).

    source: a module or object with `list_clips` and `load_clip` (see the module docstring).
    source_cfg: the source's config section (its `resize`, if any, is the resize policy; else "squash").
    shards_cfg: `config.Shards`. metrics_path: metrics.json plus the timings (for a DVC metrics file).
    Raises FileNotFoundError when the source's root is missing, IngestError when no clip is valid.
    """
    out = Path(out_dir)
    work = out.with_name(out.name + ".partial")
    refs, listed_rejects = source.list_clips(source_cfg)
    refs, duplicate_rejects = _dedupe(refs)
    state = _resume(work, _fingerprint(refs, source_cfg, shards_cfg))
    todo = refs[state.next_ref :]
    workers = shards_cfg.workers
    pool = None
    if workers > 0 and todo:
        name = source.__name__ if isinstance(source, types.ModuleType) else source
        chunksize = max(1, min(16, len(todo) // (8 * workers)))
        # spawn, not fork: a process forked after MuJoCo rendered hangs in its next render context.
        pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(name, source_cfg, shards_cfg),
        )
        results = pool.map(_transcode_in_worker, todo, chunksize=chunksize)  # in order
    else:
        _init_worker(source, source_cfg, shards_cfg)
        results = map(_transcode_in_worker, todo)
    bar = tqdm(results, total=len(refs), initial=state.next_ref, desc=f"ingest {out.name}", unit="clip")
    frames = sum(r["frames"] for r in state.rows)
    try:
        with ShardWriter(work, shards_cfg.clips_per_shard, state.shard, state.checkpoint) as writer:
            for result in bar:
                state.next_ref += 1
                if isinstance(result, tuple):
                    state.pending_rejects.append(result)
                    continue
                state.pending_rows.append(_manifest_row(result, writer.current_name))
                writer.write(result)
                frames += len(result.frames)
                bar.set_postfix(frames_per_s=f"{frames / state.elapsed():.0f}", refresh=False)
    except BrokenProcessPool:
        raise IngestError(
            f"{out}: a decode worker died (a crash in a decoder or renderer) on {refs[state.next_ref].path} "
            f"or the {chunksize - 1} clips after it; rerun to resume, or with --set data.shards.workers=0 "
            "to see the crash"
        ) from None
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    state.settle()

    summary = IngestSummary(
        out=out,
        clips=len(state.rows),
        frames=frames,
        seconds=state.elapsed(),
        rejects=listed_rejects + duplicate_rejects + state.rejects,
    )
    if not state.rows:
        shutil.rmtree(work)
        rejected = f"{len(summary.rejects)} rejected: {summary.reject_kinds()}"
        raise IngestError(f"{out}: no valid clips ({rejected}); nothing written")
    shutil.rmtree(work / ".progress")
    pq.write_table(pa.Table.from_pylist(state.rows, schema=MANIFEST_SCHEMA), work / "manifest.parquet")
    reject_rows = [{"path": path, "reason": reason} for path, reason in summary.rejects]
    pq.write_table(pa.Table.from_pylist(reject_rows, schema=REJECTS_SCHEMA), work / "rejects.parquet")
    _write_contact_sheet(work, state.rows, shards_cfg)
    _write_json(work / "metrics.json", summary.metrics())
    _publish(work, out)
    if metrics_path is not None:
        Path(metrics_path).parent.mkdir(parents=True, exist_ok=True)
        _write_json(Path(metrics_path), {**summary.metrics(), **summary.timings()})
    log.info("%s", summary)
    return summary


def ingest_from_cli(params, args) -> int:
    """`prelar ingest <source>`: ingest `data.<source>` with `data.shards` (the CLI applied its flags and
    `--set` to `params`); `args.metrics`: where the metrics JSON also goes, or None.

    Prints the summary and returns the exit code (1 when no clip is valid). FileNotFoundError (a missing
    source root) propagates: the CLI prints it and exits 2.
    """
    source_cfg = getattr(params.data, args.source)
    if getattr(args, "study", False):  # `prelar ingest metaworld --study`: the pre-training study's shards
        source_cfg = params.study.source(source_cfg)
    source = importlib.import_module(f"prelar.data.{args.source}")
    try:
        summary = ingest(source, source_cfg, params.data.shards, source_cfg.out, args.metrics)
    except IngestError as err:
        print(f"prelar: error: {err}", file=sys.stderr, flush=True)
        return 1
    print(summary, flush=True)
    return 0
