"""Stage train_pnet: adversarial refinement of the L-Net row's segmentation network with the
P-Net discriminator (Xiao et al., AAAI 2018, Eqs. 3-5, Table 1).

    python -m pipeline.methods.lnet.train_pnet --params params.yaml --dataset D \\
        --seg-model work/D/fold0/lnet/pascal5i/seg/lnet/model.pt \\
        --pseudo work/D/fold0/lnet/pascal5i/pseudo --fold-file work/D/folds/fold0.json \\
        --labels work/D/image_labels.json --out work/D/fold0/lnet/pascal5i/seg/pnet/model.pt \\
        --out-discriminator .../seg/pnet/discriminator.pt --history .../seg/pnet/history.tsv

Start: the segmentation network S trained by stage train_seg on strong GT + weak pseudo
labels L_w (the "L-Net" row); the P-Net D (:class:`pipeline.models.pnet.PNet`) from
random weights.

1. Pre-training (``pnet.pretrain: true``; ``false`` skips it, the paper's ablation): D
   alone on strong-category (base) samples, ``pnet.pretrain_epochs`` epochs (of at most
   ``pnet.train.samples_per_epoch`` images, like the fine-tuning's); real = image
   * ground-truth mask of each category in the crop, fake = image * S's softmax
   probability of it (S fixed, eval mode). Loss Eq. 3.
2. Fine-tuning on every train image (strong: GT with weak-class pixels ignored; weak:
   L_w), ``pnet.train.epochs`` epochs: S minimises its cross-entropy + lambda * the
   non-saturating adversarial term on all its category masks (Eqs. 4, 5); D minimises
   Eq. 3 with real pairs from strong images only. Both nets update from the same batch in
   one optimiser step (simultaneous gradient descent): S's term reaches D only through
   detached parameters (:func:`torch.func.functional_call`), D's term sees detached
   predictions, so each net gets exactly its own objective's gradient. One optimiser
   (``pnet.train.optimizer``: Adam with DCGAN's betas, or SGD with momentum) with S at
   ``lr_seg`` (new layers 10x, the convention of every net here) and D at ``lr_pnet``,
   poly decay, per-epoch checkpoints with exact resume for both phases. The paper gives
   the two learning rates, not the optimiser: with SGD at 1e-3 the P-Net stayed at chance
   (loss 2 log 2) for 60 steps of a synthetic real/fake task, with Adam it separated
   them within 40 steps, hence Adam by default.

Outputs: the refined S (same model-file format and meta as train_seg's, plus the P-Net
settings, so predict_seg reads it unchanged), D, and ``history.tsv`` (one row per epoch
of both phases: phase, epoch, losses, learning rates, batches, seconds).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

from pipeline import adversarial as adv
from pipeline.config import check_range, load_params, params_hash, section
from pipeline.data.batches import training_batches
from pipeline.data.folds import fold_novel_classes, load_fold
from pipeline.data.labels import check_labels_cover, load_image_labels
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import write_text
from pipeline.losses import segmentation_ce
from pipeline.models import backbone_normalization
from pipeline.models.pnet import PNet
from pipeline.runtime import seed_everything, stage_run
from pipeline.segmentation import GT, build_seg_model, check_pseudo_labels, load_target, model_meta, target_sources
from pipeline.stage import stage_device, stage_parser
from pipeline.training import (
    checkpoint_path_for, count_steps, history_tsv, load_model, poly_scheduler, save_model, train, train_config)

TRAIN_KEYS = ("crop", "scale_range", "batch_size", "epochs", "optimizer", "lr_seg", "lr_pnet", "momentum",
              "weight_decay", "samples_per_epoch")
ADAM_BETAS = (0.5, 0.999)  # DCGAN's Adam for adversarial training (Radford et al. 2016)


class AdversarialPair(nn.Module):
    """S and D in one module, so the shared training loop checkpoints and resumes both."""

    def __init__(self, seg: nn.Module, disc: PNet, memory_format: torch.memory_format = torch.contiguous_format):
        super().__init__()
        self.seg = seg.to(memory_format=memory_format)
        self.disc = disc
        self.memory_format = memory_format

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """S's logits (NHWC on CPU, as train_seg runs it: depthwise convolutions are faster there)."""
        return self.seg(images.contiguous(memory_format=self.memory_format))


