"""Stage infer_boundary: boundary probability maps for every image of a split.

    python -m pipeline.methods.retab.infer_boundary --params params.yaml --dataset D \\
        --model work/D/fold0/boundary/model.pt --labels work/D/image_labels.json \\
        --split train --out work/D/fold0/boundary/maps --threads 2

Ids: the image-labels file's ``splits.<split>`` list (all train images: base and novel
samples; the maps matter most on the novel ones). Each image goes through the network at
its own size; the stride-4 logits (averaged with those of the mirrored image when
``boundary.infer.flip``, as IRN does) give probabilities by a sigmoid, which are
upsampled bilinearly to 4x the output grid and cropped to the image (the output cell i
covers pixels 4i..4i+3, IRN's convention). Output: ``<out>/<id>.png``, uint8 mode 'L',
``round(p * 255)`` (format and use-time thresholding: :mod:`pipeline.boundary`). The
directory is written under a temporary name and renamed when every map is done.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.boundary import boundary_net_backbone_cfg, check_boundary_params
from pipeline.config import load_params, section
from pipeline.data.batches import normalize_batch
from pipeline.data.labels import read_image_labels_file
from pipeline.data.probability_png import MAP_SUFFIX, write_map
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir
from pipeline.models import BoundaryNet, backbone_normalization
from pipeline.runtime import progress, seed_everything, stage_run
from pipeline.stage import stage_device, stage_parser
from pipeline.training import load_model

# Images of one size go through the network together (the embedded default's are all
# 128x128; VOC's vary and mostly go one by one). Results do not depend on it (up to float rounding): the
# backbone BatchNorm runs on fixed statistics and GroupNorm is per image.
INFER_BATCH = 8


def boundary_probability(model: BoundaryNet, image: torch.Tensor, flip: bool) -> torch.Tensor:
    """``B x H x W`` boundary probabilities of normalised images ``B x 3 x H x W``.

    With ``flip`` the logits of the mirrored images are mirrored back and averaged with
    the direct ones before the sigmoid.
    """
    height, width = image.shape[-2:]
    logits = model(image)
    if flip:
        logits = (logits + model(image.flip(-1)).flip(-1)) / 2
    prob = torch.sigmoid(logits)
    stride = model.out_stride
    up = F.interpolate(prob, size=(prob.shape[-2] * stride, prob.shape[-1] * stride), mode="bilinear",
                       align_corners=False)
    return up[:, 0, :height, :width]


def split_ids(labels_path: str, split: str) -> list[str]:
    """The ids the labels file lists for ``split`` (error naming the file if none)."""
    splits = read_image_labels_file(labels_path).get("splits", {})
    if split not in splits:
        raise PipelineError(labels_path, f"has no 'splits.{split}' id list (known: {', '.join(sorted(splits))})")
    ids = list(splits[split])
    if not ids:
        raise PipelineError(labels_path, f"'splits.{split}' is empty")
    return ids


def same_size_batches(ids: list[str], load_image: Callable[[str], np.ndarray],
                      batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """(ids, B x H x W x 3 images) of consecutive ids whose images share one size."""
    chunk_ids, images = [], []
    for image_id in ids:
        image = load_image(image_id)
        if images and (image.shape != images[0].shape or len(images) == batch_size):
            yield chunk_ids, np.stack(images)
            chunk_ids, images = [], []
        chunk_ids.append(image_id)
        images.append(image)
    if images:
        yield chunk_ids, np.stack(images)


def main(argv=None):
    ap = stage_parser(__doc__, threads=True, inputs=("labels",))
    ap.add_argument("--model", required=True, help="model file (stage train_boundary)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--out", required=True, help="directory of <id>.png maps to write")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    check_boundary_params(section(params, "boundary"))
    flip = bool(section(params, "boundary.infer.flip"))
    dataset = VOCDataset(params["data"], args.split)
    ids = split_ids(args.labels, args.split)
    missing = sorted(set(ids) - set(dataset.ids))
    if missing:
        raise PipelineError(args.labels, f"'splits.{args.split}' lists {len(missing)} id(s) not in "
                            f"{dataset.list_path} (first: '{missing[0]}'; labels made for another dataset?)")
    device = stage_device(args, params)
    seed_everything(int(params["seed"]))

    # The trained weights replace everything: never load (or download) ImageNet weights here.
    model = BoundaryNet(boundary_net_backbone_cfg(params, pretrained=False))
    load_model(args.model, model, expected_meta={**model.meta, "dataset": params["dataset"]})
    model.to(device).eval()
    mean, std = backbone_normalization(params["backbone"])

    with stage_run("infer_boundary", {"model": args.model, "labels": args.labels, "split": args.split,
                                      "images": len(ids)}, {"boundary": params["boundary"]}, device) as log:
        with atomic_dir(args.out) as tmp, torch.inference_mode():
            batches = same_size_batches(ids, dataset.load_image, INFER_BATCH)
            for chunk_ids, images in progress(batches, desc="boundary maps"):
                probs = boundary_probability(model, normalize_batch(images, mean, std).to(device), flip)
                for image_id, prob in zip(chunk_ids, probs.float().cpu().numpy()):
                    write_map(tmp / f"{image_id}{MAP_SUFFIX}", prob)
        log.info("wrote %d boundary maps to %s", len(ids), args.out)


if __name__ == "__main__":
    run_stage(main)
