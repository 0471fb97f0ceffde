"""Guard: a base sample's novel-class pixels never supervise a network (weak-shot protocol).

Each training stage runs on a tiny dataset whose only base sample ``b0`` also holds a few
pixels of the novel class (as CamVid's base samples do under ``novel_min_pixels`` > 1).
The stage's ``train_and_save`` is replaced by a recorder that draws one epoch from the
stage's own ``make_batches`` (so the stage's own loader and masking run) and keeps the
targets; nothing is trained. Augmentation is reduced to the identity up to the random
horizontal flip (crop = image size, scale 1), so each target is compared with a
hand-written map or its mirror image.

b0 (32 x 32): background 0; cat (1) square rows 4-11, cols 4-11; bus (3, novel) block
rows 20-23, cols 20-25 (24 px). n0: a bus square (the novel sample). For the boundary
net's ``outline`` source (VOC's void band) a second dataset has b0 with 255 outline bands:
1 px around the cat, 3 px around a 10 x 10 bus (rows/cols 18-27).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.data.label_png import write_label_png
from pipeline.methods.lnet import train_lnet as train_lnet_stage
from pipeline.methods.retab import train_affinity as train_affinity_stage, train_boundary as train_boundary_stage
from pipeline.stages import train_seg as train_seg_stage
from conftest import IGNORE, tiny_params, write_tiny_voc, write_yaml

NOVEL = 3
SIZE = 32
CAT = (slice(4, 12), slice(4, 12))
BUS = (slice(20, 24), slice(20, 26))
# The same layouts as boxes for the dataset builder (checked against the hand maps below).
N0_BOXES = [(NOVEL, 8, 20, 8, 20)]
B0_BOXES = [(1, 4, 12, 4, 12), (NOVEL, 20, 24, 20, 26)]
B0_OUTLINE_BOXES = [(IGNORE, 3, 13, 3, 13), (IGNORE, 15, 31, 15, 31), (1, 4, 12, 4, 12), (NOVEL, 18, 28, 18, 28)]
# novel_min_pixels per dataset: b0's bus (24 px; 100 px with the outline) stays a base sample
MIN_PIXELS = {"tiny": 25, "tiny_outline": 101}


def b0_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[CAT] = 1
    mask[BUS] = NOVEL
    return mask


def n0_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[8:20, 8:20] = NOVEL
    return mask


def b0_outline_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[3:13, 3:13] = IGNORE  # 1-px band around the cat
    mask[CAT] = 1
    mask[15:31, 15:31] = IGNORE  # 3-px band around the bus
    mask[18:28, 18:28] = NOVEL
    return mask


def b0_masked() -> np.ndarray:
    """What may supervise from b0's ground truth: the mask with its bus pixels ignored."""
    mask = b0_mask()
    mask[BUS] = IGNORE
    return mask


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("novel_masking")
    data = {"tiny": write_tiny_voc(tmp / "VOC", {"b0": B0_BOXES, "n0": N0_BOXES}, ["n0"]),
            "tiny_outline": write_tiny_voc(tmp / "VOC_outline", {"b0": B0_OUTLINE_BOXES, "n0": N0_BOXES}, ["n0"])}
    for name, b0 in (("tiny", b0_mask()), ("tiny_outline", b0_outline_mask())):
        assert np.array_equal(data[name].masks["b0"], b0) and np.array_equal(data[name].masks["n0"], n0_mask())
        assert data[name].labels() == {"b0": [1, NOVEL], "n0": [NOVEL]}
        # b0 holds fewer than novel_min_pixels bus pixels: a base sample holding novel pixels
        assert data[name].fold([NOVEL], novel_min_pixels=MIN_PIXELS[name])["base_samples"] == ["b0"]

    schedule = {"crop": SIZE, "scale_range": [1.0, 1.0], "batch_size": 1, "epochs": 1}
    changes = {"device": "cpu", "overrides": {}, "backbone.pretrained": False, "backbone.output_stride": 16,
               **{f"{name}.train.{key}": value for name in ("affinity", "lnet", "boundary", "segmentation")
                  for key, value in schedule.items()},
               "affinity.radius": 3, "affinity.feat_dim": 28,
               "boundary.label_width": 1, "boundary.tau": 0.5, "boundary.erosion": 0,
               "lnet.object_classes": None, "segmentation.feature_cache": False,
               "datasets.tiny_outline": data["tiny_outline"].entry([["bus"]], boundary_source="outline",
                                                                   novel_min_pixels=MIN_PIXELS["tiny_outline"])}
    params = write_yaml(tmp / "params.yaml", tiny_params(data["tiny"], [["bus"]], changes,
                                                         boundary_source="transitions",
                                                         novel_min_pixels=MIN_PIXELS["tiny"]))
    labels = data["tiny"].write_labels(tmp / "labels.json")
    fold = data["tiny"].write_fold(tmp / "fold0.json", [NOVEL], novel_min_pixels=MIN_PIXELS["tiny"])
    # what the novel sample n0 gets instead of ground truth: CAM labels, boundary map, pseudo label
    for name in ("confident", "boundary", "pseudo"):
        (tmp / name).mkdir()
    write_label_png(tmp / "confident/n0.png", n0_mask())
    write_label_png(tmp / "pseudo/n0.png", n0_mask())
    write_label_png(tmp / "boundary/n0.png", np.zeros((SIZE, SIZE), np.uint8))
    return {"tmp": tmp, "data": data, "params": str(params), "labels": str(labels), "fold": str(fold),
            "confident": str(tmp / "confident"), "boundary": str(tmp / "boundary"), "pseudo": str(tmp / "pseudo")}


