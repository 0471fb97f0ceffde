"""Stage pseudo_labels: label maps for the segmentation net from (revised) class scores.

    python -m pipeline.stages.pseudo_labels --params params.yaml --dataset D \\
        --scores DIR --labels work/D/image_labels.json [--cam-eval eval.json] --out DIR

``--scores`` is either

* the revised scores of stage propagate (``<id>.npz`` with ``scores``, ``keys``, ``size``,
  ``stride``; background channel included when the dataset has one), or
* with ``--cam-eval``: the raw CAMs of stage infer_cam (``cams``, ``keys``, ``size``,
  ``stride``); the background score is then the constant ``best_threshold`` of stage
  eval_cam's eval.json (the ``cam`` baseline: foreground where the top CAM is strictly
  above it). Without a background class eval.json has ``best_threshold: null`` and the
  label is the argmax over the labelled classes.

For every train image: bilinear upsampling of the scores to image size, argmax over the
image's labelled classes (``--labels``) plus background (:mod:`pipeline.pseudo_labels`),
written to ``<out>/<id>.png`` (uint8 class indices; 255 only where an image without labels
in a dataset without background has no candidate class). No dense CRF. The directory
appears complete or not at all.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cam import check_cam_files_exist, read_best_threshold, read_cam_file, strided_size
from pipeline.config import load_params
from pipeline.data.label_png import write_label_png
from pipeline.data.labels import check_labels_cover, load_image_labels
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir, check_files_exist, load_npz
from pipeline.pseudo_labels import pseudo_label_map
from pipeline.runtime import progress, stage_run
from pipeline.stage import stage_parser

SCORE_KEYS = ("scores", "keys", "size", "stride")


def read_score_file(path: Path, num_classes: int) -> dict:
    """Revised scores of stage propagate, checked: ``{'scores', 'keys', 'size', 'stride'}``."""
    data = load_npz(path)
    if "scores" not in data and "cams" in data:
        raise PipelineError(path, "holds raw CAMs ('cams'), not revised scores: pass --cam-eval eval.json")
    missing = [k for k in SCORE_KEYS if k not in data]
    if missing:
        raise PipelineError(path, f"not a revised-score file: no '{missing[0]}' array")
    keys = [int(k) for k in np.asarray(data["keys"]).reshape(-1)]
    size, stride = np.asarray(data["size"]).reshape(-1), np.asarray(data["stride"]).reshape(-1)
    if size.shape != (2,) or stride.shape != (1,) or int(stride[0]) < 1 or (size < 1).any():
        raise PipelineError(path, f"invalid size {size.tolist()} or stride {stride.tolist()}")
    size, stride = (int(size[0]), int(size[1])), int(stride[0])
    expected = (len(keys), *strided_size(size, stride))
    scores = np.asarray(data["scores"], dtype=np.float32)
    if scores.shape != expected:
        raise PipelineError(path, f"scores have shape {scores.shape}, expected {expected}")
    bad = [k for k in keys if not 0 <= k < num_classes]
    if bad or len(set(keys)) != len(keys):
        raise PipelineError(path, f"keys {keys} are not distinct class ids 0..{num_classes - 1}")
    if not np.isfinite(scores).all():
        raise PipelineError(path, "scores contain NaN or infinite values")
    return {"scores": scores, "keys": keys, "size": size, "stride": stride}


def main(argv=None):
    ap = stage_parser(__doc__, inputs=("labels",))
    ap.add_argument("--scores", required=True, help="revised scores (stage propagate) or raw CAMs (with --cam-eval)")
    ap.add_argument("--cam-eval", default=None, help="eval.json of stage eval_cam: --scores are raw CAMs")
    ap.add_argument("--out", required=True, help="output directory of <id>.png pseudo labels")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    dataset = VOCDataset(params["data"], "train")
    ids = list(dataset.ids)
    image_labels = load_image_labels(args.labels)
    check_labels_cover(image_labels, ids, args.labels, "train")
    raw_cams = args.cam_eval is not None
    threshold = read_best_threshold(args.cam_eval, dataset.background_index is not None) if raw_cams else None
    score_dir = Path(args.scores)
    if raw_cams:
        check_cam_files_exist(score_dir, ids)
    else:
        check_files_exist(score_dir, ids, ".npz", "revised-score file", listed="train images")

    bg, void = dataset.background_index, dataset.ignore_index
    inputs = {"scores": args.scores, "cam_eval": args.cam_eval, "threshold": threshold, "images": len(ids)}
    with stage_run("pseudo_labels", inputs, {"source": "cam" if raw_cams else "revised"}) as log, \
            atomic_dir(args.out) as tmp:
        foreground = labelled = 0
        for image_id in progress(ids, desc="pseudo labels"):
            path = score_dir / f"{image_id}.npz"
            if raw_cams:
                record = read_cam_file(path, dataset.num_classes, bg)
                scores = record["cams"]
            else:
                record = read_score_file(path, dataset.num_classes)
                scores = record["scores"]
            label = pseudo_label_map(scores, record["keys"], record["size"], record["stride"],
                                     image_labels[image_id], bg, bg_threshold=threshold, void_index=void)
            write_label_png(tmp / f"{image_id}.png", label)
            labelled += int((label != void).sum())
            foreground += int(((label != bg) & (label != void)).sum())
        log.info("%d pseudo labels written (%s): %.1f%% of labelled pixels foreground", len(ids),
                 f"background threshold {threshold}" if threshold is not None else "argmax",
                 100.0 * foreground / max(labelled, 1))


if __name__ == "__main__":
    run_stage(main)
