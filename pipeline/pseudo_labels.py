"""Pseudo labels from class scores: upsampling, restriction to image labels, argmax.

Two score sources reach :func:`pseudo_label_map` (stage ``pseudo_labels``):

* *revised scores* of stage ``propagate`` (random walk output): ``(K_bg + K, h, w)`` at
  the affinity grid, background channel first when the dataset has one;
* *raw CAMs* of stage ``infer_cam``: foreground channels only. The background channel is
  then the constant best threshold of stage ``eval_cam`` (PSA/SEAM/RETAB CAM
  evaluation): a pixel is background unless some labelled class scores above it.

Both are score maps at a stride (``stride`` pixels per cell, grid ``ceil(H / stride)``
as PSA pads images to a multiple of the stride). They are brought to image size the PSA
way: bilinear upsampling (``align_corners=False``) to ``grid * stride`` pixels, then the
padding is cut off. The label of a pixel is the argmax over the channels of the image's
labelled classes plus background; channels of other classes never win (PSA keeps only
the image's classes). A pixel with no allowed channel at all (an image without labels in
a dataset without a background class) is ``void_index``: "no label" for the trainers.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def upsample_scores(scores: np.ndarray, size: tuple[int, int], stride: int) -> np.ndarray:
    """``C x h x w`` scores at ``stride`` -> ``C x H x W`` float32 at image size ``size``.

    Bilinear (``align_corners=False``) to ``(h * stride, w * stride)``, the padded image
    the grid covers, then cropped to ``size`` (:func:`pipeline.cam.upsample_cams`, the
    geometry of every score file here: ``h = ceil(H / stride)``).
    """
    from pipeline.cam import upsample_cams

    scores = np.asarray(scores)
    if scores.ndim != 3:
        raise ValueError(f"scores must be C x h x w, got shape {scores.shape}")
    if stride < 1 or scores.shape[1] * stride < size[0] or scores.shape[2] * stride < size[1]:
        raise ValueError(f"a {scores.shape[1]}x{scores.shape[2]} grid at stride {stride} does not cover "
                         f"a {size[0]}x{size[1]} image")
    if scores.shape[0] == 0:
        return np.zeros((0, int(size[0]), int(size[1])), np.float32)
    return upsample_cams(scores, size, stride)


def allowed_channels(keys: Sequence[int], image_labels: Iterable[int], background_index: int | None) -> np.ndarray:
    """Boolean mask over channels: the channel's class is labelled in the image or is background."""
    allowed = set(int(c) for c in image_labels)
    if background_index is not None:
        allowed.add(int(background_index))
    return np.array([int(k) in allowed for k in keys], dtype=bool)


def restricted_argmax(scores: np.ndarray, keys: Sequence[int], allowed: np.ndarray,
                      void_index: int = 255) -> np.ndarray:
    """``H x W`` uint8 class indices: argmax over the ``allowed`` channels, mapped to ``keys``.

    Ties go to the earlier channel (background first in our score files). With no
    allowed channel every pixel is ``void_index``.
    """
    scores = np.asarray(scores)
    keys = np.asarray(keys, dtype=np.int64)
    if scores.ndim != 3 or scores.shape[0] != keys.shape[0] or allowed.shape != keys.shape:
        raise ValueError(f"scores {scores.shape}, keys {keys.shape} and allowed {allowed.shape} do not match")
    if not allowed.any():
        return np.full(scores.shape[1:], void_index, dtype=np.uint8)
    chosen = np.flatnonzero(allowed)
    winner = np.argmax(scores[chosen], axis=0)
    return keys[chosen][winner].astype(np.uint8)


def with_threshold_background(fg_scores: np.ndarray, fg_keys: Sequence[int], threshold: float,
                              background_index: int) -> tuple[np.ndarray, list[int]]:
    """Prepend a constant background channel ``threshold`` to foreground scores.

    argmax then gives background wherever no foreground score exceeds ``threshold`` (the
    ``cam`` baseline's rule); returns ``(scores, keys)`` with the background key first.
    """
    fg_scores = np.asarray(fg_scores, dtype=np.float32)
    background = np.full((1,) + fg_scores.shape[1:], threshold, dtype=np.float32)
    return np.concatenate([background, fg_scores], axis=0), [int(background_index)] + [int(k) for k in fg_keys]


def pseudo_label_map(scores: np.ndarray, keys: Sequence[int], size: tuple[int, int], stride: int,
                     image_labels: Iterable[int], background_index: int | None,
                     bg_threshold: float | None = None, void_index: int = 255) -> np.ndarray:
    """``H x W`` uint8 pseudo label of one image from its score map.

    ``scores``/``keys``: ``C x h x w`` channels and the class index of each. With
    ``bg_threshold`` (raw CAMs and a background class) a constant background channel is
    added first; otherwise the scores are used as they are (revised scores carry their
    own background channel). Bilinear upsampling to ``size`` (:func:`upsample_scores`),
    then argmax over the image's labels plus background (:func:`restricted_argmax`).
    """
    keys = [int(k) for k in keys]
    full = upsample_scores(scores, size, stride)
    if bg_threshold is not None:
        if background_index is None:
            raise ValueError("a background threshold needs a dataset with a background class")
        if background_index in keys:
            raise ValueError("raw CAM scores must not hold a background channel when a threshold is given")
        full, keys = with_threshold_background(full, keys, bg_threshold, background_index)
    return restricted_argmax(full, keys, allowed_channels(keys, image_labels, background_index), void_index)
