"""Stage report_all: results/report, one Markdown report across datasets, methods and folds.

    python -m pipeline.stages.report_all \\
        --retab results/D/retab_fold0 ... results/D/retab_fold3 \\
        --lnet results/D/pnet_fold0 ... results/D/pnet_fold3 --out results/report

Inputs are finished per-fold report directories, only their ``metrics.json`` (and
``figure.png``, ``report.md`` for the figure caption): ``--retab`` takes those of stage
pipeline.methods.retab.report (``results/<dataset>/retab_fold<k>``, the comparison of every RETAB table
row; a single-method report adds its row), ``--lnet`` those of pipeline.methods.lnet.report
(``results/<dataset>/{lnet,pnet}_fold<k>``), ``--crnet`` those of pipeline.methods.crnet.report
(``results/<dataset>/crnet_fold<k>``: CRNet and the prototype floor, 1-/5-shot mIoU and FB-IoU,
each fold's mean over episode seeds), ``--refnet`` those of pipeline.methods.refnet.report
(``results/<dataset>/refnet_fold<k>``: MPA, MIoU, FWIoU over background and the targets, novel mIoU);
``results/<dataset>/crnet_tpc_crc_fold<k>`` (``--crnet``) adds the row CRNet + TPC + CRC.
``--extra`` takes whole-target report directories
(``report.extras``: e.g. results/crnet_cross, results/<dataset>/crnet_seeds): their report.md
is included as it is, headings moved two levels down. Dataset, fold and method are read from each
metrics.json, so reports of several datasets mix freely; two reports of the same method,
dataset and fold are an error. Rows present in several reports of one fold (the L-Net
report's rows are also in the P-Net report) are taken from the first given.

Outputs (the directory appears complete or not at all; it is self-contained):

* ``report.md``: per dataset and branch (RETAB comparison; L-Net / P-Net), for
  segmentation on val and for the pseudo labels: the paper-form table of the mean over
  folds (rows methods; columns all / base / novel mIoU, or all / strong / weak for
  L-Net / P-Net), then one table per score (novel / weak classes, all classes) with a
  column per fold and the mean; then the per-fold figures;
* ``figures/<dataset>_<target>_fold<k>.png``: copies of the fold reports' figures (one per
  dataset, branch and fold), linked from report.md by relative paths;
* ``metrics.json``: ``{"datasets": {D: {branch: {"folds", "sources", "mean": {row:
  {"title", "val", "pseudo"}}}}}, "figures": [...]}`` (fractions, null where undefined).

Means are those of results/<dataset>/retab_all (:func:`pipeline.report.mean_summaries`):
each score averages the folds in which it is defined. The tables and means are the shared
ones of :mod:`pipeline.report`; this module only arranges them.
"""
from __future__ import annotations

import argparse
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir, read_json, write_json, write_text
from pipeline.method_table import CRNET, LNET, REFNET, RETAB
from pipeline.report import (
    MIOU_COLUMNS, NOVEL_ERROR_COLUMNS, SUMMARY_KEYS, fold_table, format_percent, mean_summaries, miou_table)
from pipeline.runtime import stage_run

FIGURE_DIR = "figures"
KINDS = ("val", "pseudo")


@dataclass(frozen=True)
class Branch:
    """How one method family's fold reports are tabulated."""

    title: str
    rows: Mapping[str, str]  # row key of metrics.json "methods" -> title, in table order
    targets: Sequence[str]  # results targets of the branch (metrics.json "method" values)
    kind_titles: Mapping[str, str]  # "val" / "pseudo" -> what the scores are of
    columns: Mapping[str, Sequence[tuple[str, str]]]  # kind -> paper-form (header, key) columns
    fold_scores: Sequence[tuple[str, str]]  # (what, key): one per-fold table each
    classes_key: str  # metrics.json key listing the fold's novel / weak classes
    classes_label: str
    error_columns: Sequence[tuple[str, str]] = ()  # columns of a "where novel pixels go" table, if any
    score_keys: Sequence[str] = SUMMARY_KEYS  # the scalars of a row's scores that are averaged over folds


