"""Stage: derive image-level labels (classes present in each mask) once, cache as JSON.

    python -m pipeline.stages.image_labels --out work/<dataset>/image_labels.json

Reads every train and val mask of the dataset once (validating it: size, class ids) and
writes ``labels`` (classes with >= ``image_labels.min_pixels`` pixels, background
excluded), per-image ``pixel_counts`` and the ids of each split. Format:
:mod:`pipeline.data.labels`. Deterministic (no randomness involved, so no seeding).
"""
from __future__ import annotations


from pipeline.config import load_params, section
from pipeline.data.labels import derive_pixel_counts, labels_from_counts, write_image_labels
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.runtime import stage_run
from pipeline.stage import stage_parser

SPLITS = ("train", "val")


def main(argv=None):
    ap = stage_parser(__doc__)
    ap.add_argument("--out", required=True, help="image-labels JSON to write")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    data_cfg = params["data"]
    min_pixels = int(section(params, "image_labels.min_pixels"))
    if min_pixels < 1:
        raise PipelineError("image_labels.min_pixels", f"{min_pixels} must be >= 1")
    datasets = [VOCDataset(data_cfg, split) for split in SPLITS]  # eager checks before any work
    with stage_run("image_labels", {"root": data_cfg["root"], "splits": list(SPLITS)},
                   {"data": data_cfg, "image_labels": params["image_labels"]}) as log:
        pixel_counts: dict[str, list[int]] = {}
        for dataset in datasets:
            pixel_counts.update(derive_pixel_counts(dataset))
            log.info("split %s: %d images", dataset.split, len(dataset))
        labels = labels_from_counts(pixel_counts, min_pixels, datasets[0].background_index)
        write_image_labels(
            args.out, dataset_name=params["dataset"], class_names=datasets[0].class_names,
            background=data_cfg.get("background"), min_pixels=min_pixels,
            splits={d.split: d.ids for d in datasets}, labels=labels, pixel_counts=pixel_counts)
        log.info("wrote %s (%d images)", args.out, len(labels))


if __name__ == "__main__":
    run_stage(main)
