"""Stage crnet_features: the frozen siamese encoder's features of one split, computed once.

    python -m pipeline.methods.crnet.crnet_features --params params.yaml --dataset D --split val \\
        --out work/D/crnet/features/val.pt --threads 2

The encoder is the shared ImageNet backbone (``params['backbone']``) at
``crnet.encoder.output_stride`` with every block group frozen (CANet/CRNet keep it fixed),
its ``crnet.encoder.levels`` concatenated at the finest of their grids, on the image
resized by ``crnet.encoder.input_scale`` (:class:`pipeline.data.fewshot_features.Encoder`).
Every few-shot stage of the fold reads this file instead of running the encoder: train_crnet
(train split), test_crnet and the prototype floor (val split). Layout: the feature-cache
format of :func:`pipeline.segmentation.read_feature_cache` (float16 size groups) with
``meta`` = :func:`pipeline.data.fewshot_features.encoder_cfg`.
"""
from __future__ import annotations

import torch

from pipeline.config import load_params
from pipeline.data.fewshot_features import Encoder, encoder_cfg
from pipeline.data.voc import VOCDataset
from pipeline.errors import run_stage
from pipeline.io import atomic_path
from pipeline.models import backbone_normalization
from pipeline.runtime import seed_everything, stage_run
from pipeline.segmentation import CACHE_FORMAT, split_features
from pipeline.stage import stage_device, stage_parser


def main(argv=None):
    ap = stage_parser(__doc__, threads=True)
    ap.add_argument("--split", required=True, choices=("train", "val"),
                    help="train (train_crnet) or val (the episodes)")
    ap.add_argument("--out", required=True, help="feature cache to write")
    args = ap.parse_args(argv)
    params = load_params(args.params, args.dataset)
    cfg = encoder_cfg(params)  # checked before any work
    device = stage_device(args, params)
    seed_everything(int(params["seed"]))
    dataset = VOCDataset(params["data"], args.split)
    with stage_run("crnet_features", {"split": args.split, "images": len(dataset)},
                   {"crnet.encoder": cfg, "backbone": params["backbone"]}, device) as log:
        encoder = Encoder(params).to(device)
        mean, std = backbone_normalization(params["backbone"])
        groups = split_features(encoder, dataset, mean, std, device, desc="crnet features")
        with atomic_path(args.out) as tmp:
            torch.save({"format": CACHE_FORMAT, "ids": list(dataset.ids), "groups": groups, "meta": cfg}, tmp)
        log.info("%d images, levels %s (%s channels), grids %s -> %s", len(dataset), cfg["levels"],
                 cfg["level_channels"], sorted({tuple(g["features"].shape[2:]) for g in groups}), args.out)


if __name__ == "__main__":
    run_stage(main)
