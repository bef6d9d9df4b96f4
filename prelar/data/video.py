"""Video decoding and resizing shared by the sources.

`decode_video` reads a container file to uint8 RGB frames at native resolution: a cheap PyAV probe first
(rejects files that are not videos before any decoder touches them, and reads the duration the header
declares), then decord, then PyAV when decord fails. A file whose decodable frames cover clearly less than
the declared duration is rejected as truncated rather than kept as a silently shortened clip.
Decoders run single-threaded: parallelism comes from the ingest worker pool (one process per core).
VP9 carries no checksums: a damaged packet can decode to wrong pixels without an error. PyAV decodes VP8/VP9
with libvpx, which refuses such packets; decord (FFmpeg's decoder) refuses most of them but not all.

`resize_frames` brings frames of any size to the square training resolution (area averaging: antialiased).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from prelar.data.clip import ClipRejected

ResizePolicy = Literal["squash", "center_crop"]
DecoderChoice = Literal["auto", "decord", "pyav"]
_STRICT_DECODERS = {"vp9": "libvpx-vp9", "vp8": "libvpx"}
_DECORD_PREFIX = re.compile(r"(\[\d\d:\d\d:\d\d\] \S+:\d+: )+")


def resize_frames(frames: np.ndarray, size: int, policy: ResizePolicy = "squash") -> np.ndarray:
    """Resize uint8 [T, H, W, 3] frames to uint8 [T, size, size, 3].

    policy: "squash" scales the whole frame, ignoring the aspect ratio (what the papers did with SSv2);
    "center_crop" keeps the central min(H, W) square, then scales it. Resampling is PIL's BOX filter (area
    averaging, the antialiased equivalent of OpenCV's INTER_AREA), the fastest antialiased PIL filter.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    if policy not in ("squash", "center_crop"):
        raise ValueError(f"resize policy must be 'squash' or 'center_crop', got {policy!r}")
    t, h, w, _ = frames.shape
    if policy == "center_crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        box = (left, top, left + side, top + side)
    else:
        box = (0, 0, w, h)
    if box == (0, 0, size, size):
        return frames
    out = np.empty((t, size, size, 3), np.uint8)  # [T, size, size, 3]
    for i in range(t):
        out[i] = np.asarray(Image.fromarray(frames[i]).resize((size, size), Image.Resampling.BOX, box=box))
    return out


@dataclass
class VideoProbe:
    """What a container header says about its first video stream."""

    codec: str
    width: int
    height: int
    fps: float
    duration_s: float | None  # None when the header has no duration (e.g. a live-recorded webm)


@dataclass
class DecodedVideo:
    """Frames of a video file and how they were obtained."""

    frames: np.ndarray  # uint8 [T, H, W, 3] RGB, native resolution, every `stride`-th frame
    decoder: Literal["decord", "pyav"]
    decord_error: str | None  # why decord failed when PyAV decoded the file instead
    fps: float  # native frame rate (before the stride)
    covered_s: float  # time span of all decodable frames (stride ignored)


def _short(err: BaseException) -> str:
    """One line of an exception: decord's messages carry multi-line C++ traces prefixed by time and source."""
    lines = str(err).strip().splitlines()
    text = _DECORD_PREFIX.sub("", lines[0])[:200] if lines else ""
    return f"{type(err).__name__}: {text}".rstrip(": ")


def probe_video(path: str | Path) -> VideoProbe:
    """Read a container's header with PyAV (no decoding); reject files that are not videos."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ClipRejected(str(path), "no video stream in the container")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            duration = container.duration / 1e6 if container.duration else None
            return VideoProbe(
                codec=stream.codec_context.codec.canonical_name,
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                fps=float(rate) if rate else 0.0,
                duration_s=duration,
            )
    except ClipRejected:
        raise
    except Exception as err:  # any parse failure of untrusted bytes is a property of the file
        raise ClipRejected(str(path), f"not a readable video container ({_short(err)})") from None


def _decode_decord(path: Path, stride: int) -> tuple[np.ndarray, float, float]:
    """Every `stride`-th frame with decord; returns (frames, native fps, seconds covered by the index)."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)  # its FFmpeg log lines would interleave across workers
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    n = len(reader)
    if n == 0:
        raise RuntimeError("no frames in the index")
    frames = reader.get_batch(list(range(0, n, stride))).asnumpy()  # [T, H, W, 3] RGB
    first, last = reader.get_frame_timestamp(0), reader.get_frame_timestamp(n - 1)
    return frames, float(reader.get_avg_fps()), float(last[1] - first[0])


