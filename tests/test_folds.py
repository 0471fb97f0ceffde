"""Folds and image-level labels: pure functions, the two stages, their failure paths, CamVid."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import REPO_ROOT
from pipeline.data.folds import (base_classes_for_fold, load_fold, mask_novel_pixels, novel_classes_for_fold,
                                 num_folds, split_samples)
from pipeline.data.labels import load_image_labels, load_pixel_counts, read_image_labels_file, write_image_labels
from pipeline.errors import PipelineError
from pipeline.stages import image_labels as image_labels_stage
from pipeline.stages import make_folds as make_folds_stage
from conftest import CAMVID_CLASSES, VOC_CLASSES, box_mask, save_mask, tiny_dataset_entry, write_tiny_voc


def cfg(classes=VOC_CLASSES, background="background", novel="pascal5i", name="x") -> dict:
    return {"name": name, "classes": list(classes), "background": background, "novel_classes": novel}


# --- pure functions ----------------------------------------------------------------------

def test_pascal5i_folds():
    assert num_folds(cfg()) == 4
    assert novel_classes_for_fold(cfg(), 0) == [1, 2, 3, 4, 5]
    assert novel_classes_for_fold(cfg(), 3) == [16, 17, 18, 19, 20]
    assert base_classes_for_fold(cfg(), 1) == [0, 1, 2, 3, 4, 5] + list(range(11, 21))


def test_explicit_folds_by_name():
    camvid = cfg(CAMVID_CLASSES, None, [["bicyclist", "pedestrian"], ["car"]])
    assert num_folds(camvid) == 2
    assert novel_classes_for_fold(camvid, 0) == [9, 10]
    assert base_classes_for_fold(camvid, 0) == list(range(9))
    assert novel_classes_for_fold(camvid, 1) == [8]


@pytest.mark.parametrize("config, fold, key, words", [
    (cfg(CAMVID_CLASSES, None, [["car"], ["pedestrain"]]), 1, "datasets.x.novel_classes[1]", "pedestrain"),
    (cfg(novel=[["background"]]), 0, "datasets.x.novel_classes[0]", "background"),
    (cfg(novel=[["cat", "cat"]]), 0, "datasets.x.novel_classes[0]", "twice"),
    (cfg(CAMVID_CLASSES[:2], None, [CAMVID_CLASSES[:2]]), 0, "datasets.x.novel_classes[0]", "no base"),
    (cfg(), 4, "datasets.x.novel_classes", "0..3"),
    (cfg(), -1, "datasets.x.novel_classes", "0..3"),
    (cfg(CAMVID_CLASSES, None), 0, "datasets.x.novel_classes", "pascal5i needs 21"),
])
def test_bad_fold_specs_name_the_key(config, fold, key, words):
    with pytest.raises(PipelineError) as info:
        novel_classes_for_fold(config, fold)
    assert info.value.where == key and words in info.value.problem


def test_split_samples_any_novel_pixel():
    labels = {"a": [1], "b": [7], "c": [3, 15], "d": [], "e": [16]}
    assert split_samples(labels, [1, 2, 3, 4, 5]) == (["a", "c"], ["b", "d", "e"])
    assert split_samples(labels, [20]) == ([], ["a", "b", "c", "d", "e"])


def test_mask_novel_pixels():
    mask = np.array([[0, 9, 10], [255, 3, 9]], np.uint8)
    out = mask_novel_pixels(mask, [9, 10], 255)
    assert out.tolist() == [[0, 255, 255], [255, 3, 255]]
    assert mask[0, 1] == 9  # input untouched


def test_labels_file_round_trip_and_checks(tmp_path):
    path = tmp_path / "labels.json"
    write_image_labels(path, dataset_name="d", class_names=["bg", "a", "b"], background="bg", min_pixels=1,
                       splits={"train": ["i1"], "val": ["i2"]}, labels={"i1": [1, 2], "i2": []},
                       pixel_counts={"i1": [5, 1, 2], "i2": [8, 0, 0]})
    assert load_image_labels(path) == {"i1": [1, 2], "i2": []}
    assert load_pixel_counts(path) == {"i1": [5, 1, 2], "i2": [8, 0, 0]}
    assert read_image_labels_file(path)["splits"] == {"train": ["i1"], "val": ["i2"]}
    bad = json.loads(path.read_text())
    bad["labels"]["i1"] = [3]
    path.write_text(json.dumps(bad))
    with pytest.raises(PipelineError, match="class ids 0..2"):
        load_image_labels(path)
    path.write_text("{not json")
    with pytest.raises(PipelineError, match="not valid JSON"):
        load_image_labels(path)


def test_load_fold_checks(tmp_path):
    path = tmp_path / "fold.json"
    path.write_text(json.dumps({"fold": 0, "novel_classes": [1]}))
    with pytest.raises(PipelineError) as info:
        load_fold(path)
    assert info.value.where == str(path) and "base_samples" in info.value.problem


# --- stages on tiny data -----------------------------------------------------------------

def tiny_dataset(root: Path) -> Path:
    """12x16. Train: t1 aeroplane(1); t2 car(7) + a void column; t3 person(15) + 2 px bird(3);
    t4 pottedplant(16). Val: v1 aeroplane."""
    return write_tiny_voc(root, {"t1": [(1, 2, 8, 2, 8)],
                                 "t2": [(7, 0, 4, 0, 4), (255, 0, 12, 15, 16)],
                                 "t3": [(15, 3, 9, 5, 12), (3, 0, 1, 0, 2)],
                                 "t4": [(16, 6, 12, 0, 6)]},
                          {"v1": [(1, 1, 5, 1, 5)]}, classes=VOC_CLASSES, size=(12, 16)).root


def write_params(path: Path, root: Path, explicit_folds=None, novel_min_pixels=None, dataset="tiny") -> Path:
    entry = tiny_dataset_entry(root, VOC_CLASSES, explicit_folds or "pascal5i")
    if novel_min_pixels is not None:
        entry["novel_min_pixels"] = novel_min_pixels
    params = {"dataset": dataset, "seed": 0, "device": "cpu", "datasets": {dataset: entry},
              "image_labels": {"min_pixels": 1}}
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def tiny(tmp_path):
    root = tiny_dataset(tmp_path / "VOC")
    return {"root": root, "params": write_params(tmp_path / "params.yaml", root), "dir": tmp_path}


def test_image_labels_stage(tiny):
    out = tiny["dir"] / "work/tiny/image_labels.json"
    image_labels_stage.main(["--params", str(tiny["params"]), "--out", str(out)])
    document = json.loads(out.read_text())
    assert document["dataset"] == "tiny" and document["classes"] == VOC_CLASSES
    assert document["splits"] == {"train": ["t1", "t2", "t3", "t4"], "val": ["v1"]}
    assert document["labels"] == {"t1": [1], "t2": [7], "t3": [3, 15], "t4": [16], "v1": [1]}
    assert document["pixel_counts"]["t3"][3] == 2 and document["pixel_counts"]["t3"][15] == 42
    assert sum(document["pixel_counts"]["t2"]) == 12 * 15  # the void column is not counted
    assert load_image_labels(out) == document["labels"]


def test_make_folds_stage_pascal5i(tiny):
    labels = tiny["dir"] / "labels.json"
    image_labels_stage.main(["--params", str(tiny["params"]), "--out", str(labels)])
    out = tiny["dir"] / "folds/fold0.json"
    make_folds_stage.main(["--params", str(tiny["params"]), "--labels", str(labels), "--fold", "0",
                           "--out", str(out)])
    fold = load_fold(out)
    assert fold["fold"] == 0 and fold["novel_classes"] == [1, 2, 3, 4, 5]
    assert fold["base_classes"] == [0] + list(range(6, 21))
    assert fold["novel_samples"] == ["t1", "t3"] and fold["base_samples"] == ["t2", "t4"]
    counts = fold["counts"]
    assert (counts["train_images"], counts["novel_samples"], counts["base_samples"]) == (4, 2, 2)
    assert counts["images_per_class"]["aeroplane"] == 1 and counts["images_per_class"]["bird"] == 1
    assert counts["images_per_class_in_base_samples"]["car"] == 1
    assert counts["novel_pixels_ignored_in_base_samples"] == 0


def test_make_folds_novel_min_pixels(tmp_path):
    """With novel_min_pixels 3, t3's 2 bird pixels no longer make it a novel sample."""
    root = tiny_dataset(tmp_path / "VOC")
    params = write_params(tmp_path / "p.yaml", root, novel_min_pixels=3)
    labels, out = tmp_path / "labels.json", tmp_path / "fold0.json"
    image_labels_stage.main(["--params", str(params), "--out", str(labels)])
    make_folds_stage.main(["--params", str(params), "--labels", str(labels), "--fold", "0", "--out", str(out)])
    fold = load_fold(out)
    assert fold["novel_samples"] == ["t1"] and fold["base_samples"] == ["t2", "t3", "t4"]
    assert fold["novel_min_pixels"] == 3 and fold["counts"]["novel_pixels_ignored_in_base_samples"] == 2


