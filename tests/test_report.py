"""pipeline.report (tables, colours, figure) and stage report_retab on fake inputs.

Fake eval files hold hand-picked scores, so every number in the tables is checked by
hand. The figure inputs (tiny 24x32 dataset, CAM npz, boundary and pseudo-label PNGs)
follow the formats of stages infer_cam, infer_boundary and pseudo_labels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from pipeline.cam import write_cam_file
from pipeline.data.label_png import write_label_png
from pipeline.method_table import RETAB
from pipeline.report import (
    blend,
    colorize_labels,
    compose_figure,
    figure_size,
    fit_into_cell,
    format_percent,
    heat_colors,
    markdown_table,
    mean_summaries,
    miou_table,
    pick_largest,
    title_band_height,
)
from pipeline.methods.retab import report as report_retab
from conftest import run_fails, tiny_params, write_tiny_voc, write_yaml

H, W = 24, 32
TRAIN = {"t0": (1, 6), "t1": (3, 4), "t2": (3, 8), "t3": (2, 5)}  # id: (class, square side)
CELL = 48


# --------------------------------------------------------------------------- pure functions

def test_format_and_markdown_table():
    assert format_percent(0.45678) == "45.7" and format_percent(None) == "–" and format_percent(1.0) == "100.0"
    assert markdown_table(["A", "b"], [["x", "1"]]) == "| A | b |\n| --- | ---: |\n| x | 1 |\n"


def test_miou_table_in_paper_form():
    table = miou_table([("CAM", {"miou": 0.4567, "miou_base": 0.5, "miou_novel": 1 / 3}), ("Oracle", None)])
    assert table.splitlines() == ["| Method | all | base | novel |", "| --- | ---: | ---: | ---: |",
                                  "| CAM | 45.7 | 50.0 | 33.3 |", "| Oracle | – | – | – |"]


def test_mean_summaries_skips_undefined_values():
    a = {"miou": 0.4, "miou_novel": None, "per_class_iou": {"cat": 0.2, "bus": None}}
    b = {"miou": 0.5, "miou_novel": 0.3, "per_class_iou": {"cat": 0.4, "bus": None}}
    mean = mean_summaries([a, b, None])
    assert mean["miou"] == pytest.approx(0.45) and mean["miou_novel"] == pytest.approx(0.3)
    assert mean["per_class_iou"] == {"cat": pytest.approx(0.3), "bus": None} and mean["num_folds"] == 2
    assert mean_summaries([None, None]) is None


def test_colours():
    np.testing.assert_array_equal(colorize_labels(np.array([[0, 1, 3, 255]], np.uint8))[0],
                                  [[0, 0, 0], [128, 0, 0], [128, 128, 0], [224, 224, 192]])
    np.testing.assert_array_equal(heat_colors(np.array([0.0, 0.5, 1.0])),
                                  [[0, 0, 128], [128, 255, 128], [128, 0, 0]])
    np.testing.assert_array_equal(blend(np.zeros((1, 1, 3), np.uint8), np.full((1, 1, 3), 200, np.uint8), 0.25),
                                  [[[50, 50, 50]]])


def test_pick_largest_is_deterministic():
    assert pick_largest({"b": 5, "a": 5, "c": 9, "d": 1}, 3) == ["c", "a", "b"]
    assert pick_largest({"a": 1}, 4) == ["a"]


def test_fit_into_cell_keeps_aspect_and_centres():
    panel = np.zeros((10, 20, 3), np.uint8)
    cell = np.asarray(fit_into_cell(panel, 40, nearest=True))
    assert cell.shape == (40, 40, 3)
    assert (cell[10:30] == 0).all() and (cell[:10] == 255).all() and (cell[30:] == 255).all()


def test_compose_figure_size_and_placement():
    red = Image.new("RGB", (CELL, CELL), (255, 0, 0))
    figure = compose_figure([[red, red, red], [red, red, red]], ["a", "b", "c"], CELL, pad=4)
    band = title_band_height(ImageFont.load_default(), 4)
    assert figure.size == figure_size(2, 3, CELL, 4, band) == (3 * CELL + 16, band + 2 * CELL + 12)
    assert figure.getpixel((4, band + 4)) == (255, 0, 0) and figure.getpixel((2, band + 2)) == (255, 255, 255)
    with pytest.raises(ValueError):
        compose_figure([[red]], ["a", "b"], CELL)


# --------------------------------------------------------------------------- fake inputs

def eval_doc(fold: int, miou: float, base: float | None, novel: float | None, cat: float | None = 0.5) -> dict:
    """An evaluate metrics file with the given scores."""
    return {"miou": miou, "miou_base": base, "miou_novel": novel, "miou_harmonic": None, "pixel_accuracy": 0.9,
            "mean_pixel_accuracy": 0.6, "fwiou": 0.8, "fb_iou": 0.7, "num_images": 10, "fold": fold,
            "novel_recall": 0.5, "novel_to_background": 0.3, "novel_to_base": 0.2, "novel_to_other_novel": 0.0,
            "novel_precision": 0.8, "false_novel_from_background": 0.15, "false_novel_from_base": 0.05,
            "per_class_iou": {"background": 0.9, "cat": cat, "dog": 0.4, "bus": novel},
            "base_classes": ["background", "cat", "dog"], "novel_classes": ["bus"], "split": "val"}


# scores per method: val (miou, base, novel) and pseudo (miou, base, novel)
SCORES = {
    "cam": ((0.40, 0.45, 0.25), (0.30, 0.35, 0.20)),
    "cam_rw": ((0.42, 0.46, 0.30), (0.33, 0.36, 0.22)),
    "cam_rw_seggt": ((0.50, 0.55, 0.35), (0.33, 0.36, 0.22)),
    "cam_rw_affgt_seggt": ((0.52, 0.56, 0.40), (0.36, 0.37, 0.30)),
    "retab": ((0.55, 0.57, 0.4567), (0.40, 0.41, 0.3333)),
    "oracle": ((0.70, 0.71, 0.66), None),
}


@pytest.fixture()
def fake_work(tmp_path):
    """(params path, work dir) with eval files of fold 0 and the figure's inputs."""
    data = write_tiny_voc(tmp_path / "data", {i: [(value, 2, 2 + side, 3, 3 + side)]
                                              for i, (value, side) in TRAIN.items()}, val=["t0"], size=(H, W))
    params = tiny_params(data, [["bus"]], {"overrides.tiny": {"report": {"figure_samples": 4, "figure_cell": CELL}}})
    params_path = write_yaml(tmp_path / "params.yaml", params)

    work = tmp_path / "work" / "tiny"
    (work / "fold0" / "eval").mkdir(parents=True)
    for method, (val, pseudo) in SCORES.items():
        (work / "fold0" / "eval" / f"{method}_val.json").write_text(json.dumps(eval_doc(0, *val)))
        if pseudo is not None:
            (work / "fold0" / "eval" / f"{method}_pseudo.json").write_text(json.dumps(eval_doc(0, *pseudo)))
    (work / "folds").mkdir()
    data.write_fold(work / "folds" / "fold0.json", [3])
    assert data.fold([3])["novel_samples"] == ["t1", "t2"]
    cams, boundary = work / "shared/cam/cams", work / "fold0/boundary/maps"
    rw, retab = work / "fold0/pseudo/rw_cam", work / "fold0/pseudo/retab"
    for directory in (cams, boundary, rw, retab):
        directory.mkdir(parents=True)
    for image_id, (value, _) in TRAIN.items():
        write_cam_file(cams / f"{image_id}.npz", np.linspace(0, 1, 6 * 8).reshape(1, 6, 8), [value], (H, W), 4)
        Image.fromarray(np.full((H, W), 128, np.uint8)).save(boundary / f"{image_id}.png")
        write_label_png(rw / f"{image_id}.png", np.full((H, W), value, np.uint8))
        write_label_png(retab / f"{image_id}.png", np.full((H, W), value, np.uint8))
    return params_path, work