STRONG_WEAK_COLUMNS = (("all", "miou"), ("strong", "miou_base"), ("weak", "miou_novel"))
FEWSHOT_COLUMNS = (("1-shot mIoU", "miou_1shot"), ("1-shot FB-IoU", "fb_iou_1shot"),
                   ("5-shot mIoU", "miou_5shot"), ("5-shot FB-IoU", "fb_iou_5shot"))
FEWSHOT_KEYS = tuple(key for _, key in FEWSHOT_COLUMNS)
REFNET_COLUMNS = (("MPA", "mpa"), ("MIoU", "miou"), ("FWIoU", "fwiou"), ("novel mIoU", "novel_miou"))
REFNET_KEYS = tuple(key for _, key in REFNET_COLUMNS)
BRANCHES = {
    "retab": Branch(
        title="RETAB weak-shot comparison",
        rows=RETAB.titles(), targets=tuple(RETAB.targets),
        kind_titles={"val": "Segmentation on val", "pseudo": "Pseudo labels of the train novel samples"},
        columns={"val": MIOU_COLUMNS, "pseudo": MIOU_COLUMNS},
        fold_scores=(("novel classes", "miou_novel"), ("all classes", "miou")),
        classes_key="novel_classes", classes_label="Novel classes", error_columns=NOVEL_ERROR_COLUMNS),
    "lnet": Branch(
        title="L-Net / P-Net (transferable semi-supervised)",
        rows=LNET.titles(), targets=tuple(LNET.targets),
        kind_titles={"val": "Segmentation on val", "pseudo": "Pseudo labels of the weak train images"},
        columns={"val": STRONG_WEAK_COLUMNS, "pseudo": (("all", "miou"), ("weak", "miou_novel"))},
        fold_scores=(("weak classes", "miou_novel"), ("all classes", "miou")),
        classes_key="weak_classes", classes_label="Weak classes"),
    "crnet": Branch(
        title="CRNet few-shot segmentation (episodes of the novel classes on val; each fold's mean over "
              "episode seeds)",
        rows=CRNET.titles(), targets=tuple(CRNET.targets),
        kind_titles={"val": "Few-shot episodes"},
        columns={"val": FEWSHOT_COLUMNS},
        fold_scores=(("1-shot", "miou_1shot"), ("5-shot", "miou_5shot")),
        classes_key="novel_classes", classes_label="Novel classes", score_keys=FEWSHOT_KEYS),
    "refnet": Branch(
        title="Ref-Net reference segmentation (K references per novel class; background + novel classes)",
        rows=REFNET.titles(), targets=tuple(REFNET.targets),
        kind_titles={"val": "Segmentation on val"},
        columns={"val": REFNET_COLUMNS},
        fold_scores=(("novel mIoU", "novel_miou"), ("MIoU", "miou")),
        classes_key="novel_classes", classes_label="Target (novel) classes", score_keys=REFNET_KEYS),
}
_FIGURE_LINK = re.compile(r"!\[([^\]]*)\]\(figure\.png\)")


# --------------------------------------------------------------------------- reading

def figure_caption(report_text: str | None) -> str | None:
    """The alt text of a fold report's ``![...](figure.png)`` link (its panel titles), if any."""
    match = _FIGURE_LINK.search(report_text or "")
    return match.group(1) if match else None


