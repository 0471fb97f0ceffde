"""Stage pipeline.methods.retab.report: results directories of the RETAB method (metrics.json, report.md, figure).

One fold::

    python -m pipeline.methods.retab.report --params params.yaml --dataset D \\
        --method M --fold K --work work/D --out results/D/M_foldK

reads ``work/D/fold{K}/eval/{m}_val.json`` (segmentation on val) and, for methods with
pseudo labels, ``{m}_pseudo.json`` (pseudo labels on the fold's train novel samples),
written by stage evaluate (paths: :func:`pipeline.layout.row_metric_files`). For
``--method retab`` the report covers every row of :data:`pipeline.method_table.RETAB`
(the paper's comparison table) and adds ``figure.png`` in the form of the RETAB paper's
Fig. 3: for the ``report.figure_samples`` train novel samples with the most novel-class
pixels, one row each of image | ground truth | CAM (max over the image's class CAMs,
jet colours over the image) | boundary probability | CAM+RW pseudo label | CAM+RETAB
pseudo label. Other methods get their own row only.

Mean over folds::

    python -m pipeline.methods.retab.report --params params.yaml --dataset D \\
        --aggregate results/D/retab_fold0 ... results/D/retab_fold3 --out results/D/retab_all

metrics.json (scores are fractions in [0, 1], null where undefined)::

    one fold:  {"dataset", "fold", "method", "methods": {m: {"title", "val": S, "pseudo": S | null}}}
    aggregate: {"dataset", "folds": [k...], "mean": {"methods": ...}, "per_fold": {"fold<k>": {"methods": ...}}}

where S holds miou, miou_base, miou_novel, miou_harmonic, pixel_accuracy,
mean_pixel_accuracy, fwiou, fb_iou, per_class_iou {class: IoU} and num_images (a mean
holds num_folds instead: the folds in which the value is defined are averaged).
report.md has the tables in the paper's form (rows methods, columns mIoU all / base /
novel, in %). Every output directory appears complete or not at all.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.cam import cam_path, read_cam_file, upsample_cams
from pipeline.config import load_params, section
from pipeline.data.folds import load_fold
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir, read_json, write_json, write_text
from pipeline.layout import CAM_THRESHOLD, CONFIDENT_DIR, CONFIDENT_INFO, WALK_INFO, eval_path, pseudo_dir
from pipeline.method_table import RETAB
from pipeline.report import (
    NOVEL_ERROR_COLUMNS,
    blend,
    colorize_labels,
    compose_figure,
    fit_into_cell,
    gray_to_rgb,
    heat_colors,
    mean_summaries,
    miou_table,
    per_class_csv,
    per_class_table,
    pick_largest,
    summarize_eval,
)
from pipeline.runtime import stage_run
from pipeline.data.label_png import read_sized_png
from pipeline.report import novel_areas
from pipeline.stage import stage_parser
from pipeline.report import format_percent

COMPARISON_TARGET = "retab"  # its report compares every row of the table and has the figure
KINDS = ("val", "pseudo")
MISSING_TEXT = "none"
CAM_ALPHA = 0.5  # share of the heatmap where the CAM panel is laid over the image
FIGURE_COLUMNS = ("Image", "Ground truth", "CAM", "Boundary", RETAB.rows["cam_rw"].title, RETAB.rows["retab"].title)


# --------------------------------------------------------------------------- paths

def under_work(layout_path: str, dataset: str, work: str | os.PathLike) -> Path:
    """A :mod:`pipeline.layout` path (``work/<dataset>/...``) re-rooted at ``work``."""
    return Path(work) / Path(layout_path).relative_to(f"work/{dataset}")


def report_rows(target: str) -> list[str]:
    """Rows of a fold report (:data:`pipeline.method_table.RETAB` targets): every row for the
    comparison, else the row alone."""
    if target not in RETAB.targets:
        raise PipelineError("--method", f"'{target}' is not one of {', '.join(RETAB.targets)}")
    return list(RETAB.targets[target])


def metric_file(dataset: str, fold: int, row: str, kind: str, work: str | os.PathLike) -> Path | None:
    """Where the ``kind`` scores of ``row`` lie; None for pseudo scores of a row without any."""
    if kind == "pseudo" and RETAB.rows[row].pseudo_source is None:
        return None
    return under_work(eval_path(dataset, fold, row, kind), dataset, work)


# --------------------------------------------------------------------------- reading

def read_eval(path: Path, fold: int) -> dict:
    """An evaluate metrics file, checked: it has scores and belongs to ``fold``."""
    if not path.is_file():
        raise PipelineError(path, "metrics file not found (run stage evaluate)")
    document = read_json(path)
    if not isinstance(document, dict) or "miou" not in document:
        raise PipelineError(path, "not a metrics file of stage evaluate (no 'miou')")
    if document.get("fold") is not None and document["fold"] != fold:
        raise PipelineError(path, f"holds scores of fold {document['fold']}, not fold {fold}")
    return document


def fold_metrics(dataset: str, fold: int, rows: list[str], work: str | os.PathLike) -> dict:
    """``{"methods": {row: {"title", "val", "pseudo"}}}`` plus the class lists of the fold."""
    out: dict = {"methods": {}}
    for row in rows:
        entry = {"title": RETAB.rows[row].title}
        for kind in KINDS:
            path = metric_file(dataset, fold, row, kind, work)
            if path is None:
                entry[kind] = None
                continue
            document = read_eval(path, fold)
            entry[kind] = summarize_eval(document)
            out.setdefault("base_classes", document.get("base_classes"))
            out.setdefault("novel_classes", document.get("novel_classes"))
        out["methods"][row] = entry
    return out


def read_fold_report(directory: Path) -> dict:
    """metrics.json of a one-fold comparison report (for ``--aggregate``)."""
    path = directory / "metrics.json"
    if not path.is_file():
        raise PipelineError(path, "fold report not found (build results/<dataset>/retab_fold<k> first)")
    document = read_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("methods"), dict) or "fold" not in document:
        raise PipelineError(path, "not a fold report of pipeline.methods.retab.report (no 'fold' / 'methods')")
    return document


# --------------------------------------------------------------------------- report text

def val_rows(methods: dict) -> list[tuple[str, dict | None]]:
    return [(entry["title"], entry["val"]) for entry in methods.values()]


def pseudo_rows(methods: dict) -> list[tuple[str, dict | None]]:
    return [(entry["title"], entry["pseudo"]) for m, entry in methods.items() if RETAB.rows[m].pseudo_source is not None]


def novel_error_sections(methods: dict, scope: str) -> list[str]:
    """Tables of where novel pixels go (pipeline.metrics.novel_error_breakdown), on val and in
    the pseudo labels: they tell a row that misses novel objects into the background from one
    that paints base objects as novel, which the same novel mIoU can hide."""
    intro = ("Pixel shares (%): recall and misses (to bg / base / other novel) over ground-truth"
             " novel pixels; precision and false positives (from bg / base) over pixels predicted novel.\n")
    parts = [f"## Where novel pixels go{scope}\n", intro,
             "Segmentation on val:\n", miou_table(val_rows(methods), columns=NOVEL_ERROR_COLUMNS)]
    rows = pseudo_rows(methods)
    if rows:
        parts += ["Pseudo labels on train novel samples:\n", miou_table(rows, columns=NOVEL_ERROR_COLUMNS)]
    return parts


def fold_report_text(dataset: str, fold: int, target: str, metrics: dict, class_names: list[str],
                     figure: bool) -> str:
    """report.md of one fold: the paper's two tables, per-class IoU, the figure if any."""
    methods = metrics["methods"]
    parts = [f"# {RETAB.rows[target].title}: {dataset}, fold {fold}\n",
             f"Novel classes: {', '.join(metrics.get('novel_classes') or []) or MISSING_TEXT}.\n",
             "## Segmentation on val (mIoU, %)\n", miou_table(val_rows(methods))]
    rows = pseudo_rows(methods)
    if rows:
        parts += ["## Pseudo labels on the fold's train novel samples (mIoU, %)\n", miou_table(rows)]
    parts += novel_error_sections(methods, "")
    parts += ["## Per-class IoU on val (%, * = novel)\n",
              per_class_table([(e["title"], e["val"]) for e in methods.values()], class_names,
                              metrics.get("novel_classes") or [])]
    if figure:
        parts += ["## Pseudo labels of novel samples\n",
                  "![image | ground truth | CAM | boundary | CAM+RW | CAM+RETAB](figure.png)\n"]
    return "\n".join(parts)


