"""Stage self_diffusion: pseudo labels L_w of the weak-category images (Xiao et al., AAAI
2018, Eq. 2) from the shared CAMs and the L-Net's object map M.

    python -m pipeline.methods.lnet.self_diffusion --params params.yaml --dataset D \\
        --cams work/D/shared/cam/cams --maps work/D/fold0/lnet/pascal5i/lnet/maps \\
        --labels work/D/image_labels.json --fold-file work/D/folds/fold0.json \\
        --out work/D/fold0/lnet/pascal5i/pseudo

Ids: the fold file's ``novel_samples`` (``--ids-from``). Per image: the CAMs of its
image-level classes (stage infer_cam: max-normalised, stored at ``stride``) are brought to
the image size (:func:`pipeline.cam.upsample_cams`) and clipped to [0, 1]; M is read back
from the L-Net's PNG; :func:`pipeline.propagation.superpixel_diffusion.diffuse_image`
does SLIC, the superpixel graph, the per-class harmonic solve and the labelling. Every
image-level class of the image is diffused (weak-category images may also hold strong
classes; the paper's L_w labels every class of the image).

Output ``<out>/<id>.png``: class-index PNG (:mod:`pipeline.data.label_png`), the
dataset's background where no class claimed a superpixel (``ignore_index`` on datasets
without background). ``<out>/info.json``: the per-image ``info`` of ``diffuse_image``
plus a summary (images, mean superpixels, images without any class, classes whose CAM
region covered no superpixel, label fractions). The directory appears only when every
image is done.

Defined behaviour on degenerate input (tests/test_lnet_stages.py):
* image with no image-level class: all background (ignore without background), info
  lists it under ``summary.images_without_classes``;
* a class whose CAM region covers no superpixel (e.g. an all-zero CAM): no seeds, absent
  from the label, listed in ``absent_classes``;
* an object map or CAM file of another size than the image, a CAM file lacking one of
  the image's classes, a missing file: one-line error naming the file, nothing written.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.cam import cam_path, check_cam_files_exist, image_cams, read_cam_file
from pipeline.config import load_params, section
from pipeline.data.folds import fold_samples, load_fold
from pipeline.data.label_png import write_label_png
from pipeline.data.labels import check_labels_cover, load_image_labels
from pipeline.data.probability_png import map_path, read_probability_map
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir, write_json
from pipeline.propagation.superpixel_diffusion import diffuse_image
from pipeline.runtime import progress, stage_run
from pipeline.stage import stage_parser

LABEL_SUFFIX = ".png"
INFO_NAME = "info.json"


def diffusion_summary(infos: dict[str, dict], class_names: list[str]) -> dict:
    """Dataset-level summary of the per-image ``info`` dicts (JSON-ready)."""
    absent = Counter(c for info in infos.values() for c in info["absent_classes"])
    pixels: Counter = Counter()
    for info in infos.values():
        pixels.update({int(k): v for k, v in info["pixels_per_label"].items()})
    total = sum(pixels.values()) or 1

    def name(c: int) -> str:
        return class_names[c] if 0 <= c < len(class_names) else f"ignore({c})"

    return {
        "images": len(infos),
        "mean_superpixels": float(np.mean([i["n_superpixels"] for i in infos.values()])) if infos else 0.0,
        "images_without_classes": sorted(i for i, info in infos.items() if not info["classes"]),
        "images_with_absent_classes": sorted(i for i, info in infos.items() if info["absent_classes"]),
        "absent_class_counts": {name(c): n for c, n in sorted(absent.items())},
        "label_fraction": {name(c): round(n / total, 6) for c, n in sorted(pixels.items())},
    }


def main(argv=None):
    ap = stage_parser(__doc__, inputs=("cams", "labels"))
    ap.add_argument("--maps", required=True, help="L-Net object-map directory (stage infer_lnet)")
    ap.add_argument("--fold-file", required=True, help="fold JSON whose id list names the weak images")
    ap.add_argument("--ids-from", default="novel_samples", help="id list of the fold file (default novel_samples)")
    ap.add_argument("--out", required=True, help="directory of <id>.png pseudo labels (+ info.json)")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    diffusion_cfg = section(params, "self_diffusion")
    dataset = VOCDataset(params["data"], "train")
    fold = load_fold(args.fold_file)
    if args.ids_from not in fold:
        raise PipelineError(args.fold_file, f"has no id list '{args.ids_from}' (--ids-from)")
    ids = fold_samples(fold, args.fold_file, dataset, params["dataset"], args.ids_from)
    labels = load_image_labels(args.labels)
    check_labels_cover(labels, ids, args.labels, "train")
    check_cam_files_exist(args.cams, ids)
    if not Path(args.maps).is_dir():
        raise PipelineError(args.maps, "object-map directory not found (run stage infer_lnet)")

    inputs = {"cams": args.cams, "maps": args.maps, "labels": args.labels, "fold_file": args.fold_file,
              "images": len(ids)}
    with stage_run("self_diffusion", inputs, {"self_diffusion": diffusion_cfg}) as log:
        infos: dict[str, dict] = {}
        with atomic_dir(args.out) as tmp:
            for image_id in progress(ids, desc="self-diffusion", total=len(ids)):
                image = dataset.load_image(image_id)
                size = image.shape[:2]
                m_path = map_path(args.maps, image_id)
                agnostic = read_probability_map(m_path, size)
                c_path = cam_path(args.cams, image_id)
                cam_file = read_cam_file(c_path, dataset.num_classes, dataset.background_index)
                classes = sorted(c for c in set(labels[image_id]) if c != dataset.background_index)
                cams = image_cams(cam_file, c_path, classes, size)
                label, info = diffuse_image(image, agnostic, cams, diffusion_cfg,
                                            background_index=dataset.background_index,
                                            ignore_index=dataset.ignore_index,
                                            source=f"{dataset.image_path(image_id)} (maps {m_path}, CAMs {c_path})")
                write_label_png(tmp / f"{image_id}{LABEL_SUFFIX}", label)
                info["source"] = image_id
                infos[image_id] = info
            summary = diffusion_summary(infos, dataset.class_names)
            write_json(tmp / INFO_NAME, {"summary": summary, "images": infos})
        log.info("wrote %d pseudo labels to %s: %d images without classes, %d with a class that got no seed",
                 len(ids), args.out, len(summary["images_without_classes"]),
                 len(summary["images_with_absent_classes"]))


if __name__ == "__main__":
    run_stage(main)
