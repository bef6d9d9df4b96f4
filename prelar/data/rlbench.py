"""RLBench renders as a video source: one clip per (task, variation, episode, camera).

Layout written by RLBench's dataset generator:

    <src>/<task>/variation<N>/episodes/episode<M>/<camera>_rgb/<i>.png    (i = 0, 1, ..., 10: no zero padding)

PerAct-style `<task>/all_variations/episodes/...` trees are read too (variation None: the variation number is
only in a pickle). Pickles (`low_dim_obs.pkl`, `variation_descriptions.pkl`, ...) are never opened:
unpickling runs arbitrary code. Frames are sorted numerically; a gap in the numbering, an unreadable PNG,
or frames of different sizes reject the clip with a reason naming the frame. Files in a camera folder that
are not `<i>.png` (e.g. `.DS_Store`) are ignored.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from prelar.config import RLBenchSource
from prelar.data.clip import Clip, ClipRef, ClipRejected

LAYOUT = "<task>/variation<N>/episodes/episode<M>/<camera>_rgb/<i>.png"
_VARIATION = re.compile(r"^variation(\d+)$")
_EPISODE = re.compile(r"^episode(\d+)$")
_FRAME = re.compile(r"^(\d+)\.png$")


def _subdirs(folder: Path) -> list[str]:
    """Names of the visible sub-folders of `folder`."""
    return [e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]


def _numbered(names: list[str], pattern: re.Pattern) -> list[tuple[int, str]]:
    """(number, name) of the names matching `pattern`, in numeric order."""
    return sorted((int(m[1]), name) for name in names if (m := pattern.match(name)))


def list_clips(cfg: RLBenchSource) -> tuple[list[ClipRef], list[tuple[str, str]]]:
    """Find every (task, variation, episode, camera) clip under `cfg.src`, without reading images.

    Returns (refs, rejects): refs sorted by task, variation, episode, then camera in `cfg.cameras` order;
    rejects are (path, reason) for folders that do not follow the layout or lack a selected camera.
    """
    root = Path(cfg.src)
    if not root.is_dir():
        raise FileNotFoundError(
            f"RLBench root {root} not found: put the RLBench task folders there "
            f"(…/{LAYOUT.replace('<i>', '0')}) or pass --src"
        )
    refs: list[ClipRef] = []
    rejects: list[tuple[str, str]] = []
    for task in sorted(_subdirs(root)):
        task_dir = root / task
        names = _subdirs(task_dir)
        variations: list[tuple[int | None, str]] = list(_numbered(names, _VARIATION))
        if "all_variations" in names:
            variations.append((None, "all_variations"))
        if not variations:
            reason = f"no variation<N>/ folders: the root must hold task folders laid out as {LAYOUT}"
            rejects.append((str(task_dir), reason))
            continue
        for variation, var_name in variations:
            episodes_dir = task_dir / var_name / "episodes"
            episodes = _numbered(_subdirs(episodes_dir), _EPISODE) if episodes_dir.is_dir() else []
            if not episodes:
                rejects.append((str(task_dir / var_name), "no episodes/episode<M>/ folders"))
                continue
            for episode, ep_name in episodes:
                for camera in cfg.cameras:
                    cam_dir = episodes_dir / ep_name / f"{camera}_rgb"
                    if not cam_dir.is_dir():
                        reason = (
                            f"no {camera}_rgb folder (camera not rendered? pick cameras with "
                            "--set data.rlbench.cameras=[front,wrist])"
                        )
                        rejects.append((str(cam_dir), reason))
                        continue
                    clip_id = f"{task}/{var_name}/{ep_name}/{camera}"
                    meta = {
                        "source": "rlbench",
                        "id": clip_id,
                        "task": task,
                        "variation": variation,
                        "episode": episode,
                        "camera": camera,
                    }
                    refs.append(ClipRef(source="rlbench", id=clip_id, path=str(cam_dir), meta=meta))
    return refs, rejects


def _frame_files(cam_dir: Path) -> list[str]:
    """The frame file names of a camera folder in numeric order; reject empty folders and gaps."""
    try:
        names = os.listdir(cam_dir)
    except OSError as err:
        raise ClipRejected(str(cam_dir), f"cannot list the camera folder ({err.strerror})") from None
    by_index: dict[int, str] = {}
    for name in names:
        if m := _FRAME.match(name):
            index = int(m[1])
            if index in by_index:
                raise ClipRejected(str(cam_dir), f"two files for frame {index}: {by_index[index]} and {name}")
            by_index[index] = name
    if not by_index:
        others = sorted(n for n in names if not n.startswith("."))
        found = f"; found only {others[:3]}{'…' if len(others) > 3 else ''}" if others else ""
        raise ClipRejected(str(cam_dir), f"empty camera folder: no <i>.png frames{found}")
    last = max(by_index)
    missing = [i for i in range(last + 1) if i not in by_index]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ClipRejected(
            str(cam_dir), f"missing frame {missing[0]}.png{more}: frames must run 0.png..{last}.png"
        )
    return [by_index[i] for i in range(last + 1)]


def _read_png(path: Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB pixels of a PNG file; ClipRejected naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise ClipRejected(str(path.parent), f"{path.name} is not a PNG (it is {image.format})")
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except ClipRejected:
        raise
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, zlib errors... on corrupt files
        raise ClipRejected(
            str(path.parent), f"corrupt or unreadable PNG {path.name} ({type(err).__name__}: {err})"
        ) from None


def load_clip(ref: ClipRef, cfg: RLBenchSource) -> Clip:
    """Read one camera folder into a Clip: uint8 [T, H, W, 3] RGB frames at native resolution, in order.

    `cfg` is part of the source protocol (every source's loader takes its section); RLBench needs none of it.
    """
    cam_dir = Path(ref.path)
    names = _frame_files(cam_dir)
    first = _read_png(cam_dir / names[0])
    frames = np.empty((len(names), *first.shape), np.uint8)  # [T, H, W, 3]
    frames[0] = first
    for t, name in enumerate(names[1:], start=1):
        image = _read_png(cam_dir / name)
        if image.shape != first.shape:
            (h, w), (h0, w0) = image.shape[:2], first.shape[:2]
            raise ClipRejected(str(cam_dir), f"frame {name} is {w}x{h} but {names[0]} is {w0}x{h0}")
        frames[t] = image
    return Clip(frames=frames, meta=dict(ref.meta))
