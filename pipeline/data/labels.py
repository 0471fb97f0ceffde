"""Image-level labels: the classes present in each mask, derived once and cached as JSON.

File format (written by stage ``image_labels``)::

    {"dataset": "voc", "classes": [names], "background": "background" | null,
     "min_pixels": 1,
     "splits": {"train": [ids], "val": [ids]},
     "labels": {image_id: [class indices present, background excluded]},
     "pixel_counts": {image_id: [pixels of class 0, 1, ...]}}

``labels`` is the contract every consumer reads (:func:`load_image_labels`).
``pixel_counts`` lets later stages apply another presence threshold without reading the
masks again (fold splits with ``novel_min_pixels``, see :mod:`pipeline.data.folds`).
"""
from __future__ import annotations

import os
from typing import Iterable

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import read_json, write_json
from pipeline.runtime import progress


def class_pixel_counts(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels of each class id 0..num_classes-1 in ``mask`` (void and other ids not counted)."""
    return np.bincount(mask.ravel(), minlength=256)[:num_classes].astype(np.int64)


def present_classes(pixel_counts: Iterable[int], min_pixels: int, background_index: int | None) -> list[int]:
    """Sorted class ids with at least ``min_pixels`` pixels, background excluded."""
    return [c for c, n in enumerate(pixel_counts) if n >= min_pixels and c != background_index]


def derive_pixel_counts(dataset) -> dict[str, list[int]]:
    """Per-image class pixel counts of every image of a :class:`VOCDataset` (reads each mask once)."""
    counts = {}
    for image_id in progress(dataset.ids, desc=f"masks {dataset.name}/{dataset.split}"):
        counts[image_id] = class_pixel_counts(dataset.load_mask(image_id), dataset.num_classes).tolist()
    return counts


def labels_from_counts(pixel_counts: dict[str, list[int]], min_pixels: int,
                       background_index: int | None) -> dict[str, list[int]]:
    """Image-level labels (classes with >= ``min_pixels`` pixels, background excluded)."""
    return {image_id: present_classes(counts, min_pixels, background_index)
            for image_id, counts in pixel_counts.items()}


def derive_image_labels(dataset, min_pixels: int) -> dict[str, list[int]]:
    """``{image_id: [class ids present]}`` for every image of a :class:`VOCDataset`.

    A class is present when its mask has at least ``min_pixels`` pixels of it; background
    is never an image-level label (every PASCAL image contains some).
    """
    if min_pixels < 1:
        raise PipelineError("image_labels.min_pixels", f"{min_pixels} must be >= 1")
    return labels_from_counts(derive_pixel_counts(dataset), min_pixels, dataset.background_index)


def write_image_labels(path: str | os.PathLike, *, dataset_name: str, class_names: list[str],
                       background: str | None, min_pixels: int, splits: dict[str, list[str]],
                       labels: dict[str, list[int]], pixel_counts: dict[str, list[int]] | None = None) -> None:
    """Write the image-level labels file atomically (format in the module docstring)."""
    document = {
        "dataset": dataset_name,
        "classes": list(class_names),
        "background": background,
        "min_pixels": int(min_pixels),
        "splits": {name: list(ids) for name, ids in splits.items()},
        "labels": {image_id: [int(c) for c in classes] for image_id, classes in labels.items()},
    }
    if pixel_counts is not None:
        document["pixel_counts"] = {image_id: [int(n) for n in counts] for image_id, counts in pixel_counts.items()}
    write_json(path, document)


def read_image_labels_file(path: str | os.PathLike) -> dict:
    """The whole labels document, structure-checked (errors name the file)."""
    document = read_json(path)
    if not isinstance(document, dict):
        raise PipelineError(path, "image-labels file must be a JSON object")
    for key, kind in (("dataset", str), ("classes", list), ("labels", dict)):
        if not isinstance(document.get(key), kind):
            raise PipelineError(path, f"image-labels file has no valid '{key}' ({kind.__name__})")
    num_classes = len(document["classes"])
    for image_id, classes in document["labels"].items():
        if not isinstance(classes, list) or not all(isinstance(c, int) and 0 <= c < num_classes for c in classes):
            raise PipelineError(path, f"labels of '{image_id}' must be a list of class ids 0..{num_classes - 1}")
    splits = document.get("splits", {})
    if not isinstance(splits, dict):
        raise PipelineError(path, "'splits' must map split names to id lists")
    for split, ids in splits.items():
        missing = [i for i in ids if i not in document["labels"]]
        if missing:
            raise PipelineError(path, f"split '{split}' lists ids with no labels (first: '{missing[0]}')")
    counts = document.get("pixel_counts")
    if counts is not None:
        if not isinstance(counts, dict):
            raise PipelineError(path, "'pixel_counts' must map image ids to per-class counts")
        for image_id, row in counts.items():
            if not isinstance(row, list) or len(row) != num_classes:
                raise PipelineError(path, f"pixel_counts of '{image_id}' must list {num_classes} counts")
    return document


def load_image_labels(path: str | os.PathLike) -> dict[str, list[int]]:
    """``{image_id: [class ids present, background excluded]}`` from a labels file."""
    return read_image_labels_file(path)["labels"]


def load_pixel_counts(path: str | os.PathLike) -> dict[str, list[int]]:
    """``{image_id: [pixels per class]}`` from a labels file (error if it has none)."""
    counts = read_image_labels_file(path).get("pixel_counts")
    if counts is None:
        raise PipelineError(path, "image-labels file has no 'pixel_counts' (rerun stage image_labels)")
    return counts


def check_labels_document(document: dict, data_cfg: dict, path: str) -> None:
    """The labels file was made for this dataset's class list (else it is stale)."""
    if document["classes"] != list(data_cfg["classes"]):
        raise PipelineError(path, f"its class list differs from datasets.{data_cfg['name']}.classes "
                            "(made for another dataset? rerun stage image_labels)")


def check_labels_cover(labels: dict, ids, path: str | os.PathLike, split: str = "train") -> None:
    """The image-level labels cover every id of the split (else the file is stale or belongs to
    another dataset): the one such check of the stages, one line naming the labels file."""
    missing = [i for i in ids if i not in labels]
    if missing:
        raise PipelineError(path, f"no image-level labels for {len(missing)} {split} image(s) (first: "
                            f"'{missing[0]}'; made for another dataset? rerun stage image_labels)")


def check_labels_match(document: dict, data_cfg: dict, dataset: str, path: str | os.PathLike,
                       splits: tuple[str, ...] = ("train",)) -> None:
    """The cached labels were made for this dataset and class list (else they are stale) and
    list the ids of ``splits``."""
    if document["dataset"] != dataset:
        raise PipelineError(path, f"was made for dataset '{document['dataset']}', but params select "
                            f"'{dataset}' (rerun stage image_labels)")
    if document["classes"] != list(data_cfg["classes"]):
        raise PipelineError(path, f"its class list differs from datasets.{dataset}.classes "
                            "(stale; rerun stage image_labels)")
    for split in splits:
        if split not in document.get("splits", {}):
            raise PipelineError(path, f"has no 'splits.{split}' id list (rerun stage image_labels)")
