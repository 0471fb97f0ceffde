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

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.data.label_png import write_label_png
from pipeline.methods.lnet import train_lnet as train_lnet_stage
from pipeline.methods.retab import train_affinity as train_affinity_stage, train_boundary as train_boundary_stage
from pipeline.stages import train_seg as train_seg_stage
from conftest import ROOT, tiny_dataset_entry

CLASSES = ["background", "cat", "dog", "bus"]
NOVEL = 3
SIZE = 32
CAT = (slice(4, 12), slice(4, 12))
BUS = (slice(20, 24), slice(20, 26))
IGNORE = 255


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


def write_voc(root: Path, masks: dict[str, np.ndarray]) -> Path:
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id, mask in masks.items():
        image = rng.integers(40, 80, (SIZE, SIZE, 3)).astype(np.uint8)
        image[(mask > 0) & (mask != IGNORE)] += 120
        Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        write_label_png(root / "SegmentationClass" / f"{image_id}.png", mask)
    (root / "ImageSets/Segmentation/train.txt").write_text("b0\nn0\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("n0\n")
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("novel_masking")
    masks = {"b0": b0_mask(), "n0": n0_mask()}
    root = write_voc(tmp / "VOC", masks)
    outline_root = write_voc(tmp / "VOC_outline", {"b0": b0_outline_mask(), "n0": n0_mask()})

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw.update(dataset="tiny", device="cpu", overrides={})
    raw["datasets"] = {
        "tiny": tiny_dataset_entry(root, CLASSES, [["bus"]], boundary_source="transitions", novel_min_pixels=25),
        "tiny_outline": tiny_dataset_entry(outline_root, CLASSES, [["bus"]], boundary_source="outline",
                                           novel_min_pixels=101)}
    raw["backbone"].update({"pretrained": False, "output_stride": 16})
    schedule = {"crop": SIZE, "scale_range": [1.0, 1.0], "batch_size": 1, "epochs": 1}
    for name in ("affinity", "lnet", "boundary", "segmentation"):
        raw[name]["train"].update(schedule)
    raw["affinity"].update({"radius": 3, "feat_dim": 28})
    raw["boundary"].update({"label_width": 1, "tau": 0.5, "erosion": 0})
    raw["lnet"]["object_classes"] = None
    raw["segmentation"]["feature_cache"] = False
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))

    counts = {i: [int((m == c).sum()) for c in range(len(CLASSES))] for i, m in masks.items()}
    (tmp / "labels.json").write_text(json.dumps({
        "dataset": "tiny", "classes": CLASSES, "background": "background", "min_pixels": 1,
        "splits": {"train": ["b0", "n0"], "val": ["n0"]},
        "labels": {"b0": [1, 3], "n0": [3]}, "pixel_counts": counts}))
    # b0 has only 24 bus pixels (< novel_min_pixels 25): a base sample holding novel pixels
    (tmp / "fold0.json").write_text(json.dumps({
        "fold": 0, "dataset": "tiny", "novel_classes": [NOVEL], "base_classes": [0, 1, 2],
        "novel_min_pixels": 25, "novel_samples": ["n0"], "base_samples": ["b0"], "counts": {}}))
    # what the novel sample n0 gets instead of ground truth: CAM labels, boundary map, pseudo label
    for name in ("confident", "boundary", "pseudo"):
        (tmp / name).mkdir()
    write_label_png(tmp / "confident/n0.png", n0_mask())
    write_label_png(tmp / "pseudo/n0.png", n0_mask())
    write_label_png(tmp / "boundary/n0.png", np.zeros((SIZE, SIZE), np.uint8))
    return {"tmp": tmp, "params": str(params), "labels": str(tmp / "labels.json"),
            "fold": str(tmp / "fold0.json"), "confident": str(tmp / "confident"),
            "boundary": str(tmp / "boundary"), "pseudo": str(tmp / "pseudo")}


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
    fold = json.loads(Path(tiny["fold"]).read_text())
    fold["dataset"] = dataset
    fold_path = tiny["tmp"] / f"fold0_{dataset}.json"
    fold_path.write_text(json.dumps(fold))
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