def pnet_config(params: dict) -> dict:
    """The ``pnet`` section, every key present and in range (one line naming the key)."""
    cfg = {k: section(params, f"pnet.{k}") for k in ("pretrain", "pretrain_epochs", "lambda_adv", "pool_size")}
    cfg["train"] = train_cfg = train_config(params, "pnet.train", TRAIN_KEYS, lr_keys=("lr_seg", "lr_pnet"), min_batch=2)
    check_range(cfg["lambda_adv"], "pnet.lambda_adv", 0)
    if train_cfg["samples_per_epoch"] is not None:
        check_range(train_cfg["samples_per_epoch"], "pnet.train.samples_per_epoch", 2)
    return cfg


def make_optimizer(groups: list[dict], train_cfg: dict) -> torch.optim.Optimizer:
    """``pnet.train.optimizer`` over param groups that carry their own lr: Adam (betas
    :data:`ADAM_BETAS`) or SGD with ``momentum``; L2 weight decay either way."""
    lr, decay = groups[0]["lr"], train_cfg["weight_decay"]
    if train_cfg["optimizer"] == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=ADAM_BETAS, weight_decay=decay)
    if train_cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=train_cfg["momentum"], weight_decay=decay)
    raise PipelineError("params.yaml", f"pnet.train.optimizer = {train_cfg['optimizer']!r} is not adam or sgd")


def file_digest(path: str | os.PathLike) -> str:
    """Short content hash of a file (the starting network is part of the run's identity)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def epoch_ids(ids: list[str], samples: int | None, rng: np.random.Generator) -> list[str]:
    """All ``ids``, or a seeded random subset of ``samples`` of them (``pnet.train.samples_per_epoch``)."""
    if samples is None or samples >= len(ids):
        return list(ids)
    chosen = rng.choice(len(ids), size=samples, replace=False)
    return [ids[i] for i in sorted(chosen)]


def pretrain_step(system: AdversarialPair, batch: dict, num_classes: int, background_index: int | None):
    """Eq. 3 on strong images only, S fixed: real = GT masks, fake = S's probabilities."""
    images, targets = batch["image"], batch["targets"][0]
    system.seg.eval()  # fixed S: no dropout noise in the fakes D learns from
    with torch.no_grad():
        probs = torch.softmax(system.segment(images), dim=1)
    b, c = adv.category_pairs(targets, num_classes, background_index)
    fake_masks = adv.predicted_masks(probs, b, c)
    real_masks = adv.ground_truth_masks(targets, b, c, fake_masks, num_classes)
    d_loss = adv.discriminator_loss(system.disc(adv.masked_images(images, real_masks, b)),
                                    system.disc(adv.masked_images(images, fake_masks, b)))
    return d_loss, {"d": float(d_loss.detach()), "pairs": float(b.numel())}


