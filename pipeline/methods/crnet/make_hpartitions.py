"""Stage make_hpartitions: the H-partition episode files L0-L7 of one fold (the TPC + CRC
paper's H-PASCAL-5i; definitions and CMPS: :mod:`pipeline.hpartitions`).

    python -m pipeline.methods.crnet.make_hpartitions --params params.yaml --dataset D \\
        --oracle work/D/shared/seg/oracle/pred_val --features work/D/crnet/features/val.pt \\
        --labels work/D/image_labels.json --fold-file work/D/folds/fold0.json \\
        --out work/D/fold0/hpartitions

Queries: val images holding >= ``crnet.tpc_crc.partitions.min_pixels`` px of a novel class
of the fold. Easy / hard: the Fully Oracle net's IoU of the class on the query
(``--oracle``: its val predictions, stage predict_seg; build them with
``snakemake work/<D>/shared/seg/oracle/pred_val``). Large / small: the class's relative
bounding-box area. Supports: the ``shots`` nearest / farthest images of the same cell by L2
between per-image descriptors, the same for every method (``similarity``): ``pixels``, a
colour-layout histogram of the image (:func:`pipeline.hpartitions.color_layout_descriptor`;
no network, so not the prototype floor's feature space), or ``encoder``, the CRNet feature
cache of the val split pooled over the whole image (the frozen ImageNet encoder the floor and
CRNet match in). ``split`` (std | median) and ``fallback`` (none | size | class: where a query
with too few others in its cell searches): see the params and :mod:`pipeline.hpartitions`.
The log and ``partitions.json`` give, per partition, the episodes whose nearest and farthest
supports coincide and those searched in a widened pool, and per class the queries left
without any episode.

Output directory (complete or absent): ``L0.jsonl`` ... ``L7.jsonl`` (the episodes format;
a partition without episodes is an empty file) and ``partitions.json`` (the split, fallback
and similarity used, per-class cuts, episode counts per partition and class, ``degenerate``:
:func:`pipeline.hpartitions.episode_counts`); the counts are also logged.

Bad input (one line, exit 2, nothing written): the oracle directory missing (naming the
target that builds it), a prediction missing or of another size than its label.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.config import load_params, section
from pipeline.data.episodes import images_with_class, write_episodes
from pipeline.data.fewshot_features import FeatureStore
from pipeline.data.folds import fold_novel_classes, load_fold
from pipeline.data.label_png import read_sized_png
from pipeline.data.labels import check_labels_match, read_image_labels_file
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.hpartitions import (
    PARTITIONS, bbox_fraction, class_cells, class_iou, color_layout_descriptor, describe, episode_counts,
    partition_episodes, search_pools, split_high_low)
from pipeline.io import atomic_dir, write_json
from pipeline.runtime import stage_run
from pipeline.stage import stage_parser


def oracle_scores(oracle: Path, dataset: VOCDataset, images: dict[int, list[str]]):
    """``({class: {id: oracle IoU}}, {class: {id: bbox fraction}})`` of every query."""
    ious: dict[int, dict[str, float]] = {}
    areas: dict[int, dict[str, float]] = {}
    for c, ids in images.items():
        for image_id in ids:
            gt = dataset.load_mask(image_id)
            pred = read_sized_png(oracle / f"{image_id}.png", *gt.shape, "the oracle prediction")
            ious.setdefault(c, {})[image_id] = class_iou(pred, gt, c, dataset.ignore_index)
            areas.setdefault(c, {})[image_id] = bbox_fraction(gt, c)
    return ious, areas


def main(argv=None):
    ap = stage_parser(__doc__, inputs=("labels",))
    ap.add_argument("--oracle", required=True, help="the Fully Oracle net's val predictions (stage predict_seg)")
    ap.add_argument("--features", required=True, help="val-split feature cache (stage crnet_features)")
    ap.add_argument("--fold-file", required=True, help="fold JSON (stage make_folds)")
    ap.add_argument("--out", required=True, help="output directory of L0..L7.jsonl and partitions.json")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    cfg = section(params, "crnet.tpc_crc.partitions")
    oracle = Path(args.oracle)
    if not oracle.is_dir():
        raise PipelineError(oracle, "Fully Oracle predictions not found: build them with "
                            f"`snakemake work/{params['dataset']}/shared/seg/oracle/pred_val`")
    dataset = VOCDataset(params["data"], "val")
    document = read_image_labels_file(args.labels)
    check_labels_match(document, params["data"], params["dataset"], args.labels, splits=("val",))
    if document.get("pixel_counts") is None:
        raise PipelineError(args.labels, "has no 'pixel_counts' (rerun stage image_labels)")
    fold = load_fold(args.fold_file)
    novel = fold_novel_classes(fold, args.fold_file, dataset.num_classes)
    store = FeatureStore(args.features, params, dataset)
    names = dataset.class_names
    with stage_run("make_hpartitions", {"oracle": args.oracle, "fold_file": args.fold_file},
                   {"partitions": cfg}) as log:
        images = images_with_class(document["pixel_counts"], document["splits"]["val"], novel, int(cfg["min_pixels"]))
        store.check_ids([i for ids in images.values() for i in ids], args.labels, "val image")
        ious, areas = oracle_scores(oracle, dataset, images)
        split = str(cfg["split"])
        cells = {c: class_cells(ious[c], areas[c], split) for c in ious}
        similarity, fallback, shots = str(cfg["similarity"]), str(cfg["fallback"]), int(cfg["shots"])
        ids = sorted({i for ids in images.values() for i in ids})
        if similarity == "pixels":
            descriptors = {i: color_layout_descriptor(dataset.load_image(i)) for i in ids}
        else:
            descriptors = {i: store.features(i)[0].mean(dim=(1, 2)).numpy() for i in ids}
        queries = {c: sorted(ious[c]) for c in ious}
        pools = None if fallback == "none" else {c: search_pools(cells[c], queries[c], fallback) for c in cells}
        episodes = partition_episodes(cells, descriptors, shots, names, pools)
        degenerate = episode_counts(episodes, queries, names)
        counts = {name: len(eps) for name, eps in zip(PARTITIONS, episodes)}
        per_class = {name: {names[c]: sum(e["class"] == c for e in eps) for c in novel}
                     for name, eps in zip(PARTITIONS, episodes)}
        cuts = {names[c]: {"iou": split_high_low({i: v for i, v in ious[c].items() if v == v}, split)[2],
                           "queries": len(ious[c])} for c in ious}
        meta = {"split": split, "shots": shots, "fold": fold.get("fold"), "counts": counts,
                "per_class": per_class, "cuts": cuts, "min_episodes": int(cfg["min_episodes"]),
                "descriptions": {name: describe(i) for i, name in enumerate(PARTITIONS)},
                "fallback": fallback, "similarity": similarity, "degenerate": degenerate,
                "features": {"pixels": "colour-layout histograms of the images (no network)",
                             "encoder": "pooled frozen ImageNet encoder (CRNet feature cache, val split)"}[similarity]}
        with atomic_dir(args.out) as tmp:
            for name, eps in zip(PARTITIONS, episodes):
                write_episodes(tmp / f"{name}.jsonl", eps)
            write_json(tmp / "partitions.json", meta)
        log.info("H-partitions (%s split, %d-shot, fallback %s, similarity %s) episodes: %s", split, shots, fallback,
                 similarity, ", ".join(f"{n} {counts[n]}" for n in PARTITIONS))
        per = degenerate["per_partition"]
        log.info("fold %s: nearest == farthest supports per partition: %s; widened search: %s", fold.get("fold"),
                 ", ".join(f"{n} {per[n]['coincide']}/{per[n]['episodes']}" for n in PARTITIONS),
                 ", ".join(f"{n} {per[n]['widened']}" for n in PARTITIONS))
        log.info("fold %s: queries without any episode: %s", fold.get("fold"),
                 ", ".join(f"{c} {n} of {degenerate['queries'][c]}" for c, n in degenerate["no_episode"].items()))
        thin = [n for n in PARTITIONS if counts[n] < int(cfg["min_episodes"])]
        if thin:
            log.warning("partitions with fewer than %d episodes (flagged; in CMPS, not in CMPS >= min): %s",
                        int(cfg["min_episodes"]), ", ".join(thin))


if __name__ == "__main__":
    run_stage(main)
