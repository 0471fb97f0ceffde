"""Stage report_all (results/report) and the fold tables of pipeline.report, on fake fold reports.

The fake per-fold report directories hold hand-picked scores in the metrics.json layouts of
stages report_retab and report_lnet, so every mean in the tables is checked by hand.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from pipeline.errors import PipelineError, run_stage
from pipeline.method_table import LNET as LNET_TABLE, RETAB as RETAB_TABLE
from pipeline.report import fold_table, miou_table
from pipeline.stages import report_all
from pipeline.stages.report_all import BRANCHES, branch_markdown, branch_means, collect, figure_caption, per_fold
from conftest import scratch_workflow, snakemake


def s(miou, base, novel):
    """A summary as the fold reports store it (pipeline.report.summarize_eval)."""
    return {"miou": miou, "miou_base": base, "miou_novel": novel, "per_class_iou": {"bus": novel}, "num_images": 3}


# (val, pseudo) per RETAB row and fold; oracle fold 1 has no novel score.
RETAB = {
    0: {"cam": (s(0.40, 0.45, 0.20), s(0.30, 0.35, 0.10)), "cam_rw": (s(0.42, 0.46, 0.30), s(0.33, 0.36, 0.22)),
        "cam_rw_seggt": (s(0.50, 0.55, 0.35), s(0.33, 0.36, 0.22)),
        "cam_rw_affgt_seggt": (s(0.52, 0.56, 0.40), s(0.36, 0.37, 0.30)),
        "retab": (s(0.55, 0.57, 0.45), s(0.40, 0.41, 0.30)), "oracle": (s(0.70, 0.71, 0.66), None)},
    1: {"cam": (s(0.50, 0.55, 0.30), s(0.20, 0.25, 0.20)), "cam_rw": (s(0.44, 0.48, 0.32), s(0.35, 0.38, 0.24)),
        "cam_rw_seggt": (s(0.52, 0.57, 0.37), s(0.35, 0.38, 0.24)),
        "cam_rw_affgt_seggt": (s(0.54, 0.58, 0.42), s(0.38, 0.39, 0.32)),
        "retab": (s(0.65, 0.67, 0.55), s(0.50, 0.51, 0.40)), "oracle": (s(0.80, 0.81, None), None)},
}
# (val, pseudo) per L-Net / P-Net row and fold.
LNET = {
    0: {"cam_seggt": (s(0.30, 0.40, 0.10), s(0.20, 0.30, 0.05)), "lnet": (s(0.40, 0.45, 0.25), s(0.30, 0.35, 0.15)),
        "pnet": (s(0.44, 0.46, 0.35), None), "oracle": (s(0.70, 0.71, 0.66), None)},
    1: {"cam_seggt": (s(0.32, 0.42, 0.20), s(0.22, 0.32, 0.15)), "lnet": (s(0.50, 0.55, 0.35), s(0.40, 0.45, 0.25)),
        "pnet": (s(0.54, 0.56, 0.45), None), "oracle": (s(0.80, 0.81, 0.76), None)},
}
RETAB_CAPTION = "image | ground truth | CAM | boundary | CAM+RW | CAM+RETAB"
LNET_CAPTION = "Image | L-Net map M | CAM seeds | Superpixels | L_w (self-diffusion) | Ground truth"


def retab_doc(fold: int, dataset: str = "embedded", method: str = "retab") -> dict:
    rows = {m: {"title": RETAB_TABLE.rows[m].title, "val": val, "pseudo": pseudo} for m, (val, pseudo) in RETAB[fold].items()}
    return {"dataset": dataset, "fold": fold, "method": method, "methods": rows, "novel_classes": [f"novel{fold}"],
            "base_classes": ["background", "cat"]}


def lnet_doc(fold: int, dataset: str = "embedded", method: str = "pnet") -> dict:
    rows = {m: {"title": LNET_TABLE.rows[m].title, "val": val, "pseudo": pseudo, "share_of_oracle": None}
            for m, (val, pseudo) in LNET[fold].items() if method == "pnet" or m != "pnet"}
    return {"dataset": dataset, "fold": fold, "method": method, "methods": rows, "split": "pascal5i",
            "strong_classes": ["background", "cat"], "weak_classes": [f"weak{fold}"], "figure_images": ["t1"],
            "miou": rows[method]["val"]["miou"]}


def write_fold_report(directory: Path, document: dict, caption: str, colour: tuple[int, int, int]) -> Path:
    """A fold report directory as report_retab / report_lnet write it (tiny figure)."""
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps(document))
    (directory / "report.md").write_text(f"# fold report\n\n![{caption}](figure.png)\n")
    Image.new("RGB", (6, 4), colour).save(directory / "figure.png")
    return directory


@pytest.fixture()
def fold_reports(tmp_path):
    """{"retab": [dirs], "lnet": [dirs]} for folds 0 and 1 of dataset embedded."""
    results = tmp_path / "results" / "embedded"
    retab = [write_fold_report(results / f"retab_fold{k}", retab_doc(k), RETAB_CAPTION, (200, 0, k)) for k in (0, 1)]
    lnet = [write_fold_report(results / f"pnet_fold{k}", lnet_doc(k), LNET_CAPTION, (0, 200, k)) for k in (0, 1)]
    return {"retab": [str(d) for d in retab], "lnet": [str(d) for d in lnet]}


def table_rows(text: str, heading: str, count: int) -> list[str]:
    """The ``count`` body rows of the table under ``#### heading``."""
    lines = text.splitlines()
    start = lines.index(f"#### {heading}")
    return lines[start + 4:start + 4 + count]  # heading, blank, header, rule


