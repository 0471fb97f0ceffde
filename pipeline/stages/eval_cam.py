"""Stage eval_cam: CAM quality on the train images, sweeping the background threshold.

    python -m pipeline.stages.eval_cam --params params.yaml --dataset D \\
        --cams work/D/shared/cam/cams --labels work/D/image_labels.json \\
        --out work/D/shared/cam/eval.json

For every threshold t of ``cam.eval.thresholds``: CAMs are upsampled bilinearly to the
image size, the background score t is padded as channel 0 and the argmax is the label
(IRN ``eval_cam``, PSA/SEAM's sweep); mIoU over all classes (background included) from
one confusion matrix summed over the images (:mod:`pipeline.metrics`). With
``--fold-file`` the sweep runs on the fold's base samples only, their novel-class pixels
ignored: its best threshold is the one the ``cam`` row's pseudo labels use (weak-shot lets
no stage but the evaluation read novel-class masks). Without it, over every train image, it
is the CAMs' quality on train (a diagnostic).

Datasets with no background class (CamVid) have no threshold: the label is the argmax
over the image's labelled classes (images with none are unlabelled and count as misses);
``best_threshold`` is then null.

eval.json: ``thresholds``, ``miou_per_threshold``, ``best_threshold``, ``miou`` (at the
best threshold), ``per_class_iou`` by class name, ``pixel_accuracy``,
``mean_pixel_accuracy``, ``fb_iou``, ``num_images``, ``has_background``. Undefined scores
are null.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.cam import (
    argmax_labels, cam_path, check_cam_files_exist, load_checked_cams, sweep_confusions, upsample_cams)
from pipeline.config import load_params, section
from pipeline.data.folds import load_base_samples, mask_novel_pixels
from pipeline.data.labels import check_labels_cover, check_labels_document, read_image_labels_file
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import write_json
from pipeline.metrics import confusion_or_error, mean_iou, summarize_confusion
from pipeline.runtime import progress, stage_run
from pipeline.stage import stage_parser


def check_thresholds(thresholds: list[float]) -> list[float]:
    """Thresholds in [0, 1], each once; errors name the key."""
    values = [float(t) for t in thresholds]
    if len(set(values)) != len(values):
        raise PipelineError("cam.eval.thresholds", f"{values} lists a threshold twice")
    bad = [t for t in values if not 0.0 <= t <= 1.0]
    if bad:
        raise PipelineError("cam.eval.thresholds", f"{bad[0]} is out of range [0, 1]")
    return values


def _number(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value


def eval_document(cm: np.ndarray, class_names: list[str], background_index: int | None, thresholds: list[float],
                  mious: list[float], best: int | None, context: dict) -> dict:
    """eval.json content: the sweep, the best threshold and the metrics there."""
    summary = summarize_confusion(cm, background_index)
    doc = {key: _number(summary[key]) for key in ("miou", "pixel_accuracy", "mean_pixel_accuracy", "fb_iou")}
    if "coverage" in summary:
        doc["coverage"] = _number(summary["coverage"])
    doc["per_class_iou"] = {name: _number(v) for name, v in zip(class_names, summary["per_class_iou"])}
    doc["thresholds"] = thresholds
    doc["miou_per_threshold"] = [_number(m) for m in mious]
    doc["best_threshold"] = thresholds[best] if best is not None else None
    doc.update(context)
    return doc


def main(argv=None):
    ap = stage_parser(__doc__, inputs=("cams", "labels"))
    ap.add_argument("--split", default="train", help="split to evaluate (default: train)")
    ap.add_argument("--fold-file", default=None,
                    help="fold JSON: sweep on its base samples only, novel-class pixels ignored "
                         "(the threshold the `cam` row may use: no novel ground truth)")
    ap.add_argument("--out", required=True, help="eval JSON to write")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    thresholds = check_thresholds(section(params, "cam.eval.thresholds"))
    dataset = VOCDataset(params["data"], args.split)
    document = read_image_labels_file(args.labels)
    check_labels_document(document, params["data"], args.labels)
    labels = document["labels"]
    check_labels_cover(labels, dataset.ids, args.labels, "train")
    ids, novel = list(dataset.ids), []
    if args.fold_file:  # weak-shot: only the base samples' pixel labels may be read
        _, ids, novel = load_base_samples(args.fold_file, dataset, params["dataset"])
    check_cam_files_exist(args.cams, ids)

    n, bg, ignore = dataset.num_classes, dataset.background_index, dataset.ignore_index
    inputs = {"cams": args.cams, "labels": args.labels, "split": args.split, "images": len(ids),
              "fold_file": args.fold_file}
    with stage_run("eval_cam", inputs, {"cam.eval": params["cam"]["eval"]}) as log:
        if bg is not None:
            sweep = np.zeros((len(thresholds), n, n), dtype=np.int64)
        else:
            sweep = np.zeros((1, n, n + 1), dtype=np.int64)  # + void column: images with no label
        for image_id in progress(ids, desc="eval CAMs", total=len(ids)):
            gt = mask_novel_pixels(dataset.load_mask(image_id), novel, ignore)
            record = load_checked_cams(args.cams, image_id, dataset, labels, args.labels, gt.shape)
            cams = upsample_cams(record["cams"], record["size"], record["stride"])
            where = cam_path(args.cams, image_id)
            if bg is not None:
                try:
                    sweep += sweep_confusions(cams, record["keys"], gt, thresholds, n, bg, ignore)
                except ValueError as err:
                    raise PipelineError(where, str(err)) from None
            else:
                pred = argmax_labels(cams, record["keys"], void_index=ignore)
                sweep[0] += confusion_or_error(where, gt, pred, n, ignore, void_index=ignore)
        mious = [mean_iou(cm) for cm in sweep]
        if bg is not None:
            scores = [-1.0 if math.isnan(m) else m for m in mious]
            best = int(np.argmax(scores))  # first of equal scores: the lowest threshold
            listed = thresholds
        else:
            best, listed = None, []
            mious = []
        chosen = sweep[best if best is not None else 0]
        context = {"dataset": dataset.name, "split": args.split, "num_images": len(ids),
                   "has_background": bg is not None,
                   "samples": "base_samples" if args.fold_file else "all", "novel_classes": novel}
        doc = eval_document(chosen, dataset.class_names, bg, listed, mious, best, context)
        write_json(args.out, doc)
        if bg is not None:
            log.info("mIoU per threshold: %s", " ".join(f"{t:.2f}:{m:.4f}" for t, m in zip(thresholds, mious)))
            log.info("best threshold %.2f: mIoU %.4f", thresholds[best], doc["miou"] or float("nan"))
        else:
            log.info("no background class: argmax over labelled classes, mIoU %.4f", doc["miou"] or float("nan"))


if __name__ == "__main__":
    run_stage(main)