def run_report(params_path: Path, work: Path, out: Path, method: str) -> None:
    report_retab.main(["--params", str(params_path), "--method", method, "--fold", "0", "--work", str(work),
                       "--out", str(out)])


# --------------------------------------------------------------------------- stage

def test_single_method_report(fake_work, tmp_path):
    params_path, work = fake_work
    out = tmp_path / "results" / "cam_fold0"
    run_report(params_path, work, out, "cam")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "per_class_iou.csv", "report.md"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "cam" and metrics["fold"] == 0 and list(metrics["methods"]) == ["cam"]
    cam = metrics["methods"]["cam"]
    assert cam["val"]["miou_novel"] == 0.25 and cam["pseudo"]["miou"] == 0.30
    assert cam["val"]["per_class_iou"]["cat"] == 0.5 and cam["val"]["fb_iou"] == 0.7
    report = (out / "report.md").read_text()
    assert "| CAM | 40.0 | 45.0 | 25.0 |" in report and "| CAM | 30.0 | 35.0 | 20.0 |" in report
    assert "| bus * | 25.0 |" in report
    # where novel pixels go: recall, to bg / base / other novel, precision, false from bg / base
    assert report.count("| CAM | 50.0 | 30.0 | 20.0 | 0.0 | 80.0 | 15.0 | 5.0 |") == 2  # val and pseudo
    assert cam["val"]["novel_to_base"] == 0.2


def test_oracle_report_has_no_pseudo_table(fake_work, tmp_path):
    params_path, work = fake_work
    run_report(params_path, work, tmp_path / "o", "oracle")
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["methods"]["oracle"]["pseudo"] is None
    assert "Pseudo labels" not in (tmp_path / "o" / "report.md").read_text()


