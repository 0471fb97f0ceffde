"""Stage train_affinity: the AffinityNet of PSA, trained on pixel-pair labels (RETAB Sec. 3.2).

    python -m pipeline.methods.retab.train_affinity --params params.yaml --dataset D \\
        --variant cam|gt|retab [--fold-file work/D/folds/foldK.json] [--boundary DIR] \\
        --confident work/D/fold<k>/cam/confident --labels work/D/image_labels.json \\
        --out model.pt --history history.tsv [--threads N]

Pair labels by variant (which label map supervises each train image):

* ``cam``   (PSA): the confident CAM labels of every train image (stage confident_labels:
  class, or 255 where neither confidently background nor foreground).
* ``gt``    (mixed supervision): base samples of the fold take the ground truth (novel-
  class pixels turned to ignore first, :func:`pipeline.data.folds.mask_novel_pixels`),
  novel samples their confident CAM labels.
* ``retab`` like ``gt``, but a novel sample's pairs are kept only where neither pixel is a
  predicted boundary pixel (non-boundary mask of the fold's boundary map with
  ``boundary.tau`` / ``boundary.erosion``, :func:`pipeline.boundary.non_boundary_mask`).

Each label map is cropped with its image (``training_batches``: PSA/IRN random scale,
crop, flip), then reduced to the embedding grid by pixel-centre nearest sampling (PSA/IRN
rescale the cropped label by 1/8 with nearest). Pairs within ``affinity.radius`` on that
grid are bg-pos / fg-pos / neg (:func:`pipeline.propagation.affinity.pair_labels`); loss
``bg/4 + fg/4 + neg/2`` (:func:`~pipeline.propagation.affinity.affinity_loss`).

Optimisation: SGD with ``affinity.train.momentum`` and weight decay, backbone at ``lr``,
new layers at ``10 * lr``, poly decay over all steps. A checkpoint ``<out stem>.checkpoint.pt``
is written after every epoch; a rerun with the same settings resumes from it (bit-identical
on CPU) and it is removed once the model file is written. ``history.tsv``: one row per
epoch (loss terms, pair counts, learning rate, seconds).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pipeline.boundary import boundary_config
from pipeline.config import check_range, load_params, params_hash, section
from pipeline.data.augment import nearest_indices
from pipeline.data.batches import batches_per_epoch, training_batches
from pipeline.data.folds import load_fold, mask_novel_pixels
from pipeline.data.label_png import read_class_png, read_sized_png
from pipeline.data.labels import check_labels_cover, load_image_labels
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import check_files_exist
from pipeline.runtime import choose_device, seed_everything, set_threads, stage_run
from pipeline.stage import stage_parser
from pipeline.training import train_config

VARIANTS = ("cam", "gt", "retab")
# Value of the non-boundary target map: 1 = pair may be supervised; 0 = boundary pixel;
# the crop's padding gets the ignore index (the label there is ignore anyway).
NON_BOUNDARY = 1


# --------------------------------------------------------------------------- params

def affinity_train_config(params: dict) -> dict:
    """``affinity.train`` checked (ranges name the key) and ``affinity.radius``, ``feat_dim``."""
    cfg = train_config(params, "affinity.train")
    check_range(cfg["crop"], "affinity.train.crop", low=8)
    check_range(cfg["epochs"], "affinity.train.epochs", low=1)
    from pipeline.propagation.affinity import check_radius

    cfg["radius"] = check_radius(section(params, "affinity.radius"))
    cfg["feat_dim"] = int(params["affinity"].get("feat_dim", 448))
    return cfg


# --------------------------------------------------------------------------- label maps

def read_confident_labels(directory: Path, image_id: str, shape: tuple[int, int], num_classes: int,
                          ignore_index: int) -> np.ndarray:
    """The confident-label PNG of ``image_id``: image-sized, class ids or ``ignore_index``."""
    return read_class_png(directory / f"{image_id}.png", *shape, num_classes, ignore_index, "confident labels")


def read_non_boundary(directory: Path, image_id: str, shape: tuple[int, int], tau: float,
                      erosion: int) -> np.ndarray:
    """uint8 map, 1 where the boundary map of ``image_id`` says non-boundary, else 0."""
    from pipeline.boundary import non_boundary_mask

    prob = read_sized_png(directory / f"{image_id}.png", *shape, "boundary map")
    return np.asarray(non_boundary_mask(prob, tau, erosion), dtype=bool).astype(np.uint8) * NON_BOUNDARY


def sample_sources(variant: str, ids: list[str], fold: dict | None) -> dict[str, str]:
    """Where each train image's pair labels come from: ``'gt'`` or ``'cam'``.

    ``cam``: every image from CAM labels; ``gt``/``retab``: the fold's base samples from
    ground truth and its novel samples from CAM labels (every train id must be one of them).
    """
    if variant == "cam":
        return dict.fromkeys(ids, "cam")
    sources = {i: "gt" for i in fold["base_samples"]}
    sources.update({i: "cam" for i in fold["novel_samples"]})
    return sources


def make_loader(dataset: VOCDataset, variant: str, sources: dict[str, str], novel: list[int],
                confident_dir: Path, boundary_dir: Path | None, tau: float, erosion: int
                ) -> Callable[[str], tuple[np.ndarray, list[np.ndarray]]]:
    """``load(id) -> (image, [label map] (+ [non-boundary map] for retab))`` for training_batches."""
    def load(image_id: str) -> tuple[np.ndarray, list[np.ndarray]]:
        image = dataset.load_image(image_id)
        shape = image.shape[:2]
        if sources[image_id] == "gt":
            labels = mask_novel_pixels(dataset.load_mask(image_id), novel, dataset.ignore_index)
        else:
            labels = read_confident_labels(confident_dir, image_id, shape, dataset.num_classes,
                                           dataset.ignore_index)
        if variant != "retab":
            return image, [labels]
        if sources[image_id] == "gt":
            valid = np.full(shape, NON_BOUNDARY, np.uint8)  # pixel labels: every pair counts
        else:
            valid = read_non_boundary(boundary_dir, image_id, shape, tau, erosion)
        return image, [labels, valid]
    return load


def reduce_to_grid(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``B x H x W`` label maps -> ``B x h x w`` by pixel-centre nearest sampling.

    Cell ``(i, j)`` takes the pixel nearest to its centre ``((i + .5) H / h, (j + .5) W / w)``
    (PSA/IRN shrink the cropped label with nearest-neighbour resampling).
    """
    rows = torch.from_numpy(nearest_indices(maps.shape[-2], grid[0])).to(maps.device)
    cols = torch.from_numpy(nearest_indices(maps.shape[-1], grid[1])).to(maps.device)
    return maps.index_select(-2, rows).index_select(-1, cols)