def aggregate_metrics(reports: list[dict], sources: list[Path]) -> dict:
    """Mean over folds of every method's summaries, plus the per-fold ones."""
    datasets = {r.get("dataset") for r in reports}
    if len(datasets) > 1:
        raise PipelineError(sources[1], f"fold reports of different datasets: {sorted(map(str, datasets))}")
    folds = [r["fold"] for r in reports]
    for path, report in zip(sources, reports):
        if folds.count(report["fold"]) > 1:
            raise PipelineError(path / "metrics.json", f"fold {report['fold']} is given twice")
    methods = [m for m in RETAB.rows if all(m in r["methods"] for r in reports)]
    if not methods:
        raise PipelineError(sources[0] / "metrics.json", "no method is reported in every fold")
    mean = {m: {"title": RETAB.rows[m].title,
                **{kind: mean_summaries([r["methods"][m].get(kind) for r in reports]) for kind in KINDS}}
            for m in methods}
    return {"dataset": reports[0].get("dataset"), "folds": folds, "mean": {"methods": mean},
            "per_fold": {f"fold{r['fold']}": {"methods": {m: r["methods"][m] for m in methods},
                                              "novel_classes": r.get("novel_classes")} for r in reports}}


def aggregate_report_text(metrics: dict) -> str:
    """report.md of the mean over folds: mean tables (paper form) then each fold's."""
    folds = ", ".join(str(k) for k in metrics["folds"])
    mean = metrics["mean"]["methods"]
    parts = [f"# Weak-shot segmentation (RETAB table): {metrics['dataset']}, mean over folds {folds}\n",
             "## Segmentation on val, mean over folds (mIoU, %)\n", miou_table(val_rows(mean))]
    rows = pseudo_rows(mean)
    if rows:
        parts += ["## Pseudo labels on train novel samples, mean over folds (mIoU, %)\n", miou_table(rows)]
    parts += novel_error_sections(mean, ", mean over folds")
    for name, fold in metrics["per_fold"].items():
        parts += [f"## {name}: segmentation on val (mIoU, %)\n", miou_table(val_rows(fold["methods"]))]
        rows = pseudo_rows(fold["methods"])
        if rows:
            parts += [f"## {name}: pseudo labels on train novel samples (mIoU, %)\n", miou_table(rows)]
    return "\n".join(parts)


