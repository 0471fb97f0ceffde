"""Augmentation, resizing, normalization and boundary targets on hand-computed tiny arrays."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.augment import (IMAGE_PAD_VALUE, IMAGENET_MEAN, IMAGENET_STD, normalize,
                                   random_scale_crop_flip, resize_image, resize_mask)
from pipeline.data.boundary_labels import (boundary_from_outline, boundary_from_transitions, boundary_target,
                                           label_change_pixels)
from conftest import CAMVID_ROOT, needs_camvid


# --- normalize / resize ------------------------------------------------------------------

def test_normalize_values_and_layout():
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 0] = 255
    out = normalize(image)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], (1 - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-6)
    np.testing.assert_allclose(out[:, 1, 2], -IMAGENET_MEAN / IMAGENET_STD, rtol=1e-6)
    # padding colour normalizes to ~0 (within one uint8 step)
    pad = normalize(np.broadcast_to(IMAGE_PAD_VALUE, (1, 1, 3)).copy())
    assert np.abs(pad).max() < 1 / 255 / IMAGENET_STD.min()


def test_resize_mask_nearest():
    mask = np.array([[1, 2], [3, 4]], np.uint8)
    assert resize_mask(mask, (4, 4)).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    big = np.arange(16).reshape(4, 4)
    # pixel centres 0.5, 1.5 of a 2-wide output map to source 1, 3
    assert resize_mask(big, (2, 2)).tolist() == [[5, 7], [13, 15]]
    assert resize_mask(big.astype(np.float32), (3, 5)).dtype == np.float32


def test_resize_image_bilinear():
    flat = np.full((4, 6, 3), 77, np.uint8)
    assert np.array_equal(resize_image(flat, (8, 3)), np.full((8, 3, 3), 77, np.uint8))
    ramp = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (4, 1))
    out = resize_image(ramp, (4, 16))
    assert out.shape == (4, 16) and out.dtype == np.float32
    assert np.all(np.diff(out[0]) >= -1e-6)  # bilinear keeps a ramp monotone
    assert 0.0 <= out.min() and out.max() <= 1.0


# --- random_scale_crop_flip --------------------------------------------------------------

def labelled_image(height=12, width=16):
    """Image whose red channel encodes a unique mask value per pixel (for alignment checks)."""
    mask = (np.arange(height * width).reshape(height, width) % 250).astype(np.uint8)
    image = np.stack([mask, np.full_like(mask, 9), np.full_like(mask, 200)], axis=-1)
    return image, mask


def test_deterministic_given_rng():
    image, mask = labelled_image()
    a = random_scale_crop_flip(image, [mask], 8, (0.7, 1.3), np.random.default_rng(5))
    b = random_scale_crop_flip(image, [mask], 8, (0.7, 1.3), np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1][0], b[1][0])
    outs = {random_scale_crop_flip(image, [mask], 8, (0.7, 1.3), np.random.default_rng(s))[0].tobytes()
            for s in range(6)}
    assert len(outs) > 1


def test_scale_one_crop_is_a_window_of_the_input():
    image, mask = labelled_image()
    for seed in range(8):
        out, (out_mask,) = random_scale_crop_flip(image, [mask], 8, (1.0, 1.0), np.random.default_rng(seed))
        assert out.shape == (8, 8, 3) and out_mask.shape == (8, 8)
        assert np.array_equal(out[..., 0], out_mask)  # image and mask stay aligned
        windows = [(mask[y:y + 8, x:x + 8], flip) for y in range(5) for x in range(9) for flip in (False, True)]
        assert any(np.array_equal(out_mask, w[:, ::-1] if flip else w) for w, flip in windows)


def test_small_image_is_padded_with_ignore_and_mean():
    image, mask = labelled_image(5, 5)
    mask[:] = 3
    weights = np.ones((5, 5), np.float32)
    out, (out_mask, out_weights) = random_scale_crop_flip(image, [mask, weights], 8, (1.0, 1.0),
                                                          np.random.default_rng(1), ignore_index=255)
    pad = out_mask == 255
    assert pad.sum() == 64 - 25 and (out_mask[~pad] == 3).all()
    assert (out[pad] == IMAGE_PAD_VALUE).all()
    assert out_weights.dtype == np.float32 and (out_weights[pad] == 255).all() and (out_weights[~pad] == 1).all()


def test_scale_two_upsamples_masks_by_nearest():
    mask = np.array([[1, 2], [3, 4]], np.uint8)
    image = np.zeros((2, 2, 3), np.uint8)
    _, (out_mask,) = random_scale_crop_flip(image, [mask], 4, (2.0, 2.0), np.random.default_rng(0))
    expected = resize_mask(mask, (4, 4))
    assert np.array_equal(out_mask, expected) or np.array_equal(out_mask, expected[:, ::-1])


def test_mask_shape_mismatch_is_an_error():
    image, _ = labelled_image()
    with pytest.raises(ValueError):
        random_scale_crop_flip(image, [np.zeros((3, 3), np.uint8)], 8, (1, 1), np.random.default_rng(0))


# --- boundary labels ---------------------------------------------------------------------

def test_transitions_widths_one_row():
    row = np.array([[1, 1, 1, 2, 2, 2]], np.uint8)
    assert boundary_from_transitions(row, 1, 255).tolist() == [[False, False, True, True, False, False]]
    assert boundary_from_transitions(row, 2, 255).tolist() == [[False, True, True, True, True, False]]
    assert boundary_from_transitions(row, 3, 255).all()


def test_transitions_two_d():
    mask = np.zeros((4, 4), np.uint8)
    mask[:, 2:] = 1
    mask[3, :] = 5
    expected = np.array([[0, 1, 1, 0],
                         [0, 1, 1, 0],
                         [1, 1, 1, 1],
                         [1, 1, 1, 1]], bool)
    assert np.array_equal(label_change_pixels(mask, 255), expected)


def test_void_between_labels_is_no_transition():
    row = np.array([[1, 1, 255, 2, 2]], np.uint8)
    assert not boundary_from_transitions(row, 1, 255).any()
    assert boundary_target(row, "transitions", 1, 255).tolist() == [[0, 0, 255, 0, 0]]
    assert boundary_target(row, "outline", 1, 255).tolist() == [[0, 0, 1, 0, 0]]


def test_outline_ring_is_the_boundary():
    """VOC style: object 1 inside a 1-px void ring on background 0."""
    mask = np.zeros((7, 7), np.uint8)
    mask[1:6, 1:6] = 255
    mask[2:5, 2:5] = 1
    ring = mask == 255
    assert np.array_equal(boundary_from_outline(mask, 255), ring)
    target = boundary_target(mask, "outline", 2, 255)
    assert np.array_equal(target, ring.astype(np.uint8))  # 16 ring pixels are 1, the rest 0
    assert boundary_target(mask, "transitions", 2, 255).tolist() == np.where(ring, 255, 0).tolist()


def test_thick_void_is_ignored_not_boundary():
    mask = np.zeros((14, 14), np.uint8)
    mask[2:12, 2:12] = 255          # 10x10 void block: thicker than the 8-px band limit
    mask[0, :] = 255                # 1-px void line: a band
    band = boundary_from_outline(mask, 255)
    assert band[0].all() and not band[2:12, 2:12].any()
    target = boundary_target(mask, "outline", 1, 255)
    assert (target[2:12, 2:12] == 255).all() and (target[0] == 1).all()
    assert boundary_from_outline(mask, 255, max_band_width=12)[2:12, 2:12].all()


def test_boundary_near_void_is_boundary():
    row = np.array([[1, 2, 255, 255]], np.uint8)
    assert boundary_target(row, "transitions", 2, 255).tolist() == [[1, 1, 1, 255]]


def test_boundary_argument_errors():
    with pytest.raises(ValueError):
        boundary_target(np.zeros((2, 2), np.uint8), "edges", 2, 255)
    with pytest.raises(ValueError):
        boundary_from_transitions(np.zeros((2, 2), np.uint8), 0, 255)


@needs_camvid
def test_boundary_target_on_real_camvid():
    from PIL import Image

    first = (CAMVID_ROOT / "ImageSets/Segmentation/train.txt").read_text().split()[0]
    mask = np.asarray(Image.open(CAMVID_ROOT / "SegmentationClass" / f"{first}.png"))
    target = boundary_target(mask, "transitions", 2, 255)
    assert set(np.unique(target).tolist()) == {0, 1, 255}
    fraction = (target == 1).mean()
    assert 0.01 < fraction < 0.3
    # every ignored pixel is void, and non-void pixels are never ignored
    assert (mask[target == 255] == 255).all() and (target[mask != 255] != 255).all()
