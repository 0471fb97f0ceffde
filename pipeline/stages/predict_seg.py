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
The network comes from the params (:func:`pipeline.segmentation.build_seg_model`; the inference itself is
:func:`pipeline.segmentation.predict_label_map`, shared with stage segment_folder)
and must match the model file's metadata (architecture, rates, classes): a mismatch is a
one-line error naming the file.
"""
from __future__ import annotations


import torch

from pipeline.config import load_params
from pipeline.data.label_png import label_image
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir
from pipeline.models import backbone_normalization
from pipeline.runtime import progress, stage_run
from pipeline.segmentation import (
    cache_positions, cached_features, feature_cache_enabled, load_feature_cache, load_seg_model, predict_config,
    predict_label_map)
from pipeline.stage import stage_device, stage_parser


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
    model = load_seg_model(params, args.model, dataset.class_names)
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
