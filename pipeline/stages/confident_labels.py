"""Stage confident_labels: confident foreground / background / ignore labels from CAMs.

    python -m pipeline.stages.confident_labels --params params.yaml --dataset D \\
        --cams work/D/shared/cam/cams --labels work/D/image_labels.json \\
        [--cam-threshold work/D/fold<k>/cam/threshold.json] --out work/D/fold<k>/cam/confident

Writes ``<out>/<id>.png`` (full resolution, uint8 class indices, the dataset's ignore
index where unsure) for every train image; the affinity net learns from these pairs.

``confident_labels.method``:

* ``threshold`` (default; IRN ``cam_to_ir_label`` without its CRF): foreground map =
  argmax with background padded at ``conf_fg`` (0.30), background map = argmax with
  background padded at ``conf_bg`` (0.05); the label where both agree, ignore where they
  disagree (CAM between the two thresholds).
* ``crf`` (PSA ``infer_cls``): background score ``(1 - max CAM) ** alpha`` with
  ``crf_alpha_fg`` (4) and ``crf_alpha_bg`` (32), each refined by a dense CRF
  (``confident_labels.crf``: PSA's kernels), then the same agree-or-ignore rule. Needs
  the optional package ``pydensecrf2`` (``pip install pydensecrf2==1.1``; it compiles
  C++ on install, about 1.5 CPU-minutes, and works with Python 3.11 / numpy 2). It is not
  a pinned dependency: the default path does not need it. (SimpleCRF 0.2.x does not
  build against numpy 2.)

``conf_fg`` / ``conf_bg: auto``: PSA's confident band around the fold's CAM background threshold
``t`` (``--cam-threshold``: stage eval_cam on the fold's base samples, no novel masks):
``pipeline.cam.confident_thresholds_for`` (t 0.12 -> 0.28 / 0.08, near IRN's 0.30 / 0.05).
The values used are written to ``<out>/confident.json``. Without a background class there
is no threshold to start from: ``auto`` is IRN's conf_fg 0.30.

Datasets with no background class (CamVid): the argmax class where the highest CAM is
>= ``conf_fg``, ignore elsewhere, whatever the method (PSA's scheme needs a background
channel). The whole directory appears at once when every image is done.
"""
from __future__ import annotations


import numpy as np

from pipeline.cam import (check_cam_files_exist, confident_no_background, confident_threshold_labels,
                          confident_thresholds_for, crf_available, crf_confident_labels, read_best_threshold,
                          upsample_cams)
from pipeline.cam import load_checked_cams
from pipeline.config import check_range, load_params, section
from pipeline.data.label_png import write_label_png
from pipeline.data.labels import check_labels_cover, check_labels_document, read_image_labels_file
from pipeline.data.voc import VOCDataset, image_size
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir, write_json
from pipeline.layout import CONFIDENT_INFO
from pipeline.runtime import progress, stage_run
from pipeline.stage import stage_parser

CRF_PACKAGE = "pydensecrf2==1.1"
CRF_DEFAULTS = {"iterations": 10, "gaussian_sxy": 3, "gaussian_compat": 3, "bilateral_sxy": 80,
                "bilateral_srgb": 13, "bilateral_compat": 10}


IRN_CONF_FG = 0.30  # IRN conf_fg_thres: `auto` without a background class (no threshold to map)


def auto_keys(cfg: dict) -> list[str]:
    """The confident-label thresholds set to ``auto``."""
    return [key for key in ("conf_fg", "conf_bg") if cfg.get(key) == "auto"]


def resolve_thresholds(cfg: dict, cam_threshold: str | None, has_background: bool) -> dict:
    """``conf_fg`` / ``conf_bg`` as numbers: ``auto`` ones from the fold's CAM threshold."""
    auto = auto_keys(cfg)
    if not auto:
        return dict(cfg)
    if not has_background:
        return {**cfg, **{key: IRN_CONF_FG if key == "conf_fg" else 0.0 for key in auto}}
    if not cam_threshold:
        raise PipelineError(f"confident_labels.{auto[0]}", "auto follows a fold's CAM threshold: give the stage "
                            "--cam-threshold (the rules do)")
    derived = confident_thresholds_for(read_best_threshold(cam_threshold, True))
    return {**cfg, **{key: round(derived[key], 4) for key in auto}}