# --------------------------------------------------------------------------- figure


def cam_max_map(path: Path, height: int, width: int, num_classes: int, background_index: int | None) -> np.ndarray:
    """HxW max over an image's class CAMs (0 without any), at image size, clipped to [0, 1]."""
    cam = read_cam_file(path, num_classes, background_index)
    if cam["size"] != (height, width):
        raise PipelineError(path, f"CAMs are for a {cam['size'][1]}x{cam['size'][0]} image, the image is "
                            f"{width}x{height}")
    if not cam["keys"]:
        return np.zeros((height, width), np.float32)
    full = upsample_cams(cam["cams"], (height, width), cam["stride"])
    return np.clip(full.max(axis=0), 0.0, 1.0)


def figure_row(image_id: str, dataset: VOCDataset, cams: Path, boundary: Path, rw: Path, retab: Path,
               cell: int) -> list[Image.Image]:
    """The six panels of one novel sample."""
    image = dataset.load_image(image_id)
    height, width = image.shape[:2]
    cam = cam_max_map(cam_path(cams, image_id), height, width, dataset.num_classes, dataset.background_index)
    boundary_map = read_sized_png(boundary / f"{image_id}.png", height, width, "boundary map")
    rw_labels = read_sized_png(rw / f"{image_id}.png", height, width, "pseudo label")
    retab_labels = read_sized_png(retab / f"{image_id}.png", height, width, "pseudo label")
    return [fit_into_cell(image, cell),
            fit_into_cell(colorize_labels(dataset.load_mask(image_id)), cell, nearest=True),
            fit_into_cell(blend(image, heat_colors(cam), CAM_ALPHA), cell),
            fit_into_cell(gray_to_rgb(boundary_map), cell),
            fit_into_cell(colorize_labels(rw_labels), cell, nearest=True),
            fit_into_cell(colorize_labels(retab_labels), cell, nearest=True)]


