"""Stage train_crnet: CRNet (:class:`pipeline.models.crnet.CRNet`) on the fold's base classes.

    python -m pipeline.methods.crnet.train_crnet --params params.yaml --dataset D \\
        --features work/D/crnet/features/train.pt --labels work/D/image_labels.json \\
        --fold-file work/D/folds/fold0.json --variant full \\
        --out work/D/fold0/crnet/full/model.pt --history work/D/fold0/crnet/full/history.tsv

Training-set hygiene (PFENet/HSNet/BAM): pairs come from the train split only and only
from the fold's *base* object classes, and only from images that hold a training base class
(>= ``crnet.train.min_pixels``; PFENet/HSNet): an image whose only objects are novel is
never a training image, so no pair -- positive or negative -- teaches "novel object =
background". ``crnet.train.novel_images``: ``background`` keeps images that also hold a
novel object, its pixels "not the class" = background (PFENet/HSNet); ``drop`` uses only the
fold's base samples, the images without any novel pixel (BAM).
(:func:`pipeline.crnet_training.protocol_images`.)

Checkpoint selection on base classes playing novel (as ``refnet.select``):
``crnet.select.classes`` base classes are drawn (numpy rng seeded ``[seed, fold]``,
:func:`pipeline.crnet_training.select_classes`) and held out of training entirely -- never
a pair's class, and every train image with any pixel of them is out of training. The
selection images are the train images that hold one of them and no novel pixel;
``crnet.select.episodes`` 1-shot episodes of those classes are drawn among them
(:func:`pipeline.data.episodes.draw_episodes`) and after each epoch the net is scored on
them (mIoU, ``crnet.test.iterations`` refinement iterations). So selection rewards a net
that segments a class it was not trained on from its support, as the test does, and never
reads val or a novel class. The model file holds the epoch with the best selection mIoU
(``history.tsv``: ``heldout_miou`` per epoch; the best weights so far wait in
``<out stem>.best.pt`` until the end, so a resumed run selects the same epoch).

A training pair (per epoch ``crnet.train.episodes_per_epoch``, drawn from ``(seed, epoch)``):
a base class c with two training images, query and support two distinct images holding
>= ``min_pixels`` px of c; with probability ``negative_prob`` the query is an image
without c (co-occurrence target 0, query target all background, no support loss). Each
image is flipped with probability 1/2 (``flip``). Loss: cross-entropy of the query
prediction after each of ``iterations`` refinement iterations (mean) + ``support_weight``
x the same for the support branch (conditioned on the query's ground-truth mask) +
``cooccurrence_weight`` x BCE of both co-occurrence logits (the paper sums the terms).
Masks are scored at their own resolution (logits resized bilinearly, 255 ignored).

Mosaics (``crnet.train.mosaic`` or a variant's ``mosaic``: a probability, 0 = off; beyond the
paper): a pair's query becomes a feature-space mosaic of itself and a training image without the
pair's class (:func:`pipeline.crnet_training.add_mosaics`), so the query holds two objects of
which only one is the target and objectness alone is wrong on half of it; 86% of MSRC's images
hold one object class, where a single-image query never forces the net to read its support.

Variants (``--variant``): ``full`` or a key of ``crnet.ablation.variants`` (its CRNet
switches, ``mosaic`` and/or ``novel_images``) or of ``crnet.tpc_crc.variants`` (the TPC + CRC training
scheme, :mod:`pipeline.tpc_crc`), optionally with a ``_seed<n>`` suffix that sets the
training seed to n (``full_seed1``; results/<ds>/crnet_seeds). Resumable per epoch (pipeline.training).

TPC (variant ``tpc: true``): the conditioning epochs come first (the paper's schedule shape,
:func:`pipeline.tpc_crc.tpc_schedule`: ``crnet.tpc_crc.train.epoch_share`` x ``epochs``
rounded up, at the constant lr ``lr_share`` x ``lr``), each ``episodes_per_epoch`` pairs of
one training image (support) and its transformed copy (query); then the ``epochs`` of
training with the usual poly schedule. Conditioning epochs are not scored on the held-out
episodes and are never selected (``history.tsv``: ``phase`` tpc / train). CRC (``crc:
cascade``, the paper's): every positive pair also runs the network a second time with the
roles flipped, the first pass's soft query mask as the support mask, predicting the
support mask (``pair_loss(crc="cascade")``); ``crc: branch`` (the earlier form): CRNet's
support branch is conditioned on the query's predicted soft mask. The control
``epoch_matched: true`` trains the base as many plain epochs longer as TPC conditions for
(poly over all of them): the TPC variants' total number of epochs without the transformed pairs.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from pipeline.config import check_range, load_params, params_hash, section
from pipeline.crnet_training import (
    FULL, add_mosaics, build_crnet, draw_pairs, make_optimizer, negative_queries, pair_batches, pair_loss,
    protocol_images, score_episodes, select_classes, split_training_seed, tpc_batches, variant_settings)
from pipeline.data.episodes import draw_episodes, images_with_class
from pipeline.data.fewshot_features import FeatureStore
from pipeline.data.folds import load_base_samples
from pipeline.data.labels import check_labels_match, read_image_labels_file
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.models.crnet import CRNet
from pipeline.runtime import seed_everything, stage_run
from pipeline.stage import stage_device, stage_parser
from pipeline.tpc_crc import ConditioningThenPoly, tpc_pairs, tpc_schedule
from pipeline.training import count_steps, load_model, poly_scheduler, save_model, train_and_save

def main(argv=None):
    ap = stage_parser(__doc__, training=True, inputs=("labels",))
    ap.add_argument("--features", required=True, help="train-split feature cache (stage crnet_features)")
    ap.add_argument("--fold-file", required=True, help="fold JSON (stage make_folds)")
    ap.add_argument("--variant", default=FULL, help="full or a key of crnet.ablation.variants or "
                    "crnet.tpc_crc.variants, optionally + _seed<n>")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    cfg = dict(section(params, "crnet.train"))
    select = section(params, "crnet.select")
    check_range(cfg["lr"], "crnet.train.lr", 0, low_open=True)
    settings = variant_settings(params, args.variant)
    dataset = VOCDataset(params["data"], "train")
    document = read_image_labels_file(args.labels)
    check_labels_match(document, params["data"], params["dataset"], args.labels)
    if document.get("pixel_counts") is None:
        raise PipelineError(args.labels, "has no 'pixel_counts' (rerun stage image_labels)")
    fold, base_samples, novel = load_base_samples(args.fold_file, dataset, params["dataset"])
    base_classes = [c for c in range(dataset.num_classes) if c not in novel and c != dataset.background_index]
    device = stage_device(args, params)
    _, training_seed = split_training_seed(args.variant)
    seed = int(params["seed"]) if training_seed is None else training_seed  # variant <name>_seed<n>
    seed_everything(seed)
    counts = document["pixel_counts"]
    min_px = int(cfg["min_pixels"])
    held_classes = select_classes(counts, dataset.ids, base_classes, novel, int(select["classes"]), seed,
                                  fold.get("fold"), min_px)
    trained_classes = [c for c in base_classes if c not in held_classes]
    train_ids, held_ids = protocol_images(counts, dataset.ids, trained_classes, held_classes, novel,
                                          settings["novel_images"], min_px)
    train_images = {c: v for c, v in images_with_class(counts, train_ids, trained_classes, min_px).items()
                    if len(v) >= 2}
    held_images = images_with_class(counts, held_ids, held_classes, min_px)
    if not train_images:
        raise PipelineError(args.fold_file, f"no base class is in 2 training images with >= {min_px} px "
                            "(crnet.train.min_pixels)")

    store = FeatureStore(args.features, params, dataset)
    tpc_cfg = section(params, "crnet.tpc_crc.train") if settings["tpc"] or settings.get("epoch_matched") else None
    if tpc_cfg:
        check_range(tpc_cfg["epoch_share"], "crnet.tpc_crc.train.epoch_share", 0, low_open=True)
        check_range(tpc_cfg["lr_share"], "crnet.tpc_crc.train.lr_share", 0, low_open=True)
    schedule_epochs, tpc_lr = tpc_schedule(int(cfg["epochs"]), float(cfg["lr"]), tpc_cfg) if tpc_cfg else (0, 0.0)
    tpc_epochs = schedule_epochs if settings["tpc"] else 0
    # The TPC variants' control: as many plain epochs more as TPC conditions for, so a TPC gain is
    # not just more training (the key is absent from every other variant's settings).
    extra_epochs = schedule_epochs if settings.get("epoch_matched") else 0
    train_epochs = int(cfg["epochs"]) + extra_epochs
    used = {"crnet": {k: v for k, v in params["crnet"].items() if k not in ("test", "ablation", "tpc_crc")},
            "iterations": section(params, "crnet.test.iterations"), "variant": settings,
            "backbone": params["backbone"], "seed": seed}
    if tpc_cfg or extra_epochs:
        used["tpc_crc"] = section(params, "crnet.tpc_crc.train")
    inputs = {"features": args.features, "fold_file": args.fold_file, "variant": args.variant,
              "train_images": len(train_ids), "heldout_images": len(held_ids),
              "classes": [dataset.class_names[c] for c in sorted(train_images)],
              "selection_classes": [dataset.class_names[c] for c in held_classes]}
    with stage_run("train_crnet", inputs, used, device) as log:
        heldout = draw_episodes(held_images, sorted(held_images), int(select["episodes"]), 1, seed, dataset.class_names)
        log.info("fold %s: %d training images (%d base classes), %d selection images (%d episodes of the base "
                 "classes %s, never trained on); novel images: %s", fold.get("fold"), len(train_ids),
                 len(train_images), len(held_ids), len(heldout), [dataset.class_names[c] for c in held_classes],
                 settings["novel_images"])
        model = build_crnet(params, store.level_channels, settings)
        ignore = dataset.ignore_index
        iterations = int(cfg["iterations"])
        test_iterations = int(section(params, "crnet.test.iterations"))
        negatives = negative_queries(counts, train_ids, sorted(train_images))

        def make_batches(epoch: int, rng: np.random.Generator):
            if epoch < tpc_epochs:  # 0-based: the conditioning epochs come first
                conditioning = tpc_pairs(train_images, int(cfg["episodes_per_epoch"]), tpc_cfg["transforms"], rng)
                return tpc_batches(conditioning, store, int(cfg["batch_size"]))
            pairs = draw_pairs(train_images, negatives, int(cfg["episodes_per_epoch"]),
                               float(cfg["negative_prob"]), rng)
            pairs = add_mosaics(pairs, negatives, settings["mosaic"], rng)  # two-image queries (option)
            return pair_batches(pairs, store, int(cfg["batch_size"]), bool(cfg["flip"]))

        def step(net: CRNet, batch: dict):
            total, sums = 0.0, {}
            for group in batch["groups"]:
                loss, parts = pair_loss(net, group, iterations, float(cfg["support_weight"]),
                                        float(cfg["cooccurrence_weight"]), ignore, crc=settings["crc"] or None)
                share = group["query"].shape[0] / int(cfg["batch_size"])
                total = total + share * loss
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + share * v
            return total, sums

        best_path = Path(args.out).with_name(Path(args.out).stem + ".best.pt")  # the best epoch so far
        meta = {**model.meta, "task": "crnet", "variant": args.variant, "dataset": params["dataset"],
                "fold": fold.get("fold"), "novel_classes": novel, "params_hash": params_hash(used)}

        scores: dict[int, float] = {}  # held-out mIoU by epoch (restored from the checkpoint on resume)
        checkpoint = Path(args.out).with_name(Path(args.out).stem + ".checkpoint.pt")
        if checkpoint.exists():
            try:
                saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["history"]
                scores = {int(row["epoch"]): float(row["heldout_miou"]) for row in saved
                          if row.get("heldout_miou") is not None}  # TPC epochs have none
            except Exception:  # noqa: BLE001 - stale or foreign: pipeline.training decides, epoch 1 resets
                scores = {}

        def after_epoch(net: CRNet, epoch: int) -> dict:
            nonlocal scores
            if epoch == 1:
                scores = {}
            if epoch <= tpc_epochs:  # conditioning: neither scored nor selectable
                return {"phase": "tpc"}
            score = score_episodes(net, store, heldout, sorted(held_images), test_iterations, device).miou()
            first = tpc_epochs + 1
            earlier = [v for e, v in scores.items() if first <= e < epoch]
            if epoch == first or not best_path.exists() or score > max(earlier, default=-1.0):
                save_model(best_path, copy.deepcopy(net).cpu(), {**meta, "epoch": epoch, "heldout_miou": score})
            scores[epoch] = score
            log.info("epoch %d: held-out base-class 1-shot mIoU %.4f", epoch, score)
            return {"phase": "train", "heldout_miou": score} if tpc_epochs else {"heldout_miou": score}

        model_meta = dict(meta)

        def before_save(net: CRNet, history: list[dict]) -> None:
            best = load_model(best_path, net)
            log.info("selected epoch %d of %d (held-out mIoU %.4f)", best["epoch"], len(history), best["heldout_miou"])
            model_meta.update(selected_epoch=best["epoch"], heldout_miou=best["heldout_miou"])
            best_path.unlink(missing_ok=True)

        optimizer = make_optimizer(model, cfg, float(cfg["lr"]))
        steps = count_steps(int(cfg["episodes_per_epoch"]), int(cfg["batch_size"])) or 1
        if tpc_epochs:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, ConditioningThenPoly(
                steps * tpc_epochs, tpc_lr / float(cfg["lr"]), steps * train_epochs))
            log.info("TPC: %d conditioning epochs at lr %g before %d training epochs; CRC: %s", tpc_epochs,
                     tpc_lr, train_epochs, settings["crc"] or "none")
        else:
            if extra_epochs:
                log.info("epoch-matched control: %d training epochs (crnet.train.epochs + TPC's %d)", train_epochs,
                         extra_epochs)
            elif settings["crc"]:
                log.info("CRC: %s", settings["crc"])
            scheduler = poly_scheduler(optimizer, steps * train_epochs)
        train_and_save(model, make_batches, step, optimizer, scheduler, tpc_epochs + train_epochs, args.out,
                       args.history, log, seed, meta, device, model_meta=model_meta, after_epoch=after_epoch,
                       before_save=before_save)


if __name__ == "__main__":
    run_stage(main)
