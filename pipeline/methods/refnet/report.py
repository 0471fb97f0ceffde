"""Stage report (Ref-Net): results/<dataset>/refnet_fold<k>.

    python -m pipeline.methods.refnet.report --params params.yaml --dataset D --scope fold0 \\
        --eval E.json --predictions P.npz --history H.tsv [--retab results/D/retab_fold0/metrics.json] --out DIR

metrics.json: the paper's MPA, MIoU, FWIoU over {background, targets} and novel mIoU (the
full model at ``refnet.shots``, training seed 0), per-class IoU, the setting (K per class,
``short`` classes that had fewer than K train images), and, when the RETAB report of the
fold exists, its Fully Oracle and RETAB novel mIoU (same confusion-matrix code, all
classes scored there: only the novel column is comparable). report.md: those tables;
figure.png: target | reference | prediction | ground truth of the val images with the most
target pixels; critics.tsv: the critics' Wasserstein estimates per step (dvc plots).
"""
from __future__ import annotations

import csv
import io

import numpy as np

from pipeline.config import load_params, section
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import read_json
from pipeline.methods.refnet.results import COLUMNS, percent, read_eval, write_outputs
from pipeline.refnet_training import target_ground_truth
from pipeline.report import colorize_labels, compose_figure, fit_into_cell, markdown_table
from pipeline.runtime import stage_run
from pipeline.stage import stage_parser

CRITIC_COLUMNS = ("step", "w_outer", "w_inner", "critic_outer", "critic_inner")
RETAB_ROWS = (("oracle", "RETAB Fully Oracle"), ("retab", "RETAB"))


def critics_tsv(history_path: str) -> str:
    """The critic columns of a train_refnet history, one row per step in which a critic trained
    (blank columns of a critic the variant lacks)."""
    try:
        rows = list(csv.DictReader(open(history_path), delimiter="\t"))
    except OSError as err:
        raise PipelineError(history_path, f"unreadable ({err})") from None
    out = io.StringIO()
    out.write("\t".join(CRITIC_COLUMNS) + "\n")
    for row in rows:  # the steps where a critic trained (none during the warm-up, none without critics)
        if any(row.get(k) for k in CRITIC_COLUMNS[1:]):
            out.write("\t".join(row.get(k, "") or "" for k in CRITIC_COLUMNS) + "\n")
    return out.getvalue()