def retab_figure(params: dict, dataset_name: str, fold: int, work: Path) -> Image.Image:
    """Fig. 3 of the RETAB paper for the fold's novel samples with the largest novel area."""
    fold_path = work / "folds" / f"fold{fold}.json"
    fold_doc = load_fold(fold_path)
    if not fold_doc["novel_samples"]:
        raise PipelineError(fold_path, "'novel_samples' is empty: no sample to show in the figure")
    dataset = VOCDataset(params["data"], "train")
    known = set(dataset.ids)
    outside = [i for i in fold_doc["novel_samples"] if i not in known]
    if outside:
        raise PipelineError(fold_path, f"novel sample {outside[0]!r} is not in the train split")
    count = int(section(params, "report.figure_samples"))
    cell = int(section(params, "report.figure_cell"))
    areas = novel_areas(dataset, list(fold_doc["novel_samples"]), [int(c) for c in fold_doc["novel_classes"]])
    chosen = pick_largest(areas, count)
    cams = work / "shared" / "cam" / "cams"
    boundary = work / f"fold{fold}" / "boundary" / "maps"
    rw = under_work(pseudo_dir(dataset_name, "rw_cam", fold), dataset_name, work)
    retab = under_work(pseudo_dir(dataset_name, "retab", fold), dataset_name, work)
    for directory in (cams, boundary, rw, retab):
        if not directory.is_dir():
            raise PipelineError(directory, "directory not found (its stage has not run)")
    rows = [figure_row(i, dataset, cams, boundary, rw, retab, cell) for i in chosen]
    return compose_figure(rows, FIGURE_COLUMNS, cell)


# --------------------------------------------------------------------------- stage

def class_names(params: dict, ids) -> list[str]:
    """Names of class ids (as the evaluate stage stores novel_classes); names pass through."""
    names = list(params["data"]["classes"])
    return [names[int(c)] if isinstance(c, int) or str(c).isdigit() else str(c) for c in (ids or [])]


def chosen_params(dataset: str, fold: int, work: str | os.PathLike) -> dict:
    """What the fold's stages chose from the data, where they wrote it: the `cam` row's
    background threshold (best on the fold's base samples), the affinity nets' confident-label
    thresholds, and each walk's logt and alpha."""
    chosen: dict = {}
    threshold = under_work(CAM_THRESHOLD.format(dataset=dataset, fold=fold), dataset, work)
    if threshold.is_file():
        doc = read_json(threshold)
        chosen["cam_threshold"] = {"value": doc.get("best_threshold"), "samples": doc.get("samples"),
                                   "num_images": doc.get("num_images"), "miou": doc.get("miou")}
    confident = under_work(CONFIDENT_DIR.format(dataset=dataset, fold=fold), dataset, work) / CONFIDENT_INFO
    if confident.is_file():
        chosen["confident"] = read_json(confident)
    for source in ("rw_cam", "rw_gt", "retab"):
        info = under_work(pseudo_dir(dataset, source, fold).replace("/pseudo/", "/revised/"), dataset, work) / WALK_INFO
        if info.is_file():
            walk = read_json(info)
            chosen.setdefault("walk_logt", {})[source] = {
                key: walk.get(key) for key in ("logt", "images_per_logt", "alpha", "alpha_chosen_on",
                                               "base_miou_per_alpha")}
    return chosen


