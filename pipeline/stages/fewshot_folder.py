"""Stage fewshot_folder: segment the object of a few annotated examples in a folder of your images.

    python -m pipeline.stages.fewshot_folder --params params.yaml --dataset D \\
        --support cows/support --query cows/photos --method prototype --out results/D/fewshot/cows
    (--method crnet --model work/D/fold0/crnet/full/model.pt | --method refnet --model .../model.pt)

``--support``: ``images/<name>.<ext>`` and ``masks/<name>.png`` (paired by name; k pairs = k
shots, any sizes). Which mask values are the object: :func:`pipeline.data.image_folder.read_object_mask`
(palette PNG: every index but 0 = background and 255 = ignored, or only ``apply.object_indices``;
grey-scale PNG: values >= 128). ``--query``: every non-hidden file of the folder.

Every image goes through the few-shot branch's frozen encoder
(:class:`pipeline.data.fewshot_features.Encoder`, ``crnet.encoder`` of the dataset's params: the
features the trained models saw; an image longer than ``apply.max_side`` px is resized to it
first, masks stay at their own size), then one k-shot episode per query image, scored as the
episodic tests score one:

* ``prototype``: the training-free PANet floor, :func:`pipeline.fewshot.prototype_probability`
  (test_crnet ``--prototype``); needs no trained model.
* ``crnet``: a CRNet model file (stage train_crnet), ``crnet.test.iterations`` refinement
  iterations, k shots fused by probability averaging
  (:func:`pipeline.models.crnet.episode_probabilities`, as test_crnet).
* ``refnet``: a Ref-Net model file (stage train_refnet); each support is a reference, their
  probabilities averaged (:func:`pipeline.refnet_training.class_probability`) on the model's
  grid and size, foreground above ``refnet.test.threshold`` (as test_refnet).

The foreground probability is brought to the query's own size (bilinear) and thresholded at
0.5 (prototype, crnet: :func:`pipeline.fewshot.binary_prediction`). Output folder
(:mod:`pipeline.folder_outputs`): ``masks/<name>.png`` (palette PNG, 0 = background,
1 = object), ``overlays/<name>.jpg``, ``sheet.jpg`` (the supports with their masks first,
captioned ``support: <name>``, then every query) and ``info.json``.

Bad input, "nothing done" (one line naming the file, exit 2, no output folder): an unreadable
image or mask, a support image without its mask (or the reverse), a mask of another size
than its image, a support mask without any object pixel, a mask of colours (RGB).
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import load_params, section
from pipeline.crnet_training import load_crnet
from pipeline.data.augment import resize_image, resize_mask
from pipeline.data.batches import normalize_batch
from pipeline.data.fewshot_features import Encoder
from pipeline.data.image_folder import (
    IGNORE, check_images, check_unique_stems, fit_scale, folder_files, read_object_mask, read_rgb, support_pairs)
from pipeline.errors import PipelineError, run_stage
from pipeline.fewshot import binary_prediction, prototype_probability
from pipeline.folder_outputs import overlay, save_sheet, thumbnail, write_image_outputs
from pipeline.io import atomic_dir, write_json
from pipeline.models import backbone_normalization
from pipeline.models.crnet import episode_probabilities
from pipeline.refnet_training import class_probability, load_refnet
from pipeline.runtime import progress, seed_everything, stage_run
from pipeline.stage import stage_device, stage_parser

METHODS = ("prototype", "crnet", "refnet")


def refnet_references(features: list[torch.Tensor], masks: list[np.ndarray], grid: int, size: int
                      ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Ref-Net's (features on the grid, binary mask at size x size) of each support, as
    stage test_refnet's references: the object pixels are 1, background and ignored 0."""
    refs = []
    for feats, mask in zip(features, masks):
        grid_feats = F.interpolate(feats, size=(grid, grid), mode="bilinear", align_corners=False)
        binary = torch.from_numpy((resize_mask(mask, (size, size)) == 1).astype(np.float32))[None]
        refs.append((grid_feats, binary))
    return refs


