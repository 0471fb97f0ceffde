"""Stage seg_features: the segmentation net's backbone features, computed once per split.

    python -m pipeline.stages.seg_features --params params.yaml --dataset D --split train \\
        --out work/D/shared/seg/features/train.pt --threads 2

Used only with ``segmentation.feature_cache: true``, which needs a backbone that does not
train inside the segmentation net (``segmentation.frozen_blocks`` covers every block
group). Then every segmentation net of the DAG (the six RETAB rows, the L-Net branch's)
shares the same backbone output for a given image; only the heads differ. This stage
computes it once (float16, on the image resized by ``segmentation.input_scale``) and
stages train_seg / predict_seg train and run only the head on it. On the embedded default
that turns six backbone passes per epoch per net into one pass per image for the DAG.

What the cache gives up: random rescale/crop augmentation (the features are of the whole
image at one scale). Flip augmentation stays: train_seg also trains on the mirrored
feature maps (not the features of mirrored images: a stride-2 network is only
approximately flip-equivariant, which is fine for an augmentation and halves the cost).

Images of a split may differ in size (VOC, MSRC: 320x213, 213x320, 320x240, ...): the
features are grouped by image size (:func:`pipeline.segmentation.size_groups`, groups in
the order of their first image) and the backbone runs on batches of one group; train_seg
batches within a group, predict_seg answers each image at its own size. A split of one
size is one group holding every image in split order, computed in the same batches as the
single-size format v1 (the same features).

File (``torch.save``; written atomically): ``format`` (:data:`CACHE_FORMAT`), ``ids`` (split
order), ``groups`` (per image size: ``image_size`` (H, W), ``index`` (positions in ``ids``),
``features`` (len(index) x C x h x w float16)) and ``meta`` (:func:`cache_meta`: backbone,
stride, input scale, weights) which train_seg / predict_seg compare with their own network's.
"""
from __future__ import annotations

import torch

from pipeline.config import load_params
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_path
from pipeline.models import backbone_normalization
from pipeline.runtime import seed_everything, stage_run
from pipeline.segmentation import (
    CACHE_FORMAT, build_seg_model, cache_meta, check_frozen_backbone, feature_cache_enabled, split_features)
from pipeline.stage import stage_device, stage_parser


def main(argv=None):
    ap = stage_parser(__doc__, threads=True)
    ap.add_argument("--split", required=True, help="split to compute (train, val)")
    ap.add_argument("--out", required=True, help="cache file to write")
    args = ap.parse_args(argv)


    params = load_params(args.params, args.dataset)
    if not feature_cache_enabled(params):
        raise PipelineError("params.yaml", "segmentation.feature_cache is false: nothing uses this stage's output")
    dataset = VOCDataset(params["data"], args.split)
    device = stage_device(args, params)
    seed_everything(int(params["seed"]))
    model = build_seg_model(params, dataset.num_classes)
    check_frozen_backbone(model)
    model = model.to(device).eval()
    mean, std = backbone_normalization(params["backbone"])
    inputs = {"split": args.split, "images": len(dataset)}
    with stage_run("seg_features", inputs, {"segmentation": params["segmentation"], "backbone": params["backbone"]},
                   device) as log:
        groups = split_features(model.features, dataset, mean, std, device)
        document = {"format": CACHE_FORMAT, "ids": list(dataset.ids), "groups": groups, "meta": cache_meta(model)}
        with atomic_path(args.out) as tmp:
            torch.save(document, tmp)
        shapes = ", ".join(f"{len(g['index'])} at {g['image_size'][1]}x{g['image_size'][0]}: "
                           f"{tuple(g['features'].shape[1:])}" for g in groups)
        log.info("%d images, features float16 (%s; %.1f MB) -> %s", len(dataset), shapes,
                 sum(g["features"].numel() for g in groups) * 2 / 2 ** 20, args.out)


if __name__ == "__main__":
    run_stage(main)
