"""Weak-shot folds: which classes are novel, and which train images are novel samples.

PASCAL-5i (``novel_classes: pascal5i``): fold i has novel classes 5i+1..5i+5 (4 folds of
the 20 VOC object classes); the other 15 and background are base classes. A dataset can
instead list its folds explicitly as class-name lists (``[[pedestrian, bicyclist]]``), or
ask for ``{k: K}`` folds of any class count: the N object classes (every class except the
background, in id order) split into K runs of consecutive ids whose sizes differ by at most
one, larger runs first (16 classes, K=3: 6, 5, 5; VOC's 20, K=4: exactly PASCAL-5i).

Sample split (PASCAL-5i rule): a train image with any pixel of a novel class is a *novel
sample* (only its image-level labels are used); every other train image is a *base
sample* (its pixel labels are used). ``datasets.<name>.novel_min_pixels`` (default 1 =
the PASCAL-5i rule) raises the bar to "at least that many pixels of one novel class", so
that tiny far-away instances (CamVid's distant pedestrians) do not turn nearly every image
into a novel sample. Base samples may then still hold a few novel-class pixels: whoever
trains on their pixel labels must pass the mask through :func:`mask_novel_pixels`, which
turns them into ignore, so no novel-class pixel label ever reaches training.

Fold file (stage ``make_folds``)::

    {"fold": k, "dataset": name, "novel_classes": [ids], "base_classes": [ids],
     "novel_class_names": [...], "base_class_names": [...], "novel_min_pixels": n,
     "novel_samples": [train ids], "base_samples": [train ids], "counts": {...}}
"""
from __future__ import annotations

import os

import numpy as np

from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError
from pipeline.io import read_json

PASCAL5I_FOLDS = 4
PASCAL5I_CLASSES_PER_FOLD = 5
FOLD_KEYS = ("fold", "novel_classes", "base_classes", "novel_samples", "base_samples", "counts")


def _novel_key(data_cfg: dict) -> str:
    return f"datasets.{data_cfg.get('name', 'dataset')}.novel_classes"


def _background_index(data_cfg: dict) -> int | None:
    classes = list(data_cfg["classes"])
    background = data_cfg.get("background")
    return classes.index(background) if background in classes else None


def object_class_ids(data_cfg: dict) -> list[int]:
    """Every class id except the background's (all of them when there is none), in id order."""
    background_index = _background_index(data_cfg)
    return [c for c in range(len(data_cfg["classes"])) if c != background_index]


def split_evenly(ids: list[int], k: int) -> list[list[int]]:
    """``ids`` cut into ``k`` consecutive runs whose sizes differ by at most one, larger first."""
    size, extra = divmod(len(ids), k)
    runs, start = [], 0
    for i in range(k):
        end = start + size + (1 if i < extra else 0)
        runs.append(list(ids[start:end]))
        start = end
    return runs


def _k_folds(data_cfg: dict) -> int:
    """K of ``novel_classes: {k: K}``, checked against the number of object classes."""
    key = f"{_novel_key(data_cfg)}.k"
    k = data_cfg["novel_classes"].get("k")
    if not isinstance(k, int) or isinstance(k, bool):
        raise PipelineError(key, f"must be an integer number of folds, not {k!r}")
    objects = len(object_class_ids(data_cfg))
    if k < 1:
        raise PipelineError(key, f"k = {k} must be >= 1")
    if k > objects:
        raise PipelineError(key, f"k = {k} is more than the {objects} object classes (each fold needs a novel class)")
    return k


def num_folds(data_cfg: dict) -> int:
    """Number of folds the dataset defines (4 for pascal5i, K for {k: K}, else the number of lists)."""
    spec = data_cfg["novel_classes"]
    if spec == "pascal5i":
        return PASCAL5I_FOLDS
    if isinstance(spec, dict):
        return _k_folds(data_cfg)
    if isinstance(spec, list) and spec:
        return len(spec)
    raise PipelineError(_novel_key(data_cfg), "must be 'pascal5i', {k: K} or a non-empty list of class-name lists")


def _check_fold_number(data_cfg: dict, fold: int, folds: int) -> None:
    if not 0 <= fold < folds:
        raise PipelineError(_novel_key(data_cfg), f"dataset '{data_cfg.get('name', 'dataset')}' has folds "
                            f"0..{folds - 1}, not {fold}")


def check_folds(data_cfg: dict, fold: int | None = None) -> int:
    """Check every fold of ``novel_classes`` (and that ``fold``, when given, is one of them);
    returns the number of folds. The workflow calls it wherever it resolves a fold."""
    folds = num_folds(data_cfg)
    if fold is not None:
        _check_fold_number(data_cfg, fold, folds)
    for k in range(folds):
        novel_classes_for_fold(data_cfg, k)
    return folds


