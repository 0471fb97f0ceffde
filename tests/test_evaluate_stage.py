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
import yaml
from PIL import Image

from pipeline.config import REPO_ROOT
from pipeline.errors import run_stage
from pipeline.metrics.label_png import read_label_png, write_label_png
from pipeline.stages import evaluate, predict_constant
from workflow_utils import tiny_dataset_entry

CLASSES = ["background", "cat", "dog", "bus"]


def _mask(square: tuple[int, int, int, int, int], band: bool = False) -> np.ndarray:
    """8x8 background with rows r0:r1, cols c0:c1 set to a class; optional 255 band on row 0."""
    r0, r1, c0, c1, value = square
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[r0:r1, c0:c1] = value
    if band:
        mask[0, :] = 255
    return mask


MASKS = {
    "val0": _mask((2, 4, 2, 4, 1), band=True),
    "val1": _mask((4, 8, 4, 8, 3)),
    "train0": _mask((1, 5, 1, 5, 2)),
    "train1": _mask((0, 3, 0, 3, 3)),
}


@pytest.fixture()
def setup(tmp_path):
    root = tmp_path / "tiny"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id, mask in MASKS.items():
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        write_label_png(root / "SegmentationClass" / f"{image_id}.png", mask)
    (root / "ImageSets/Segmentation/train.txt").write_text("train0\ntrain1\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("val0\nval1\n")

    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    raw["datasets"]["tiny"] = tiny_dataset_entry(root, CLASSES, [["bus"]])
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    fold = {"fold": 0, "dataset": "tiny", "novel_classes": [3], "base_classes": [0, 1, 2],
            "novel_samples": ["train1"], "base_samples": ["train0"], "counts": {}}
    fold_file = tmp_path / "fold0.json"
    fold_file.write_text(json.dumps(fold))
    return {"tmp": tmp_path, "params": str(params), "fold": str(fold_file), "root": root}


def _common(s):
    return ["--params", s["params"], "--dataset", "tiny"]


def _run_failing(main, argv, capsys) -> str:
    """Run a stage the way ``python -m`` does; assert exit 2 and one 'error:' line."""
    with pytest.raises(SystemExit) as exc:
        run_stage(main, argv)
    assert exc.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


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
    write_label_png(pred_dir / "train1.png", MASKS["train1"])
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
    pseudo = MASKS["train1"].copy()
    pseudo[0, :] = 255  # uncertain row: 3 bus + 5 background pixels left unlabelled
    write_label_png(pred_dir / "train1.png", pseudo)
    argv = _common(s) + ["--split", "train", "--pred", str(pred_dir), "--fold-file", s["fold"],
                         "--ids-from", "novel_samples", "--out", str(s["tmp"] / "m.json")]
    line = _run_failing(evaluate.main, argv, capsys)
    assert "train1.png" in line and "[255]" in line
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
    line = _run_failing(evaluate.main, _common(s) + ["--pred", str(pred_dir), "--fold-file", s["fold"],
                                                     "--out", str(out)], capsys)
    assert "val1.png" in line and "prediction missing" in line
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
    line = _run_failing(evaluate.main, _common(s) + ["--pred", str(pred_dir), "--fold-file", s["fold"],
                                                     "--out", str(out)], capsys)
    assert "val1.png" in line and expect in line
    assert not out.exists()


def test_bad_fold_inputs(setup, capsys):
    s = setup
    pred_dir = s["tmp"] / "pred"
    pred_dir.mkdir()
    base = _common(s) + ["--pred", str(pred_dir), "--out", str(s["tmp"] / "m.json")]
    line = _run_failing(evaluate.main, base + ["--fold-file", s["fold"], "--ids-from", "nonsense"], capsys)
    assert "fold0.json" in line and "no id list 'nonsense'" in line
    # train ids evaluated against the val split
    line = _run_failing(evaluate.main, base + ["--fold-file", s["fold"], "--ids-from", "novel_samples"], capsys)
    assert "not in split 'val'" in line
    other = s["tmp"] / "other_fold.json"
    other.write_text(json.dumps({**json.loads(Path(s["fold"]).read_text()), "novel_classes": [15]}))
    line = _run_failing(evaluate.main, base + ["--fold-file", str(other)], capsys)
    assert "other_fold.json" in line and "novel_classes" in line


def test_predict_constant_class_index(setup, capsys):
    s = setup
    out = s["tmp"] / "pred"
    predict_constant.main(_common(s) + ["--split", "train", "--class-index", "2", "--out", str(out)])
    assert (read_label_png(out / "train1.png") == 2).all()
    line = _run_failing(predict_constant.main, _common(s) + ["--class-index", "4", "--out",
                                                             str(s["tmp"] / "p2")], capsys)
    assert "--class-index" in line
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
