"""A contact sheet: a few clips as rows of frames evenly spaced in time, to check orientation and order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

LABEL_HEIGHT = 12  # pixels of the text band above each row
GAP = 2  # pixels between tiles


def sheet_size(rows: int, columns: int, tile: int) -> tuple[int, int]:
    """(width, height) in pixels of a sheet of `rows` clips x `columns` frames of `tile`x`tile` pixels."""
    return columns * (tile + GAP) + GAP, rows * (LABEL_HEIGHT + tile + GAP) + GAP


def frame_indices(num_frames: int, columns: int) -> list[int]:
    """`columns` frame indices evenly spaced from the first frame to the last."""
    return np.linspace(0, num_frames - 1, columns).round().astype(int).tolist()


def contact_sheet(clips: Sequence[np.ndarray], labels: Sequence[str], columns: int = 8) -> Image.Image:
    """One row per clip (uint8 [T, S, S, 3], all the same S): `columns` frames from first to last.

    Each row has a label band above it: the label and the frame indices shown (time runs left to right).
    """
    if not clips:
        raise ValueError("contact_sheet: no clips")
    tile = clips[0].shape[1]
    width, height = sheet_size(len(clips), columns, tile)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, (frames, label) in enumerate(zip(clips, labels, strict=True)):
        top = GAP + row * (LABEL_HEIGHT + tile + GAP)
        indices = frame_indices(len(frames), columns)
        draw.text((GAP, top), f"{label}  t={indices[0]}..{indices[-1]}", fill=(0, 0, 0))
        for col, t in enumerate(indices):
            sheet.paste(Image.fromarray(frames[t]), (GAP + col * (tile + GAP), top + LABEL_HEIGHT))
    return sheet
