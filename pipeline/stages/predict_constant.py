"""Stage predict_constant: the trivial baseline that labels every pixel with one class.

    python -m pipeline.stages.predict_constant --params params.yaml --dataset D \\
        --split val --out DIR [--class-index K]

Writes ``DIR/<id>.png`` (class-index PNG of the image's size) for every id of the split.
The default class is the dataset's background (0 when it has none), i.e. the
"all-background" baseline: its mIoU is the floor any method must beat, and it lets the
skeleton DAG (data -> folds -> labels -> evaluate) run end to end before any method
exists. The directory appears complete or not at all.
"""
from __future__ import annotations

import io

import numpy as np

from pipeline.config import load_params
from pipeline.data.label_png import label_image
from pipeline.data.voc import VOCDataset, image_size
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir
from pipeline.runtime import progress, stage_run
from pipeline.stage import stage_parser


def constant_class(dataset: VOCDataset, requested: int | None) -> int:
    """The class to predict: ``requested`` if given (checked), else background, else 0."""
    if requested is None:
        return dataset.background_index if dataset.background_index is not None else 0
    if not 0 <= requested < dataset.num_classes:
        raise PipelineError("--class-index", f"{requested} is not a class of {dataset.name} "
                            f"(0..{dataset.num_classes - 1})")
    return requested


def constant_label_map(height: int, width: int, class_index: int) -> np.ndarray:
    """HxW uint8 array filled with ``class_index``."""
    return np.full((height, width), class_index, dtype=np.uint8)


def main(argv=None):
    ap = stage_parser(__doc__)
    ap.add_argument("--split", default="val")
    ap.add_argument("--class-index", type=int, default=None,
                    help="class to predict everywhere (default: background, or 0 without one)")
    ap.add_argument("--out", required=True, help="output directory of <id>.png predictions")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    dataset = VOCDataset(params["data"], args.split)
    class_index = constant_class(dataset, args.class_index)
    inputs = {"split": args.split, "class_index": class_index, "out": args.out}
    with stage_run("predict_constant", inputs, params["data"]) as log, atomic_dir(args.out) as tmp:
        # Images of one size share one encoded PNG: VOC-scale runs stay I/O bound.
        encoded: dict[tuple[int, int], bytes] = {}
        for image_id in progress(dataset.ids, desc="predict_constant"):
            width, height = image_size(dataset.image_path(image_id))
            if (width, height) not in encoded:
                buffer = io.BytesIO()
                label_image(constant_label_map(height, width, class_index)).save(buffer, format="PNG")
                encoded[(width, height)] = buffer.getvalue()
            (tmp / f"{image_id}.png").write_bytes(encoded[(width, height)])
        log.info("%d constant predictions (class %d '%s')", len(dataset.ids), class_index,
                 dataset.class_names[class_index])


if __name__ == "__main__":
    run_stage(main)