def record_batches(monkeypatch, stage) -> list[dict]:
    """Replace the stage's train_and_save by one that only draws an epoch of batches."""
    import pipeline.training

    batches: list[dict] = []

    def draw_one_epoch(model, make_batches, step_fn, *args, **kwargs):
        batches.extend(make_batches(0, np.random.default_rng(0)))
        return [{"loss": 0.0}]

    monkeypatch.setattr(pipeline.training, "train_and_save", draw_one_epoch)  # imported inside main()
    monkeypatch.setattr(stage, "train_and_save", draw_one_epoch, raising=False)  # imported at module level
    return batches


def by_id(batches: list[dict], target: int = 0) -> dict[str, np.ndarray]:
    out = {}
    for batch in batches:
        for k, image_id in enumerate(batch["ids"]):
            out[image_id] = batch["targets"][target][k].numpy()
    return out


def assert_map(got: np.ndarray, expected: np.ndarray) -> None:
    """``got`` is ``expected`` or its mirror image (the random flip)."""
    matches = [np.array_equal(got, e) for e in (expected, expected[:, ::-1])]
    assert any(matches), (f"target differs from the hand map: values {np.unique(got).tolist()}, "
                          f"{int((got == IGNORE).sum())} ignore pixels (expected {int((expected == IGNORE).sum())})")


def out_args(tmp: Path, name: str) -> list[str]:
    return ["--out", str(tmp / name / "model.pt"), "--history", str(tmp / name / "history.tsv"), "--threads", "1"]


@pytest.mark.parametrize("variant", ["gt", "retab"])
def test_train_affinity_base_sample_novel_pixels_are_ignore(tiny, monkeypatch, variant):
    batches = record_batches(monkeypatch, train_affinity_stage)
    argv = ["--params", tiny["params"], "--variant", variant, "--fold-file", tiny["fold"],
            "--confident", tiny["confident"], "--labels", tiny["labels"], *out_args(tiny["tmp"], f"aff_{variant}")]
    if variant == "retab":
        argv += ["--boundary", tiny["boundary"]]
    train_affinity_stage.main(argv)
    labels = by_id(batches)
    assert sorted(labels) == ["b0", "n0"]
    assert_map(labels["b0"], b0_masked())  # pair labels come from this map: bus pairs are ignore
    assert_map(labels["n0"], n0_mask())  # a novel sample's CAM labels are used as they are


def test_train_lnet_base_sample_novel_pixels_are_ignore(tiny, monkeypatch):
    batches = record_batches(monkeypatch, train_lnet_stage)
    train_lnet_stage.main(["--params", tiny["params"], "--fold-file", tiny["fold"], *out_args(tiny["tmp"], "lnet")])
    targets = by_id(batches)
    assert sorted(targets) == ["b0"]  # base samples only
    expected = np.zeros((SIZE, SIZE), np.uint8)  # 0 = not object
    expected[CAT] = 1  # object
    expected[BUS] = IGNORE  # a novel object must not teach "object"
    assert_map(targets["b0"], expected)


def boundary_target_of_b0(tiny, monkeypatch, dataset: str) -> np.ndarray:
    """The L_B target train_boundary draws for its only base sample b0."""
    batches = record_batches(monkeypatch, train_boundary_stage)
    fold_path = tiny["data"][dataset].write_fold(tiny["tmp"] / f"fold0_{dataset}.json", [NOVEL], dataset=dataset,
                                                 novel_min_pixels=MIN_PIXELS[dataset])
    train_boundary_stage.main(["--params", tiny["params"], "--dataset", dataset, "--fold-file", str(fold_path),
                               *out_args(tiny["tmp"], f"boundary_{dataset}")])
    assert len(batches) == 1  # one base sample, batch size 1
    return batches[0]["target"][0].numpy()


def test_train_boundary_base_sample_novel_pixels_and_margin_are_ignore(tiny, monkeypatch):
    target = boundary_target_of_b0(tiny, monkeypatch, "tiny")
    # L_B target, label_width 1 (transitions): 2 on both sides of each cat/background
    # change (4-neighbours: the square's corners outside it are not), 1 cat interior,
    # 0 background, 255 the bus block and its 1-px margin (rows 19-24, cols 19-26).
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[3:13, 4:12] = 2
    expected[4:12, 3:13] = 2
    expected[5:11, 5:11] = 1
    expected[19:25, 19:27] = IGNORE
    assert_map(target, expected)


def test_train_seg_mixed_base_sample_novel_pixels_are_ignore(tiny, monkeypatch):
    batches = record_batches(monkeypatch, train_seg_stage)
    train_seg_stage.main(["--params", tiny["params"], "--supervision", "mixed", "--pseudo", tiny["pseudo"],
                          "--fold-file", tiny["fold"], "--labels", tiny["labels"], *out_args(tiny["tmp"], "seg")])
    targets = by_id(batches)
    assert sorted(targets) == ["b0", "n0"]
    assert_map(targets["b0"], b0_masked())
    assert_map(targets["n0"], n0_mask())  # the novel sample's pseudo label


def test_train_boundary_outline_band_of_a_novel_object_is_ignore(tiny, monkeypatch):
    """VOC-style outline source: with the bus masked, the bus and its 3-px band form one
    16 x 16 void block, too thick to be an outline (ignore); only the cat's 1-px band is
    boundary. Unmasked, the bus's band would be a thin band, i.e. boundary 2 px beyond
    the 1-px margin: the novel object's outline would supervise the boundary net."""
    target = boundary_target_of_b0(tiny, monkeypatch, "tiny_outline")
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[3:13, 3:13] = 2  # the cat's band
    expected[CAT] = 1
    expected[15:31, 15:31] = IGNORE
    assert_map(target, expected)
