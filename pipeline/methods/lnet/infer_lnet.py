"""Stage infer_lnet: the L-Net's class-agnostic object map M of every weak-category image.

    python -m pipeline.methods.lnet.infer_lnet --params params.yaml --dataset D \\
        --model work/D/fold0/lnet/pascal5i/lnet/model.pt --fold-file work/D/folds/fold0.json \\
        --out work/D/fold0/lnet/pascal5i/lnet/maps --threads 2

Ids: the fold file's ``novel_samples`` (``--ids-from``; the images of weak categories).
Each image goes through the network at its own size (images of equal size are batched,
``lnet.infer.batch_size``); with ``lnet.infer.flip`` the logits of the mirrored image are
mirrored back and averaged with the direct ones before the sigmoid. Output:
``<out>/<id>.png``, uint8 mode 'L', ``round(M * 255)`` at the image's size (the storage
of :mod:`pipeline.boundary`: :func:`read_probability_map` reads it back to [0, 1]). The
directory is written under a temporary name and renamed when every map is done.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from pipeline.config import load_params, section
from pipeline.data.batches import normalize_batch
from pipeline.data.folds import fold_samples, load_fold
from pipeline.data.probability_png import map_path, write_map
from pipeline.data.voc import VOCDataset, image_size
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir
from pipeline.models import DeepLabASPP, backbone_normalization
from pipeline.models.deeplab import deeplab_meta
from pipeline.runtime import progress, seed_everything, stage_run
from pipeline.stage import stage_device, stage_parser
from pipeline.training import load_model


def object_probability(model: torch.nn.Module, images: torch.Tensor, flip: bool) -> torch.Tensor:
    """``B x H x W`` object probabilities M of normalised images ``B x 3 x H x W``."""
    logits = model(images)[:, 0]
    if flip:
        logits = (logits + model(images.flip(-1))[:, 0].flip(-1)) / 2
    return torch.sigmoid(logits)


def batches_by_size(ids: Sequence[str], sizes: Sequence[tuple[int, int]], batch_size: int) -> Iterator[list[str]]:
    """Ids grouped by image size (first-seen order), in chunks of at most ``batch_size``."""
    groups: dict[tuple[int, int], list[str]] = {}
    for image_id, size in zip(ids, sizes):
        groups.setdefault(tuple(size), []).append(image_id)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            yield members[start:start + batch_size]


def main(argv=None):
    ap = stage_parser(__doc__, threads=True)
    ap.add_argument("--model", required=True, help="L-Net model file (stage train_lnet)")
    ap.add_argument("--fold-file", required=True, help="fold JSON whose id list names the images")
    ap.add_argument("--ids-from", default="novel_samples", help="id list of the fold file (default novel_samples)")
    ap.add_argument("--out", required=True, help="directory of <id>.png object maps to write")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    flip = bool(section(params, "lnet.infer.flip"))
    batch_size = int(section(params, "lnet.infer.batch_size"))
    dataset = VOCDataset(params["data"], "train")
    fold = load_fold(args.fold_file)
    if args.ids_from not in fold:
        raise PipelineError(args.fold_file, f"has no id list '{args.ids_from}' (--ids-from)")
    ids = fold_samples(fold, args.fold_file, dataset, params["dataset"], args.ids_from)
    device = stage_device(args, params)
    seed_everything(int(params["seed"]))

    # The trained weights replace everything: never load (or download) ImageNet weights here.
    model = DeepLabASPP({**params["backbone"], "pretrained": False}, num_classes=1)
    meta = load_model(args.model, model, expected_meta=deeplab_meta(model))
    if meta.get("task") != "lnet":
        raise PipelineError(args.model, f"is not an L-Net model (task {meta.get('task')!r})")
    memory_format = torch.channels_last if device == "cpu" else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format).eval()
    mean, std = backbone_normalization(params["backbone"])
    sizes = [image_size(dataset.image_path(i))[::-1] for i in ids]

    inputs = {"model": args.model, "fold_file": args.fold_file, "ids_from": args.ids_from, "images": len(ids)}
    with stage_run("infer_lnet", inputs, {"lnet": params["lnet"]}, device) as log:
        with atomic_dir(args.out) as tmp, torch.inference_mode():
            chunks = list(batches_by_size(ids, sizes, batch_size))
            for chunk in progress(chunks, desc="L-Net maps", total=len(chunks)):
                images = normalize_batch(np.stack([dataset.load_image(i) for i in chunk]), mean, std)
                images = images.to(device).contiguous(memory_format=memory_format)
                probs = object_probability(model, images, flip).float().cpu().numpy()
                for image_id, prob in zip(chunk, probs):
                    write_map(map_path(tmp, image_id), prob)
        log.info("wrote %d object maps to %s", len(ids), args.out)


if __name__ == "__main__":
    run_stage(main)
