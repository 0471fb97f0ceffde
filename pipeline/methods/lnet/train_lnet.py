"""Stage train_lnet: the class-agnostic L-Net of Xiao et al. (AAAI 2018), trained on the
strong categories' pixel labels with the semantics removed.

    python -m pipeline.methods.lnet.train_lnet --params params.yaml --dataset D \\
        --fold-file work/D/folds/fold0.json --out work/D/fold0/lnet/pascal5i/lnet/model.pt \\
        --history work/D/fold0/lnet/pascal5i/lnet/history.tsv --threads 2

Strong categories = the fold's base classes, weak = its novel classes (``lnet.split:
pascal5i``; a named split-set uses a fold file of the same format, see
workflow/rules/lnet.smk). Training images: the fold's ``base_samples`` only. Their masks
pass through :func:`pipeline.data.folds.mask_novel_pixels` (weak-category pixels become
ignore) and are binarised by :func:`object_target`: 1 = object, 0 = not, 255 = ignore.

What "object" means (``lnet.object_classes``)
    null (default): every class except the background class (VOC, the embedded default:
    the paper's setting). Datasets without a background class (CamVid: every pixel is
    sky, road, car, ...) have no natural "not an object"; there the classes that count as
    objects must be listed, typically the "thing" classes (CamVid: pole, sign_symbol, car,
    pedestrian, bicyclist; "stuff" such as road or sky is 0). Listing none, or every
    class, is an error: the target would be constant and the map M useless.

Network: :class:`pipeline.models.DeepLabASPP` (DeepLab-v3 head) on ``params['backbone']``
with ``num_classes = 1`` (one object logit). It does not follow the architecture
overrides of ``segmentation`` (head, frozen blocks, rates): those are tuned for the
many-class segmentation net, the L-Net is its own network with its own recipe
(``lnet.train``; on the embedded default 2 epochs give an object IoU of 0.44 on the weak
images of fold 0, whose classes it never saw). Loss :func:`objectness_bce` (binary cross-entropy over non-ignored pixels). Optimisation
as every other net here: SGD with momentum, backbone at ``lr``, new layers at 10x, poly
decay, per-epoch checkpoints with exact resume (``<out stem>.checkpoint.pt``, removed
once the model is written), ``history.tsv`` one row per epoch.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import load_params, params_hash, section
from pipeline.data.batches import training_batches
from pipeline.data.folds import load_base_samples, mask_novel_pixels
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.models import DeepLabASPP, backbone_normalization
from pipeline.models.deeplab import deeplab_meta
from pipeline.runtime import seed_everything, stage_run
from pipeline.stage import stage_device, stage_parser
from pipeline.training import count_steps, poly_scheduler, train_and_save, train_config

OBJECT, NOT_OBJECT = 1, 0


def object_class_ids(object_classes: list[str] | None, class_names: list[str],
                     background_index: int | None, dataset_name: str) -> list[int]:
    """Class ids the L-Net calls "object" (see the module docstring); errors name the key."""
    key = "lnet.object_classes"
    if object_classes is None:
        if background_index is None:
            raise PipelineError("params.yaml", f"{key} is null, but dataset '{dataset_name}' has no background "
                                "class: list the classes that count as objects (e.g. its thing classes, "
                                "under overrides.<dataset>.lnet.object_classes)")
        return [c for c in range(len(class_names)) if c != background_index]
    ids = []
    for name in object_classes:
        if name not in class_names:
            raise PipelineError("params.yaml", f"{key}: unknown class '{name}' (classes of {dataset_name}: "
                                f"{', '.join(class_names)})")
        if class_names.index(name) == background_index:
            raise PipelineError("params.yaml", f"{key}: the background class '{name}' cannot be an object")
        ids.append(class_names.index(name))
    if not ids:
        raise PipelineError("params.yaml", f"{key} is empty: the L-Net target would be 0 everywhere")
    if background_index is None and len(set(ids)) == len(class_names):
        raise PipelineError("params.yaml", f"{key} lists every class of '{dataset_name}': the L-Net target "
                            "would be 1 everywhere; leave the 'stuff' classes out")
    return sorted(set(ids))


def object_target(mask: np.ndarray, object_ids: list[int], ignore_index: int) -> np.ndarray:
    """uint8 L-Net target of a (novel-masked) class mask: 1 object, 0 not, ``ignore_index`` kept."""
    target = np.where(np.isin(mask, object_ids), OBJECT, NOT_OBJECT).astype(np.uint8)
    target[mask == ignore_index] = ignore_index
    return target


def objectness_bce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Mean binary cross-entropy over non-ignored pixels (0, still in the graph, if none).

    ``logits``: ``B x H x W`` (or ``B x 1 x H x W``) object logits; ``target``: ``B x H x W``
    with 1 = object, 0 = not, ``ignore_index`` = no loss.
    """
    if logits.dim() == 4:
        logits = logits[:, 0]
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    target = target.to(logits.device)
    valid = target != ignore_index
    if not valid.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[valid], target[valid].to(logits.dtype))