def read_fold_report(directory: str | Path, branch: str) -> dict:
    """A fold report directory of ``branch``, checked: its metrics, figure path and caption."""
    directory = Path(directory)
    spec = BRANCHES[branch]
    path = directory / "metrics.json"
    if not path.is_file():
        raise PipelineError(path, f"fold report not found (build {directory} first)")
    document = read_json(path)
    if not (isinstance(document, dict) and isinstance(document.get("methods"), dict)
            and isinstance(document.get("fold"), int) and document.get("dataset") and "method" in document):
        raise PipelineError(path, "not a fold report of pipeline.methods.retab.report / lnet.report / crnet.report / refnet.report "
                            "(needs 'dataset', 'fold', 'method', 'methods')")
    target = document["method"]  # the results target the report shows (retab, cam, ..., pnet)
    if target not in spec.targets:
        raise PipelineError(path, f"is a report of '{target}', not of the {spec.title} "
                            f"({', '.join(spec.targets)})")
    for row, entry in document["methods"].items():
        if row not in spec.rows:
            raise PipelineError(path, f"unknown row '{row}' (known: {', '.join(spec.rows)})")
        if not isinstance(entry, dict) or not isinstance(entry.get("val"), dict):
            raise PipelineError(path, f"methods.{row} has no 'val' scores")
    figure = directory / "figure.png"
    # report_retab always draws the comparison's figure; report_lnet when it had images to show;
    # the CRNet fold report always, the TPC + CRC one (crnet_tpc_crc) none; Ref-Net always.
    expected = {"retab": target == "retab", "crnet": target == "crnet", "refnet": True}.get(
        branch, bool(document.get("figure_images")))
    if expected and not figure.is_file():
        raise PipelineError(figure, "figure not found (the fold report is incomplete)")
    report_md = directory / "report.md"
    return {"source": str(directory), "branch": branch, "dataset": str(document["dataset"]),
            "fold": document["fold"], "method": target, "rows": document["methods"],
            "classes": document.get(spec.classes_key),
            "figure": str(figure) if figure.is_file() else None,
            "caption": figure_caption(report_md.read_text() if report_md.is_file() else None)}


# --------------------------------------------------------------------------- arranging (pure)

def collect(reports: Sequence[dict]) -> dict:
    """``{dataset: {branch: {fold: {"rows": {row: entry}, "reports": [report...]}}}}``.

    Datasets keep the order in which they are first given; a fold's rows come from its
    reports in the order given (the first report holding a row wins). The same method,
    dataset and fold twice is an error.
    """
    out: dict = {}
    for report in reports:
        fold = out.setdefault(report["dataset"], {}).setdefault(report["branch"], {}).setdefault(
            report["fold"], {"rows": {}, "reports": []})
        if any(r["method"] == report["method"] for r in fold["reports"]):
            raise PipelineError(Path(report["source"]) / "metrics.json",
                                f"{report['method']} fold {report['fold']} of dataset {report['dataset']} "
                                "is given twice")
        for row, entry in report["rows"].items():
            fold["rows"].setdefault(row, entry)
        fold["reports"].append(report)
    return out


def per_fold(folds: Mapping[int, dict], spec: Branch, kind: str) -> dict[str, list[dict | None]]:
    """``{row: [summary of fold k or None, ...]}`` (folds ascending) for the rows of ``spec``
    that have ``kind`` scores in some fold."""
    ordered = [folds[k]["rows"] for k in sorted(folds)]
    table = {row: [(rows.get(row) or {}).get(kind) for rows in ordered] for row in spec.rows}
    return {row: values for row, values in table.items() if any(v is not None for v in values)}


def branch_means(folds: Mapping[int, dict], spec: Branch) -> dict:
    """``{row: {"title", "val", "pseudo"}}``: each row's mean over folds per kind (None if none)."""
    tables = {kind: per_fold(folds, spec, kind) for kind in KINDS}
    rows = [row for row in spec.rows if any(row in tables[kind] for kind in KINDS)]
    return {row: {"title": spec.rows[row],
                  **{kind: mean_summaries(tables[kind].get(row, []), spec.score_keys) for kind in KINDS}}
            for row in rows}


def classes_line(folds: Mapping[int, dict], spec: Branch) -> str | None:
    """'Novel classes: fold0: bus; fold1: cat.' from the fold reports (None if none lists them)."""
    parts = []
    for k in sorted(folds):
        names = next((r["classes"] for r in folds[k]["reports"] if r.get("classes")), None)
        if names:
            parts.append(f"fold{k}: {', '.join(map(str, names))}")
    return f"{spec.classes_label}: {'; '.join(parts)}.\n" if parts else None


