"""Generators of small REAL test inputs: RLBench PNG trees, VP9 webm files, SSv2 labels, and their faults.

Every generated frame encodes its own index in 8 horizontal bands (band b is bright when bit b of the index
is set), so the order of frames can be read back after lossy VP9 coding and after resizing to 64x64 (squash
or center crop of a landscape frame: the bands span the full width). `read_indices` decodes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import av
import numpy as np
from PIL import Image

INDEX_BITS = 8  # frames 0..255 can be told apart
_DARK, _BRIGHT = 40, 215


def index_frame(index: int, height: int, width: int, texture: np.ndarray | None = None) -> np.ndarray:
    """One RGB frame (uint8 [height, width, 3]) whose 8 horizontal bands spell `index` in binary.

    `texture` (int16 [height, width, 3], values within ±40) is added to give a codec realistic work.
    """
    if not 0 <= index < 2**INDEX_BITS:
        raise ValueError(f"frame index {index} does not fit in {INDEX_BITS} bands")
    band = np.array_split(np.arange(height), INDEX_BITS)
    frame = np.empty((height, width, 3), np.int16)
    for bit, rows in enumerate(band):
        frame[rows] = _BRIGHT if (index >> bit) & 1 else _DARK
    if texture is not None:
        frame += texture
    return np.clip(frame, 0, 255).astype(np.uint8)


def read_indices(frames: np.ndarray) -> list[int]:
    """The index spelt by each frame of uint8 [T, H, W, 3] `frames` (see `index_frame`)."""
    band = np.array_split(np.arange(frames.shape[1]), INDEX_BITS)
    # Band means, ignoring the rows next to band edges (resampling blurs them).
    inner = [rows[1:-1] if len(rows) > 2 else rows for rows in band]
    means = np.stack([frames[:, rows].mean(axis=(1, 2, 3)) for rows in inner], 1)  # [T, 8]
    bits = means > (_DARK + _BRIGHT) / 2  # [T, 8]
    return [int(sum(1 << b for b in range(INDEX_BITS) if row[b])) for row in bits]


def _moving_texture(height: int, width: int, frames: int, seed: int) -> list[np.ndarray]:
    """Smooth random texture (±40) drifting 2 px per frame: realistic bitrate for a small VP9 file."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(-40, 41, (height // 8 + 2, (width + 2 * frames) // 8 + 2, 3)).astype(np.int16)
    fine = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height]
    return [fine[:, 2 * t : 2 * t + width] for t in range(frames)]


# ---------------------------------------------------------------------------------------------- RLBench


def make_rlbench_tree(
    root: str | Path,
    tasks: Sequence[str] = ("reach_target",),
    variations: int = 1,
    episodes: int = 1,
    cameras: Sequence[str] = ("front",),
    frames: int = 12,
    size: int | tuple[int, int] = 128,
) -> list[Path]:
    """Write an RLBench dataset-generator tree of real PNGs and return its camera folders (sorted).

    Layout: <root>/<task>/variation<N>/episodes/episode<M>/<camera>_rgb/<i>.png (i = 0..frames-1, not
    zero-padded), plus the depth folder and the pickles the real generator writes next to them (as opaque
    bytes that a reader must never unpickle). `size` is an int (square) or (height, width).
    """
    height, width = (size, size) if isinstance(size, int) else size
    root = Path(root)
    out = []
    for task in tasks:
        for v in range(variations):
            var_dir = root / task / f"variation{v}"
            var_dir.mkdir(parents=True, exist_ok=True)
            (var_dir / "variation_descriptions.pkl").write_bytes(b"not a pickle: readers must not open it")
            for e in range(episodes):
                ep_dir = var_dir / "episodes" / f"episode{e}"
                ep_dir.mkdir(parents=True, exist_ok=True)
                (ep_dir / "low_dim_obs.pkl").write_bytes(b"not a pickle: readers must not open it")
                for cam in cameras:
                    cam_dir = ep_dir / f"{cam}_rgb"
                    cam_dir.mkdir(exist_ok=True)
                    (ep_dir / f"{cam}_depth").mkdir(exist_ok=True)
                    for i in range(frames):
                        Image.fromarray(index_frame(i, height, width)).save(cam_dir / f"{i}.png")
                    out.append(cam_dir)
    return sorted(out)


