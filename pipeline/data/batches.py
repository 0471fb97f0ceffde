"""Mini-batches for every training stage (CAM, boundary, affinity, segmentation nets).

A stage says which images it trains on and how to load each image's targets (a list of
HxW maps aligned with the image: class masks, boundary targets, confident labels, ...);
this module does the rest identically for all of them: per-epoch shuffling from a
seeded generator, the PSA/IRN random scale-crop-flip, normalisation, stacking to
tensors. Deterministic for a given ``rng`` state (the training loop checkpoints it).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from pipeline.data.augment import IMAGENET_MEAN, IMAGENET_STD, random_scale_crop_flip


def normalize_batch(images: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """BxHxWx3 uint8 -> Bx3xHxW float32 tensor normalised with ``mean``/``std`` (0-1 scale)."""
    scaled = images.astype(np.float32) / 255.0
    scaled = (scaled - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(0, 3, 1, 2)))


def training_batches(
    ids: Sequence[str],
    load: Callable[[str], tuple[np.ndarray, list[np.ndarray]]],
    *,
    batch_size: int,
    crop: int,
    scale_range: tuple[float, float],
    rng: np.random.Generator,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    ignore_index: int = 255,
    drop_last: bool = True,
) -> Iterator[dict]:
    """One epoch of batches: ``{'image': Bx3xCxC, 'targets': [BxCxC long tensors], 'ids': [...]}``.

    ``load(id)`` returns (HxWx3 uint8 image, [HxW target maps]). Targets are padded with
    ``ignore_index`` where the crop extends past the rescaled image. ``drop_last`` keeps
    BatchNorm heads away from batches of one.
    """
    order = rng.permutation(len(ids))
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    if stop == 0 and len(order):  # fewer images than one batch: still train on them
        stop = len(order)
    for start in range(0, stop, batch_size):
        chunk = [ids[i] for i in order[start:start + batch_size]]
        images, targets = [], []
        for image_id in chunk:
            image, maps = load(image_id)
            image, maps = random_scale_crop_flip(image, maps, crop, scale_range, rng, ignore_index)
            images.append(image)
            targets.append(maps)
        yield {
            "image": normalize_batch(np.stack(images), mean, std),
            "targets": [torch.from_numpy(np.stack([t[k] for t in targets]).astype(np.int64))
                        for k in range(len(targets[0]))],
            "ids": chunk,
        }


def batches_per_epoch(n_images: int, batch_size: int, drop_last: bool = True) -> int:
    if drop_last and n_images >= batch_size:
        return n_images // batch_size
    return -(-n_images // batch_size)