def novel_classes_for_fold(data_cfg: dict, fold: int) -> list[int]:
    """Sorted novel class ids of ``fold``; errors name the params key."""
    key = _novel_key(data_cfg)
    classes = list(data_cfg["classes"])
    background_index = _background_index(data_cfg)
    folds = num_folds(data_cfg)
    _check_fold_number(data_cfg, fold, folds)
    spec = data_cfg["novel_classes"]
    if spec == "pascal5i":
        needed = PASCAL5I_FOLDS * PASCAL5I_CLASSES_PER_FOLD + 1
        if len(classes) != needed or background_index != 0:
            raise PipelineError(key, f"pascal5i needs {needed} classes with the background first "
                                f"(this dataset has {len(classes)}); use {{k: K}} or list the folds explicitly")
        first = PASCAL5I_CLASSES_PER_FOLD * fold + 1
        return list(range(first, first + PASCAL5I_CLASSES_PER_FOLD))
    if isinstance(spec, dict):
        where = f"{key}.k"
        novel = split_evenly(object_class_ids(data_cfg), folds)[fold]
    else:
        where = f"{key}[{fold}]"
        novel = []
        for name in spec[fold]:
            if name not in classes:
                raise PipelineError(where, f"unknown class '{name}' (known: {', '.join(classes)})")
            index = classes.index(name)
            if index == background_index:
                raise PipelineError(where, f"the background class '{name}' cannot be novel")
            if index in novel:
                raise PipelineError(where, f"class '{name}' is listed twice")
            novel.append(index)
    if len(novel) == len(classes):
        raise PipelineError(where, "every class is novel: no base classes are left")
    return sorted(novel)


def base_classes_for_fold(data_cfg: dict, fold: int) -> list[int]:
    """All class ids that are not novel in ``fold`` (background included when there is one)."""
    novel = set(novel_classes_for_fold(data_cfg, fold))
    return [c for c in range(len(data_cfg["classes"])) if c not in novel]


def split_samples(image_labels: dict[str, list[int]], novel: list[int]) -> tuple[list[str], list[str]]:
    """(novel_samples, base_samples): ids whose labels hold any novel class, and the rest.

    Order follows ``image_labels`` (insertion order), so the split is deterministic.
    """
    novel_set = set(novel)
    novel_samples, base_samples = [], []
    for image_id, classes in image_labels.items():
        (novel_samples if novel_set.intersection(classes) else base_samples).append(image_id)
    return novel_samples, base_samples


def mask_novel_pixels(mask: np.ndarray, novel: list[int], ignore_index: int) -> np.ndarray:
    """Copy of a base sample's mask with novel-class pixels set to ``ignore_index``.

    Apply it before deriving anything else from a base sample's mask (boundary targets,
    affinity labels), so nothing learnt from pixel labels depends on where novel objects
    are. No-op under the PASCAL-5i rule (base samples then hold no novel pixels).
    """
    out = mask.copy()
    out[np.isin(out, novel)] = ignore_index
    return out


def fold_counts(novel_samples: list[str], base_samples: list[str], image_labels: dict[str, list[int]],
                class_names: list[str], pixel_counts: dict[str, list[int]] | None, novel: list[int]) -> dict:
    """Counts recorded in the fold file: samples, images per class overall and per subset."""
    def images_per_class(ids):
        counts = dict.fromkeys(class_names, 0)
        for image_id in ids:
            for c in image_labels[image_id]:
                counts[class_names[c]] += 1
        return counts

    counts = {
        "train_images": len(novel_samples) + len(base_samples),
        "novel_samples": len(novel_samples),
        "base_samples": len(base_samples),
        "images_per_class": images_per_class(novel_samples + base_samples),
        "images_per_class_in_novel_samples": images_per_class(novel_samples),
        "images_per_class_in_base_samples": images_per_class(base_samples),
    }
    if pixel_counts is not None:
        # Novel-class pixels that stay in base samples (0 under the PASCAL-5i rule);
        # training turns them into ignore with mask_novel_pixels.
        counts["novel_pixels_ignored_in_base_samples"] = int(
            sum(pixel_counts[i][c] for i in base_samples for c in novel))
    return counts


def load_fold(path: str | os.PathLike) -> dict:
    """A fold file, structure-checked (errors name the file)."""
    document = read_json(path)
    if not isinstance(document, dict):
        raise PipelineError(path, "fold file must be a JSON object")
    missing = [k for k in FOLD_KEYS if k not in document]
    if missing:
        raise PipelineError(path, f"fold file lacks {', '.join(missing)}")
    for key in ("novel_classes", "base_classes", "novel_samples", "base_samples"):
        if not isinstance(document[key], list):
            raise PipelineError(path, f"'{key}' must be a list")
    return document


def fold_samples(fold: dict, path: str, dataset: VOCDataset, dataset_name: str, key: str) -> list[str]:
    """The fold file's id list ``key``, non-empty and inside the train split (errors name the file)."""
    if fold.get("dataset", dataset_name) != dataset_name:
        raise PipelineError(path, f"was made for dataset '{fold['dataset']}', but params select '{dataset_name}'")
    ids = fold[key]
    if not ids:
        raise PipelineError(path, f"'{key}' is empty")
    known = set(dataset.ids)
    outside = [i for i in ids if not isinstance(i, str) or i not in known]
    if outside:
        raise PipelineError(path, f"'{key}' lists {len(outside)} id(s) not in the train split "
                            f"{dataset.list_path} (first: {outside[0]!r})")
    return list(ids)



def fold_novel_classes(fold: dict, path: str, num_classes: int) -> list[int]:
    novel = fold["novel_classes"]
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < num_classes for c in novel):
        raise PipelineError(path, f"'novel_classes' must hold class ids 0..{num_classes - 1}")
    return [int(c) for c in novel]


def load_base_samples(path: str | os.PathLike, dataset: "VOCDataset", dataset_name: str) -> tuple[dict, list[str], list[int]]:
    """``(fold, base sample ids, novel class ids)`` of a fold file, checked against the dataset:
    what every stage that learns from base samples' pixel labels reads first (errors name the
    file)."""
    fold = load_fold(path)
    base = fold_samples(fold, path, dataset, dataset_name, "base_samples")
    return fold, base, fold_novel_classes(fold, path, dataset.num_classes)