class FewShotPredictor:
    """Foreground mask ``H x W`` uint8 (1 = object) of a query from its encoder features."""

    def __init__(self, method: str, params: dict, model_path: str | None, level_channels: list[int], device):
        self.method, self.device = method, device
        self.meta: dict = {}
        if method == "prototype":
            self.model = None
        elif method == "crnet":
            self.model = load_crnet(model_path, SimpleNamespace(level_channels=level_channels)).to(device)
            self.iterations = int(section(params, "crnet.test.iterations"))
        else:
            self.model, self.meta = load_refnet(model_path)
            self.model.to(device)
            self.threshold = float(section(params, "refnet.test.threshold"))
            self.grid, self.size = int(self.meta["grid"]), int(self.meta["size"])

    def prepare(self, features: list[torch.Tensor], masks: list[np.ndarray]) -> None:
        """The supports: features ``1 x C x h x w`` and episode masks (1 object, 0 background, 255 ignored)."""
        self.support_features = [f.to(self.device) for f in features]
        self.support_masks = [torch.from_numpy(m) for m in masks]
        if self.method == "refnet":
            self.references = [(f.to(self.device), m.to(self.device))
                               for f, m in refnet_references(features, masks, self.grid, self.size)]

    @torch.no_grad()
    def predict(self, query: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
        query = query.to(self.device)
        if self.method == "prototype":
            prob = prototype_probability(query[0], [f[0] for f in self.support_features], self.support_masks,
                                         ignore_index=IGNORE)
            return binary_prediction(prob.cpu(), shape).numpy()
        if self.method == "crnet":
            prob = episode_probabilities(self.model, query, self.support_features, self.support_masks,
                                         self.iterations)[-1]
            return binary_prediction(prob.cpu(), shape).numpy()
        feats = F.interpolate(query, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        prob = class_probability(self.model, feats, self.references, (self.size, self.size))
        prob = F.interpolate(prob[None, None].cpu(), size=shape, mode="bilinear", align_corners=False)[0, 0]
        return (prob > self.threshold).to(torch.uint8).numpy()


def main(argv=None):
    ap = stage_parser(__doc__, threads=True)
    ap.add_argument("--support", required=True, help="support folder: images/ and masks/ (same names)")
    ap.add_argument("--query", required=True, help="folder of images to segment")
    ap.add_argument("--method", required=True, choices=METHODS, help="prototype (no model) | crnet | refnet")
    ap.add_argument("--model", default=None, help="model file (crnet: stage train_crnet; refnet: train_refnet)")
    ap.add_argument("--out", required=True, help="output folder (masks/, overlays/, sheet.jpg, info.json)")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    if args.method != "prototype" and not args.model:
        raise PipelineError("--model", f"--method {args.method} needs the trained model file")
    if args.method == "prototype" and args.model:
        raise PipelineError("--model", "the prototype floor uses no trained model (--method crnet or refnet do)")
    apply = section(params, "apply")
    object_indices = apply.get("object_indices")
    pairs = support_pairs(args.support)
    queries = folder_files(args.query, "query folder")
    check_unique_stems(queries)
    # "nothing done": every image and mask is read and checked before any output
    support_sizes = check_images([image for image, _ in pairs])
    masks = [read_object_mask(mask, size, object_indices) for (_, mask), size in zip(pairs, support_sizes)]
    query_sizes = check_images(queries)
    device = stage_device(args, params)
    seed_everything(int(params["seed"]))
    encoder = Encoder(params).to(device)
    predictor = FewShotPredictor(args.method, params, args.model, encoder.cfg["level_channels"], device)
    mean, std = backbone_normalization(params["backbone"])

    def features(image: np.ndarray) -> torch.Tensor:
        fit = fit_scale(image.shape[:2], apply.get("max_side"))  # large photos: the encoder's input only
        if fit != 1.0:
            image = resize_image(image, (max(1, round(image.shape[0] * fit)), max(1, round(image.shape[1] * fit))))
        return encoder(normalize_batch(image[None], mean, std).to(device)).float()

    inputs = {"support": args.support, "shots": len(pairs), "query": args.query, "count": len(queries),
              "method": args.method, "model": args.model}
    used = {"crnet.encoder": encoder.cfg, "apply": apply,
            **({f"{args.method}.test": section(params, f"{args.method}.test")} if args.model else {})}
    cell, alpha = int(apply["sheet"]["cell"]), float(apply["overlay_alpha"])
    with stage_run("fewshot_folder", inputs, used, device) as log, atomic_dir(args.out) as tmp:
        started = time.perf_counter()
        cells, support_feats = [], []
        for (image_path, _), mask in zip(pairs, masks):
            image = read_rgb(image_path)
            support_feats.append(features(image))
            shown = np.where(mask == IGNORE, 0, mask)
            cells.append((f"support: {image_path.name}", thumbnail(overlay(image, shown, alpha), cell)))
        predictor.prepare(support_feats, masks)
        per_image = {}
        for path, size in progress(list(zip(queries, query_sizes)), desc="fewshot_folder"):
            image = read_rgb(path)
            labels = predictor.predict(features(image), tuple(size))
            tinted = write_image_outputs(tmp, path.stem, image, labels, alpha)
            cells.append((path.name, thumbnail(tinted, cell)))
            per_image[path.name] = {"height": int(size[0]), "width": int(size[1]),
                                    "object_share": round(float(labels.mean()), 4)}
        shown = save_sheet(tmp, cells, cell, int(apply["sheet"]["columns"]))
        seconds = time.perf_counter() - started
        write_json(tmp / "info.json", {
            "method": args.method, "model": args.model, "dataset": params["dataset"], "query": args.query,
            "supports": [{"image": str(i), "mask": str(m), "object_share": round(float((k == 1).mean()), 4)}
                         for (i, m), k in zip(pairs, masks)],
            "classes": {"0": "background", "1": "object"}, "seconds": round(seconds, 2), "sheet_shows": shown,
            "per_image": per_image})
        log.info("%d-shot %s on %d images in %.1f s -> %s", len(pairs), args.method, len(queries), seconds, args.out)


if __name__ == "__main__":
    run_stage(main)
