"""Stage: draw the few-shot test episodes of one fold, shot count and episode seed.

    python -m pipeline.stages.make_episodes --labels work/<ds>/image_labels.json \
        --fold-file work/<ds>/folds/foldK.json --shots 1 --seed 0 \
        --out work/<ds>/episodes/foldK_1shot_seed0.jsonl

Queries and supports are val images holding >= ``episodes.min_pixels`` pixels of one of
the fold's novel classes (image-labels ``pixel_counts``); ``episodes.num_episodes``
episodes cycle over the novel classes. The same seed gives the same file, and its k-shot
supports are a prefix of its K-shot ones (k < K). Format and drawing:
:mod:`pipeline.data.episodes`. A novel class in fewer than shots + 1 val images stops the
stage with one line naming the class and the labels file (``episodes.small_classes:
error``); with ``leave_out`` such classes get no episodes (the others cycle; the log names
them, and test_crnet's yardstick and every report name them with their counts) -- a
long-tailed dataset can still be scored. No class left: one line.

``--classes a,b,c`` instead of ``--fold-file``: the episodes of those classes of the dataset
(``all``: every object class), keyed by the class list rather than a fold -- the
cross-dataset test bed (``work/<ds>/episodes/cross_<shots>shot_seed<s>.jsonl``).
"""
from __future__ import annotations

from pipeline.config import load_params, section
from pipeline.data.episodes import (check_enough_images, class_ids_by_name, class_list_arg, draw_episodes,
                                    images_with_class, small_classes, write_episodes)
from pipeline.data.folds import fold_novel_classes, load_fold
from pipeline.data.labels import check_labels_match, read_image_labels_file
from pipeline.errors import PipelineError, run_stage
from pipeline.runtime import stage_run
from pipeline.stage import stage_parser

SPLIT = "val"


def episode_classes(args, params: dict, names: list[str]) -> tuple[list[int], dict]:
    """The episodes' classes and the fold they come from (``{"fold": "cross"}`` for --classes)."""
    if args.classes is not None:
        ids = class_ids_by_name(class_list_arg(args.classes), names, params["data"].get("background"), "--classes")
        return ids, {"fold": "cross"}
    fold = load_fold(args.fold_file)
    if fold.get("dataset", params["dataset"]) != params["dataset"]:
        raise PipelineError(args.fold_file, f"was made for dataset '{fold['dataset']}', "
                            f"but params select '{params['dataset']}'")
    novel = fold_novel_classes(fold, args.fold_file, len(names))
    if not novel:
        raise PipelineError(args.fold_file, "'novel_classes' is empty")
    return novel, fold


def main(argv=None):
    ap = stage_parser(__doc__, inputs=("labels",))
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--fold-file", help="fold JSON (stage make_folds): its novel classes")
    which.add_argument("--classes", help="comma-separated class names, or 'all' object classes")
    ap.add_argument("--shots", required=True, type=int, help="support images per episode (k)")
    ap.add_argument("--seed", required=True, type=int, help="episode seed")
    ap.add_argument("--out", required=True, help="episodes JSONL to write")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    data_cfg = params["data"]
    settings = section(params, "episodes")
    num_episodes, min_pixels = int(settings["num_episodes"]), int(settings["min_pixels"])
    if args.shots < 1:
        raise PipelineError("--shots", f"{args.shots} must be >= 1")
    if args.seed < 0:
        raise PipelineError("--seed", f"{args.seed} must be >= 0")
    document = read_image_labels_file(args.labels)
    check_labels_match(document, data_cfg, params["dataset"], args.labels, splits=(SPLIT,))
    if document.get("pixel_counts") is None:
        raise PipelineError(args.labels, "has no 'pixel_counts' (rerun stage image_labels)")
    names = list(data_cfg["classes"])
    novel, fold = episode_classes(args, params, names)

    with stage_run("make_episodes", {"labels": args.labels, "fold_file": args.fold_file, "classes": args.classes,
                                     "shots": args.shots,
                                     "seed": args.seed}, {"episodes": settings}) as log:
        val_ids = document["splits"][SPLIT]
        missing = [i for i in val_ids if i not in document["pixel_counts"]]
        if missing:
            raise PipelineError(args.labels, f"no pixel_counts for val image '{missing[0]}'")
        images = images_with_class(document["pixel_counts"], val_ids, novel, min_pixels)
        small = small_classes(images, args.shots)
        if settings["small_classes"] == "leave_out" and small:
            kept = [c for c in novel if c not in small]
            log.warning("left out (episodes.small_classes: leave_out; fewer than %d val images): %s", args.shots + 1,
                        ", ".join(f"{names[c]} ({n})" for c, n in small.items()))
            if not kept:
                raise PipelineError(args.labels, f"every class of fold {fold['fold']} is in fewer than "
                                    f"{args.shots + 1} val images: no episode left")
            novel, images = kept, {c: images[c] for c in kept}
        check_enough_images(images, args.shots, names, args.labels,
                            what=f"val images with >= {min_pixels} px of it (fold {fold['fold']})")
        episodes = draw_episodes(images, novel, num_episodes, args.shots, args.seed, names)
        write_episodes(args.out, episodes)
        log.info("fold %s: %d %d-shot episodes (seed %d) of %s; val images per class %s", fold["fold"],
                 len(episodes), args.shots, args.seed, [names[c] for c in novel],
                 {names[c]: len(ids) for c, ids in images.items()})


if __name__ == "__main__":
    run_stage(main)
