"""Stage train_cam: the CAM network (multi-label image classifier, PSA/IRN).

    python -m pipeline.stages.train_cam --params params.yaml --dataset D \\
        --labels work/D/image_labels.json --out work/D/shared/cam/model.pt \\
        --history work/D/shared/cam/history.tsv --threads 2

Trains :class:`pipeline.models.CAMNet` (backbone -> global average pooling -> 1x1
classifier, one channel per foreground class, background excluded) on every train
image with its image-level labels, with the multi-label soft-margin loss (IRN
``step/train_cam.py``): random rescale/crop/flip (``cam.train``), SGD with poly decay
(power 0.9), backbone at ``lr`` and the classifier at ``10 * lr``. The CAM network
runs at ``cam.output_stride`` (IRN: 16) unless null (then ``backbone.output_stride``).

A checkpoint (``<out stem>.checkpoint.pt``) is written after every epoch; a rerun with the same
params resumes after the last finished epoch and gives bit-identical weights (CPU).
It is removed once the model is written. Outputs: the model file (weights + metadata:
backbone, output stride, number of classes, class names) and ``history.tsv`` (one row
per epoch: epoch, loss, lr (backbone group, at the epoch's start), seconds).
"""
from __future__ import annotations


import numpy as np
import torch

from pipeline.cam import cam_backbone_cfg, cam_model_meta, multi_hot
from pipeline.config import load_params, params_hash, section
from pipeline.data.batches import batches_per_epoch, training_batches
from pipeline.data.labels import check_labels_cover, check_labels_document, read_image_labels_file
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.losses import multilabel_soft_margin
from pipeline.runtime import seed_everything, stage_run
from pipeline.stage import stage_device, stage_parser
from pipeline.training import train_config


def image_targets(ids: list[str], labels: dict[str, list[int]], foreground: list[int], path: str) -> dict:
    """Multi-hot classification target of every id (errors name the labels file)."""
    check_labels_cover(labels, ids, path, "train")
    targets = {}
    for image_id in ids:
        try:
            targets[image_id] = multi_hot(labels[image_id], foreground)
        except ValueError as err:
            raise PipelineError(path, f"labels of '{image_id}': {err}") from None
    return targets


def main(argv=None):
    ap = stage_parser(__doc__, training=True, inputs=("labels",))
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    train_cfg = section(params, "cam.train")
    train_config(params, "cam.train", max_lr=10)  # checks the keys it reads
    device = stage_device(args, params)
    seed_everything(params["seed"])

    dataset = VOCDataset(params["data"], "train")
    document = read_image_labels_file(args.labels)
    check_labels_document(document, params["data"], args.labels)
    targets = image_targets(dataset.ids, document["labels"], dataset.foreground_indices, args.labels)
    fg_names = [dataset.class_names[c] for c in dataset.foreground_indices]

    from pipeline.models import CAMNet, backbone_normalization
    from pipeline.training import checkpoint_path_for, poly_scheduler, train_and_save

    backbone_cfg = cam_backbone_cfg(params)
    mean, std = backbone_normalization(backbone_cfg)
    inputs = {"root": params["data"]["root"], "labels": args.labels, "images": len(dataset)}
    used = {"cam.train": train_cfg, "backbone": backbone_cfg, "seed": params["seed"], "classes": fg_names}
    with stage_run("train_cam", inputs, used, device) as log:
        model = CAMNet(backbone_cfg, num_classes=len(fg_names))
        meta = cam_model_meta(model, fg_names)
        ids = list(dataset.ids)
        batch_size = int(train_cfg["batch_size"])
        steps_per_epoch = batches_per_epoch(len(ids), batch_size)
        epochs = int(train_cfg["epochs"])
        optimizer = torch.optim.SGD(model.param_groups(train_cfg["lr"]), lr=train_cfg["lr"],
                                    momentum=train_cfg["momentum"], weight_decay=train_cfg["weight_decay"])
        scheduler = poly_scheduler(optimizer, steps_per_epoch * epochs)
        log.info("%d train images, %d classes, %d steps/epoch x %d epochs", len(ids), len(fg_names),
                 steps_per_epoch, epochs)

        def load(image_id: str):
            return dataset.load_image(image_id), []

        def make_batches(epoch: int, rng: np.random.Generator):
            for batch in training_batches(ids, load, batch_size=batch_size, crop=int(train_cfg["crop"]),
                                          scale_range=tuple(train_cfg["scale_range"]), rng=rng,
                                          mean=mean, std=std, ignore_index=dataset.ignore_index):
                batch["labels"] = torch.from_numpy(np.stack([targets[i] for i in batch["ids"]]))
                yield batch

        def step(net, batch):
            return multilabel_soft_margin(net(batch["image"]), batch["labels"]), {}

        run_meta = {**meta, "params": params_hash(used), "labels": params_hash(document["labels"])}
        try:
            train_and_save(model, make_batches, step, optimizer, scheduler, epochs, args.out, args.history, log,
                           params["seed"], run_meta, device=device, model_meta=meta)
        except FloatingPointError as err:
            # A diverging loss is a params problem (too high a learning rate), not a crash.
            checkpoint_path_for(args.out).unlink(missing_ok=True)
            raise PipelineError("cam.train.lr", f"training diverged ({err}); lower the learning rate") from None


if __name__ == "__main__":
    run_stage(main)
