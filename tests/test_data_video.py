"""Shared video helpers: resizing policies (decoding is exercised through the SSv2 source's tests)."""

import numpy as np
import pytest
from media import index_frame, read_indices

from prelar.data.video import resize_frames


def _wide_clip(frames=3, height=60, width=100):
    """Index-encoded frames whose outer 20 columns on each side are pure red (outside the central square)."""
    clip = np.stack([index_frame(i, height, width) for i in range(frames)])
    clip[:, :, :20] = clip[:, :, -20:] = (255, 0, 0)
    return clip


def test_squash_keeps_the_whole_frame():
    out = resize_frames(_wide_clip(), 32, "squash")
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    assert (out[:, :, 0] == (255, 0, 0)).all()  # the red borders squeezed in
    assert read_indices(out) == [0, 1, 2]


def test_center_crop_keeps_the_central_square():
    out = resize_frames(_wide_clip(), 32, "center_crop")
    assert out.shape == (3, 32, 32, 3)
    assert not (out[..., 0] == 255).all(axis=-1).any()  # no red column left
    assert read_indices(out) == [0, 1, 2]


def test_area_resampling_is_antialiased():
    stripes = np.zeros((1, 64, 64, 3), np.uint8)
    stripes[:, :, ::2] = 255  # one-pixel stripes: a point-sampling resize would keep only one phase
    assert np.abs(resize_frames(stripes, 16, "squash").astype(int) - 128).max() <= 1


def test_already_square_at_size_is_returned_unchanged():
    clip = _wide_clip(height=64, width=64)
    assert resize_frames(clip, 64, "squash") is clip


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"expected uint8 frames \[T, H, W, 3\]"):
        resize_frames(np.zeros((2, 8, 8), np.uint8), 4, "squash")
    with pytest.raises(ValueError, match="resize policy"):
        resize_frames(np.zeros((1, 8, 8, 3), np.uint8), 4, "stretch")