def branch_markdown(folds: Mapping[int, dict], spec: Branch) -> str:
    """One branch of one dataset: per kind, the mean over folds in paper form, then a
    table per score with a column per fold and the mean."""
    keys = sorted(folds)
    means = branch_means(folds, spec)
    parts = [f"### {spec.title}: folds {', '.join(map(str, keys))}\n"]
    line = classes_line(folds, spec)
    if line:
        parts.append(line)
    for kind in KINDS:
        table = per_fold(folds, spec, kind)
        if not table:
            continue
        what = spec.kind_titles[kind]
        parts += [f"#### {what}: mean over folds (mIoU, %)\n",
                  miou_table([(spec.rows[row], means[row][kind]) for row in table], columns=spec.columns[kind])]
        if spec.error_columns:
            parts += [f"#### {what}: where novel pixels go, mean over folds (% of novel GT / novel predictions)\n",
                      miou_table([(spec.rows[row], means[row][kind]) for row in table], columns=spec.error_columns)]
        for label, key in spec.fold_scores:
            parts += [f"#### {what}: {label} per fold (mIoU, %)\n",
                      fold_table([(spec.rows[row], values) for row, values in table.items()], keys, key)]
    return "\n".join(parts)


def figure_name(dataset: str, target: str, fold: int) -> str:
    return f"{dataset}_{target}_fold{fold}.png"


def plan_figures(collected: Mapping[str, dict]) -> list[dict]:
    """One figure per dataset, branch and fold: the first of the fold's reports that has one.

    Each: ``{"dataset", "branch", "fold", "source" (figure.png path), "name" (under
    figures/), "caption"}``.
    """
    plan = []
    for dataset, branches in collected.items():
        for branch in BRANCHES:
            for fold in sorted(branches.get(branch, {})):
                report = next((r for r in branches[branch][fold]["reports"] if r["figure"]), None)
                if report is not None:
                    plan.append({"dataset": dataset, "branch": branch, "fold": fold, "source": report["figure"],
                                 "name": figure_name(dataset, report["method"], fold),
                                 "caption": report["caption"] or f"{report['method']} fold {fold}"})
    return plan


def read_extra_report(directory: str | Path) -> str:
    """The report.md of a whole-target report, its headings two levels down (under ``### dir``)."""
    path = Path(directory) / "report.md"
    if not path.is_file():
        raise PipelineError(path, "missing (report.extras names a target whose report is not built)")
    text = path.read_text()
    return re.sub(r"^(#+) ", lambda m: "#" * min(len(m[1]) + 3, 6) + " ", text, flags=re.M)


def report_markdown(collected: Mapping[str, dict], figures: Sequence[dict], sources: Sequence[str],
                    extras: Mapping[str, str] | None = None) -> str:
    """report.md: an introduction, then per dataset every branch's tables and its figures."""
    parts = ["# Results report\n",
             f"Datasets: {', '.join(collected)}. Scores are mIoU in % (one decimal); **mean** averages the "
             f"folds in which a score is defined; {format_percent(None)} = undefined (no such row in the fold, "
             "or a class set absent). RETAB: base classes have pixel labels, novel classes image labels only. "
             "L-Net / P-Net: strong classes (with background) have pixel labels, weak classes image labels only. "
             "Built by `snakemake results/report` from the per-fold reports listed at the end.\n"]
    for dataset, branches in collected.items():
        parts.append(f"## Dataset {dataset}\n")
        parts += [branch_markdown(branches[b], BRANCHES[b]) for b in BRANCHES if b in branches]
        shown = [f for f in figures if f["dataset"] == dataset]
        if shown:
            parts.append(f"### Figures: {dataset}\n")
            for figure in shown:
                parts += [f"#### {BRANCHES[figure['branch']].title}, fold {figure['fold']}\n",
                          f"Columns: {figure['caption']}.\n",
                          f"![{figure['caption']}]({FIGURE_DIR}/{figure['name']})\n"]
    if extras:
        parts.append("## Whole-target reports\n")
        for directory, text in extras.items():
            parts += [f"### `{directory}`\n", text.rstrip() + "\n"]
    parts += ["## Sources\n", "\n".join(f"- `{s}`" for s in [*sources, *(extras or {})]) + "\n"]
    return "\n".join(parts)


