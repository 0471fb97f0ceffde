"""Stage crnet_cross_result: results/<test>/crnet_from_<train>_fold<k>, CRNet across datasets.

    python -m pipeline.methods.crnet.cross_dataset --params params.yaml --dataset TEST \\
        --train-dataset TRAIN --train-fold-file work/TRAIN/folds/foldK.json \\
        --eval crnet:1:0=E.json ... --eval prototype:1:0=P.json ... --out DIR

The anchors' COCO->PASCAL protocol: a CRNet trained on the base classes of fold k of the
TRAIN dataset is scored on the TEST dataset's episodes of ``crnet.cross_dataset.<TEST>.classes``
(val split, ``work/<TEST>/episodes/cross_<s>shot_seed<e>.jsonl``; null: every object class).
A test class is *seen* when the net's training classes (the fold's base classes) hold it by
name, or hold the name that ``crnet.cross_dataset.<TEST>.class_map`` ({test: train}) gives
it (:func:`seen_classes`); mIoU is reported over the seen, the unseen and all test classes
(:func:`split_miou`), per shot count as mean ± std over the episode seeds, with the
training-free prototype floor beside it (it learns nothing, so "seen" means nothing to it),
and the yardstick (trivial and mismatched-support rows, standard and labelled-background
episodes, :func:`pipeline.methods.crnet.results.yardstick_tables`).

``--aggregate DIR ...`` (results/crnet_cross, the pairs of ``crnet.cross_dataset.pairs``): the
reports one after another and ``{"<train>_fold<k>-><test>": metrics}``.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from pipeline.config import load_params, section
from pipeline.data.folds import load_fold
from pipeline.errors import PipelineError, run_stage
from pipeline.io import read_json
from pipeline.methods.crnet.results import KINDS, parse_evals, write_outputs, yardstick_markdown, yardstick_tables
from pipeline.metrics.episodic import format_mean_std, mean_std_over_seeds
from pipeline.report import markdown_table
from pipeline.runtime import stage_run
from pipeline.stage import stage_parser

GROUPS = ("seen", "unseen", "all")


def seen_classes(test_names: Sequence[str], train_names: Sequence[str],
                 class_map: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """``{test class: the training class it is seen as, or None}``: the mapped name
    (``class_map[test]``) if the training classes hold it, else the test class's own name if
    they hold that, else None (unseen)."""
    class_map = class_map or {}
    train = set(train_names)
    out = {}
    for name in test_names:
        candidates = [class_map[name]] if name in class_map else []
        out[name] = next((c for c in [*candidates, name] if c in train), None)
    return out


def split_miou(class_iou: Mapping[str, float], seen: Mapping[str, str | None]) -> dict[str, float | None]:
    """Mean IoU over the seen, the unseen and all classes of ``class_iou`` ({name: IoU});
    None for an empty group, NaN IoUs (a class without episodes) left out."""
    groups = {"seen": [n for n in class_iou if seen.get(n)], "unseen": [n for n in class_iou if not seen.get(n)],
              "all": list(class_iou)}
    out = {}
    for group, names in groups.items():
        values = [float(class_iou[n]) for n in names if not math.isnan(float(class_iou[n]))]
        out[group] = sum(values) / len(values) if values else None
    return out


def cross_tables(docs: Mapping[tuple[str, int, int], dict], seen: Mapping[str, str | None]) -> dict:
    """``{kind: {"<k>shot": {"seen" | "unseen" | "all": mean_std_over_seeds, "class_iou": {name: ...}}}}``."""
    metrics: dict = {}
    for kind, shots in sorted({(k, s) for k, s, _ in docs}):
        per_seed = {seed: d for (k, s, seed), d in docs.items() if k == kind and s == shots}
        names_of = {seed: d["class_names"] for seed, d in per_seed.items()}
        ious = {seed: {names_of[seed][c]: v for c, v in d["summary"]["class_iou"].items()}
                for seed, d in per_seed.items()}
        splits = {seed: split_miou(iou, seen) for seed, iou in ious.items()}
        table = {group: mean_std_over_seeds({e: s[group] for e, s in splits.items()})
                 for group in GROUPS if all(s[group] is not None for s in splits.values())}
        table["class_iou"] = {name: mean_std_over_seeds({e: iou[name] for e, iou in ious.items()})
                              for name in next(iter(ious.values()))}
        metrics.setdefault(kind, {})[f"{shots}shot"] = table
    return metrics


def cross_markdown(metrics: dict) -> str:
    seen = metrics["seen"]
    lines = [f"# CRNet across datasets: {metrics['train_dataset']} fold {metrics['train_fold']} -> "
             f"{metrics['dataset']}", "",
             f"CRNet trained on the base classes of {metrics['train_dataset']} fold {metrics['train_fold']}, scored on "
             f"{metrics['dataset']} val episodes of its classes (work/{metrics['dataset']}/episodes/cross_*). Mean ± std "
             f"over the episode seeds {metrics['episode_seeds']}; IoU in %, 255 ignored.", "",
             "Seen test classes (in the training classes by name or by crnet.cross_dataset class_map): "
             + (", ".join(f"{n} (as {t})" if t != n else n for n, t in seen.items() if t) or "none") + ".", ""]
    shots = sorted({s for kind in KINDS for s in metrics.get(kind, {})}, key=lambda s: int(s[:-4]))
    header = ["Method"] + [f"{s} mIoU {g}" for s in shots for g in GROUPS]
    rows = [[title] + [format_mean_std(metrics[kind][s][g]) if g in metrics[kind].get(s, {}) else "–"
                       for s in shots for g in GROUPS]
            for kind, title in KINDS.items() if kind in metrics]
    lines += ["## mIoU over seen, unseen and all test classes (standard episodes)", "", markdown_table(header, rows), "",
              "## Per class (CRNet)", ""]
    lines += [markdown_table(["Class", "Seen as"] + shots,
                             [[n, seen[n] or "unseen"] + [format_mean_std(metrics["crnet"][s]["class_iou"][n])
                                                          for s in shots] for n in seen])]
    if metrics.get("yardstick"):
        lines += ["", yardstick_markdown(metrics["yardstick"])]
    return "\n".join(lines) + "\n"


def aggregate(dirs: Sequence[str]) -> tuple[dict, str]:
    metrics, texts = {}, []
    for d in dirs:
        m = read_json(f"{d}/metrics.json")
        metrics[f"{m['train_dataset']}_fold{m['train_fold']}->{m['dataset']}"] = m
        with open(f"{d}/report.md") as f:  # each report's headings one level down
            texts.append("\n".join("#" + line if line.startswith("#") else line for line in f.read().splitlines()))
    return metrics, "# CRNet across datasets\n\n" + "\n".join(texts)


def main(argv=None):
    ap = stage_parser(__doc__)
    ap.add_argument("--aggregate", nargs="+", help="results/<test>/crnet_from_<train>_fold<k> directories")
    ap.add_argument("--train-dataset", help="dataset the CRNet was trained on")
    ap.add_argument("--train-fold-file", help="its fold file: the base classes are the trained ones")
    ap.add_argument("--eval", action="append", default=[], help="crnet|prototype:<shots>:<seed>=EVAL.json")
    ap.add_argument("--out", required=True, help="result directory")
    args = ap.parse_args(argv)

    if args.aggregate:
        with stage_run("crnet_cross_result", {"aggregate": args.aggregate}, {}):
            write_outputs(args.out, *aggregate(args.aggregate))
        return
    for name in ("train_dataset", "train_fold_file"):
        if getattr(args, name) is None:
            raise PipelineError(f"--{name.replace('_', '-')}", "required for a cross-dataset report")
    params = load_params(args.params, args.dataset)
    train_params = load_params(args.params, args.train_dataset)
    evals = parse_evals(args.eval)
    if not any(kind == "crnet" for kind, _, _ in evals):
        raise PipelineError("--eval", "no crnet evaluation files given")
    fold = load_fold(args.train_fold_file)
    train_names = list(train_params["data"]["classes"])
    trained = [train_names[c] for c in fold["base_classes"]]
    settings = (section(params, "crnet.cross_dataset") or {}).get(params["dataset"]) or {}
    with stage_run("crnet_cross_result", {"train_dataset": args.train_dataset, "evals": len(evals)},
                   {"cross_dataset": settings}):
        docs = {key: read_json(path) for key, path in evals.items()}
        first = next(d for (k, _, _), d in docs.items() if k == "crnet")
        test_names = [first["class_names"][c] for c in sorted(first["class_names"], key=int)]
        seen = seen_classes(test_names, trained, settings.get("class_map"))
        metrics = {"method": "crnet_cross", "dataset": params["dataset"], "train_dataset": args.train_dataset,
                   "train_fold": fold.get("fold"), "trained_classes": trained, "seen": seen,
                   "episode_seeds": sorted({seed for _, _, seed in evals}), **cross_tables(docs, seen),
                   "yardstick": yardstick_tables(docs)}
        write_outputs(args.out, metrics, cross_markdown(metrics))


if __name__ == "__main__":
    run_stage(main)
