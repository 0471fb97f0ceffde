"""Stage pipeline.methods.lnet.report: results/<dataset>/{lnet,pnet}_fold<k> of the L-Net / P-Net method.

    python -m pipeline.methods.lnet.report --params params.yaml --dataset D --method pnet \\
        --fold 0 --split pascal5i --metrics cam_seggt_val=F --metrics lnet_val=F ... \\
        --fold-file F --labels L --cams DIR --maps DIR --pseudo DIR --out results/D/pnet_fold0

Inputs: the evaluate stage's metrics files, named ``<row>_val`` (segmentation on val) and
``<row>_pseudo`` (pseudo labels on the weak train images) for the rows of
:data:`pipeline.method_table.LNET`; ``--method lnet`` shows CAM-only, L-Net and the oracle,
``--method pnet`` adds the P-Net row. Tables, summaries and figure composition are the
shared ones of :mod:`pipeline.report` (also used by pipeline.methods.retab.report).

Outputs (the directory appears complete or not at all):

* ``metrics.json``: the method's own ``miou`` / ``miou_strong`` / ``miou_weak`` (all
  classes; strong = base classes with background; weak = novel classes; on val) at the
  top, then ``methods.<row>.{title, val, pseudo, share_of_oracle}`` (the summaries of
  :func:`pipeline.report.summarize_eval`; ``share_of_oracle`` = the row's mIoU / the Fully
  Oracle's, the paper's "% of the fully-supervised baseline");
* ``report.md``: the paper-form table (rows x all / strong / weak mIoU, %) and the
  pseudo-label table;
* ``figure.png`` (the paper's Fig. 3): for the ``report.figure_samples`` weak train images
  with the most weak-class pixels, image | L-Net map M | CAM seeds (seed superpixels in
  their class colour, L-Net background seeds black) | SLIC superpixels | L_w | ground
  truth, each panel fitted into ``report.figure_cell`` pixels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from pipeline.boundary import prob_to_uint8
from pipeline.cam import cam_path, read_cam_file
from pipeline.config import load_params, section
from pipeline.data.folds import load_fold
from pipeline.data.labels import load_image_labels
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir, read_json, write_json, write_text
from pipeline.method_table import LNET
from pipeline.propagation.superpixel_diffusion import class_seed_masks, node_features, slic_superpixels
from pipeline.report import (colorize_labels, compose_figure, fit_into_cell, format_percent, gray_to_rgb,
                             markdown_table, pick_largest, summarize_eval)
from pipeline.runtime import stage_run
from pipeline.cam import image_cams
from pipeline.data.probability_png import map_path, read_probability_map
from pipeline.data.label_png import read_sized_png
from pipeline.report import novel_areas
from pipeline.stage import stage_parser

TITLES = ("Image", "L-Net map M", "CAM seeds", "Superpixels", "L_w (self-diffusion)", "Ground truth")
SEED_DIM = 0.35  # brightness of the image under the seed panel


# --------------------------------------------------------------------------- tables

def parse_named_paths(items: list[str]) -> dict[str, Path]:
    """``NAME=PATH`` arguments -> {name: path} (a name twice or a malformed item is an error)."""
    named: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise PipelineError("--metrics", f"'{item}' is not NAME=PATH")
        if name in named:
            raise PipelineError("--metrics", f"'{name}' is given twice")
        named[name] = Path(path)
    return named


def read_summary(path: Path, fold: int) -> dict:
    """:func:`pipeline.report.summarize_eval` of an evaluate metrics file of ``fold``."""
    document = read_json(path)
    if not isinstance(document, dict) or not all(k in document for k in ("miou", "miou_base", "miou_novel")):
        raise PipelineError(path, "not a metrics file of stage evaluate (needs miou, miou_base, miou_novel)")
    if document.get("fold") is not None and document["fold"] != fold:
        raise PipelineError(path, f"holds scores of fold {document['fold']}, not fold {fold}")
    summary = summarize_eval(document)
    if "coverage" in document:
        summary["coverage"] = document["coverage"]
    return summary


def share_of(value: float | None, reference: float | None) -> float | None:
    """``value / reference`` (the paper's "% of the fully-supervised baseline"), None if undefined."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def report_document(method: str, val: dict[str, dict], pseudo: dict[str, dict], context: dict) -> dict:
    """metrics.json: the method's all / strong / weak mIoU on top, then every row (RETAB's layout:
    ``methods.<row>.{title, val, pseudo}``) with its share of the oracle's mIoU."""
    oracle = val.get("oracle", {}).get("miou")
    rows = {row: {"title": LNET.rows[row].title, "val": summary, "pseudo": pseudo.get(row),
                  "share_of_oracle": share_of(summary.get("miou"), oracle)} for row, summary in val.items()}
    own = val[method]
    return {"method": method, "miou": own.get("miou"), "miou_strong": own.get("miou_base"),
            "miou_weak": own.get("miou_novel"), "methods": rows, **context}


def report_markdown(document: dict, figure: bool) -> str:
    """report.md: segmentation on val (all / strong / weak mIoU, % of the oracle) and the
    pseudo labels of the weak train images."""
    methods = document["methods"].values()
    val_rows = [[m["title"], *(format_percent(m["val"].get(key)) for key in ("miou", "miou_base", "miou_novel")),
                 format_percent(m["share_of_oracle"])] for m in methods]
    pseudo_rows = [[m["title"], format_percent(m["pseudo"].get("miou")), format_percent(m["pseudo"].get("miou_novel")),
                    format_percent(m["pseudo"].get("coverage"))] for m in methods if m["pseudo"] is not None]
    parts = [f"# {LNET.rows[document['method']].title}: {document['dataset']}, fold {document['fold']} "
             f"(split {document['split']})\n",
             "Transferable semi-supervised segmentation (Xiao et al., AAAI 2018): strong categories with pixel "
             "labels, weak categories with image-level labels only.\n",
             f"Strong: {', '.join(document['strong_classes'])}.  \nWeak: {', '.join(document['weak_classes'])}.\n",
             "## Segmentation on val (mIoU, %)\n",
             markdown_table(["Method", "all", "strong", "weak", "% of oracle"], val_rows),
             "## Pseudo labels of the weak train images (mIoU, %)\n",
             markdown_table(["Pseudo labels", "all", "weak", "coverage"], pseudo_rows)]
    if figure:
        parts += ["## Self-diffusion of weak images\n",
                  "![" + " | ".join(TITLES) + "](figure.png)\n"]
    return "\n".join(parts)


# --------------------------------------------------------------------------- figure

def seed_panel(image: np.ndarray, superpixels: np.ndarray, seeds: np.ndarray, class_ids: list[int],
               background_seeds: np.ndarray) -> np.ndarray:
    """Dimmed image; class-seed superpixels in their class colour, L-Net background seeds black."""
    out = (image.astype(np.float32) * SEED_DIM).astype(np.uint8)
    for k, class_id in enumerate(class_ids):
        out[seeds[:, k][superpixels]] = colorize_labels(np.uint8(class_id))
    out[background_seeds[superpixels]] = 0
    return out


def superpixel_panel(image: np.ndarray, superpixels: np.ndarray) -> np.ndarray:
    out = image.copy()
    out[find_boundaries(superpixels, mode="inner")] = (255, 255, 0)
    return out


def figure_row(dataset: VOCDataset, image_id: str, classes: list[int], maps: Path, cams: Path, pseudo: Path,
               diffusion: dict, cell: int) -> list[Image.Image]:
    """The six panels of one weak image (SLIC and the seeds recomputed with the params)."""
    image = dataset.load_image(image_id)
    size = image.shape[:2]
    agnostic = read_probability_map(map_path(maps, image_id), size)
    c_path = cam_path(cams, image_id)
    cam_maps = image_cams(read_cam_file(c_path, dataset.num_classes, dataset.background_index), c_path,
                          classes, size)
    superpixels = slic_superpixels(image, diffusion["slic_n_segments"], diffusion["slic_compactness"],
                                   diffusion["slic_sigma"], diffusion["slic_max_iter"])
    seeds, _ = class_seed_masks(superpixels, cam_maps, diffusion["cam_region_threshold"],
                                diffusion["cam_region_min_overlap"])
    mean_m = node_features(image, superpixels, agnostic)[:, 3]
    background_seeds = (mean_m < diffusion["background_seed_threshold"]) & ~seeds.any(axis=1)
    label = read_sized_png(pseudo / f"{image_id}.png", *size, "pseudo label")
    return [fit_into_cell(image, cell),
            fit_into_cell(gray_to_rgb(prob_to_uint8(agnostic)), cell),
            fit_into_cell(seed_panel(image, superpixels, seeds, list(cam_maps), background_seeds), cell, nearest=True),
            fit_into_cell(superpixel_panel(image, superpixels), cell, nearest=True),
            fit_into_cell(colorize_labels(label), cell, nearest=True),
            fit_into_cell(colorize_labels(dataset.load_mask(image_id)), cell, nearest=True)]


# --------------------------------------------------------------------------- stage

def main(argv=None):
    ap = stage_parser(__doc__, inputs=("cams", "labels"))
    ap.add_argument("--method", required=True, choices=sorted(LNET.targets))
    ap.add_argument("--fold", required=True, type=int)
    ap.add_argument("--split", required=True, help="lnet.split the inputs were made with")
    ap.add_argument("--metrics", action="append", default=[], help="NAME=PATH of an evaluate metrics file")
    ap.add_argument("--fold-file", required=True, help="fold JSON of the split (strong/weak classes and images)")
    ap.add_argument("--maps", required=True, help="L-Net object maps (stage infer_lnet)")
    ap.add_argument("--pseudo", required=True, help="self-diffusion pseudo labels (stage self_diffusion)")
    ap.add_argument("--out", required=True, help="results directory to write")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    named = parse_named_paths(args.metrics)
    rows = LNET.targets[args.method]
    needed = [f"{row}_val" for row in rows] + [f"{row}_pseudo" for row in LNET.pseudo_rows()]
    missing = [name for name in needed if name not in named]
    if missing:
        raise PipelineError("--metrics", f"no {missing[0]}=PATH (the {args.method} report needs {', '.join(needed)})")
    val = {row: read_summary(named[f"{row}_val"], args.fold) for row in rows}
    pseudo = {row: read_summary(named[f"{row}_pseudo"], args.fold) for row in LNET.pseudo_rows()}
    fold = load_fold(args.fold_file)
    dataset = VOCDataset(params["data"], "train")
    labels = load_image_labels(args.labels)
    names = dataset.class_names
    diffusion = section(params, "self_diffusion")
    count = int(section(params, "report.figure_samples"))
    cell = int(section(params, "report.figure_cell"))

    inputs = {"method": args.method, "fold": args.fold, "metrics": {k: str(v) for k, v in named.items()}}
    with stage_run("report_lnet", inputs, {"report": params["report"], "self_diffusion": diffusion}) as log:
        context = {"dataset": params["dataset"], "fold": args.fold, "split": args.split,
                   "strong_classes": [names[c] for c in fold["base_classes"]],
                   "weak_classes": [names[c] for c in fold["novel_classes"]]}
        document = report_document(args.method, val, pseudo, context)
        weak = [int(c) for c in fold["novel_classes"]]
        shown = pick_largest(novel_areas(dataset, list(fold["novel_samples"]), weak), count)
        panels = [figure_row(dataset, i, sorted(c for c in labels.get(i, []) if c != dataset.background_index),
                             Path(args.maps), Path(args.cams), Path(args.pseudo), diffusion, cell) for i in shown]
        document["figure_images"] = shown
        with atomic_dir(args.out) as tmp:
            write_json(tmp / "metrics.json", document)
            write_text(tmp / "report.md", report_markdown(document, figure=bool(panels)))
            if panels:
                compose_figure(panels, TITLES, cell).save(tmp / "figure.png", format="PNG")
        log.info("%s fold %d: mIoU all %s strong %s weak %s", args.method, args.fold,
                 format_percent(document["miou"]), format_percent(document["miou_strong"]),
                 format_percent(document["miou_weak"]))


if __name__ == "__main__":
    run_stage(main)