def delete_frame(camera_dir: str | Path, index: int) -> Path:
    """Remove frame `<index>.png` from a camera folder (a gap in the numbering); return its path."""
    path = Path(camera_dir) / f"{index}.png"
    path.unlink()
    return path


def corrupt_png(path: str | Path) -> Path:
    """Overwrite the image data of a PNG with garbage (the signature stays: it still looks like a PNG)."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    start = 40  # past the signature and the IHDR chunk
    data[start:] = np.random.default_rng(0).integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def truncate_file(path: str | Path, fraction: float) -> Path:
    """Keep only the first `fraction` of a file's bytes (an interrupted download or copy)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def write_png(path: str | Path, index: int, height: int, width: int) -> Path:
    """Write one index-encoded PNG frame (e.g. to replace a frame by one of another size)."""
    path = Path(path)
    Image.fromarray(index_frame(index, height, width)).save(path)
    return path


# ------------------------------------------------------------------------------------------------- SSv2

_FAST_ENCODE = {
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"},
    "libaom-av1": {"usage": "realtime", "cpu-used": "8", "crf": "32"},
}


def make_webm(
    path: str | Path,
    frames: int = 30,
    height: int = 240,
    width: int = 427,
    fps: int = 12,
    texture: bool = False,
    seed: int = 0,
    codec: str = "libvpx-vp9",
) -> Path:
    """Encode a real .webm (VP9 by libvpx-vp9 through PyAV, yuv420p) whose frame i spells i (`index_frame`).

    SSv2 files are VP9, 240 pixels high, ~12 fps. `texture` adds a drifting smooth texture, so that the file
    has a realistic bitrate (~0.25 Mbit/s at 240p) for benchmarks; without it, files are tiny and fast.
    codec "libaom-av1" writes an AV1 webm instead (a real file that decord 0.6 cannot decode but PyAV can).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    textures = _moving_texture(height, width, frames, seed) if texture else [None] * frames
    with av.open(str(path), "w", format="webm") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = _FAST_ENCODE[codec]
        for i in range(frames):
            image = av.VideoFrame.from_ndarray(index_frame(i, height, width, textures[i]), format="rgb24")
            container.mux(stream.encode(image))
        container.mux(stream.encode())
    return path


def make_zero_byte(path: str | Path) -> Path:
    """An empty file (a failed download)."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_non_video(path: str | Path) -> Path:
    """A file with a video's name that holds text (e.g. an HTML error page saved as <id>.webm)."""
    path = Path(path)
    path.write_text("<html><body>403 Forbidden</body></html>\n" * 20)
    return path


def corrupt_bytes(path: str | Path, start_fraction: float = 0.33, length: int = 4000, seed: int = 0) -> Path:
    """Overwrite `length` bytes from `start_fraction` of the file with random bytes (a damaged container)."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    start = int(len(data) * start_fraction)
    end = min(len(data), start + length)
    data[start:end] = np.random.default_rng(seed).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def make_ssv2_labels(path: str | Path, entries: Iterable[dict | str]) -> Path:
    """Write an SSv2 labels JSON: a list of {id, label, template, placeholders}.

    An entry given as a bare id gets the label "Pushing cup from left to right" and its template.
    """
    rows = []
    for entry in entries:
        if isinstance(entry, str):
            entry = {
                "id": entry,
                "label": "Pushing cup from left to right",
                "template": "Pushing [something] from left to right",
                "placeholders": ["cup"],
            }
        rows.append(entry)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
    return path
