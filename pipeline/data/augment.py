"""Training-time augmentation and resizing shared by every method.

``random_scale_crop_flip`` is the PSA/IRN recipe: random rescale (bilinear image, nearest
masks), random crop to ``crop`` x ``crop`` (images smaller than the crop are placed at a
random offset in the canvas, the rest is padding), random horizontal flip. All randomness
comes from the ``rng`` argument, so a seeded generator gives identical results.

Padding: masks get ``ignore_index`` (no loss there); the image gets the ImageNet mean
colour, which :func:`normalize` maps to ~0, the value zero-padding would give a normalized
tensor.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Padding colour of images: the mean in uint8, so normalized padding is (close to) zero.
IMAGE_PAD_VALUE = np.round(IMAGENET_MEAN * 255).astype(np.uint8)


def normalize(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB -> 3xHxW float32, ImageNet mean/std normalized."""
    scaled = image.astype(np.float32) / 255.0
    return np.ascontiguousarray(((scaled - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to ``size`` = (height, width).

    uint8 HxW or HxWx3 go through PIL (antialiased when shrinking, as in PSA/IRN);
    float HxW or HxWxC are resized channel by channel in PIL's float mode.
    """
    height, width = size
    if image.shape[:2] == (height, width):
        return image.copy()
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    planes = image[..., None] if image.ndim == 2 else image
    out = np.stack([np.asarray(Image.fromarray(planes[..., c].astype(np.float32), mode="F")
                               .resize((width, height), Image.BILINEAR)) for c in range(planes.shape[2])], axis=-1)
    return (out[..., 0] if image.ndim == 2 else out).astype(image.dtype, copy=False)


def nearest_indices(source: int, target: int) -> np.ndarray:
    """Source index for each of ``target`` output pixels (pixel-centre nearest neighbour)."""
    return np.minimum(((np.arange(target) + 0.5) * source / target).astype(np.int64), source - 1)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map (any dtype, HxW or HxWxC) to (height, width)."""
    rows = nearest_indices(mask.shape[0], size[0])
    cols = nearest_indices(mask.shape[1], size[1])
    return mask[rows[:, None], cols[None, :]]


def _place(array: np.ndarray, crop: int, src_y: int, src_x: int, dst_y: int, dst_x: int,
           fill) -> np.ndarray:
    """``crop`` x ``crop`` canvas filled with ``fill`` holding array[src_y:, src_x:] at (dst_y, dst_x)."""
    canvas = np.empty((crop, crop) + array.shape[2:], dtype=array.dtype)
    canvas[...] = fill
    h = min(crop - dst_y, array.shape[0] - src_y)
    w = min(crop - dst_x, array.shape[1] - src_x)
    canvas[dst_y:dst_y + h, dst_x:dst_x + w] = array[src_y:src_y + h, src_x:src_x + w]
    return canvas


def _crop_offsets(length: int, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    """(source offset, destination offset) along one axis: crop inside, or place inside the crop."""
    if length >= crop:
        return int(rng.integers(0, length - crop + 1)), 0
    return 0, int(rng.integers(0, crop - length + 1))


def random_scale_crop_flip(image: np.ndarray, masks: list[np.ndarray], crop: int,
                           scale_range: tuple[float, float], rng: np.random.Generator,
                           ignore_index: int = 255) -> tuple[np.ndarray, list[np.ndarray]]:
    """Random rescale in ``scale_range``, random ``crop`` x ``crop`` crop, random h-flip.

    ``image`` is HxWx3 uint8; each mask is HxW (any dtype) aligned with it and gets the
    same geometry (nearest-neighbour). Returns (crop x crop x 3 image, [crop x crop masks]).
    """
    height, width = image.shape[:2]
    for mask in masks:
        if mask.shape[:2] != (height, width):
            raise ValueError(f"mask shape {mask.shape[:2]} differs from image shape {(height, width)}")
    low, high = scale_range
    scale = float(rng.uniform(low, high)) if high > low else float(low)
    new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    image = resize_image(image, new_size)
    masks = [resize_mask(mask, new_size) for mask in masks]

    src_y, dst_y = _crop_offsets(new_size[0], crop, rng)
    src_x, dst_x = _crop_offsets(new_size[1], crop, rng)
    image = _place(image, crop, src_y, src_x, dst_y, dst_x, IMAGE_PAD_VALUE)
    masks = [_place(mask, crop, src_y, src_x, dst_y, dst_x, ignore_index) for mask in masks]

    if rng.random() < 0.5:
        image = image[:, ::-1]
        masks = [mask[:, ::-1] for mask in masks]
    return np.ascontiguousarray(image), [np.ascontiguousarray(mask) for mask in masks]