def check_confident_params(cfg: dict) -> None:
    """Cross-key checks the schema cannot express; errors name the key."""
    check_range(cfg["conf_fg"], "confident_labels.conf_fg", 0, 1)
    check_range(cfg["conf_bg"], "confident_labels.conf_bg", 0, 1)
    if cfg["conf_bg"] > cfg["conf_fg"]:
        raise PipelineError("confident_labels.conf_bg", f"{cfg['conf_bg']} must be <= confident_labels.conf_fg "
                            f"({cfg['conf_fg']}): background is the weak-CAM end")
    if cfg["method"] == "crf":
        low, high = cfg.get("crf_alpha_fg", 4), cfg.get("crf_alpha_bg", 32)
        if low >= high:
            raise PipelineError("confident_labels.crf_alpha_fg", f"{low} must be < confident_labels.crf_alpha_bg "
                                f"({high}): the low alpha gives confident foreground")


def label_counts(label: np.ndarray, background_index: int | None, ignore_index: int) -> dict[str, int]:
    """Pixels labelled foreground, background and ignore (for the log)."""
    n_ignore = int((label == ignore_index).sum())
    n_background = int((label == background_index).sum()) if background_index is not None else 0
    return {"foreground": int(label.size) - n_ignore - n_background, "background": n_background,
            "ignore": n_ignore}


def main(argv=None):
    ap = stage_parser(__doc__, inputs=("cams", "labels"))
    ap.add_argument("--split", default="train", help="split whose images get labels (default: train)")
    ap.add_argument("--cam-threshold", default=None,
                    help="the fold's CAM threshold (stage eval_cam --fold-file): conf_fg / conf_bg auto follow it")
    ap.add_argument("--out", required=True, help="directory of <id>.png confident labels to write")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    dataset = VOCDataset(params["data"], args.split)
    auto = auto_keys(section(params, "confident_labels"))
    cfg = resolve_thresholds(section(params, "confident_labels"), args.cam_threshold,
                             dataset.background_index is not None)
    check_confident_params(cfg)
    bg, ignore = dataset.background_index, dataset.ignore_index
    use_crf = cfg["method"] == "crf" and bg is not None
    if use_crf and not crf_available():
        raise PipelineError("confident_labels.method", f"'crf' needs the optional package pydensecrf "
                            f"(pip install {CRF_PACKAGE}), or use method: threshold")
    document = read_image_labels_file(args.labels)
    check_labels_document(document, params["data"], args.labels)
    labels = document["labels"]
    check_labels_cover(labels, dataset.ids, args.labels, "train")
    check_cam_files_exist(args.cams, dataset.ids)
    crf_options = {**CRF_DEFAULTS, **(cfg.get("crf") or {})}

    inputs = {"cams": args.cams, "labels": args.labels, "split": args.split, "images": len(dataset),
              "cam_threshold": args.cam_threshold}
    with stage_run("confident_labels", inputs, cfg) as log, atomic_dir(args.out) as tmp:
        if cfg["method"] == "crf" and bg is None:
            log.warning("no background class: CRF scheme needs one; using the conf_fg threshold rule")
        counts = {"foreground": 0, "background": 0, "ignore": 0}
        for image_id in progress(dataset.ids, desc="confident labels", total=len(dataset)):
            width, height = image_size(dataset.image_path(image_id))
            record = load_checked_cams(args.cams, image_id, dataset, labels, args.labels, (height, width))
            cams = upsample_cams(record["cams"], record["size"], record["stride"])
            keys = record["keys"]
            if bg is None:
                label = confident_no_background(cams, keys, cfg["conf_fg"], ignore)
            elif use_crf:
                label = crf_confident_labels(dataset.load_image(image_id), cams, keys, cfg.get("crf_alpha_fg", 4),
                                             cfg.get("crf_alpha_bg", 32), bg, ignore, crf_options)
            else:
                label = confident_threshold_labels(cams, keys, cfg["conf_fg"], cfg["conf_bg"], bg, ignore)
            write_label_png(tmp / f"{image_id}.png", label)
            for kind, n in label_counts(label, bg, ignore).items():
                counts[kind] += n
        write_json(tmp / CONFIDENT_INFO, {"conf_fg": cfg["conf_fg"], "conf_bg": cfg["conf_bg"],
                                          "auto": auto,
                                          "cam_threshold_file": args.cam_threshold})
        total = max(1, sum(counts.values()))
        log.info("wrote %d label maps to %s (method %s): %s", len(dataset), args.out,
                 "crf" if use_crf else "threshold",
                 ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in counts.items()))


if __name__ == "__main__":
    run_stage(main)
