"""Stage train_seg: the DeepLab-style segmentation network of every table row.

    python -m pipeline.stages.train_seg --params params.yaml --dataset D \\
        --supervision {gt,pseudo,mixed} [--pseudo DIR] [--fold-file F] \\
        --labels work/D/image_labels.json --out model.pt --history history.tsv --threads 2

What supervises each train image (``--supervision``):

* ``gt``     ground-truth mask of every train image (the Fully Oracle row);
* ``pseudo`` the pseudo-label PNG ``DIR/<id>.png`` of every train image (pure WSSS rows);
* ``mixed``  ground truth for the fold's ``base_samples``, pseudo labels for its
  ``novel_samples`` (weak-shot rows; the L-Net branch's strong/weak split likewise).
  A base sample's novel-class pixels become ignore (:func:`mask_novel_pixels`): a no-op
  under the PASCAL-5i rule (base samples hold none), needed with ``novel_min_pixels`` > 1.

Pseudo labels are checked before training (every listed image has one, of the image's
size, holding class ids or the ignore index 255); each problem is a one-line error naming
the file. ``--labels`` (image-level labels) must cover every train image: it ties the run
to the dataset the pseudo labels were made for.

Network and optimisation: :class:`pipeline.models.DeepLabASPP` (``segmentation.head``:
v3 = DeepLab-v3 ASPP + 3x3 conv + classifier, v2 = DeepLab-v2's summed atrous
classifiers; ASPP rates ``segmentation.aspp_rates``, null = the DeepLab default for the
output stride) on the backbone of ``params['backbone']`` (output stride
``segmentation.output_stride``, null = the backbone's; ``segmentation.frozen_blocks``,
null = the backbone's), pixel cross-entropy with ignore 255, SGD with momentum (or AdamW:
``segmentation.train.optimizer``), backbone at ``lr`` and the new layers at 10x, poly
decay (power ``poly_power``) per step. Batches come from
:func:`pipeline.data.batches.training_batches` (random rescale, crop, flip). A checkpoint
is written after every epoch next to ``--out`` (``<out stem>.checkpoint.pt``); a rerun
with the same inputs and params resumes after the last finished epoch, and the checkpoint
is removed once the model and history are written. ``history.tsv``: epoch, loss, lr
(backbone; the head's is 10x), seconds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.config import load_params, params_hash
from pipeline.data.batches import training_batches
from pipeline.data.folds import load_fold
from pipeline.data.labels import check_labels_cover, load_image_labels
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.losses import segmentation_ce
from pipeline.models import backbone_normalization
from pipeline.runtime import seed_everything, stage_run
from pipeline.segmentation import (
    GT, PSEUDO, SUPERVISIONS, build_seg_model, cache_positions, check_frozen_backbone, check_pseudo_labels,
    directory_fingerprint, feature_cache_enabled, load_feature_cache, load_target, model_meta, target_sources)
from pipeline.stage import stage_device, stage_parser
from pipeline.training import count_steps, poly_scheduler, train_and_save, train_config

TRAIN_KEYS = ("crop", "scale_range", "batch_size", "epochs", "optimizer", "lr", "momentum", "weight_decay", "loss_stride",
              "poly_power")
OPTIMIZERS = ("sgd", "adamw")


# --------------------------------------------------------------------------- params


def make_optimizer(groups: list[dict], cfg: dict) -> torch.optim.Optimizer:
    """SGD with momentum (DeepLab/PSA/IRN) or AdamW, over the backbone/head param groups."""
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    raise PipelineError("params.yaml", f"segmentation.train.optimizer = {cfg['optimizer']!r} is not one of "
                        f"{', '.join(OPTIMIZERS)}")


# --------------------------------------------------------------------------- targets


def skip_nan_fill() -> None:
    """Keep deterministic algorithms but stop filling every new tensor with NaN.

    ``seed_everything`` enables ``torch.use_deterministic_algorithms``, which also turns on
    ``fill_uninitialized_memory`` (a debugging aid that makes reads of uninitialised
    memory visible). Measured on a CPU training step of this network: ~40% of the time in
    ``aten::fill_``. Results stay bit-identical: the kernels never read that memory.
    """
    torch.utils.deterministic.fill_uninitialized_memory = False


def image_training(model, ids, sources, dataset, pseudo_dir, novel_classes, cfg, params, device):
    """(make_batches, step, model) of the usual training: random rescale, crop and flip of images."""
    mean, std = backbone_normalization(params["backbone"])

    def load(image_id: str) -> tuple[np.ndarray, list[np.ndarray]]:
        image = dataset.load_image(image_id)
        return image, [load_target(image_id, sources[image_id], dataset, image.shape[:2], pseudo_dir,
                                   novel_classes)]

    def make_batches(epoch: int, rng: np.random.Generator):
        return training_batches(ids, load, batch_size=cfg["batch_size"], crop=cfg["crop"],
                                scale_range=tuple(cfg["scale_range"]), rng=rng, mean=mean, std=std,
                                ignore_index=dataset.ignore_index)

    # NHWC on CPU: depthwise convolutions (EfficientNet) run several times faster there.
    memory_format = torch.channels_last if device == "cpu" else torch.contiguous_format
    model = model.to(memory_format=memory_format)

    def step(net: torch.nn.Module, batch: dict):
        logits = net(batch["image"].contiguous(memory_format=memory_format))
        return segmentation_ce(logits, batch["targets"][0], dataset.ignore_index), {}

    return make_batches, step, model


def cached_feature_training(cache: dict, ids: list[str], sources: dict[str, str], dataset: VOCDataset,
                            pseudo_dir: Path | None, novel_classes: list[int], batch_size: int, loss_stride: int = 1):
    """(make_batches, step, steps per epoch) that train only the head, on the cached features of
    each image and their mirrored maps (flip augmentation; no rescale/crop: the features are fixed).

    Samples: image ``j`` of ``ids`` (``0 <= s < N``) and its mirror (``s = N + j``). Each epoch
    draws ``rng.permutation(2N)``; the permuted samples of each image size (the cache's size
    groups) are cut into batches of ``batch_size`` in that order (the last of a group may be
    smaller), and the batches run in the order of their first sample. With one image size
    that is the permutation cut into consecutive batches (the single-size format v1's).

    ``loss_stride`` k > 1: the loss compares logits upsampled to 1/k of the image size with
    every k-th label pixel (rows and columns); the upsampling's backward pass dominates a
    head-only step on CPU, so k = 2 about halves it.
    """
    positions = cache_positions(cache)
    n = len(ids)
    # per size group: its members' (sample -> local row) and features; targets as uint8
    # (class ids and 255), the mirrors' flipped before the stride as in v1
    group_of = np.empty(2 * n, np.int64)
    local = np.empty(2 * n, np.int64)   # row in the group's targets: mirrors after the group's images
    members: dict[int, list[int]] = {}
    for j, image_id in enumerate(ids):
        members.setdefault(positions[image_id][0], []).append(j)
    groups = []
    for g, js in members.items():
        height, width = cache["groups"][g]["image_size"]
        group_targets = []
        for j in js:
            target = load_target(ids[j], sources[ids[j]], dataset, (height, width), pseudo_dir, novel_classes)
            if target.shape != (height, width):
                raise PipelineError(dataset.mask_path(ids[j]), f"is {target.shape[1]}x{target.shape[0]}, the "
                                    f"feature cache's image {width}x{height}; rerun seg_features")
            group_targets.append(np.asarray(target, dtype=np.uint8))
        targets = torch.from_numpy(np.stack(group_targets))
        targets = torch.cat([targets, targets.flip(-1)])[:, ::loss_stride, ::loss_stride].contiguous()
        rows = [positions[ids[j]][1] for j in js]
        features = cache["groups"][g]["features"]
        if rows != list(range(len(features))):  # not every cached image, or another order: a copy
            features = features[torch.as_tensor(rows)]
        groups.append({"features": features, "targets": targets})
        for r, j in enumerate(js):
            group_of[j] = group_of[n + j] = len(groups) - 1
            local[j], local[n + j] = r, len(js) + r

    def gather(group: dict, samples: np.ndarray) -> dict:
        rows = torch.from_numpy(local[samples])
        count = len(group["features"])
        mirrored = rows >= count
        features = group["features"][rows % count]
        if mirrored.any():
            features[mirrored] = features[mirrored].flip(-1)
        return {"features": features.float(), "targets": group["targets"][rows].long()}

    def make_batches(epoch: int, rng: np.random.Generator):
        order = rng.permutation(2 * n)
        if len(groups) == 1:
            return [gather(groups[0], order[k:k + batch_size]) for k in range(0, len(order), batch_size)]
        cuts = []  # (position of the first sample in order, group, samples)
        for g in range(len(groups)):
            where = np.flatnonzero(group_of[order] == g)
            cuts += [(where[k], g, order[where[k:k + batch_size]]) for k in range(0, len(where), batch_size)]
        return [gather(groups[g], samples) for _, g, samples in sorted(cuts, key=lambda cut: cut[0])]

    def step(net: torch.nn.Module, batch: dict):
        logits = net.logits_from_features(batch["features"], tuple(batch["targets"].shape[-2:]))
        return segmentation_ce(logits, batch["targets"], dataset.ignore_index), {}

    steps = sum(count_steps(2 * len(js), batch_size, drop_last=False) for js in members.values())
    return make_batches, step, steps


# --------------------------------------------------------------------------- stage

def main(argv=None):
    ap = stage_parser(__doc__, training=True, inputs=("labels",))
    ap.add_argument("--supervision", required=True, choices=SUPERVISIONS)
    ap.add_argument("--pseudo", default=None, help="directory of <id>.png pseudo labels (pseudo, mixed)")
    ap.add_argument("--fold-file", default=None, help="fold JSON with base/novel samples (mixed)")
    ap.add_argument("--features", default=None, help="train split's feature cache (stage seg_features; "
                    "with segmentation.feature_cache: true)")
    args = ap.parse_args(argv)

    if args.supervision != GT and args.pseudo is None:
        raise PipelineError("--pseudo", f"supervision '{args.supervision}' needs a pseudo-label directory")
    if args.supervision == "mixed" and args.fold_file is None:
        raise PipelineError("--fold-file", "supervision 'mixed' needs a fold file (base/novel samples)")
    params = load_params(args.params, args.dataset)
    cfg = train_config(params, "segmentation.train", TRAIN_KEYS)
    dataset = VOCDataset(params["data"], "train")
    check_labels_cover(load_image_labels(args.labels), dataset.ids, args.labels, "train")
    fold = load_fold(args.fold_file) if args.supervision == "mixed" else None
    sources = target_sources(dataset.ids, args.supervision, fold, args.fold_file or "--fold-file")
    novel_classes = [int(c) for c in fold["novel_classes"]] if fold is not None else []
    pseudo_dir = Path(args.pseudo) if args.supervision != GT else None
    if pseudo_dir is not None:
        check_pseudo_labels(dataset, sources, pseudo_dir)

    device = stage_device(args, params)
    seed = int(params["seed"])
    seed_everything(seed)
    skip_nan_fill()
    ids = list(sources)
    used = {"segmentation": params["segmentation"], "backbone": params["backbone"], "data": params["data"],
            "seed": seed}
    inputs = {"supervision": args.supervision, "pseudo": args.pseudo, "fold_file": args.fold_file,
              "images": len(ids), "pseudo_images": sum(s == PSEUDO for s in sources.values())}
    with stage_run("train_seg", inputs, used, device) as log:
        model = build_seg_model(params, dataset.num_classes)
        if feature_cache_enabled(params):
            if args.features is None:
                raise PipelineError("--features", "segmentation.feature_cache is true: give the train split's "
                                    "feature cache (stage seg_features)")
            check_frozen_backbone(model)
            cache = load_feature_cache(args.features, model, dataset.ids)
            make_batches, step, steps = cached_feature_training(cache, ids, sources, dataset, pseudo_dir,
                                                                novel_classes, cfg["batch_size"],
                                                                int(cfg["loss_stride"]))
            log.info("training the head on cached features of %d image size(s) %s (%s)", len(cache["groups"]),
                     [tuple(g["features"].shape[1:]) for g in cache["groups"]], args.features)
        else:
            make_batches, step, model = image_training(model, ids, sources, dataset, pseudo_dir, novel_classes, cfg,
                                                       params, device)
            steps = count_steps(len(ids), cfg["batch_size"])  # training_batches drops the last partial batch

        groups = model.param_groups(cfg["lr"])
        optimizer = make_optimizer(groups, cfg)
        steps = steps or 1  # fewer ids than a batch: one step
        scheduler = poly_scheduler(optimizer, steps * cfg["epochs"], cfg["poly_power"])
        meta = {**model_meta(model, dataset), "dataset": params["dataset"], "supervision": args.supervision,
                "fold": fold.get("fold") if fold else None, "sources_hash": params_hash(sources),
                "pseudo_hash": directory_fingerprint(pseudo_dir), "params_hash": params_hash(used)}
        train_and_save(model, make_batches, step, optimizer, scheduler, cfg["epochs"], args.out, args.history,
                       log, seed, meta, device)


if __name__ == "__main__":
    run_stage(main)
