"""Stage evaluate: score class-index prediction PNGs against a split's ground truth.

    python -m pipeline.stages.evaluate --params params.yaml --dataset D --split val \\
        --pred DIR --fold-file work/D/folds/fold0.json --out metrics.json \\
        [--ids-from novel_samples] [--void-pred] [--out-confusion confusion.csv]

Reads ``DIR/<id>.png`` for every id of the split, or of the id list stored under
``--ids-from KEY`` in the fold file (e.g. ``novel_samples`` to score pseudo labels of
the train novel samples). Predictions must have the ground truth's size and hold class
indices 0..n-1; with ``--void-pred`` they may also hold the dataset's ignore index for
"no label" (pseudo labels' uncertain pixels), which counts as a miss of the GT class
and is reported as ``coverage``.

metrics.json (all scores are fractions in [0, 1]; ``null`` where undefined):
``miou`` / ``miou_base`` / ``miou_novel`` / ``miou_harmonic`` (over all classes, the
fold's base classes with background, its novel classes, and the harmonic mean of the
two), ``per_class_iou`` by class name (null for a class absent from both GT and
predictions, left out of the means), ``pixel_accuracy``, ``mean_pixel_accuracy``,
``fwiou``, ``fb_iou`` (background vs merged foreground, null without a background
class), ``num_images`` and what was evaluated. The dataset-level scores come from one
confusion matrix summed over all images (VOC protocol), see :mod:`pipeline.metrics`.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from pipeline.config import load_params
from pipeline.data.folds import load_fold
from pipeline.data.label_png import read_label_png
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_path, check_files_exist, write_json
from pipeline.metrics import ConfusionAccumulator, confusion_or_error, summarize_confusion
from pipeline.runtime import progress, stage_run
from pipeline.stage import stage_parser

PRED_SUFFIX = ".png"


def fold_class_lists(fold: dict, fold_path: str | os.PathLike, num_classes: int) -> tuple[list[int], list[int]]:
    """(base, novel) class ids of a fold file, checked against the dataset's classes."""
    lists = []
    for key in ("base_classes", "novel_classes"):
        ids = fold[key]
        if not all(isinstance(c, int) and 0 <= c < num_classes for c in ids):
            raise PipelineError(fold_path, f"'{key}' must hold class ids 0..{num_classes - 1} "
                                f"(does the fold file belong to another dataset?)")
        lists.append([int(c) for c in ids])
    return lists[0], lists[1]


def ids_to_evaluate(dataset: VOCDataset, fold: dict, fold_path: str | os.PathLike, key: str | None) -> list[str]:
    """The split's ids, or the fold file's list under ``key`` (each must be in the split)."""
    if key is None:
        return list(dataset.ids)
    if key not in fold:
        lists = sorted(k for k, v in fold.items() if isinstance(v, list) and all(isinstance(i, str) for i in v))
        raise PipelineError(fold_path, f"no id list '{key}' (--ids-from); id lists here: {', '.join(lists)}")
    ids = fold[key]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise PipelineError(fold_path, f"'{key}' is not a list of image ids")
    known = set(dataset.ids)
    outside = [i for i in ids if i not in known]
    if outside:
        raise PipelineError(fold_path, f"'{key}' lists {len(outside)} id(s) not in split '{dataset.split}' "
                            f"(first: '{outside[0]}'); pass the split they come from with --split")
    return list(ids)


def accumulate(dataset: VOCDataset, ids: list[str], pred_dir: Path, void_pred: bool) -> ConfusionAccumulator:
    """One confusion matrix over all ids (errors name the offending prediction file)."""
    void_index = dataset.ignore_index if void_pred else None
    acc = ConfusionAccumulator(dataset.num_classes, dataset.ignore_index, void_index)
    for image_id in progress(ids, desc="evaluate", total=len(ids)):
        gt = dataset.load_mask(image_id)
        pred_path = pred_dir / (image_id + PRED_SUFFIX)
        pred = read_label_png(pred_path)
        if pred.shape != gt.shape:
            raise PipelineError(pred_path, f"prediction is {pred.shape[1]}x{pred.shape[0]} but the ground "
                                f"truth {dataset.mask_path(image_id)} is {gt.shape[1]}x{gt.shape[0]}")
        acc.matrix += confusion_or_error(pred_path, gt, pred, dataset.num_classes,
                                         dataset.ignore_index, void_index)
        acc.count += 1
    return acc