def critic_stability(tsv: str) -> dict:
    """Per critic, over the steps it trained: the number of steps, whether every value is finite,
    and mean / max |W| of the first and the last quarter of those steps (a diverging WGAN shows
    a last-quarter |W| far above the first's, or non-finite values)."""
    rows = list(csv.DictReader(io.StringIO(tsv), delimiter="\t"))
    out = {}
    for name in ("outer", "inner"):
        values = [float(r[f"w_{name}"]) for r in rows if r.get(f"w_{name}")]
        if not values:
            continue
        quarter = max(1, len(values) // 4)
        finite = all(v == v and abs(v) != float("inf") for v in values)
        out[name] = {"steps": len(values), "finite": finite,
                     "first_quarter_mean_abs": sum(abs(v) for v in values[:quarter]) / quarter,
                     "last_quarter_mean_abs": sum(abs(v) for v in values[-quarter:]) / quarter,
                     "max_abs": max(abs(v) for v in values)}
    return out


def retab_rows(path: str | None) -> dict:
    """{row: novel mIoU} of a RETAB fold report (rows that it lacks are left out)."""
    if not path:
        return {}
    document = read_json(path)
    methods = document.get("methods") if isinstance(document, dict) else None
    if not isinstance(methods, dict):
        raise PipelineError(path, "not a RETAB fold report (no 'methods')")
    return {row: methods[row]["val"].get("miou_novel") for row, _ in RETAB_ROWS
            if isinstance(methods.get(row), dict) and methods[row].get("val")}


def setting_text(setting: dict, class_names: list[str]) -> str:
    short = [class_names[int(c)] for c in setting["short"]]
    k = setting["shots"]
    lines = [f"K = {k} references per target class; S: {setting['unlabelled']} images with image-level labels; "
             f"O: {setting['open_source']} (image, class) pairs with masks (the train images without any target "
             "class, every other object class's mask: the paper's MixAll minus target)."]
    if short:
        lines.append(f"K > available for {', '.join(short)}: all its train images used (marked *).")
    return "\n".join(lines) + "\n"


def figure(document: dict, predictions: str, dataset: VOCDataset, train: VOCDataset, targets: list[int], cell: int):
    maps = np.load(predictions)
    rows = []
    for entry in document["figure"]:
        image_id = entry["id"]
        if image_id not in maps:
            raise PipelineError(predictions, f"has no label map of '{image_id}'")
        refs = list(entry["references"].values())
        reference = (train.load_image(refs[0]) if refs else np.zeros((cell, cell, 3), np.uint8))
        gt = target_ground_truth(dataset.load_mask(image_id), targets, dataset.ignore_index)
        gt[gt == dataset.ignore_index] = 0
        rows.append([fit_into_cell(dataset.load_image(image_id), cell), fit_into_cell(reference, cell),
                     fit_into_cell(colorize_labels(maps[image_id]), cell, nearest=True),
                     fit_into_cell(colorize_labels(gt), cell, nearest=True)])
    return compose_figure(rows, ["target", "reference", "prediction", "ground truth"], cell) if rows else None


def main(argv=None):
    ap = stage_parser(__doc__)
    ap.add_argument("--scope", required=True, help="fold<k> or single_<class> (the title)")
    ap.add_argument("--eval", required=True, help="eval JSON of stage test_refnet (the full model)")
    ap.add_argument("--predictions", required=True, help="its figure label maps")
    ap.add_argument("--history", required=True, help="history.tsv of the full model's training")
    ap.add_argument("--retab", default=None, help="results/<d>/retab_fold<k>/metrics.json, when it exists")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    params = load_params(args.params, args.dataset)
    document = read_eval(args.eval)
    val, train = VOCDataset(params["data"], "val"), VOCDataset(params["data"], "train")
    with stage_run("report_refnet", {"eval": args.eval, "retab": args.retab}, {}) as log:
        setting, summary = document["setting"], document["summary"]
        targets = [int(c) for c in setting["targets"]]
        retab = retab_rows(args.retab)
        mark = "*" if setting["short"] else ""
        # the fold-report shape results/report reads (pipeline/stages/report_all.py), plus the setting
        fold = int(args.scope[4:]) if args.scope.startswith("fold") and args.scope[4:].isdigit() else None
        metrics = {"dataset": params["dataset"], "fold": fold, "scope": args.scope, "method": "refnet",
                   "methods": {"refnet": {"title": f"Ref-Net R({setting['shots']})",
                                          "val": {**summary, "per_class_iou": document["per_class_iou"]}}},
                   "novel_classes": [train.class_names[c] for c in targets], "shots": setting["shots"],
                   "setting": setting, "retab_novel_miou": retab}
        header = ["Method", *[title for _, title in COLUMNS]]
        rows = [[f"Ref-Net R({setting['shots']}){mark}", *[percent(summary[key]) for key, _ in COLUMNS]]]
        rows += [[title, "–", "–", "–", percent(retab[row])] for row, title in RETAB_ROWS if row in retab]
        per_class = [[name, percent(v)] for name, v in document["per_class_iou"].items()]
        text = "\n".join([
            f"# Ref-Net: {params['dataset']} {args.scope}\n",
            setting_text(setting, train.class_names),
            "## Val scores (%): MPA, MIoU, FWIoU over background and the target classes; novel mIoU over the targets\n",
            markdown_table(header, rows),
            "RETAB rows: novel mIoU of results/<d>/retab_fold<k> (same confusion-matrix code); "
            + ("absent: that report was not built." if not retab else "its other columns cover all classes, not these."),
            "\n## Per-class IoU (%)\n", markdown_table(["class", "IoU"], per_class),
            "\n## Critics\n", "critics.tsv: the outer and inner critics' Wasserstein estimates "
            "E[D(real)] - E[D(fake)] and losses per training step (`dvc plots show`).\n",
            "\n## Figure\n", "![target | reference | prediction | ground truth](figure.png)\n"])
        critics = critics_tsv(args.history)
        metrics["critic_stability"] = stability = critic_stability(critics)
        stability_rows = [[name, str(v["steps"]), "yes" if v["finite"] else "NO", f"{v['first_quarter_mean_abs']:.3g}",
                           f"{v['last_quarter_mean_abs']:.3g}", f"{v['max_abs']:.3g}"] for name, v in stability.items()]
        if stability_rows:
            text += "\n## Critic stability (|Wasserstein estimate|)\n\n" + markdown_table(
                ["critic", "steps", "finite", "first quarter mean", "last quarter mean", "max"], stability_rows)
        cell = int(section(params, "report").get("figure_cell", 128))
        image = figure(document, args.predictions, val, train, targets, cell)
        write_outputs(args.out, metrics, text, image, {"critics.tsv": critics})
        log.info("%s: MIoU %.4f novel mIoU %.4f -> %s", args.scope, summary["miou"], summary["novel_miou"], args.out)


if __name__ == "__main__":
    run_stage(main)