def run_cli(module: str, *args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", f"pipeline.stages.{module}", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def assert_failed_cleanly(result: subprocess.CompletedProcess, out: Path, names: str) -> None:
    """Exit 2, exactly one 'error:' line naming ``names``, no traceback, no output left."""
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and names in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()
    if out.parent.exists():
        assert not list(out.parent.glob(".tmp-*"))


def test_image_labels_stage_corrupt_mask(tiny):
    bad = tiny["root"] / "SegmentationClass/t3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tiny["dir"] / "work/labels.json"
    assert_failed_cleanly(run_cli("image_labels", "--params", tiny["params"], "--out", out), out, str(bad))


def test_image_labels_stage_bad_label_and_missing_root(tiny):
    bad = tiny["root"] / "SegmentationClass/v1.png"
    save_mask(bad, box_mask([(99, 0, 1, 0, 1)], (12, 16)))
    out = tiny["dir"] / "work/labels.json"
    assert_failed_cleanly(run_cli("image_labels", "--params", tiny["params"], "--out", out), out, str(bad))
    missing = tiny["dir"] / "gone"
    params = write_params(tiny["dir"] / "p2.yaml", missing)
    assert_failed_cleanly(run_cli("image_labels", "--params", params, "--out", out), out, str(missing))


@pytest.fixture
def explicit(tmp_path):
    """Labels for folds [[bird], [tvmonitor], [aeroplane, car, person, pottedplant], [cattle]]."""
    root = tiny_dataset(tmp_path / "VOC")
    folds = [["bird"], ["tvmonitor"], ["aeroplane", "car", "person", "pottedplant"], ["cattle"]]
    params = write_params(tmp_path / "p.yaml", root, explicit_folds=folds)
    labels = tmp_path / "labels.json"
    image_labels_stage.main(["--params", str(params), "--out", str(labels)])
    return {"params": params, "labels": labels, "dir": tmp_path}


def test_make_folds_explicit_ok(explicit):
    out = explicit["dir"] / "fold0.json"
    make_folds_stage.main(["--params", str(explicit["params"]), "--labels", str(explicit["labels"]),
                           "--fold", "0", "--out", str(out)])
    assert load_fold(out)["novel_samples"] == ["t3"]


@pytest.mark.parametrize("fold, labels_file, names", [
    ("1", None, "labels.json"),                                   # no train image has tvmonitor
    ("2", None, "labels.json"),                                   # every train image is novel
    ("3", None, "datasets.tiny.novel_classes[3]"),                # unknown class name
    ("7", None, "datasets.tiny.novel_classes"),                   # fold out of range
    ("0", "missing.json", "missing.json"),                        # labels file missing
    ("0", "stale.json", "stale.json"),                            # labels of another dataset
])
def test_make_folds_failures(explicit, fold, labels_file, names):
    labels = explicit["labels"]
    if labels_file == "stale.json":
        document = json.loads(labels.read_text())
        document["dataset"] = "voc"
        labels = explicit["dir"] / labels_file
        labels.write_text(json.dumps(document))
    elif labels_file:
        labels = explicit["dir"] / labels_file
    out = explicit["dir"] / "folds" / f"fold{fold}.json"
    result = run_cli("make_folds", "--params", explicit["params"], "--labels", labels, "--fold", fold,
                     "--out", out)
    assert_failed_cleanly(result, out, names)


# The real CamVid fold's counts: tests/test_guard_folds.py derives them from the masks
# themselves (PIL + numpy, the rule written out there), not from numbers the code printed.