# --------------------------------------------------------------------------- pure functions

def test_fold_table_hand_computed_mean():
    rows = [("CAM", [s(0.4, 0.45, 0.2), s(0.5, 0.55, 0.3)]), ("Oracle", [s(0.7, 0.7, 0.66), s(0.8, 0.8, None)]),
            ("P-Net", [None, s(0.5, 0.5, 0.25)])]
    assert fold_table(rows, [0, 1], "miou_novel").splitlines() == [
        "| Method | fold0 | fold1 | mean |", "| --- | ---: | ---: | ---: |",
        "| CAM | 20.0 | 30.0 | 25.0 |", "| Oracle | 66.0 | – | 66.0 |", "| P-Net | – | 25.0 | 25.0 |"]
    with pytest.raises(ValueError):
        fold_table([("CAM", [None])], [0, 1], "miou")


def test_miou_table_takes_other_columns():
    table = miou_table([("L-Net", s(0.4, 0.5, 0.25))], columns=(("all", "miou"), ("weak", "miou_novel")))
    assert table.splitlines() == ["| Method | all | weak |", "| --- | ---: | ---: |", "| L-Net | 40.0 | 25.0 |"]


def test_figure_caption_reads_the_fold_reports_alt_text():
    assert figure_caption(f"# x\n\n![{RETAB_CAPTION}](figure.png)\n") == RETAB_CAPTION
    assert figure_caption("# no figure\n") is None and figure_caption(None) is None


def fake_report(branch, fold, method, document, dataset="embedded"):
    return {"source": f"results/{dataset}/{method}_fold{fold}", "branch": branch, "dataset": dataset, "fold": fold,
            "method": method, "rows": document["methods"], "classes": None, "figure": None, "caption": None}


def test_retab_means_and_tables_hand_computed():
    collected = collect([fake_report("retab", k, "retab", retab_doc(k)) for k in (1, 0)])  # any order
    folds = collected["embedded"]["retab"]
    assert list(per_fold(folds, BRANCHES["retab"], "pseudo")) == ["cam", "cam_rw", "cam_rw_seggt",
                                                                   "cam_rw_affgt_seggt", "retab"]  # no oracle
    means = branch_means(folds, BRANCHES["retab"])
    cam = means["cam"]["val"]
    assert cam["miou"] == pytest.approx(0.45) and cam["miou_novel"] == pytest.approx(0.25)
    assert means["oracle"]["val"]["miou_novel"] == pytest.approx(0.66) and means["oracle"]["pseudo"] is None
    text = branch_markdown(folds, BRANCHES["retab"])
    assert table_rows(text, "Segmentation on val: mean over folds (mIoU, %)", 6) == [
        "| CAM | 45.0 | 50.0 | 25.0 |", "| CAM+RW | 43.0 | 47.0 | 31.0 |", "| CAM+RW(seggt) | 51.0 | 56.0 | 36.0 |",
        "| CAM+RW(affgt+seggt) | 53.0 | 57.0 | 41.0 |", "| CAM+RETAB | 60.0 | 62.0 | 50.0 |",
        "| Fully Oracle | 75.0 | 76.0 | 66.0 |"]
    assert table_rows(text, "Segmentation on val: novel classes per fold (mIoU, %)", 6)[4:] == [
        "| CAM+RETAB | 45.0 | 55.0 | 50.0 |", "| Fully Oracle | 66.0 | – | 66.0 |"]
    assert table_rows(text, "Segmentation on val: all classes per fold (mIoU, %)", 1) == [
        "| CAM | 40.0 | 50.0 | 45.0 |"]
    pseudo = table_rows(text, "Pseudo labels of the train novel samples: mean over folds (mIoU, %)", 6)
    assert pseudo[0] == "| CAM | 25.0 | 30.0 | 15.0 |" and pseudo[4] == "| CAM+RETAB | 45.0 | 46.0 | 35.0 |"
    assert pseudo[5] == ""  # five rows: the oracle has no pseudo labels
    # where novel pixels go: the same means, of the error shares (none in these summaries)
    errors = table_rows(text, "Segmentation on val: where novel pixels go, mean over folds"
                              " (% of novel GT / novel predictions)", 1)
    assert errors == ["| CAM | – | – | – | – | – | – | – |"]