def summary_document(collected: Mapping[str, dict], figures: Sequence[dict]) -> dict:
    """metrics.json: per dataset and branch the folds, the source directories and the means."""
    datasets = {}
    for dataset, branches in collected.items():
        datasets[dataset] = {
            branch: {"folds": sorted(folds),
                     "sources": [r["source"] for k in sorted(folds) for r in folds[k]["reports"]],
                     "mean": branch_means(folds, BRANCHES[branch])}
            for branch, folds in branches.items()}
    return {"datasets": datasets, "figures": [f"{FIGURE_DIR}/{f['name']}" for f in figures]}


# --------------------------------------------------------------------------- stage

def run(retab: Sequence[str], lnet: Sequence[str], out: str, crnet: Sequence[str] = (),
        refnet: Sequence[str] = (), extra: Sequence[str] = ()) -> dict:
    """Read every fold report (all errors before anything is written), then write ``out``."""
    if not retab and not lnet and not crnet and not refnet:
        raise PipelineError("--retab/--lnet/--crnet/--refnet", "no fold report given")
    reports = ([read_fold_report(d, "retab") for d in retab] + [read_fold_report(d, "lnet") for d in lnet]
               + [read_fold_report(d, "crnet") for d in crnet] + [read_fold_report(d, "refnet") for d in refnet])
    extras = {str(d): read_extra_report(d) for d in extra}
    collected = collect(reports)
    figures = plan_figures(collected)
    text = report_markdown(collected, figures, [r["source"] for r in reports], extras)
    document = summary_document(collected, figures)
    document["extras"] = list(extras)
    with atomic_dir(out) as tmp:
        write_text(tmp / "report.md", text)
        write_json(tmp / "metrics.json", document)
        if figures:
            (tmp / FIGURE_DIR).mkdir()
        for figure in figures:
            shutil.copyfile(figure["source"], tmp / FIGURE_DIR / figure["name"])
    return document


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--retab", nargs="*", default=[], metavar="DIR",
                    help="fold report directories of pipeline.methods.retab.report (results/<dataset>/retab_fold<k>)")
    ap.add_argument("--lnet", nargs="*", default=[], metavar="DIR",
                    help="fold report directories of pipeline.methods.lnet.report (results/<dataset>/{lnet,pnet}_fold<k>)")
    ap.add_argument("--crnet", nargs="*", default=[], metavar="DIR",
                    help="fold report directories of pipeline.methods.crnet.report (results/<dataset>/crnet_fold<k>)")
    ap.add_argument("--refnet", nargs="*", default=[], metavar="DIR",
                    help="fold report directories of pipeline.methods.refnet.report (results/<dataset>/refnet_fold<k>)")
    ap.add_argument("--extra", nargs="*", default=[], metavar="DIR",
                    help="whole-target report directories included as they are (report.extras)")
    ap.add_argument("--out", required=True, help="report directory to write (results/report)")
    args = ap.parse_args(argv)
    with stage_run("report_all", {"retab": args.retab, "lnet": args.lnet, "crnet": args.crnet,
                                  "refnet": args.refnet, "extra": args.extra}, {}) as log:
        document = run(args.retab, args.lnet, args.out, args.crnet, args.refnet, args.extra)
        log.info("report of %s (%d figures) written to %s", ", ".join(document["datasets"]),
                 len(document["figures"]), args.out)


if __name__ == "__main__":
    run_stage(main)