def finetune_step(system: AdversarialPair, batch: dict, num_classes: int, background_index: int | None,
                  ignore_index: int, lambda_adv: float):
    """One joint step: S's Eq. 4/5 objective (non-saturating) + D's Eq. 3, gradients kept apart."""
    images, targets, strong = batch["image"], batch["targets"][0], batch["strong"]
    logits = system.segment(images)
    ce = segmentation_ce(logits, targets, ignore_index)
    probs = torch.softmax(logits, dim=1)
    b, c = adv.category_pairs(targets, num_classes, background_index)
    fake_masks = adv.predicted_masks(probs, b, c)
    fake_inputs = adv.masked_images(images, fake_masks, b)

    # S's adversarial term through a parameter-detached copy of D: no gradient reaches D.
    frozen = {name: p.detach() for name, p in system.disc.named_parameters()}
    g_adv = adv.generator_loss(functional_call(system.disc, frozen, (fake_inputs,)))
    seg_loss = adv.segmentation_objective(ce, g_adv, lambda_adv)

    # D's term on detached inputs: no gradient reaches S.
    real = adv.split_by_flag(b, strong)
    real_masks = adv.ground_truth_masks(targets, b[real], c[real], fake_masks[real], num_classes)
    d_loss = adv.discriminator_loss(system.disc(adv.masked_images(images, real_masks, b[real])),
                                    system.disc(fake_inputs.detach()))
    parts = {"ce": float(ce.detach()), "adv": float(g_adv.detach()), "d": float(d_loss.detach()),
             "pairs": float(b.numel()), "real_pairs": float(real.sum())}
    return seg_loss + d_loss, parts