def _json_number(value: float) -> float | None:
    """NaN (undefined score) -> null: NaN is not valid JSON."""
    return None if isinstance(value, float) and math.isnan(value) else value


def metrics_document(summary: dict, class_names: list[str], base: list[int], novel: list[int],
                     context: dict) -> dict:
    """The metrics.json content: scalar scores, per-class IoU by name, and provenance."""
    doc = {key: _json_number(value) for key, value in summary.items() if key != "per_class_iou"}
    doc["per_class_iou"] = {name: _json_number(v) for name, v in zip(class_names, summary["per_class_iou"])}
    doc["base_classes"] = [class_names[c] for c in base]
    doc["novel_classes"] = [class_names[c] for c in novel]
    doc.update(context)
    return doc


def write_confusion_csv(path: str | os.PathLike, matrix: np.ndarray, class_names: list[str]) -> None:
    """Confusion matrix as CSV: one row per GT class, one column per predicted class (+ void)."""
    columns = list(class_names) + (["void"] if matrix.shape[1] > len(class_names) else [])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["gt \\ pred"] + columns)
        for name, row in zip(class_names, matrix):
            writer.writerow([name] + [int(v) for v in row])


def main(argv=None):
    ap = stage_parser(__doc__)
    ap.add_argument("--split", default="val", help="split whose ground truth is used (default: val)")
    ap.add_argument("--pred", required=True, help="directory of <id>.png class-index predictions")
    ap.add_argument("--fold-file", required=True, help="fold JSON (base/novel classes, id lists)")
    ap.add_argument("--ids-from", default=None, metavar="KEY",
                    help="evaluate only the ids listed under KEY in the fold file (e.g. novel_samples)")
    ap.add_argument("--void-pred", action="store_true",
                    help="predictions may mark unlabelled pixels with the ignore index (pseudo labels)")
    ap.add_argument("--out", required=True, help="metrics JSON to write")
    ap.add_argument("--out-confusion", default=None, help="optional CSV of the confusion matrix")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    dataset = VOCDataset(params["data"], args.split)
    fold = load_fold(args.fold_file)
    base, novel = fold_class_lists(fold, args.fold_file, dataset.num_classes)
    ids = ids_to_evaluate(dataset, fold, args.fold_file, args.ids_from)
    if not ids:
        raise PipelineError(args.fold_file, f"'{args.ids_from}' is empty: nothing to evaluate")
    pred_dir = Path(args.pred)
    check_files_exist(pred_dir, ids, PRED_SUFFIX, "prediction", listed="listed ids")

    inputs = {"pred": str(pred_dir), "split": args.split, "fold_file": args.fold_file, "ids_from": args.ids_from}
    with stage_run("evaluate", inputs, params["data"]) as log:
        acc = accumulate(dataset, ids, pred_dir, args.void_pred)
        summary = summarize_confusion(acc.matrix, dataset.background_index, base, novel)
        context = {
            "dataset": dataset.name,
            "split": args.split,
            "fold": fold.get("fold"),
            "ids_from": args.ids_from,
            "num_images": acc.count,
            "num_pixels": int(acc.matrix.sum()),
        }
        document = metrics_document(summary, dataset.class_names, base, novel, context)
        write_json(args.out, document)
        if args.out_confusion:
            write_confusion_csv(args.out_confusion, acc.matrix, dataset.class_names)
        log.info("%d images: mIoU %.4f base %s novel %s", acc.count, summary["miou"],
                 f"{summary['miou_base']:.4f}", f"{summary['miou_novel']:.4f}")


if __name__ == "__main__":
    run_stage(main)
