"""Stage: write one weak-shot fold (novel/base classes, novel/base train samples, counts).

    python -m pipeline.stages.make_folds --labels work/<ds>/image_labels.json --fold K \
        --out work/<ds>/folds/foldK.json

Novel classes come from ``datasets.<name>.novel_classes`` (pascal5i, ``{k: K}`` or explicit lists).
A train image is a novel sample when one novel class has at least
``datasets.<name>.novel_min_pixels`` pixels in it (default 1: the PASCAL-5i rule), else a
base sample. Format and rules: :mod:`pipeline.data.folds`. Deterministic (no seeding).

``--novel-classes NAME,NAME`` replaces the dataset's fold list for this one file: the
listed classes are novel, the fold number is only recorded (the L-Net branch's named
split-sets, ``lnet.split_sets``, use it; workflow/rules/lnet.smk).
"""
from __future__ import annotations


from pipeline.config import load_params
from pipeline.data.folds import base_classes_for_fold, fold_counts, novel_classes_for_fold, split_samples
from pipeline.data.labels import check_labels_match, present_classes, read_image_labels_file
from pipeline.errors import PipelineError, run_stage
from pipeline.io import write_json
from pipeline.runtime import stage_run
from pipeline.stage import stage_parser


def presence_for_split(document: dict, ids: list[str], min_pixels: int, path: str) -> dict[str, list[int]]:
    """Classes present in each id with >= ``min_pixels`` pixels (background kept: never novel)."""
    counts = document.get("pixel_counts")
    if counts is None:
        if min_pixels > 1:
            raise PipelineError(path, "has no 'pixel_counts', needed for novel_min_pixels > 1 "
                                "(rerun stage image_labels)")
        return {i: document["labels"][i] for i in ids}
    missing = [i for i in ids if i not in counts]
    if missing:
        raise PipelineError(path, f"no pixel_counts for train image '{missing[0]}'")
    return {i: present_classes(counts[i], min_pixels, None) for i in ids}


def with_novel_classes(data_cfg: dict, names: str) -> dict:
    """``data_cfg`` whose only fold has the comma-separated ``names`` as novel classes."""
    listed = [n.strip() for n in names.split(",") if n.strip()]
    if not listed:
        raise PipelineError("--novel-classes", "lists no class name")
    return {**data_cfg, "novel_classes": [listed]}


def main(argv=None):
    ap = stage_parser(__doc__, inputs=("labels",))
    ap.add_argument("--fold", required=True, type=int)
    ap.add_argument("--out", required=True, help="fold JSON to write")
    ap.add_argument("--novel-classes", default=None, metavar="NAME,NAME",
                    help="novel class names of this fold, instead of the dataset's novel_classes")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    data_cfg = params["data"]
    if args.novel_classes is not None:
        data_cfg = with_novel_classes(data_cfg, args.novel_classes)
    split_fold = 0 if args.novel_classes is not None else args.fold
    novel = novel_classes_for_fold(data_cfg, split_fold)
    base = base_classes_for_fold(data_cfg, split_fold)
    novel_min_pixels = int(data_cfg.get("novel_min_pixels", 1))
    document = read_image_labels_file(args.labels)
    check_labels_match(document, data_cfg, params["dataset"], args.labels)
    names = list(data_cfg["classes"])

    with stage_run("make_folds", {"labels": args.labels, "fold": args.fold},
                   {"data": data_cfg}) as log:
        train_ids = document["splits"]["train"]
        presence = presence_for_split(document, train_ids, novel_min_pixels, args.labels)
        novel_samples, base_samples = split_samples(presence, novel)
        novel_names = [names[c] for c in novel]
        if not novel_samples:
            raise PipelineError(args.labels, f"fold {args.fold}: no train image contains the novel classes "
                                f"{novel_names} (with >= {novel_min_pixels} pixels)")
        if not base_samples:
            raise PipelineError(args.labels, f"fold {args.fold}: every train image contains a novel class of "
                                f"{novel_names}, so no base samples are left (see datasets.<name>.novel_min_pixels)")
        train_labels = {i: document["labels"][i] for i in train_ids}
        counts = fold_counts(novel_samples, base_samples, train_labels, names,
                             document.get("pixel_counts"), novel)
        write_json(args.out, {
            "fold": args.fold,
            "dataset": params["dataset"],
            "novel_classes": novel,
            "base_classes": base,
            "novel_class_names": novel_names,
            "base_class_names": [names[c] for c in base],
            "novel_min_pixels": novel_min_pixels,
            "novel_samples": novel_samples,
            "base_samples": base_samples,
            "counts": counts,
        })
        log.info("fold %d: novel %s, %d novel samples, %d base samples",
                 args.fold, novel_names, len(novel_samples), len(base_samples))


if __name__ == "__main__":
    run_stage(main)