def chosen_params_text(chosen: dict) -> list[str]:
    if not chosen:
        return []
    lines = ["## Parameters chosen from the data", ""]
    cam = chosen.get("cam_threshold")
    if cam:
        lines.append(f"- CAM background threshold (the CAM row): {cam['value']}, best on the fold's "
                     f"{cam['num_images']} base samples (mIoU {format_percent(cam['miou'])} there; "
                     "novel-class pixels ignored)")
    confident = chosen.get("confident")
    if confident:
        how = (f"auto ({', '.join(confident['auto'])}) from the fold's CAM threshold, PSA's band"
               if confident.get("auto") else "as set")
        lines.append(f"- confident labels of the affinity nets: conf_fg {confident['conf_fg']}, "
                     f"conf_bg {confident['conf_bg']} ({how})")
    for source, walk in (chosen.get("walk_logt") or {}).items():
        per_value = ", ".join(f"{k}: {v}" for k, v in (walk["images_per_logt"] or {}).items())
        line = f"- random walk {source}: logt {walk['logt']} (images per logt: {per_value})"
        if walk.get("alpha") is not None:
            line += f"; alpha {walk['alpha']:g}"
        if walk.get("base_miou_per_alpha"):
            scores = ", ".join(f"{a}: {format_percent(m)}" for a, m in
                               sorted(walk["base_miou_per_alpha"].items(), key=lambda item: float(item[0])))
            line += f" (auto: best pseudo-label mIoU on {walk['alpha_chosen_on']}; per alpha {scores})"
        lines.append(line)
    return ["\n".join(lines) + "\n"]


def run_fold_report(params: dict, target: str, fold: int, work: Path, out: str) -> None:
    dataset_name = params["dataset"]
    rows = report_rows(target)
    metrics = fold_metrics(dataset_name, fold, rows, work)
    figure = retab_figure(params, dataset_name, fold, work) if target == COMPARISON_TARGET else None
    chosen = chosen_params(dataset_name, fold, work)
    document = {"dataset": dataset_name, "fold": fold, "method": target, **metrics, "chosen_params": chosen}
    text = fold_report_text(dataset_name, fold, target, metrics, list(params["data"]["classes"]), figure is not None)
    text = "\n".join([text, *chosen_params_text(chosen)])
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", document)
        write_text(tmp / "report.md", text)
        write_text(tmp / "per_class_iou.csv", per_class_csv(metrics["methods"], "val", class_names(
            params, metrics.get("novel_classes"))))
        if figure is not None:
            figure.save(tmp / "figure.png", format="PNG")


def run_aggregate(directories: list[str], out: str) -> dict:
    sources = [Path(d) for d in directories]
    metrics = aggregate_metrics([read_fold_report(d) for d in sources], sources)
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_text(tmp / "report.md", aggregate_report_text(metrics))
        write_text(tmp / "per_class_iou.csv", per_class_csv(metrics["mean"]["methods"], "val"))
    return metrics


def main(argv=None):
    ap = stage_parser(__doc__)
    ap.add_argument("--method", default=None, help=f"target: a table row ({', '.join(RETAB.rows)}) or "
                    f"'{COMPARISON_TARGET}', which reports every row and draws the figure")
    ap.add_argument("--fold", type=int, default=None)
    ap.add_argument("--work", default=None, help="the dataset's work directory (work/<dataset>)")
    ap.add_argument("--aggregate", nargs="+", default=None, metavar="DIR",
                    help="fold report directories to average (instead of --method/--fold/--work)")
    ap.add_argument("--out", required=True, help="results directory to write")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    if args.aggregate:
        with stage_run("report_retab", {"aggregate": args.aggregate}, params.get("report", {})) as log:
            metrics = run_aggregate(args.aggregate, args.out)
            log.info("mean over folds %s written to %s", metrics["folds"], args.out)
        return
    for name in ("method", "fold", "work"):
        if getattr(args, name) is None:
            raise PipelineError(f"--{name}", "required unless --aggregate is given")
    work = Path(args.work)
    inputs = {"method": args.method, "fold": args.fold, "work": str(work)}
    with stage_run("report_retab", inputs, params.get("report", {})) as log:
        run_fold_report(params, args.method, args.fold, work, args.out)
        log.info("report of %s fold %d written to %s", args.method, args.fold, args.out)


if __name__ == "__main__":
    run_stage(main)
