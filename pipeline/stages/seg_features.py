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
approximately flip-equivariant, which is fine for an augmentation and halves the cost). Every image of a split must have the same size (the
features are one tensor; an image of another size is a one-line error naming it).

File (``torch.save``; written atomically): ``format``, ``ids``, ``image_size`` (H, W),
``features`` (N x C x h x w float16) and ``meta`` (:func:`cache_meta`: backbone, stride, input scale,
weights) which train_seg / predict_seg compare with their own network's.
"""
from __future__ import annotations


import numpy as np
import torch

from pipeline.config import load_params
from pipeline.data.batches import normalize_batch
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_path
from pipeline.models import DeepLabASPP, backbone_normalization
from pipeline.runtime import progress, seed_everything, stage_run
from pipeline.segmentation import CACHE_FORMAT, cache_meta, check_frozen_backbone, feature_cache_enabled
from pipeline.segmentation import build_seg_model
from pipeline.stage import stage_device, stage_parser

BATCH = 16  # images per backbone pass (memory only: the features do not depend on it)


@torch.no_grad()
def split_features(model: DeepLabASPP, dataset: VOCDataset, mean, std, device) -> torch.Tensor:
    """``N x C x h x w`` float16 features of every image of ``dataset``."""
    size = None
    chunks = []
    for start in progress(range(0, len(dataset.ids), BATCH), desc="seg features",
                          total=-(-len(dataset.ids) // BATCH)):
        ids = dataset.ids[start:start + BATCH]
        images = []
        for image_id in ids:
            image = dataset.load_image(image_id)
            size = size or image.shape[:2]
            if image.shape[:2] != size:
                raise PipelineError(dataset.image_path(image_id), f"is {image.shape[1]}x{image.shape[0]}, the "
                                    f"split's other images {size[1]}x{size[0]}: segmentation.feature_cache needs "
                                    "one image size (set it to false for this dataset)")
            images.append(image)
        x = normalize_batch(np.stack(images), mean, std).to(device)
        chunks.append(model.features(x).to(torch.float16).cpu())
    return torch.cat(chunks)


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
        features = split_features(model, dataset, mean, std, device)
        height, width = dataset.load_image(dataset.ids[0]).shape[:2]
        document = {"format": CACHE_FORMAT, "ids": list(dataset.ids), "image_size": [height, width],
                    "features": features, "meta": cache_meta(model)}
        with atomic_path(args.out) as tmp:
            torch.save(document, tmp)
        log.info("%d images: features %s float16 (%.1f MB) -> %s", len(dataset), tuple(features.shape[1:]),
                 features.numel() * 2 / 2 ** 20, args.out)


if __name__ == "__main__":
    run_stage(main)
