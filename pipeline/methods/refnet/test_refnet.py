"""Stage test_refnet: a trained Ref-Net on the val split, the paper's protocol.

    python -m pipeline.methods.refnet.test_refnet --params params.yaml --dataset D \\
        --model .../model.pt --train-features work/D/crnet/features/train.pt \\
        --val-features work/D/crnet/features/val.pt --labels work/D/image_labels.json \\
        --out .../eval.json --predictions .../predictions.npz

For every val image and every target category in its image-level labels (which the
setting provides), the category's mask from its first ``refnet.test.references``
references (the model file's setting; probabilities averaged); the per-category masks are
combined into one label map over {background, targets} (the highest score wins where
several exceed ``refnet.test.threshold``). GT: target classes keep their index, every other
class is background, void is ignored. Scores from the shared confusion matrix
(:mod:`pipeline.metrics.semantic`): MPA, MIoU and FWIoU over background and the targets
(the paper's Table 1), and novel mIoU (the targets' mean IoU, RETAB's novel column).
``--predictions``: the label maps of the ``report.figure_samples`` val images with the most
target pixels, for the report's figure.

``--score-on unlabelled`` (the default for a model of a ``select<k>`` scope, whose meta
lists them; so the rule's command is the same for every scope): the setting's S images of
the *train* split instead of val, the pseudo-targets in the targets' role. Their masks are
base-class masks, which the selection setting allows; val is never read then.
"""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from pipeline.config import load_params, section
from pipeline.data.fewshot_features import FeatureStore
from pipeline.data.labels import check_labels_match, read_image_labels_file
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_path, write_json
from pipeline.metrics.semantic import (
    confusion_matrix, frequency_weighted_iou, mean_iou, mean_pixel_accuracy, per_class_iou)
from pipeline.refnet_training import (
    ImageBank, class_probability, combine_classes, load_refnet, reference_batch, target_ground_truth)
from pipeline.report import pick_largest
from pipeline.runtime import progress, seed_everything, stage_run
from pipeline.stage import stage_device, stage_parser


def summarize(cm: np.ndarray) -> dict:
    """The paper's scores over {background, targets} and the targets' mean IoU."""
    return {"mpa": mean_pixel_accuracy(cm), "miou": mean_iou(cm), "fwiou": frequency_weighted_iou(cm),
            "novel_miou": mean_iou(cm, list(range(1, cm.shape[0])))}


def main(argv=None):
    ap = stage_parser(__doc__, threads=True, inputs=("labels",))
    ap.add_argument("--model", required=True, help="model file of stage train_refnet")
    ap.add_argument("--train-features", required=True, help="train-split feature cache (the references)")
    ap.add_argument("--val-features", required=True, help="val-split feature cache")
    ap.add_argument("--out", required=True, help="eval JSON to write")
    ap.add_argument("--predictions", required=True, help="npz of the figure samples' label maps")
    ap.add_argument("--score-on", choices=("val", "unlabelled"), default=None,
                    help="val, or the setting's S images of the train split (default: unlabelled for a model "
                    "of a select<k> scope, else val)")
    args = ap.parse_args(argv)
    params = load_params(args.params, args.dataset)
    device = stage_device(args, params)
    seed_everything(int(params["seed"]))
    model, meta = load_refnet(args.model)
    model.to(device)
    setting = meta["setting"]
    targets = [int(c) for c in setting["targets"]]
    train = VOCDataset(params["data"], "train")
    score_on = args.score_on or ("unlabelled" if "select" in meta else "val")
    if score_on == "unlabelled" and "select" not in meta:
        raise PipelineError(args.model, "--score-on unlabelled: the model is not of a select<k> scope (no S list)")
    document = read_image_labels_file(args.labels)
    check_labels_match(document, params["data"], params["dataset"], args.labels, splits=("train", "val"))
    labels = document["labels"]
    grid, size = int(meta["grid"]), int(meta["size"])
    n_refs = int(section(params, "refnet.test.references"))
    threshold = float(section(params, "refnet.test.threshold"))
    refs = {c: [tuple(p) for p in setting["references"][str(c)][:n_refs]] for c in targets}
    train_store = FeatureStore(args.train_features, params, train)
    if score_on == "val":
        scored = VOCDataset(params["data"], "val")
        scored_store, scored_ids = FeatureStore(args.val_features, params, scored), list(scored.ids)
    else:
        scored, scored_store, scored_ids = train, train_store, list(meta["select"]["unlabelled"])
    inputs = {"model": args.model, f"{score_on}_images": len(scored_ids),
              "targets": [train.class_names[c] for c in targets]}
    with stage_run("test_refnet", inputs, {"refnet.test": section(params, "refnet.test")}, device) as log:
        ref_bank = ImageBank(train_store, train, sorted({i for v in refs.values() for i, _ in v}), grid, size)
        references = {}
        for c, pairs in refs.items():
            feats, _, masks = reference_batch(ref_bank, pairs)
            references[c] = [(feats[n:n + 1].to(device), masks[n:n + 1].to(device)) for n in range(len(pairs))]
        cm = np.zeros((len(targets) + 1, len(targets) + 1), dtype=np.int64)
        areas, maps = {}, {}
        for image_id in progress(scored_ids, desc="refnet test"):
            gt = target_ground_truth(scored_store.class_mask(image_id), targets, scored.ignore_index)
            present = [c for c in targets if c in labels.get(image_id, ())]
            probs = {}
            if present:
                feats = F.interpolate(scored_store.features(image_id), size=(grid, grid), mode="bilinear",
                                      align_corners=False).to(device)
                for c in present:
                    prob = class_probability(model, feats, references[c], (size, size))
                    prob = F.interpolate(prob[None, None], size=gt.shape, mode="bilinear", align_corners=False)
                    probs[targets.index(c) + 1] = prob[0, 0].cpu().numpy()
            pred = combine_classes(probs, gt.shape, threshold)
            cm += confusion_matrix(gt, pred, len(targets) + 1, scored.ignore_index)
            areas[image_id] = int(((gt > 0) & (gt != scored.ignore_index)).sum())
            maps[image_id] = pred
        figure_ids = pick_largest(areas, int(section(params, "report").get("figure_samples", 4)))
        summary = summarize(cm)
        log.info("MPA %.4f MIoU %.4f FWIoU %.4f novel mIoU %.4f", summary["mpa"], summary["miou"], summary["fwiou"],
                 summary["novel_miou"])
        iou = per_class_iou(cm)
        names = ["background"] + [train.class_names[c] for c in targets]
        write_json(args.out, {
            "summary": summary, "per_class_iou": {n: (None if v != v else float(v)) for n, v in zip(names, iou)},
            "confusion": cm.tolist(), "classes": names, "setting": setting, "variant": meta["variant"],
            "train_seed": meta["train_seed"], "switches": meta["switches"], "model": args.model,
            "scored_on": score_on, "adversarial_weight": meta.get("adversarial_weight"),
            "adversarial_balance": meta.get("adversarial_balance"),
            "critic_diagnostic": meta.get("critic_diagnostic"), **({"select": {k: v for k, v in meta["select"].items() if k != "unlabelled"}}
                                      if "select" in meta else {}),
            "figure": [{"id": i, "references": {train.class_names[c]: refs[c][0][0] for c in targets
                                                if c in labels.get(i, ())}} for i in figure_ids]})
        with atomic_path(args.predictions) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **{i: maps[i].astype(np.uint8) for i in figure_ids})


if __name__ == "__main__":
    run_stage(main)