def affinity_step(radius: int, ignore_index: int, background_index: int | None):
    """``step(model, batch) -> (loss, parts)`` for :func:`pipeline.training.train`."""
    from pipeline.propagation.affinity import affinity_loss, pair_labels, pairwise_affinity

    def step(model, batch):
        features = model(batch["image"])
        grid = tuple(features.shape[-2:])
        labels = reduce_to_grid(batch["targets"][0], grid)
        valid = None
        if len(batch["targets"]) > 1:
            valid = reduce_to_grid(batch["targets"][1], grid) == NON_BOUNDARY
        pairs = pair_labels(labels, radius, ignore_index, background_index, valid)
        return affinity_loss(pairwise_affinity(features, radius), pairs)
    return step


# --------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    ap = stage_parser(__doc__, training=True, inputs=("labels",))
    ap.add_argument("--variant", required=True, choices=VARIANTS)
    ap.add_argument("--fold-file", default=None, help="fold JSON (variants gt, retab)")
    ap.add_argument("--boundary", default=None, help="boundary maps <id>.png (variant retab)")
    ap.add_argument("--confident", required=True, help="confident CAM labels <id>.png (stage confident_labels)")
    args = ap.parse_args(argv)
    if args.variant != "cam" and not args.fold_file:
        ap.error(f"--variant {args.variant} needs --fold-file")
    if args.variant == "retab" and not args.boundary:
        ap.error("--variant retab needs --boundary")
    return args


