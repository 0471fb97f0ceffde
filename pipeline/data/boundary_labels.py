"""Boundary targets for the boundary network, from segmentation masks of base samples.

Two sources (``datasets.<name>.boundary_source``):

- ``outline``: PASCAL VOC draws a thin void (255) band along every object outline. The
  thin parts of the void region are that band; void that is thicker than
  ``max_band_width`` (ambiguous regions, image borders left unlabelled) is not a boundary.
  Direct changes between two valid labels (masks without a band, e.g. SBD's masks mixed
  into VOC train_aug) are added as in ``transitions``, so mixed datasets get all edges.
- ``transitions``: pixels within ``width`` of a change between two valid labels
  (CamVid, SBD: no outline band; their void is unlabelled stuff, never a boundary).

``boundary_target`` gives the training target: 1 boundary, 0 not boundary, 255 ignore
(void that is not a boundary: its true label is unknown). Width is measured in pixels:
a change between pixels a and b marks a and b at ``width`` = 1, and every pixel within
Chebyshev distance ``width - 1`` of them at larger widths (a band 2 * width pixels wide).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

BOUNDARY_SOURCES = ("outline", "transitions")
DEFAULT_MAX_BAND_WIDTH = 8  # VOC's outline band is ~5 px; thicker void is not an outline
NOT_BOUNDARY, BOUNDARY, IGNORE = 0, 1, 255


def _square_op(op, mask: np.ndarray, side: int) -> np.ndarray:
    """Binary erosion/dilation by a side x side square, as two 1-D passes (same result, faster)."""
    out = op(mask, structure=np.ones((1, side), dtype=bool))
    return op(out, structure=np.ones((side, 1), dtype=bool))


def label_change_pixels(mask: np.ndarray, ignore_index: int) -> np.ndarray:
    """Pixels with a 4-neighbour of a different valid label (both sides of every change)."""
    valid = mask != ignore_index
    changes = np.zeros(mask.shape, dtype=bool)
    horizontal = (mask[:, 1:] != mask[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    vertical = (mask[1:, :] != mask[:-1, :]) & valid[1:, :] & valid[:-1, :]
    changes[:, 1:] |= horizontal
    changes[:, :-1] |= horizontal
    changes[1:, :] |= vertical
    changes[:-1, :] |= vertical
    return changes


def boundary_from_transitions(mask: np.ndarray, width: int, ignore_index: int) -> np.ndarray:
    """Bool map: pixels within ``width`` of a change between two valid labels."""
    if width < 1:
        raise ValueError(f"boundary width must be >= 1, got {width}")
    changes = label_change_pixels(mask, ignore_index)
    if width == 1 or not changes.any():
        return changes
    return _square_op(ndimage.binary_dilation, changes, 2 * (width - 1) + 1)


def boundary_from_outline(mask: np.ndarray, ignore_index: int,
                          max_band_width: int = DEFAULT_MAX_BAND_WIDTH) -> np.ndarray:
    """Bool map: the thin void band (VOC's outline), i.e. void no ``max_band_width + 1``
    square fits in (a morphological opening keeps exactly the thick void)."""
    void = mask == ignore_index
    if not void.any():
        return void
    side = max_band_width + 1
    thick = _square_op(ndimage.binary_dilation, _square_op(ndimage.binary_erosion, void, side), side)
    return void & ~thick


def boundary_target(mask: np.ndarray, source: str, width: int, ignore_index: int) -> np.ndarray:
    """uint8 map: 1 boundary, 0 non-boundary, 255 void that is not a boundary."""
    if source not in BOUNDARY_SOURCES:
        raise ValueError(f"boundary source must be one of {BOUNDARY_SOURCES}, got {source!r}")
    boundary = boundary_from_transitions(mask, width, ignore_index)
    if source == "outline":
        boundary |= boundary_from_outline(mask, ignore_index)
    target = np.full(mask.shape, NOT_BOUNDARY, dtype=np.uint8)
    target[mask == ignore_index] = IGNORE
    target[boundary] = BOUNDARY
    return target
