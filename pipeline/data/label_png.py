"""Class-index PNGs: the on-disk format of predictions and pseudo labels.

One channel of uint8 class indices, like VOC's ``SegmentationClass`` masks. We write
palette ('P') PNGs with the VOC colour map so the files open as colour images in any
viewer while the pixel values stay class indices; readers accept 'L' and 'P'.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import PipelineError
from pipeline.io import atomic_path

_DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)


def voc_palette() -> list[int]:
    """The 256-colour PASCAL VOC colour map (bit-interleaved class index), flat [r, g, b, ...]."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.extend((r, g, b))
    palette[255 * 3:] = [224, 224, 192]  # VOC's own colour for 255 (ignore): its cream outline band
    return palette


_PALETTE = voc_palette()


def label_image(mask: np.ndarray) -> Image.Image:
    """PIL palette image of an HxW class-index array (values must fit in uint8)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"label map must be HxW, got shape {mask.shape}")
    if mask.size and (int(mask.min()) < 0 or int(mask.max()) > 255):
        raise ValueError("label values must lie in 0..255 to be stored as a PNG")
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))  # mode 'L'
    image.putpalette(_PALETTE)  # turns 'L' into 'P' keeping the pixel values
    return image


def write_label_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a class-index PNG atomically (temporary name, then rename)."""
    image = label_image(mask)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """HxW uint8 class indices from an 'L' or 'P' PNG; errors name the file."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise PipelineError(path, f"label PNG has mode '{im.mode}'; expected one channel of "
                                    f"class indices (mode 'L' or 'P'), not colours")
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise PipelineError(path, "file not found") from None
    except _DECODE_ERRORS as err:
        raise PipelineError(path, f"unreadable or corrupt PNG ({err})") from None


def read_sized_png(path: str | os.PathLike, height: int, width: int, what: str) -> np.ndarray:
    """A one-channel PNG (label map, boundary or object map) that must have its image's size."""
    array = read_label_png(path)
    if array.shape != (height, width):
        raise PipelineError(path, f"{what} is {array.shape[1]}x{array.shape[0]} but its image is {width}x{height}")
    return array


def read_class_png(path: str | os.PathLike, height: int, width: int, num_classes: int, ignore_index: int,
                   what: str) -> np.ndarray:
    """A class-index PNG (pseudo or confident labels) of its image's size whose values are class
    ids 0..num_classes-1 or ``ignore_index``: the one such check of the stages."""
    label = read_sized_png(path, height, width, what)
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    bad = [int(v) for v in present if v >= num_classes and v != ignore_index]
    if bad:
        raise PipelineError(path, f"{what} holds values {bad}: not class ids 0..{num_classes - 1} "
                            f"or the ignore index {ignore_index}")
    return label