def test_retab_report_table_and_figure(fake_work, tmp_path):
    params_path, work = fake_work
    out = tmp_path / "retab_fold0"
    run_report(params_path, work, out, "retab")
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["methods"]) == sorted(RETAB.rows)  # JSON keys are written sorted
    lines = (out / "report.md").read_text().splitlines()
    val_table = lines[lines.index("| Method | all | base | novel |") + 2:][:6]
    assert val_table == ["| CAM | 40.0 | 45.0 | 25.0 |", "| CAM+RW | 42.0 | 46.0 | 30.0 |",
                         "| CAM+RW(seggt) | 50.0 | 55.0 | 35.0 |", "| CAM+RW(affgt+seggt) | 52.0 | 56.0 | 40.0 |",
                         "| CAM+RETAB | 55.0 | 57.0 | 45.7 |", "| Fully Oracle | 70.0 | 71.0 | 66.0 |"]
    assert "| CAM+RETAB | 40.0 | 41.0 | 33.3 |" in lines and "| Fully Oracle | 70.0 | 71.0 | 66.0 |" in lines

    figure = Image.open(out / "figure.png").convert("RGB")
    band = title_band_height(ImageFont.load_default(), 4)
    assert figure.size == figure_size(2, 6, CELL, 4, band)  # 2 novel samples, 6 columns
    # row 0 is t2 (bus, side 8: the largest novel area); its ground-truth panel shows bus colour
    gt_panel = np.asarray(figure)[band + 4:band + 4 + CELL, 8 + CELL:8 + 2 * CELL]
    bus = (gt_panel == [128, 128, 0]).all(-1).sum()
    assert bus == pytest.approx((8 * CELL / W) ** 2, rel=0.15)


def test_missing_eval_file_is_one_line(fake_work, tmp_path, capsys):
    params_path, work = fake_work
    (work / "fold0" / "eval" / "cam_rw_pseudo.json").unlink()
    out = tmp_path / "r"
    run_fails(report_retab.main, ["--params", params_path, "--method", "retab", "--fold", "0", "--work", work,
                                  "--out", out], capsys, "cam_rw_pseudo.json", "not found", alone=True)
    assert not out.exists()


def test_missing_figure_input_is_one_line(fake_work, tmp_path, capsys):
    params_path, work = fake_work
    (work / "fold0/pseudo/retab/t2.png").unlink()
    run_fails(report_retab.main, ["--params", params_path, "--method", "retab", "--fold", "0", "--work", work,
                                  "--out", tmp_path / "r"], capsys, "t2.png", alone=True)


def test_aggregate_mean_hand_checked(fake_work, tmp_path):
    params_path, work = fake_work
    run_report(params_path, work, tmp_path / "retab_fold0", "retab")
    # fold 1: same files re-labelled, cam's val scores changed, novel undefined there
    fold1 = json.loads((tmp_path / "retab_fold0" / "metrics.json").read_text())
    fold1["fold"] = 1
    fold1["methods"]["cam"]["val"].update({"miou": 0.50, "miou_base": 0.55, "miou_novel": None})
    (tmp_path / "retab_fold1").mkdir()
    (tmp_path / "retab_fold1" / "metrics.json").write_text(json.dumps(fold1))

    out = tmp_path / "retab_all"
    report_retab.main(["--params", str(params_path), "--aggregate", str(tmp_path / "retab_fold0"),
                       str(tmp_path / "retab_fold1"), "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["folds"] == [0, 1] and sorted(metrics["per_fold"]) == ["fold0", "fold1"]
    cam = metrics["mean"]["methods"]["cam"]["val"]
    assert cam["miou"] == pytest.approx(0.45) and cam["miou_base"] == pytest.approx(0.50)
    assert cam["miou_novel"] == pytest.approx(0.25)  # only fold 0 defines it
    assert metrics["mean"]["methods"]["oracle"]["pseudo"] is None
    report = (out / "report.md").read_text()
    assert "| CAM | 45.0 | 50.0 | 25.0 |" in report and "| CAM | 50.0 | 55.0 | – |" in report


def test_aggregate_rejects_a_fold_given_twice(fake_work, tmp_path, capsys):
    params_path, work = fake_work
    run_report(params_path, work, tmp_path / "a", "retab")
    run_fails(report_retab.main, ["--params", params_path, "--aggregate", tmp_path / "a", tmp_path / "a",
                                  "--out", tmp_path / "all"], capsys, "fold 0 is given twice")
    assert not (tmp_path / "all").exists()


def test_per_class_csv_is_wide_with_novel_flag():
    from pipeline.report import per_class_csv

    methods = {"cam": {"val": {"per_class_iou": {"background": 0.5, "cat": None}}},
               "oracle": {"val": {"per_class_iou": {"background": 0.75, "cat": 0.25}}},
               "none": {"val": None}}
    assert per_class_csv(methods, "val", novel=["cat"]).splitlines() == [
        "class,novel,cam,oracle", "background,0,0.500000,0.750000", "cat,1,,0.250000"]
