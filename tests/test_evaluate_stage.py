"""Stages evaluate and predict_constant on a tiny VOC-layout dataset built in tmp_path.

Dataset "tiny": classes [background, cat, dog, bus], 8x8 images; fold 0 has novel class
bus (3), base classes background, cat, dog. Val masks:
  val0: row 0 is the 255 outline band (8 ignored pixels), a 2x2 cat square, rest background
        -> 56 counted pixels: 4 cat, 52 background
  val1: a 4x4 bus square, rest background -> 64 counted: 16 bus, 48 background
Train masks: train0 has a dog square (base sample), train1 a bus square (novel sample).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import REPO_ROOT
from pipeline.data.label_png import read_label_png, write_label_png
from pipeline.stages import evaluate, predict_constant
from conftest import run_fails, tiny_params, write_tiny_voc, write_yaml

SCENES = {  # 8x8 images: (class, row0, row1, col0, col1) boxes on background
    "val0": [(1, 2, 4, 2, 4), (255, 0, 1, 0, 8)],  # a cat square; row 0 is the 255 band
    "val1": [(3, 4, 8, 4, 8)],
    "train0": [(2, 1, 5, 1, 5)],
    "train1": [(3, 0, 3, 0, 3)],
}


@pytest.fixture()
def setup(tmp_path):
    data = write_tiny_voc(tmp_path / "tiny", {i: SCENES[i] for i in ("train0", "train1")},
                          {i: SCENES[i] for i in ("val0", "val1")}, size=8)
    params = write_yaml(tmp_path / "params.yaml", tiny_params(data, [["bus"]]))
    fold_file = data.write_fold(tmp_path / "fold0.json", [3])
    assert data.fold([3])["novel_samples"] == ["train1"]
    return {"tmp": tmp_path, "params": str(params), "fold": str(fold_file), "root": data.root, "masks": data.masks}


def _common(s):
    return ["--params", s["params"], "--dataset", "tiny"]


def test_all_background_baseline_end_to_end(setup):
    s = setup
    pred_dir = s["tmp"] / "pred"
    predict_constant.main(_common(s) + ["--split", "val", "--out", str(pred_dir)])
    assert sorted(p.name for p in pred_dir.iterdir()) == ["val0.png", "val1.png"]
    assert (read_label_png(pred_dir / "val0.png") == 0).all()

    out = s["tmp"] / "metrics.json"
    cm_csv = s["tmp"] / "confusion.csv"
    evaluate.main(_common(s) + ["--split", "val", "--pred", str(pred_dir), "--fold-file", s["fold"],
                                "--out", str(out), "--out-confusion", str(cm_csv)])
    m = json.loads(out.read_text())
    # 120 counted pixels (56 + 64), 100 background, all predicted background:
    #   IoU bg = 100 / 120 = 5/6; cat 0 (4 GT pixels missed); dog absent -> null; bus 0.
    assert m["per_class_iou"]["background"] == pytest.approx(5 / 6)
    assert m["per_class_iou"]["cat"] == 0.0
    assert m["per_class_iou"]["dog"] is None
    assert m["per_class_iou"]["bus"] == 0.0
    assert m["miou"] == pytest.approx((5 / 6 + 0 + 0) / 3)          # dog left out: 5/18
    assert m["miou_base"] == pytest.approx((5 / 6 + 0) / 2)         # bg, cat (dog absent): 5/12
    assert m["miou_novel"] == 0.0
    assert m["miou_harmonic"] == 0.0
    assert m["pixel_accuracy"] == pytest.approx(100 / 120)
    assert m["mean_pixel_accuracy"] == pytest.approx(1 / 3)         # (1 + 0 + 0) / 3 classes in GT
    assert m["fwiou"] == pytest.approx(100 / 120 * 5 / 6)           # 25/36
    assert m["fb_iou"] == pytest.approx((5 / 6 + 0) / 2)            # fg IoU 0 / 20
    assert m["num_images"] == 2 and m["num_pixels"] == 120
    assert m["novel_classes"] == ["bus"] and m["base_classes"] == ["background", "cat", "dog"]
    # all 16 bus pixels went to the background; nothing was predicted bus
    assert m["novel_recall"] == 0.0 and m["novel_to_background"] == 1.0 and m["novel_to_base"] == 0.0
    assert m["novel_precision"] is None
    rows = cm_csv.read_text().splitlines()
    assert rows[0] == "gt \\ pred,background,cat,dog,bus"
    assert rows[1] == "background,100,0,0,0" and rows[4] == "bus,16,0,0,0"


def test_perfect_prediction_on_novel_samples(setup):
    s = setup
    pred_dir = s["tmp"] / "pred"
    pred_dir.mkdir()
    # Pseudo labels of the train novel samples, equal to the GT: every present class IoU 1.
    write_label_png(pred_dir / "train1.png", s["masks"]["train1"])
    out = s["tmp"] / "m.json"
    evaluate.main(_common(s) + ["--split", "train", "--pred", str(pred_dir), "--fold-file", s["fold"],
                                "--ids-from", "novel_samples", "--out", str(out)])
    m = json.loads(out.read_text())
    assert m["num_images"] == 1 and m["ids_from"] == "novel_samples"
    assert m["miou"] == 1.0 and m["miou_novel"] == 1.0 and m["fb_iou"] == 1.0
    assert m["per_class_iou"]["cat"] is None


def test_void_pseudo_labels_need_the_flag(setup, capsys):
    s = setup
    pred_dir = s["tmp"] / "pred"
    pred_dir.mkdir()
    pseudo = s["masks"]["train1"].copy()
    pseudo[0, :] = 255  # uncertain row: 3 bus + 5 background pixels left unlabelled
    write_label_png(pred_dir / "train1.png", pseudo)
    argv = _common(s) + ["--split", "train", "--pred", str(pred_dir), "--fold-file", s["fold"],
                         "--ids-from", "novel_samples", "--out", str(s["tmp"] / "m.json")]
    run_fails(evaluate.main, argv, capsys, "train1.png", "[255]")
    assert not (s["tmp"] / "m.json").exists()
    evaluate.main(argv + ["--void-pred"])
    m = json.loads((s["tmp"] / "m.json").read_text())
    assert m["coverage"] == pytest.approx(56 / 64)
    assert m["labelled_pixel_accuracy"] == 1.0
    # bus: 9 GT pixels, 6 labelled correctly -> 6/9; background 55 GT, 50 correct -> 50/55
    assert m["per_class_iou"]["bus"] == pytest.approx(6 / 9)
    assert m["per_class_iou"]["background"] == pytest.approx(50 / 55)


def test_missing_prediction_is_named(setup, capsys):
    s = setup
    pred_dir = s["tmp"] / "pred"
    pred_dir.mkdir()
    write_label_png(pred_dir / "val0.png", np.zeros((8, 8), np.uint8))
    out = s["tmp"] / "m.json"
    run_fails(evaluate.main, _common(s) + ["--pred", pred_dir, "--fold-file", s["fold"], "--out", out], capsys,
              "val1.png", "prediction missing")
    assert not out.exists()


@pytest.mark.parametrize("bad, expect", [
    (np.zeros((8, 9), np.uint8), "prediction is 9x8 but the ground truth"),
    (np.full((8, 8), 4, np.uint8), "prediction label(s) [4] out of range [0, 3]"),
    (np.zeros((8, 8, 3), np.uint8), "mode 'RGB'"),
])
def test_bad_prediction_files_are_named(setup, capsys, bad, expect):
    s = setup
    pred_dir = s["tmp"] / "pred"
    pred_dir.mkdir()
    write_label_png(pred_dir / "val0.png", np.zeros((8, 8), np.uint8))
    if bad.ndim == 3:
        Image.fromarray(bad).save(pred_dir / "val1.png")
    else:
        write_label_png(pred_dir / "val1.png", bad)
    out = s["tmp"] / "m.json"
    run_fails(evaluate.main, _common(s) + ["--pred", pred_dir, "--fold-file", s["fold"], "--out", out], capsys,
              "val1.png", expect)
    assert not out.exists()


def test_bad_fold_inputs(setup, capsys):
    s = setup
    pred_dir = s["tmp"] / "pred"
    pred_dir.mkdir()
    base = _common(s) + ["--pred", str(pred_dir), "--out", str(s["tmp"] / "m.json")]
    run_fails(evaluate.main, base + ["--fold-file", s["fold"], "--ids-from", "nonsense"], capsys, "fold0.json",
              "no id list 'nonsense'")
    # train ids evaluated against the val split
    run_fails(evaluate.main, base + ["--fold-file", s["fold"], "--ids-from", "novel_samples"], capsys,
              "not in split 'val'")
    other = s["tmp"] / "other_fold.json"
    other.write_text(json.dumps({**json.loads(Path(s["fold"]).read_text()), "novel_classes": [15]}))
    run_fails(evaluate.main, base + ["--fold-file", str(other)], capsys, "other_fold.json", "novel_classes")


def test_predict_constant_class_index(setup, capsys):
    s = setup
    out = s["tmp"] / "pred"
    predict_constant.main(_common(s) + ["--split", "train", "--class-index", "2", "--out", str(out)])
    assert (read_label_png(out / "train1.png") == 2).all()
    run_fails(predict_constant.main, _common(s) + ["--class-index", "4", "--out", s["tmp"] / "p2"], capsys,
              "--class-index")
    assert not (s["tmp"] / "p2").exists()


def test_python_dash_m_entry_point(setup):
    s = setup
    out = s["tmp"] / "pred"
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.predict_constant", *_common(s),
                           "--split", "val", "--out", str(out)], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.evaluate", *_common(s), "--pred", str(out),
                           "--fold-file", str(s["tmp"] / "missing.json"), "--out", str(s["tmp"] / "m.json")],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "missing.json" in proc.stderr