def main(argv=None):
    ap = stage_parser(__doc__, training=True)
    ap.add_argument("--fold-file", required=True, help="fold JSON: strong = base, weak = novel")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    cfg = train_config(params, "lnet.train")
    dataset = VOCDataset(params["data"], "train")
    object_ids = object_class_ids(section(params, "lnet.object_classes"), dataset.class_names,
                                  dataset.background_index, dataset.name)
    fold, base_ids, novel = load_base_samples(args.fold_file, dataset, params["dataset"])
    device = stage_device(args, params)
    seed = int(params["seed"])
    seed_everything(seed)

    used = {"lnet": params["lnet"], "backbone": params["backbone"], "data": params["data"], "seed": seed}
    inputs = {"fold_file": args.fold_file, "base_samples": len(base_ids), "novel_classes": novel,
              "object_classes": [dataset.class_names[c] for c in object_ids]}
    with stage_run("train_lnet", inputs, used, device) as log:
        mean, std = backbone_normalization(params["backbone"])
        ignore = dataset.ignore_index

        def load(image_id: str) -> tuple[np.ndarray, list[np.ndarray]]:
            image, mask = dataset.load_sample(image_id)
            return image, [object_target(mask_novel_pixels(mask, novel, ignore), object_ids, ignore)]

        def make_batches(epoch: int, rng: np.random.Generator):
            return training_batches(base_ids, load, batch_size=cfg["batch_size"], crop=cfg["crop"],
                                    scale_range=tuple(cfg["scale_range"]), rng=rng, mean=mean, std=std,
                                    ignore_index=ignore)

        model = DeepLabASPP(params["backbone"], num_classes=1)
        # NHWC on CPU: depthwise convolutions (EfficientNet) run several times faster there.
        memory_format = torch.channels_last if device == "cpu" else torch.contiguous_format
        model = model.to(memory_format=memory_format)

        def step(net: torch.nn.Module, batch: dict):
            loss = objectness_bce(net(batch["image"].contiguous(memory_format=memory_format)),
                                  batch["targets"][0], ignore)
            return loss, {"bce": float(loss.detach())}

        groups = model.param_groups(cfg["lr"])
        optimizer = torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
        steps = count_steps(len(base_ids), cfg["batch_size"]) or 1  # fewer ids than a batch: one step
        scheduler = poly_scheduler(optimizer, steps * cfg["epochs"])
        meta = {**deeplab_meta(model), "task": "lnet", "dataset": params["dataset"], "fold": fold.get("fold"),
                "object_classes": object_ids, "novel_classes": novel,
                "base_samples_hash": params_hash(base_ids), "params_hash": params_hash(used)}
        train_and_save(model, make_batches, step, optimizer, scheduler, cfg["epochs"], args.out, args.history,
                       log, seed, meta, device)


if __name__ == "__main__":
    run_stage(main)
