"""Stage train_boundary: RETAB's boundary network, trained on one fold's base samples.

    python -m pipeline.methods.retab.train_boundary --params params.yaml --dataset D \\
        --fold-file work/D/folds/fold0.json --out work/D/fold0/boundary/model.pt \\
        --history work/D/fold0/boundary/history.tsv --threads 2

Only the fold's ``base_samples`` are used, and only their pixel labels: novel-class
pixels a base sample may still hold (``novel_min_pixels`` > 1, CamVid) become ignore
(:func:`pipeline.data.folds.mask_novel_pixels`), and so does a margin of
``boundary.label_width`` pixels around them, where "boundary or not" would depend on the
novel object. Boundary targets come from the ground truth
(:func:`pipeline.data.boundary_labels.boundary_target`: VOC's 255 outline band where the
dataset draws one, label changes otherwise), split into boundary / non-boundary
foreground / non-boundary background for RETAB's loss L_B
(:func:`pipeline.losses.boundary_loss`; every non-boundary pixel is foreground when the
dataset has no background class).

Targets are derived *after* the random rescale-crop-flip, from the augmented class mask:
nearest-neighbour downscaling drops whole rows/columns of a 1-px outline band (the
embedded default's), and a target derived before the rescale then labels ~5% of the
object/background contacts as non-boundary on both sides (measured on embedded fold 0 at
scales 0.5-1.5); label changes in the augmented mask are always marked. The network
predicts at stride 4; the target is brought there with
:func:`pipeline.losses.boundary_target_at_stride` (a cell is boundary if any pixel in it
is), so thin boundaries survive the downsampling (nearest sampling would keep a 1-px line
in only 1 of 4 cell rows).

Optimisation (PSA/IRN conventions): SGD with momentum, backbone at ``lr`` and the new
layers at 10x, poly decay per step, ``boundary.train`` params. A checkpoint is written
after every epoch next to ``--out`` (``<out stem>.checkpoint.pt``); a rerun with the same
params resumes after the last finished epoch and the checkpoint is removed once the model
and history are written. ``history.tsv``: one row per epoch with the loss and its three
terms, learning rates, batches and seconds.
"""
from __future__ import annotations


import numpy as np
import torch
from scipy import ndimage

from pipeline.boundary import boundary_net_backbone_cfg, check_boundary_params
from pipeline.config import load_params, params_hash, section
from pipeline.data.batches import training_batches
from pipeline.data.boundary_labels import boundary_target
from pipeline.data.folds import load_base_samples, mask_novel_pixels
from pipeline.data.voc import VOCDataset
from pipeline.errors import run_stage
from pipeline.losses import BL_IGNORE, boundary_loss_parts, boundary_loss_target, boundary_target_at_stride
from pipeline.models import BoundaryNet, backbone_normalization
from pipeline.runtime import seed_everything, stage_run
from pipeline.stage import stage_device, stage_parser
from pipeline.training import count_steps, poly_scheduler, train_and_save, train_config


def base_sample_loss_target(mask: np.ndarray, novel_region: np.ndarray, *, source: str, width: int,
                            background_index: int | None, ignore_index: int) -> np.ndarray:
    """L_B target (:mod:`pipeline.losses` encoding) of one base sample's class mask.

    ``mask``: class indices with novel-class pixels already set to ``ignore_index``;
    ``novel_region``: bool map of where those novel pixels were. Pixels within
    ``width`` (Chebyshev) of a novel pixel are ignore: whether they lie on a boundary
    depends on the novel object, which base-sample supervision must not see.
    """
    target = boundary_loss_target(boundary_target(mask, source=source, width=width, ignore_index=ignore_index),
                                  mask, background_index, ignore_index)
    if novel_region.any():
        side = 2 * width + 1
        near = ndimage.binary_dilation(novel_region, structure=np.ones((1, side), bool))
        near = ndimage.binary_dilation(near, structure=np.ones((side, 1), bool))
        target[near] = BL_IGNORE
    return target


def batch_loss_targets(masks: torch.Tensor, novel: torch.Tensor, **target_args) -> torch.Tensor:
    """``B x H x W`` uint8 L_B targets from augmented masks and novel maps (long tensors)."""
    masks_np = masks.numpy().astype(np.uint8)
    novel_np = novel.numpy() == 1  # padding is ignore_index, not novel
    return torch.from_numpy(np.stack([base_sample_loss_target(m, n, **target_args)
                                      for m, n in zip(masks_np, novel_np)]))


def main(argv=None):
    ap = stage_parser(__doc__, training=True)
    ap.add_argument("--fold-file", required=True, help="fold JSON (stage make_folds)")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    check_boundary_params(section(params, "boundary"))
    cfg = train_config(params, "boundary.train")
    data_cfg = params["data"]
    dataset = VOCDataset(data_cfg, "train")
    fold, base_ids, novel = load_base_samples(args.fold_file, dataset, params["dataset"])
    device = stage_device(args, params)
    seed = int(params["seed"])
    seed_everything(seed)

    target_args = {"source": data_cfg["boundary_source"], "width": int(section(params, "boundary.label_width")),
                   "background_index": dataset.background_index, "ignore_index": dataset.ignore_index}
    used = {"boundary": params["boundary"], "backbone": params["backbone"], "data": data_cfg, "seed": seed}
    inputs = {"fold_file": args.fold_file, "base_samples": len(base_ids), "novel_classes": novel}
    with stage_run("train_boundary", inputs, used, device) as log:
        mean, std = backbone_normalization(params["backbone"])

        def load(image_id: str) -> tuple[np.ndarray, list[np.ndarray]]:
            image, mask = dataset.load_sample(image_id)
            novel_region = np.isin(mask, novel).astype(np.uint8)
            return image, [mask_novel_pixels(mask, novel, dataset.ignore_index), novel_region]

        def make_batches(epoch: int, rng: np.random.Generator):
            for batch in training_batches(base_ids, load, batch_size=cfg["batch_size"], crop=cfg["crop"],
                                          scale_range=tuple(cfg["scale_range"]), rng=rng, mean=mean, std=std,
                                          ignore_index=dataset.ignore_index):
                masks, novel_maps = batch["targets"]
                yield {"image": batch["image"], "target": batch_loss_targets(masks, novel_maps, **target_args)}

        model = BoundaryNet(boundary_net_backbone_cfg(params))
        stride = model.out_stride

        def step(net: torch.nn.Module, batch: dict):
            logits = net(batch["image"])
            return boundary_loss_parts(logits, boundary_target_at_stride(batch["target"], stride))

        groups = model.param_groups(cfg["lr"])
        optimizer = torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"],
                                    weight_decay=cfg["weight_decay"])
        steps = count_steps(len(base_ids), cfg["batch_size"]) or 1  # fewer ids than a batch: one step
        scheduler = poly_scheduler(optimizer, steps * cfg["epochs"])
        meta = {**model.meta, "dataset": params["dataset"], "boundary_source": target_args["source"],
                "label_width": target_args["width"], "fold": fold.get("fold"),
                "novel_classes": novel, "base_samples_hash": params_hash(base_ids),
                "params_hash": params_hash(used)}
        train_and_save(model, make_batches, step, optimizer, scheduler, cfg["epochs"], args.out, args.history,
                       log, seed, meta, device=device)


if __name__ == "__main__":
    run_stage(main)
