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
from pipeline.data.folds import (base_classes_for_fold, check_folds, load_fold, mask_novel_pixels,
                                 novel_classes_for_fold, num_folds, split_evenly, split_samples)
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


# --- {k: K}: K folds of consecutive object-class ids, sizes differing by at most one ----------

def k_folds(config: dict) -> list[list[int]]:
    return [novel_classes_for_fold(config, f) for f in range(num_folds(config))]


def names(n: int) -> list[str]:
    return [f"c{i}" for i in range(n)]


def test_split_evenly_larger_runs_first():
    assert split_evenly(list(range(1, 17)), 3) == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11], [12, 13, 14, 15, 16]]
    assert split_evenly([0, 1, 2, 3, 4, 5, 6], 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_evenly([4, 5], 2) == [[4], [5]]


def test_k_folds_16_classes_in_3():
    """Background + 16 object classes (ids 1..16), k=3: sizes 6, 5, 5."""
    config = cfg(["background", *names(16)], novel={"k": 3})
    assert num_folds(config) == 3
    assert k_folds(config) == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11], [12, 13, 14, 15, 16]]
    assert base_classes_for_fold(config, 1) == [0, 1, 2, 3, 4, 5, 6, 12, 13, 14, 15, 16]


def test_k_4_on_voc_is_pascal5i():
    k4, pascal = cfg(novel={"k": 4}), cfg()
    assert num_folds(k4) == num_folds(pascal) == 4
    assert k_folds(k4) == k_folds(pascal) == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15],
                                             [16, 17, 18, 19, 20]]
    assert [base_classes_for_fold(k4, f) for f in range(4)] == [base_classes_for_fold(pascal, f) for f in range(4)]


def test_k_folds_without_background():
    """CamVid: 11 classes, all objects (ids 0..10), k=2: sizes 6, 5; no class is left out."""
    config = cfg(CAMVID_CLASSES, None, {"k": 2})
    assert k_folds(config) == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert base_classes_for_fold(config, 0) == [6, 7, 8, 9, 10]


def test_k_folds_one_class_each_and_background_anywhere():
    assert k_folds(cfg(["background", *names(5)], novel={"k": 5})) == [[1], [2], [3], [4], [5]]
    # the background is skipped wherever it sits in the class list
    assert k_folds(cfg(["a", "background", "b", "c"], novel={"k": 3})) == [[0], [2], [3]]
    # k = 1: every object class is novel; the background is the only base class
    assert k_folds(cfg(["background", *names(3)], novel={"k": 1})) == [[1, 2, 3]]


@pytest.mark.parametrize("config, words", [
    (cfg(["background", *names(16)], novel={"k": 0}), "k = 0 must be >= 1"),
    (cfg(["background", *names(16)], novel={"k": -2}), "k = -2 must be >= 1"),
    (cfg(["background", *names(16)], novel={"k": 17}), "k = 17 is more than the 16 object classes"),
    (cfg(CAMVID_CLASSES, None, {"k": 12}), "k = 12 is more than the 11 object classes"),
    (cfg(CAMVID_CLASSES, None, {"k": 1}), "no base classes"),
    (cfg(novel={"k": "4"}), "must be an integer"),
    (cfg(novel={"k": True}), "must be an integer"),
])
def test_bad_k_names_the_key(config, words):
    with pytest.raises(PipelineError) as info:
        check_folds(config)
    assert info.value.where == "datasets.x.novel_classes.k" and words in info.value.problem, info.value


def test_check_folds_checks_every_fold_and_the_asked_one():
    assert check_folds(cfg(novel={"k": 4}), 3) == 4
    with pytest.raises(PipelineError) as info:
        check_folds(cfg(novel={"k": 4}, name="embedded"), 9)
    assert str(info.value) == "datasets.embedded.novel_classes: dataset 'embedded' has folds 0..3, not 9"
    with pytest.raises(PipelineError) as info:  # fold 0 is fine, fold 1 names an unknown class
        check_folds(cfg(novel=[["cat"], ["cta"]]), 0)
    assert info.value.where == "datasets.x.novel_classes[1]" and "unknown class 'cta'" in info.value.problem


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


def test_make_folds_stage_k4_writes_the_pascal5i_fold(tiny):
    labels = tiny["dir"] / "labels.json"
    image_labels_stage.main(["--params", str(tiny["params"]), "--out", str(labels)])
    k4 = write_params(tiny["dir"] / "k4.yaml", tiny["root"], explicit_folds={"k": 4})
    for params, out in ((tiny["params"], "pascal5i.json"), (k4, "k4.json")):
        make_folds_stage.main(["--params", str(params), "--labels", str(labels), "--fold", "1",
                               "--out", str(tiny["dir"] / out)])
    assert load_fold(tiny["dir"] / "k4.json") == load_fold(tiny["dir"] / "pascal5i.json")


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


def assert_failed_cleanly(result: subprocess.CompletedProcess, out: Path, *names: str) -> None:
    """Exit 2, exactly one 'error:' line naming each of ``names``, no traceback, no output left."""
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(name in errors[0] for name in names), result.stderr
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
    assert_failed_cleanly(run_cli("image_labels", "--params", tiny["params"], "--out", out), out, str(bad),
                          "datasets.tiny.classes")
    missing = tiny["dir"] / "gone"
    params = write_params(tiny["dir"] / "p2.yaml", missing)
    assert_failed_cleanly(run_cli("image_labels", "--params", params, "--out", out), out, str(missing),
                          "datasets.tiny.root")


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