def test_novel_error_table_means_over_folds():
    docs = [retab_doc(k) for k in (0, 1)]
    for doc, recall in zip(docs, (0.4, 0.6)):
        doc["methods"]["retab"]["val"].update(novel_recall=recall, novel_to_base=0.1)
    folds = collect([fake_report("retab", k, "retab", doc) for k, doc in enumerate(docs)])["embedded"]["retab"]
    text = branch_markdown(folds, BRANCHES["retab"])
    rows = table_rows(text, "Segmentation on val: where novel pixels go, mean over folds"
                            " (% of novel GT / novel predictions)", 6)
    assert rows[4] == "| CAM+RETAB | 50.0 | – | 10.0 | – | – | – | – |"


def test_lnet_and_pnet_reports_of_one_fold_merge():
    reports = [fake_report("lnet", 0, "pnet", lnet_doc(0)), fake_report("lnet", 0, "lnet", lnet_doc(0, method="lnet"))]
    folds = collect(reports)["embedded"]["lnet"]
    assert list(folds[0]["rows"]) == ["cam_seggt", "lnet", "pnet", "oracle"] and len(folds[0]["reports"]) == 2
    text = branch_markdown(folds, BRANCHES["lnet"])
    assert "| Method | all | strong | weak |" in text and "| P-Net | 44.0 | 46.0 | 35.0 |" in text
    assert "| Method | all | weak |" in text and "| L-Net (self-diffusion) | 30.0 | 15.0 |" in text
    with pytest.raises(PipelineError, match="pnet fold 0 of dataset embedded is given twice"):
        collect(reports + [fake_report("lnet", 0, "pnet", lnet_doc(0))])


# --------------------------------------------------------------------------- stage

