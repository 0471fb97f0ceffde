"""Stage infer_cam: multi-scale, flipped CAMs of every image of a split (IRN make_cam, PSA infer_cls).

    python -m pipeline.stages.infer_cam --params params.yaml --dataset D \\
        --model work/D/shared/cam/model.pt --labels work/D/image_labels.json \\
        --split train --out work/D/shared/cam/cams --threads 2

For each image: CAMs at every ``cam.infer.scales`` (with the mirrored image when
``cam.infer.flip``), resized to the stored grid and summed, restricted to the image's
labelled foreground classes, ReLU'd and max-normalised per class (IRN: divide by
max + 1e-5). Written as ``<out>/<id>.npz`` (format: :mod:`pipeline.cam`; grid
``ceil(H / cam.store_stride)``); images without a foreground label get ``K = 0``
arrays. The whole directory appears at once when every image is done.
"""
from __future__ import annotations


import numpy as np

from pipeline.cam import (
    cam_backbone_cfg, cam_model_meta, cam_path, cams_function, label_channels, multiscale_cams, normalize_cams, strided_size,
    write_cam_file)
from pipeline.config import load_params, section
from pipeline.data.labels import check_labels_cover, check_labels_document, read_image_labels_file
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir
from pipeline.runtime import progress, seed_everything, stage_run
from pipeline.stage import stage_device, stage_parser


def check_infer_params(cam_cfg: dict) -> None:
    """Checks the schema cannot express; errors name the key."""
    scales = [float(s) for s in cam_cfg["infer"]["scales"]]
    if len(set(scales)) != len(scales):
        raise PipelineError("cam.infer.scales", f"{scales} lists a scale twice")


def load_cam_model(path: str, backbone_cfg: dict, class_names: list[str], device: str):
    """The CAM network of ``path`` in eval mode; another backbone, stride or class list is
    a one-line error naming the file."""
    from pipeline.models import CAMNet
    from pipeline.training import load_model

    # The file holds every weight: no need to load the ImageNet ones first.
    model = CAMNet({**backbone_cfg, "pretrained": False}, num_classes=len(class_names))
    load_model(path, model, expected_meta=cam_model_meta(model, class_names))
    return model.to(device).eval()


def main(argv=None):
    ap = stage_parser(__doc__, threads=True, inputs=("labels",))
    ap.add_argument("--model", required=True, help="CAM model file (stage train_cam)")
    ap.add_argument("--split", default="train", help="split whose images get CAMs (default: train)")
    ap.add_argument("--out", required=True, help="directory of <id>.npz CAM files to write")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    cam_cfg = section(params, "cam")
    check_infer_params(cam_cfg)
    scales = [float(s) for s in cam_cfg["infer"]["scales"]]
    flip = bool(cam_cfg["infer"]["flip"])
    stride = int(cam_cfg["store_stride"])
    device = stage_device(args, params)
    seed_everything(params["seed"])

    dataset = VOCDataset(params["data"], args.split)
    document = read_image_labels_file(args.labels)
    check_labels_document(document, params["data"], args.labels)
    labels = document["labels"]
    check_labels_cover(labels, dataset.ids, args.labels, args.split)
    fg_names = [dataset.class_names[c] for c in dataset.foreground_indices]
    backbone_cfg = cam_backbone_cfg(params)

    from pipeline.models import backbone_normalization

    mean, std = backbone_normalization(backbone_cfg)
    model = load_cam_model(args.model, backbone_cfg, fg_names, device)
    cams_fn = cams_function(model, device)
    inputs = {"model": args.model, "labels": args.labels, "split": args.split, "images": len(dataset)}
    with stage_run("infer_cam", inputs, {"cam": cam_cfg, "backbone": backbone_cfg}, device) as log, \
            atomic_dir(args.out) as tmp:
        empty = 0
        for image_id in progress(dataset.ids, desc="CAMs", total=len(dataset)):
            image = dataset.load_image(image_id)
            size = image.shape[:2]
            try:
                channels, keys = label_channels(labels[image_id], dataset.foreground_indices)
            except ValueError as err:
                raise PipelineError(args.labels, f"labels of '{image_id}': {err}") from None
            grid = strided_size(size, stride)
            if keys:
                cams = multiscale_cams(cams_fn, image, scales, flip, grid, mean, std, channels, device)
                cams = normalize_cams(cams).numpy()
            else:
                cams = np.zeros((0, *grid), dtype=np.float32)
                empty += 1
            write_cam_file(cam_path(tmp, image_id), cams, keys, size, stride)
        log.info("wrote %d CAM files to %s (%d without foreground labels; scales %s, flip %s, stride %d)",
                 len(dataset), args.out, empty, scales, flip, stride)


if __name__ == "__main__":
    run_stage(main)
