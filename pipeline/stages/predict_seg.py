"""Stage predict_seg: class-index predictions of a trained segmentation net on a split.

    python -m pipeline.stages.predict_seg --params params.yaml --dataset D \\
        --model work/D/shared/seg/oracle/model.pt --split val --out DIR --threads 2

Writes ``DIR/<id>.png`` (uint8 class indices, VOC palette, the image's size) for every id
of the split; the directory appears complete or not at all.

Inference (DeepLab testing): the image is rescaled by each of
``segmentation.predict.scales`` (single scale 1.0 by default; DeepLab's multi-scale
testing uses e.g. 0.5 0.75 1.0 1.25 1.5), the logits are brought back to the image size
(bilinear), turned into class probabilities and averaged over scales and, with
``segmentation.predict.flip``, over the mirrored image too; the prediction is the argmax.
The network comes from the params (:func:`pipeline.stages.train_seg.build_seg_model`)
and must match the model file's metadata (architecture, rates, classes): a mismatch is a
one-line error naming the file.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import check_range, load_params, section
from pipeline.data.augment import resize_image
from pipeline.data.batches import normalize_batch
from pipeline.data.label_png import label_image
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir
from pipeline.models import backbone_normalization
from pipeline.runtime import progress, stage_run
from pipeline.segmentation import (
    build_seg_model, cache_positions, cached_features, feature_cache_enabled, load_feature_cache, model_meta)
from pipeline.stage import stage_device, stage_parser
from pipeline.training import load_model


def predict_config(params: dict) -> dict:
    """``segmentation.predict`` checked: a non-empty list of positive scales and a flip flag."""
    scales = section(params, "segmentation.predict.scales")
    flip = section(params, "segmentation.predict.flip")
    if not isinstance(scales, list) or not scales:
        raise PipelineError("params.yaml", "segmentation.predict.scales must be a non-empty list")
    for scale in scales:
        check_range(scale, "segmentation.predict.scales[]", 0, low_open=True)
    return {"scales": [float(s) for s in scales], "flip": bool(flip)}


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of the image rescaled by ``scale`` (at least 1 px each)."""
    return max(1, round(height * scale)), max(1, round(width * scale))


@torch.no_grad()
def class_probabilities(model: torch.nn.Module, image: np.ndarray, scales: list[float], flip: bool,
                        mean, std, device: str | torch.device,
                        memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``C x H x W`` softmax probabilities of an HxWx3 uint8 image, averaged over scales (+ flip)."""
    height, width = image.shape[:2]
    total = None
    for scale in scales:
        scaled = resize_image(image, scaled_size(height, width, scale))
        x = normalize_batch(scaled[None], mean, std).to(device)
        if flip:
            x = torch.cat([x, torch.flip(x, dims=[3])])
        logits = model(x.contiguous(memory_format=memory_format))
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        probs = logits.float().softmax(dim=1)
        if flip:
            probs = probs[:1] + torch.flip(probs[1:], dims=[3])
        total = probs[0] if total is None else total + probs[0]
    return total / (len(scales) * (2 if flip else 1))


def predict_label_map(model: torch.nn.Module, image: np.ndarray, scales: list[float], flip: bool,
                      mean, std, device: str | torch.device,
                      memory_format: torch.memory_format = torch.contiguous_format) -> np.ndarray:
    """HxW uint8 argmax of :func:`class_probabilities`."""
    probs = class_probabilities(model, image, scales, flip, mean, std, device, memory_format)
    return probs.argmax(dim=0).to(torch.uint8).cpu().numpy()


def main(argv=None):
    ap = stage_parser(__doc__, threads=True)
    ap.add_argument("--model", required=True, help="model file written by stage train_seg")
    ap.add_argument("--split", default="val", help="split to predict (default: val)")
    ap.add_argument("--out", required=True, help="output directory of <id>.png predictions")
    ap.add_argument("--features", default=None, help="the split's feature cache (stage seg_features; "
                    "with segmentation.feature_cache: true)")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    cfg = predict_config(params)
    dataset = VOCDataset(params["data"], args.split)
    device = stage_device(args, params)
    # The model file holds every weight: no need to load the ImageNet ones first.
    model = build_seg_model({**params, "backbone": {**params["backbone"], "pretrained": False}}, dataset.num_classes)
    load_model(args.model, model, model_meta(model, dataset))
    model.eval()
    memory_format = torch.channels_last if device == "cpu" else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    mean, std = backbone_normalization(params["backbone"])

    used = {"segmentation": params["segmentation"], "backbone": params["backbone"]}
    inputs = {"model": args.model, "split": args.split, "images": len(dataset), **cfg}
    cache = None
    if feature_cache_enabled(params):
        if args.features is None:
            raise PipelineError("--features", "segmentation.feature_cache is true: give the split's feature cache "
                                "(stage seg_features)")
        if cfg["scales"] != [1.0] or cfg["flip"]:
            raise PipelineError("params.yaml", "segmentation.predict scales/flip need the images: with "
                                "segmentation.feature_cache: true keep scales [1.0] and flip false")
        cache = load_feature_cache(args.features, model, dataset.ids)
    with stage_run("predict_seg", inputs, used, device) as log, atomic_dir(args.out) as tmp:
        if cache is not None:
            positions = cache_positions(cache)
            for image_id in progress(dataset.ids, desc="predict_seg (cached features)"):
                features, size = cached_features(cache, positions, image_id)  # each image at its own size
                with torch.no_grad():
                    logits = model.logits_from_features(features.float().to(device), size)
                labels = logits[0].argmax(dim=0).to(torch.uint8).cpu().numpy()
                label_image(labels).save(tmp / f"{image_id}.png", format="PNG")
        else:
            for image_id in progress(dataset.ids, desc="predict_seg"):
                image = dataset.load_image(image_id)
                labels = predict_label_map(model, image, cfg["scales"], cfg["flip"], mean, std, device, memory_format)
                label_image(labels).save(tmp / f"{image_id}.png", format="PNG")
        log.info("%d predictions written to %s", len(dataset), args.out)


if __name__ == "__main__":
    run_stage(main)