def main(argv=None):
    args = parse_args(argv)
    params = load_params(args.params, args.dataset)
    cfg = affinity_train_config(params)
    tau, erosion = boundary_config(params) if args.variant == "retab" else (0.0, 0)
    set_threads(args.threads)
    seed = int(params["seed"])
    seed_everything(seed)

    dataset = VOCDataset(params["data"], "train")
    ids = list(dataset.ids)
    image_labels = load_image_labels(args.labels)
    check_labels_cover(image_labels, ids, args.labels, "train")
    fold = load_fold(args.fold_file) if args.fold_file else None
    sources = sample_sources(args.variant, ids, fold)
    outside = [i for i in ids if i not in sources]
    if outside:
        raise PipelineError(args.fold_file, f"train image '{outside[0]}' is neither a base nor a novel sample "
                            "(fold file made for another split?)")
    novel = [int(c) for c in fold["novel_classes"]] if fold else []
    cam_ids = [i for i in ids if sources[i] == "cam"]
    confident_dir = Path(args.confident)
    check_files_exist(confident_dir, cam_ids, ".png", "confident labels", listed="train images")
    boundary_dir = Path(args.boundary) if args.boundary else None
    if args.variant == "retab":
        check_files_exist(boundary_dir, cam_ids, ".png", "boundary map", listed="train images")

    from pipeline.models import AffinityNet, backbone_normalization
    from pipeline.training import poly_scheduler, train_and_save

    device = choose_device(params.get("device", "auto"))
    stage_params = {"affinity": params["affinity"], "backbone": params["backbone"], "seed": seed,
                    "variant": args.variant, "boundary": [tau, erosion]}
    inputs = {"variant": args.variant, "confident": args.confident, "fold_file": args.fold_file,
              "boundary": args.boundary, "images": len(ids), "gt_samples": len(ids) - len(cam_ids)}
    with stage_run("train_affinity", inputs, stage_params, device) as log:
        model = AffinityNet(params["backbone"], feat_dim=cfg["feat_dim"])
        mean, std = backbone_normalization(params["backbone"])
        groups = model.param_groups(cfg["lr"])
        optimizer = torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"],
                                    weight_decay=cfg["weight_decay"])
        steps = cfg["epochs"] * batches_per_epoch(len(ids), cfg["batch_size"])
        scheduler = poly_scheduler(optimizer, steps)
        load = make_loader(dataset, args.variant, sources, novel, confident_dir, boundary_dir, tau, erosion)

        def make_batches(epoch, rng):
            return training_batches(ids, load, batch_size=cfg["batch_size"], crop=cfg["crop"],
                                    scale_range=tuple(cfg["scale_range"]), rng=rng, mean=mean, std=std,
                                    ignore_index=dataset.ignore_index)

        run_meta = {"stage": "train_affinity", "params": params_hash(stage_params),
                    "inputs": params_hash({"ids": ids, "sources": sources, "novel": novel})}
        model_meta = {**model.meta, "variant": args.variant, "radius": cfg["radius"], "dataset": dataset.name,
                      "mean": list(mean), "std": list(std)}
        history = train_and_save(model, make_batches,
                                 affinity_step(cfg["radius"], dataset.ignore_index, dataset.background_index),
                                 optimizer, scheduler, cfg["epochs"], args.out, args.history, log, seed, run_meta,
                                 device=device, model_meta=model_meta)
        log.info("variant %s: %d images (%d with ground-truth pairs), final loss %.4f",
                 args.variant, len(ids), len(ids) - len(cam_ids), history[-1]["loss"])


if __name__ == "__main__":
    run_stage(main)
