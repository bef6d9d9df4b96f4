"""Something-Something-V2 as a video source: one clip per `<id>.webm` (VP9, 240 pixels high, ~12 fps).

Labels are optional. The labels JSON (`train.json`, `validation.json`, `test.json`, or the older
`something-something-v2-train.json`, ...) is a list of {id, label, template, placeholders} (the test split
has only ids). When labels are given they define the split: SSv2 ships every video of every split in one
folder, so a video absent from the labels belongs to another split and is recorded as a reject ("not in
labels ...") rather than ingested; an id in the labels without its file is a reject too. Without labels
(`labels: null`) every `.webm` in the folder is a clip with label None.

Decoding (see `prelar.data.video.decode_video`): PyAV probe, decord, PyAV fallback; truncated and corrupt
files are rejected with the reason. `frame_stride` keeps every k-th frame; `max_clips` keeps the first clips
in id order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from prelar.config import ConfigError, SSv2Source
from prelar.data.clip import Clip, ClipRef, ClipRejected
from prelar.data.video import decode_video


class LabelsError(ConfigError):
    """A labels JSON that cannot be used; the message names the file and what is wrong."""


def _id_key(clip_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, then any other ids alphabetically."""
    return (0, int(clip_id), "") if clip_id.isdigit() else (1, 0, clip_id)


def load_labels(path: str | Path) -> dict[str, dict]:
    """Read an SSv2 labels JSON into {id: {label, template, placeholders}} (missing fields are None)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"SSv2 labels {path} not found: put train.json / validation.json there, pass --labels, "
            f"or set data.ssv2.labels: null to ingest the videos without labels"
        )
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LabelsError(f"{path}: not valid JSON ({err}); re-download the SSv2 labels archive") from None
    if not isinstance(rows, list):
        hint = ""
        if isinstance(rows, dict):
            hint = " (labels.json maps templates to class numbers; use train.json or validation.json)"
        raise LabelsError(f"{path}: expected a list of {{id, label, template, placeholders}}{hint}")
    labels: dict[str, dict] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "id" not in row:
            raise LabelsError(f"{path}: entry {i} has no 'id' field: {str(row)[:80]}")
        clip_id = str(row["id"])
        if clip_id in labels:
            raise LabelsError(f"{path}: id {clip_id} is listed twice (entry {i} repeats an earlier one)")
        labels[clip_id] = {k: row.get(k) for k in ("label", "template", "placeholders")}
    return labels


def list_clips(cfg: SSv2Source) -> tuple[list[ClipRef], list[tuple[str, str]]]:
    """List the `<id>.webm` clips of `cfg.src` (joined with `cfg.labels` when set), without decoding.

    Returns (refs, rejects): refs in id order (numeric), cut to `cfg.max_clips`; rejects are (path, reason)
    for labelled ids without a file and files not in the labels.
    """
    root = Path(cfg.src)
    if not root.is_dir():
        raise FileNotFoundError(
            f"SSv2 video folder {root} not found: put the <id>.webm files there (e.g. {root}/78687.webm) "
            f"or pass --src"
        )
    videos = {
        entry.name[: -len(".webm")]: entry.path
        for entry in os.scandir(root)
        if entry.name.endswith(".webm") and entry.is_file()
    }
    rejects: list[tuple[str, str]] = []
    if cfg.labels is None:
        labels = {clip_id: {"label": None, "template": None, "placeholders": None} for clip_id in videos}
    else:
        labels = load_labels(cfg.labels)
        name = Path(cfg.labels).name
        for clip_id in sorted(labels.keys() - videos.keys(), key=_id_key):
            rejects.append((str(root / f"{clip_id}.webm"), f"listed in labels {name} but no {clip_id}.webm"))
        for clip_id in sorted(videos.keys() - labels.keys(), key=_id_key):
            reason = f"not in labels {name} (another split?); set labels: null to ingest it unlabelled"
            rejects.append((videos[clip_id], reason))
    refs = [
        ClipRef(
            source="ssv2",
            id=clip_id,
            path=videos[clip_id],
            meta={"source": "ssv2", "id": clip_id, **labels[clip_id]},
        )
        for clip_id in sorted(videos.keys() & labels.keys(), key=_id_key)
    ]
    if cfg.max_clips is not None:
        refs = refs[: cfg.max_clips]
    return refs, rejects


def load_clip(ref: ClipRef, cfg: SSv2Source) -> Clip:
    """Decode one `.webm` to a Clip: uint8 [T, H, W, 3] RGB, native resolution, every `frame_stride`-th frame.

    meta adds `decoder` ("decord" or "pyav"), `decord_error` (why decord was bypassed, else None) and `fps`.
    """
    path = Path(ref.path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ClipRejected(str(path), f"cannot read the file ({err.strerror})") from None
    if size == 0:
        raise ClipRejected(str(path), "empty file (0 bytes): re-download it")
    video = decode_video(path, stride=cfg.frame_stride, decoder=cfg.decoder)
    meta = {**ref.meta, "decoder": video.decoder, "decord_error": video.decord_error, "fps": video.fps}
    return Clip(frames=video.frames, meta=meta)