def main(argv=None):
    ap = stage_parser(__doc__, threads=True, inputs=("labels",))
    ap.add_argument("--seg-model", required=True, help="segmentation model to refine (L-Net row, train_seg)")
    ap.add_argument("--pseudo", required=True, help="weak images' pseudo labels L_w (stage self_diffusion)")
    ap.add_argument("--fold-file", required=True, help="fold JSON: strong = base, weak = novel")
    ap.add_argument("--out", required=True, help="refined segmentation model to write")
    ap.add_argument("--out-discriminator", required=True, help="P-Net model to write")
    ap.add_argument("--history", required=True, help="per-epoch history TSV to write")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    cfg = pnet_config(params)
    train_cfg = cfg["train"]
    dataset = VOCDataset(params["data"], "train")
    check_labels_cover(load_image_labels(args.labels), dataset.ids, args.labels, "train")
    fold = load_fold(args.fold_file)
    if fold.get("dataset", params["dataset"]) != params["dataset"]:
        raise PipelineError(args.fold_file, f"was made for dataset '{fold['dataset']}', "
                            f"but params select '{params['dataset']}'")
    sources = target_sources(dataset.ids, "mixed", fold, args.fold_file)
    strong_ids = [i for i, s in sources.items() if s == GT]
    weak_ids = [i for i, s in sources.items() if s != GT]
    if not strong_ids or not weak_ids:
        raise PipelineError(args.fold_file, "needs both base (strong) and novel (weak) samples")
    novel = fold_novel_classes(fold, args.fold_file, dataset.num_classes)
    pseudo_dir = Path(args.pseudo)
    check_pseudo_labels(dataset, sources, pseudo_dir)
    device = stage_device(args, params)
    seed = int(params["seed"])
    seed_everything(seed)

    # The trained weights replace everything: never load (or download) ImageNet weights here.
    seg = build_seg_model({**params, "backbone": {**params["backbone"], "pretrained": False}}, dataset.num_classes)
    seg_meta = load_model(args.seg_model, seg, expected_meta=model_meta(seg, dataset))
    disc = PNet(cfg["pool_size"])
    system = AdversarialPair(seg, disc, torch.channels_last if device == "cpu" else torch.contiguous_format)

    ignore, num_classes, background = dataset.ignore_index, dataset.num_classes, dataset.background_index
    strong_set = set(strong_ids)
    mean, std = backbone_normalization(params["backbone"])

    def load(image_id: str) -> tuple[np.ndarray, list[np.ndarray]]:
        image = dataset.load_image(image_id)
        return image, [load_target(image_id, sources[image_id], dataset, image.shape[:2], pseudo_dir, novel)]

    def batches(ids: list[str], samples: int | None):
        def make(epoch: int, rng: np.random.Generator):
            for batch in training_batches(epoch_ids(ids, samples, rng), load, batch_size=train_cfg["batch_size"],
                                          crop=train_cfg["crop"], scale_range=tuple(train_cfg["scale_range"]),
                                          rng=rng, mean=mean, std=std, ignore_index=ignore):
                batch["strong"] = torch.tensor([i in strong_set for i in batch["ids"]], dtype=torch.bool)
                yield batch
        return make

    used = {"pnet": params["pnet"], "backbone": params["backbone"], "data": params["data"], "seed": seed,
            "seg_model": file_digest(args.seg_model), "sources": params_hash(sources),
            "architecture": {k: params["segmentation"].get(k)
                             for k in ("head", "output_stride", "frozen_blocks", "aspp_rates")}}
    inputs = {"seg_model": args.seg_model, "pseudo": args.pseudo, "fold_file": args.fold_file,
              "strong_samples": len(strong_ids), "weak_samples": len(weak_ids), "pretrain": cfg["pretrain"]}
    with stage_run("train_pnet", inputs, used, device) as log:
        phases: dict[str, list[dict]] = {}
        pretrain_checkpoint = Path(args.out).with_name(Path(args.out).stem + ".pretrain.checkpoint.pt")
        if cfg["pretrain"]:
            optimizer = make_optimizer([{"name": "pnet", "params": list(disc.parameters()),
                                         "lr": train_cfg["lr_pnet"]}], train_cfg)
            per_epoch = min(len(strong_ids), train_cfg["samples_per_epoch"] or len(strong_ids))
            steps = count_steps(per_epoch, train_cfg["batch_size"]) or 1
            scheduler = poly_scheduler(optimizer, steps * cfg["pretrain_epochs"])
            phases["pretrain"] = train(
                system, batches(strong_ids, train_cfg["samples_per_epoch"]),
                lambda net, batch: pretrain_step(net, batch, num_classes, background),
                optimizer, scheduler, cfg["pretrain_epochs"], pretrain_checkpoint, log, seed,
                meta={"phase": "pretrain", "params_hash": params_hash(used)}, device=device)

        all_ids = strong_ids + weak_ids
        groups = [*seg.param_groups(train_cfg["lr_seg"]),
                  {"name": "pnet", "params": list(disc.parameters()), "lr": train_cfg["lr_pnet"]}]
        optimizer = make_optimizer(groups, train_cfg)
        per_epoch = min(len(all_ids), train_cfg["samples_per_epoch"] or len(all_ids))
        scheduler = poly_scheduler(optimizer, (count_steps(per_epoch, train_cfg["batch_size"]) or 1)
                                   * train_cfg["epochs"])
        checkpoint = checkpoint_path_for(args.out)
        phases["finetune"] = train(
            system, batches(all_ids, train_cfg["samples_per_epoch"]),
            lambda net, batch: finetune_step(net, batch, num_classes, background, ignore, cfg["lambda_adv"]),
            optimizer, scheduler, train_cfg["epochs"], checkpoint, log, seed + 1,
            meta={"phase": "finetune", "params_hash": params_hash(used)}, device=device)

        pnet_meta = {"lambda_adv": cfg["lambda_adv"], "pretrain": cfg["pretrain"], "params_hash": params_hash(used)}
        save_model(args.out, seg.cpu().to(memory_format=torch.contiguous_format),
                   {**seg_meta, "refined_by": "pnet", "pnet": pnet_meta})
        save_model(args.out_discriminator, disc.cpu(), {**disc.meta, **pnet_meta})
        write_text(args.history, history_tsv([{"phase": name, **row} for name, rows in phases.items() for row in rows]))
        checkpoint.unlink(missing_ok=True)
        pretrain_checkpoint.unlink(missing_ok=True)
        last = phases["finetune"][-1]
        log.info("wrote %s, %s and %s (final ce %.4f adv %.4f d %.4f)", args.out, args.out_discriminator,
                 args.history, last["ce"], last["adv"], last["d"])


if __name__ == "__main__":
    run_stage(main)
