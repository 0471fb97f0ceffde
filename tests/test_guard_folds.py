"""Guard: the fold split's ``novel_min_pixels`` rule at its exact boundary, and CamVid's
fold counts derived independently of the pipeline.

Rule (pipeline/data/folds.py, stage make_folds): a train image is a novel sample when one
novel class has *at least* ``novel_min_pixels`` pixels in it (1 = the PASCAL-5i rule),
else a base sample, whose remaining novel pixels are counted as ignored.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.data.folds import load_fold
from pipeline.stages import image_labels as image_labels_stage, make_folds as make_folds_stage
from conftest import ROOT, Box, tiny_params, write_tiny_voc, write_yaml

BUS = 3


def run_labels_and_fold(params: Path, tmp: Path, dataset: str | None = None) -> tuple[dict, dict]:
    """Stages image_labels and make_folds (fold 0): (labels document, fold document)."""
    select = ["--dataset", dataset] if dataset else []
    labels, fold = tmp / "labels.json", tmp / "fold0.json"
    image_labels_stage.main(["--params", str(params), *select, "--out", str(labels)])
    make_folds_stage.main(["--params", str(params), *select, "--labels", str(labels), "--fold", "0",
                           "--out", str(fold)])
    return json.loads(labels.read_text()), load_fold(fold)


# --- the exact boundary of novel_min_pixels ------------------------------------------------

def scene(bus_pixels: int) -> list[Box]:
    """16 x 16: a 4 x 4 cat square and ``bus_pixels`` bus pixels along the last row."""
    return [(1, 2, 6, 2, 6), (BUS, 15, 16, 0, bus_pixels)]


@pytest.mark.parametrize("n", [1, 6])
def test_exactly_novel_min_pixels_makes_a_novel_sample(tmp_path, n):
    """'exact' holds exactly n bus pixels (novel sample), 'fewer' n - 1 (base sample, its
    n - 1 bus pixels ignored), 'more' n + 1 (novel), 'none' no bus (base)."""
    ids = {"fewer": n - 1, "exact": n, "none": 0, "more": n + 1}
    data = write_tiny_voc(tmp_path / "VOC", {image_id: scene(bus) for image_id, bus in ids.items()}, ["none"],
                          size=16, mask_mode="L")
    assert [counts[BUS] for counts in data.pixel_counts().values()] == [n - 1, n, 0, n + 1]
    changes = {"device": "cpu", "image_labels.min_pixels": 1}
    params = write_yaml(tmp_path / "params.yaml", tiny_params(data, [["bus"]], changes, novel_min_pixels=n))

    labels, fold = run_labels_and_fold(params, tmp_path)
    assert [labels["pixel_counts"][i][BUS] for i in ids] == [n - 1, n, 0, n + 1]
    assert fold["novel_min_pixels"] == n and fold["novel_classes"] == [BUS]
    assert fold["novel_samples"] == ["exact", "more"]
    assert fold["base_samples"] == ["fewer", "none"]
    assert fold["counts"]["novel_pixels_ignored_in_base_samples"] == n - 1


# --- CamVid: counts read straight from the masks ------------------------------------------

CAMVID = (ROOT / "../shared/data/camvid").resolve()
CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
                  "pedestrian", "bicyclist"]


def camvid_pixel_counts(split: str) -> dict[str, np.ndarray]:
    """Pixels per class id 0..10 of every mask of ``split``, with PIL + numpy only (255 = void)."""
    ids = (CAMVID / f"ImageSets/Segmentation/{split}.txt").read_text().split()
    counts = {}
    for image_id in ids:
        with Image.open(CAMVID / "SegmentationClass" / f"{image_id}.png") as im:
            mask = np.asarray(im)
        counts[image_id] = np.bincount(mask.ravel(), minlength=256)[:len(CAMVID_CLASSES)]
    return counts


def split_by_rule(counts: dict[str, np.ndarray], novel: list[int], min_pixels: int) -> tuple[list, list]:
    """The fold rule written out: novel sample iff some novel class has >= min_pixels pixels."""
    novel_samples = [i for i, c in counts.items() if any(c[k] >= min_pixels for k in novel)]
    return novel_samples, [i for i in counts if i not in novel_samples]


@pytest.mark.skipif(not CAMVID.is_dir(), reason="../shared/data/camvid not present")
def test_camvid_fold_counts_from_the_masks(tmp_path, monkeypatch):
    """Stages image_labels + make_folds on CamVid (params.yaml: novel pedestrian, bicyclist
    with >= 500 px) agree with counts taken directly from the masks."""
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())["datasets"]["camvid"]
    assert cfg["classes"] == CAMVID_CLASSES and cfg["novel_classes"] == [["pedestrian", "bicyclist"]]
    novel, min_pixels = [9, 10], cfg["novel_min_pixels"]
    train = camvid_pixel_counts("train")
    present = {i: [k for k in range(11) if c[k] >= 1] for i, c in train.items()}  # image_labels.min_pixels 1
    novel_samples, base_samples = split_by_rule(train, novel, min_pixels)

    def images_per_class(ids):
        return {name: sum(k in present[i] for i in ids) for k, name in enumerate(CAMVID_CLASSES)}

    # The figures quoted in params.yaml's camvid comment, reproduced from the masks here:
    per_class = images_per_class(list(train))
    assert len(train) == 367 and min_pixels == 500
    assert {k: per_class[k] for k in ("pole", "car", "sign_symbol", "pedestrian", "bicyclist", "fence")} == {
        "pole": 366, "car": 360, "sign_symbol": 351, "pedestrian": 317, "bicyclist": 201, "fence": 173}
    assert (len(novel_samples), len(base_samples)) == (238, 129)
    in_novel = images_per_class(novel_samples)
    assert (in_novel["pedestrian"], in_novel["bicyclist"]) == (235, 162)
    ignored = int(sum(train[i][k] for i in base_samples for k in novel))
    all_novel = int(sum(train[i][k] for i in train for k in novel))
    assert round(100 * ignored / all_novel, 1) == 4.0
    assert len(split_by_rule(train, novel, 1)[1]) == 43  # PASCAL-5i rule: 43 base samples
    assert len(split_by_rule(train, novel, 300)[1]) == 102 and len(split_by_rule(train, novel, 1000)[1]) == 201

    # The pipeline's fold agrees with all of it.
    monkeypatch.chdir(ROOT)  # datasets.camvid.root is relative to the repository
    labels, fold = run_labels_and_fold(ROOT / "params.yaml", tmp_path, dataset="camvid")
    assert labels["labels"] == {**present, **{i: [k for k in range(11) if c[k] >= 1]
                                             for i, c in camvid_pixel_counts("val").items()}}
    assert fold["novel_classes"] == novel and fold["novel_min_pixels"] == min_pixels
    assert fold["novel_samples"] == novel_samples and fold["base_samples"] == base_samples
    counts = fold["counts"]
    assert (counts["train_images"], counts["novel_samples"], counts["base_samples"]) == (367, 238, 129)
    assert counts["images_per_class"] == per_class
    assert counts["images_per_class_in_novel_samples"] == in_novel
    assert counts["images_per_class_in_base_samples"] == images_per_class(base_samples)
    assert counts["novel_pixels_ignored_in_base_samples"] == ignored