def _decode_pyav(path: Path, stride: int, fps: float) -> tuple[np.ndarray, float]:
    """Every `stride`-th frame with PyAV; returns (frames, seconds covered by the decoded frames).

    VP8/VP9 go through libvpx: FFmpeg's own decoders conceal damaged packets and return garbage frames
    without an error, where libvpx (like decord) raises.
    """
    import av

    kept, start, end, i = [], None, 0.0, 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        strict = _STRICT_DECODERS.get(stream.codec_context.codec.canonical_name)
        if strict in av.codecs_available:
            decoder = av.CodecContext.create(strict, "r")
        else:
            decoder = stream.codec_context
        decoder.thread_count = 1
        for packet in container.demux(stream):  # the last, empty packet flushes the decoder
            for frame in decoder.decode(packet):
                if i % stride == 0:
                    kept.append(frame.to_ndarray(format="rgb24"))  # [H, W, 3]
                i += 1
                if frame.pts is not None:
                    time = float(frame.pts * stream.time_base)
                    start = time if start is None else start
                    end = time + (1.0 / fps if fps else 0.0)
    if not kept:
        raise RuntimeError("no decodable frames")
    return np.stack(kept), end - (start or 0.0)


def decode_video(path: str | Path, stride: int = 1, decoder: DecoderChoice = "auto") -> DecodedVideo:
    """Decode every `stride`-th frame of a video file to uint8 RGB [T, H, W, 3] at native resolution.

    decoder "auto": decord first, PyAV when decord raises (recorded in `decoder` and `decord_error`);
    "decord" or "pyav": that decoder only (e.g. where decord has no wheel). Raises ClipRejected
    with the reason when the file is not a video, when neither decoder can read it, or when it is truncated:
    its decodable frames span less than the header's duration minus max(2 frames, 5%) (a truncated
    download, or damage that desynchronised the demuxer).
    """
    path = Path(path)
    if stride < 1:
        raise ValueError(f"frame stride must be >= 1, got {stride}")
    if decoder not in ("auto", "decord", "pyav"):
        raise ValueError(f"decoder must be 'auto', 'decord' or 'pyav', got {decoder!r}")
    probe = probe_video(path)
    decord_error = None
    if decoder != "pyav":
        try:
            frames, fps, covered = _decode_decord(path, stride)
            used = "decord"
        except Exception as err:  # decord raises DECORDError / RuntimeError on files it cannot read
            decord_error = _short(err)
            if decoder == "decord":
                reason = f"undecodable {probe.codec} video (decord: {decord_error})"
                raise ClipRejected(str(path), reason) from None
    if decoder == "pyav" or decord_error is not None:
        try:
            frames, covered = _decode_pyav(path, stride, probe.fps)
        except Exception as err:  # PyAV raises av.error.* (and others) on damaged data
            tried = f"decord: {decord_error}; " if decord_error else ""
            reason = f"undecodable {probe.codec} video ({tried}PyAV: {_short(err)})"
            raise ClipRejected(str(path), reason) from None
        fps, used = probe.fps, "pyav"
    declared = probe.duration_s
    if declared is not None and covered < declared - max(2 / fps if fps else 0.0, 0.05 * declared):
        raise ClipRejected(
            str(path),
            f"truncated or damaged: decodable frames cover {covered:.2f} s of the {declared:.2f} s declared "
            f"in the header ({used}; re-download the file)",
        )
    return DecodedVideo(frames=frames, decoder=used, decord_error=decord_error, fps=fps, covered_s=covered)