def test_stage_writes_a_self_contained_report(fold_reports, tmp_path):
    out = tmp_path / "results" / "report"
    report_all.main(["--retab", *fold_reports["retab"], "--lnet", *fold_reports["lnet"], "--out", str(out)])
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == ["figures/embedded_pnet_fold0.png", "figures/embedded_pnet_fold1.png",
                     "figures/embedded_retab_fold0.png", "figures/embedded_retab_fold1.png",
                     "metrics.json", "report.md"]
    text = (out / "report.md").read_text()
    print(text)  # `pytest -s` shows the whole report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 4 and all((out / link).is_file() for link in links)
    assert Image.open(out / "figures/embedded_retab_fold1.png").getpixel((0, 0)) == (200, 0, 1)
    assert f"![{RETAB_CAPTION}](figures/embedded_retab_fold0.png)" in text
    assert "Novel classes: fold0: novel0; fold1: novel1." in text
    assert "Weak classes: fold0: weak0; fold1: weak1." in text
    assert table_rows(text, "Segmentation on val: mean over folds (mIoU, %)", 1) == ["| CAM | 45.0 | 50.0 | 25.0 |"]
    lnet = text[text.index("### L-Net / P-Net"):]
    assert table_rows(lnet, "Segmentation on val: weak classes per fold (mIoU, %)", 4) == [
        "| CAM-only pseudo labels | 10.0 | 20.0 | 15.0 |", "| L-Net (self-diffusion) | 25.0 | 35.0 | 30.0 |",
        "| P-Net | 35.0 | 45.0 | 40.0 |", "| Fully Oracle | 66.0 | 76.0 | 71.0 |"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["datasets"]["embedded"]["retab"]["folds"] == [0, 1]
    assert metrics["datasets"]["embedded"]["lnet"]["mean"]["pnet"]["val"]["miou"] == pytest.approx(0.49)


def test_reports_of_two_datasets_each_get_a_section(fold_reports, tmp_path):
    other = write_fold_report(tmp_path / "results" / "camvid" / "retab_fold0", retab_doc(0, "camvid"),
                              RETAB_CAPTION, (1, 2, 3))
    out = tmp_path / "report"
    report_all.main(["--retab", fold_reports["retab"][0], str(other), "--out", str(out)])
    text = (out / "report.md").read_text()
    assert text.index("## Dataset embedded") < text.index("## Dataset camvid")
    assert (out / "figures/camvid_retab_fold0.png").is_file()


def test_missing_metrics_file_is_one_line_and_no_output(fold_reports, tmp_path, capsys):
    missing = Path(fold_reports["lnet"][1]) / "metrics.json"
    missing.unlink()
    out = tmp_path / "results" / "report"
    with pytest.raises(SystemExit) as exit_info:
        run_stage(report_all.main, ["--retab", *fold_reports["retab"], "--lnet", *fold_reports["lnet"],
                                    "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(missing) in err[0]
    assert not out.exists() and not list(out.parent.glob(".tmp-*"))


def test_missing_figure_and_wrong_branch_are_one_line(fold_reports, tmp_path, capsys):
    (Path(fold_reports["retab"][0]) / "figure.png").unlink()
    with pytest.raises(SystemExit):
        run_stage(report_all.main, ["--retab", *fold_reports["retab"], "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert "retab_fold0/figure.png: figure not found" in err and "\n" not in err
    with pytest.raises(SystemExit):
        run_stage(report_all.main, ["--retab", fold_reports["lnet"][0], "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert "is a report of 'pnet'" in err and "\n" not in err
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- DAG

def planned_outputs(proc) -> set[str]:
    return set(re.findall(r"output: (results/\S+)", proc.stdout))


def test_dry_run_resolves_results_report(tmp_path):
    workdir = scratch_workflow(tmp_path)
    proc = snakemake(workdir, "results/report", "-n", "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    outputs = planned_outputs(proc)
    assert "results/report" in outputs
    assert {f"results/embedded/{m}_fold{k}" for m in ("retab", "pnet") for k in range(4)} <= outputs
    # params.yaml's report covers the real MSRC photos too (datasets/msrc.yaml, 3 folds), CRNet,
    # and the whole-target reports of report.extras
    assert {f"results/msrc/{m}_fold{k}" for m in ("retab", "pnet", "crnet") for k in range(3)} <= outputs
    assert {"results/embedded/crnet_seeds", "results/msrc/crnet_seeds", "results/crnet_cross"} <= outputs
    # TPC + CRC and Ref-Net: the per-fold reports and their whole-target tables
    assert {f"results/msrc/{m}_fold{k}" for m in ("crnet_tpc_crc", "refnet") for k in range(3)} <= outputs
    assert {f"results/{d}/{t}" for d in ("embedded", "msrc") for t in (
        "crnet_tpc_crc_components", "crnet_tpc_crc_all", "refnet_all", "refnet_critics", "refnet_select")} <= outputs


def test_dry_run_follows_the_report_selection(tmp_path):
    workdir = scratch_workflow(tmp_path, {"report": {"datasets": ["embedded"], "folds": [0], "methods": ["retab"],
                                                     "extras": []}})
    proc = snakemake(workdir, "results/report", "-n", "-p", "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    reports = {o for o in planned_outputs(proc) if re.search(r"_fold\d+$", o)}
    assert reports == {"results/embedded/retab_fold0"}
    assert "--retab results/embedded/retab_fold0 --out results/report" in proc.stdout
    (tmp_path / "extras").mkdir()
    workdir = scratch_workflow(tmp_path / "extras", {"report": {
        "datasets": ["embedded"], "folds": [0], "methods": ["retab"], "extras": ["results/crnet_seeds"]}})
    proc = snakemake(workdir, "results/report", "-n", "-p", "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "results/embedded/crnet_seeds" in planned_outputs(proc)
    assert "--retab results/embedded/retab_fold0 --extra results/crnet_seeds --out results/report" in proc.stdout


def test_extra_reports_are_included_with_headings_moved_down(fold_reports, tmp_path, capsys):
    extra = tmp_path / "results" / "crnet_cross"
    extra.mkdir(parents=True)
    (extra / "report.md").write_text("# Cross-dataset CRNet\n\n## embedded -> msrc\n\n| a | b |\n")
    out = tmp_path / "report"
    report_all.main(["--retab", fold_reports["retab"][0], "--extra", str(extra), "--out", str(out)])
    text = (out / "report.md").read_text()
    assert "## Whole-target reports" in text and f"### `{extra}`" in text
    assert "#### Cross-dataset CRNet" in text and "##### embedded -> msrc" in text and "| a | b |" in text
    assert json.loads((out / "metrics.json").read_text())["extras"] == [str(extra)]
    with pytest.raises(SystemExit):
        run_stage(report_all.main, ["--retab", fold_reports["retab"][0], "--extra", str(tmp_path / "nope"),
                                    "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert "nope/report.md: missing" in err and "\n" not in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize("selection, message", [
    ({"datasets": ["nope"]}, "report.datasets: no dataset 'nope'"),
    ({"methods": ["nope"]}, "report.methods"),
])
def test_bad_report_selection_is_one_line(tmp_path, selection, message):
    workdir = scratch_workflow(tmp_path, {"report": selection})
    proc = snakemake(workdir, "results/report", "-n", "--cores", "1")
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr
