"""Stage segment_folder: a trained segmentation net of any table row on a folder of your own images.

    python -m pipeline.stages.segment_folder --params params.yaml --dataset D \\
        --model work/D/fold0/seg/retab/model.pt --images my_photos --out results/D/segment/mine/retab_fold0

``--images``: every non-hidden file of the folder (sub-folders are not read), any size, any
format PIL decodes (grey-scale is repeated to RGB, an alpha channel is dropped). Each image
is predicted at its own size as stage predict_seg predicts a val image
(:func:`pipeline.segmentation.predict_label_map`: ``segmentation.predict.scales`` and
``flip`` of the dataset's params; always on the image, never on a feature cache; an image
longer than ``apply.max_side`` px is seen at that size, its mask still written at its own). The net is
built from the dataset's ``backbone`` / ``segmentation`` params and checked against the model
file (:func:`pipeline.segmentation.load_seg_model`); its classes are the dataset's.

Output folder (:mod:`pipeline.folder_outputs`): ``masks/<stem>.png`` (palette PNG of class
indices, the dataset's class order, at the image's size), ``overlays/<stem>.jpg``,
``sheet.jpg`` (contact sheet of every overlay, ``apply.sheet``) and ``info.json`` (model,
classes, per image its size and the share of pixels of each predicted class).

Bad input, "nothing done": every image is decoded before any prediction; an unreadable or
non-image file (or two files of one name up to the extension) is one line naming it, exit 2,
and no output folder. The user fixes or removes the file and reruns.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.config import load_params, section
from pipeline.data.image_folder import check_images, check_unique_stems, fit_scale, folder_files, read_rgb
from pipeline.errors import run_stage
from pipeline.folder_outputs import save_sheet, thumbnail, write_image_outputs
from pipeline.io import atomic_dir, write_json
from pipeline.models import backbone_normalization
from pipeline.runtime import progress, stage_run
from pipeline.segmentation import load_seg_model, predict_config, predict_label_map
from pipeline.stage import stage_device, stage_parser


def class_shares(labels: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """``{class name: share of the image's pixels}`` of the classes present (largest first)."""
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    shares = {class_names[c]: round(float(n) / labels.size, 4) for c, n in enumerate(counts) if n}
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def main(argv=None):
    ap = stage_parser(__doc__, threads=True)
    ap.add_argument("--model", required=True, help="model file of stage train_seg (or L-Net's train_pnet)")
    ap.add_argument("--images", required=True, help="folder of images to segment")
    ap.add_argument("--out", required=True, help="output folder (masks/, overlays/, sheet.jpg, info.json)")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    cfg = predict_config(params)
    apply = section(params, "apply")
    files = folder_files(args.images)
    check_unique_stems(files)
    sizes = check_images(files)  # "nothing done": every file decodes before any output
    class_names = list(params["data"]["classes"])
    device = stage_device(args, params)
    model = load_seg_model(params, args.model, class_names)
    memory_format = torch.channels_last if device == "cpu" else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    mean, std = backbone_normalization(params["backbone"])
    inputs = {"model": args.model, "images": args.images, "count": len(files), **cfg}
    with stage_run("segment_folder", inputs, {"segmentation.predict": cfg, "apply": apply}, device) as log, \
            atomic_dir(args.out) as tmp:
        started = time.perf_counter()
        cells, per_image = [], {}
        for path, size in progress(list(zip(files, sizes)), desc="segment_folder"):
            image = read_rgb(path)
            fit = fit_scale(image.shape[:2], apply.get("max_side"))
            labels = predict_label_map(model, image, [s * fit for s in cfg["scales"]], cfg["flip"], mean, std,
                                       device, memory_format)
            tinted = write_image_outputs(tmp, path.stem, image, labels, float(apply["overlay_alpha"]))
            cells.append((path.name, thumbnail(tinted, int(apply["sheet"]["cell"]))))
            per_image[path.name] = {"height": int(size[0]), "width": int(size[1]),
                                    "classes": class_shares(labels, class_names)}
        shown = save_sheet(tmp, cells, int(apply["sheet"]["cell"]), int(apply["sheet"]["columns"]))
        seconds = time.perf_counter() - started
        write_json(tmp / "info.json", {"model": args.model, "dataset": params["dataset"], "images": args.images,
                                       "classes": dict(enumerate(class_names)), "predict": cfg,
                                       "seconds": round(seconds, 2), "sheet_shows": shown,
                                       "per_image": per_image})
        log.info("%d images segmented in %.1f s -> %s", len(files), seconds, args.out)


if __name__ == "__main__":
    run_stage(main)
