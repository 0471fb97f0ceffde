"""VOCDataset on tiny VOC-layout data made here, on real CamVid, and every bad-input path."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import REPO_ROOT
from pipeline.data.labels import class_pixel_counts, derive_image_labels, present_classes
from pipeline.data.voc import VOCDataset, parse_split_line
from pipeline.errors import PipelineError

from pipeline.stages import image_labels
from conftest import (CAMVID_CLASSES, CAMVID_ROOT, TINY_CLASSES, VOC_CLASSES, box_mask, needs_camvid, run_fails,
                      save_mask, tiny_dataset_entry, tiny_params, write_tiny_voc, write_yaml)

SHAPE = (12, 16)


def voc_cfg(root: Path, **changes) -> dict:
    return {"name": "tiny", **tiny_dataset_entry(root, VOC_CLASSES, "pascal5i"), **changes}


@pytest.fixture
def tiny(tmp_path) -> Path:
    """12x16, VOC classes: train a (aeroplane square, void right column), b (car); val c (person)."""
    return write_tiny_voc(tmp_path / "VOC", {"a": [(1, 2, 6, 2, 6), (255, 0, 12, 15, 16)], "b": [(7, 0, 3, 0, 3)]},
                          {"c": [(15, 4, 8, 4, 12)]}, classes=VOC_CLASSES, size=SHAPE).root


def test_attributes_and_loading(tiny):
    ds = VOCDataset(voc_cfg(tiny), "train")
    assert ds.ids == ["a", "b"] and len(ds) == 2
    assert ds.class_names == VOC_CLASSES and ds.num_classes == 21
    assert ds.background_index == 0 and ds.ignore_index == 255
    assert ds.foreground_indices == list(range(1, 21))
    assert ds.image_path("a") == tiny / "JPEGImages/a.jpg"
    assert ds.mask_path("a") == tiny / "SegmentationClass/a.png"
    image, mask = ds.load_sample("a")
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8
    assert mask.shape == (12, 16) and mask.dtype == np.uint8
    # Palette masks: indices are read, never the palette colours (class 1 is (128, 0, 0)).
    with Image.open(ds.mask_path("a")) as im:
        assert im.mode == "P" and im.getpalette()[3:6] == [128, 0, 0]
    expected = np.zeros(SHAPE, np.uint8)
    expected[2:6, 2:6], expected[:, 15] = 1, 255
    assert np.array_equal(mask, expected)


def test_grey_l_mode_masks_and_no_background(tmp_path):
    boxes = [(10, 0, 2, 0, 7)]
    data = write_tiny_voc(tmp_path / "cv", {"x": boxes}, {"y": boxes}, classes=CAMVID_CLASSES, background=None,
                          size=(5, 7), fill=3, mask_mode="L")
    with Image.open(data.root / "SegmentationClass/y.png") as im:
        assert im.mode == "L"
    ds = VOCDataset(voc_cfg(data.root, classes=CAMVID_CLASSES, background=None), "val")
    assert ds.background_index is None and ds.foreground_indices == list(range(11))
    expected = np.full((5, 7), 3, np.uint8)
    expected[0:2] = 10
    assert np.array_equal(ds.load_mask("y"), expected)


def test_split_line_forms():
    assert parse_split_line("2007_000032\n") == "2007_000032"
    assert parse_split_line("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png") == "2007_000032"
    assert parse_split_line("   \n") is None


def test_deeplab_style_list_and_duplicates(tiny):
    (tiny / "ImageSets/Segmentation/train.txt").write_text(
        "/JPEGImages/b.jpg /SegmentationClass/b.png\n\na\nb\n")
    assert VOCDataset(voc_cfg(tiny), "train").ids == ["b", "a"]


def test_image_labels_from_masks(tiny):
    ds = VOCDataset(voc_cfg(tiny), "train")
    assert derive_image_labels(ds, 1) == {"a": [1], "b": [7]}
    assert derive_image_labels(ds, 10) == {"a": [1], "b": []}  # b has 9 px of class 7
    assert class_pixel_counts(np.array([[0, 1, 255], [1, 1, 30]], np.uint8), 3).tolist() == [1, 3, 0]
    assert present_classes([50, 3, 0, 1], 2, background_index=0) == [1]
    assert present_classes([50, 3, 0, 1], 1, background_index=None) == [0, 1, 3]


def expect_error(match_where: Path | str, fn, *args):
    with pytest.raises(PipelineError) as info:
        fn(*args)
    assert str(match_where) in info.value.where, (info.value.where, match_where)
    return info.value


def test_missing_root(tmp_path):
    err = expect_error(tmp_path / "nowhere", VOCDataset, voc_cfg(tmp_path / "nowhere"), "train")
    assert "datasets.tiny.root" in err.problem and "VOC 2012 + SBD" not in err.problem
    err = expect_error(tmp_path / "nowhere", VOCDataset, voc_cfg(tmp_path / "nowhere", name="voc"), "train")
    assert "datasets.voc.root" in err.problem and "SegmentationClassAug/" in err.problem


def test_missing_split_list_and_unknown_split(tiny):
    (tiny / "ImageSets/Segmentation/val.txt").unlink()
    expect_error(tiny / "ImageSets/Segmentation/val.txt", VOCDataset, voc_cfg(tiny), "val")
    expect_error("datasets.tiny.splits", VOCDataset, voc_cfg(tiny), "test")


def test_empty_split_list(tiny):
    (tiny / "ImageSets/Segmentation/val.txt").write_text("\n\n")
    assert "empty" in expect_error(tiny / "ImageSets/Segmentation/val.txt", VOCDataset, voc_cfg(tiny), "val").problem


def test_listed_image_or_mask_missing(tiny):
    (tiny / "JPEGImages/b.jpg").unlink()
    expect_error(tiny / "JPEGImages/b.jpg", VOCDataset, voc_cfg(tiny), "train")
    (tiny / "SegmentationClass/c.png").unlink()
    expect_error(tiny / "SegmentationClass/c.png", VOCDataset, voc_cfg(tiny), "val")


def test_size_mismatch(tiny):
    save_mask(tiny / "SegmentationClass/a.png", np.zeros((12, 15), np.uint8))
    ds = VOCDataset(voc_cfg(tiny), "train")  # lazy: construction only checks existence
    err = expect_error(tiny / "SegmentationClass/a.png", ds.load_mask, "a")
    assert "15x12" in err.problem and "16x12" in err.problem


def test_label_outside_class_list(tiny):
    save_mask(tiny / "SegmentationClass/b.png", box_mask([(21, 0, 1, 0, 1), (40, 1, 2, 1, 2)], SHAPE))
    ds = VOCDataset(voc_cfg(tiny), "train")
    problem = expect_error(tiny / "SegmentationClass/b.png", ds.load_mask, "b").problem
    assert "[21, 40]" in problem and "datasets.tiny.classes" in problem


def test_class_list_shorter_than_the_masks_stops_image_labels(tmp_path, capsys):
    """The masks hold ids 0..3 (background, cat, dog, bus); params list only 3 classes: the
    image_labels stage, which reads every mask, stops with one line naming the mask and the key."""
    data = write_tiny_voc(tmp_path / "tiny", {"t0": [(1, 2, 8, 2, 8)], "t1": [(3, 2, 8, 2, 8)]}, ["t0"])
    params = write_yaml(tmp_path / "params.yaml",
                        tiny_params(data, [["cat"]], {"datasets.tiny.classes": TINY_CLASSES[:3]}))
    line = run_fails(image_labels.main, ["--params", params, "--out", tmp_path / "labels.json"], capsys,
                     str(data.root / "SegmentationClass/t1.png"), "datasets.tiny.classes", "[3]")
    assert line.startswith(f"error: {data.root / 'SegmentationClass/t1.png'}: ")
    assert not (tmp_path / "labels.json").exists()


def test_colour_mask_rejected(tiny):
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tiny / "SegmentationClass/a.png")
    ds = VOCDataset(voc_cfg(tiny), "train")
    assert "mode" in expect_error(tiny / "SegmentationClass/a.png", ds.load_mask, "a").problem


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_jpeg(tiny, damage):
    path = tiny / "JPEGImages/a.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a jpeg at all")
    ds = VOCDataset(voc_cfg(tiny), "train")
    expect_error(path, ds.load_image, "a")
    if damage == "garbage":  # the mask check reads the image header for its size
        expect_error(path, ds.load_mask, "a")


def test_bad_config_keys(tiny):
    expect_error("datasets.tiny.background", VOCDataset, voc_cfg(tiny, background="void"), "train")
    expect_error("datasets.tiny.ignore_index", VOCDataset, voc_cfg(tiny, ignore_index=3), "train")


# --- real data -------------------------------------------------------------------------

def camvid_cfg() -> dict:
    import yaml

    cfg = copy.deepcopy(yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["datasets"]["camvid"])
    cfg.update(name="camvid", root=str(CAMVID_ROOT))
    return cfg


@needs_camvid
def test_real_camvid_reads():
    train = VOCDataset(camvid_cfg(), "train")
    val = VOCDataset(camvid_cfg(), "val")
    assert (len(train), len(val)) == (367, 101)
    assert train.background_index is None and train.num_classes == 11
    for image_id in train.ids[:3]:
        image, mask = train.load_sample(image_id)
        assert image.shape == (360, 480, 3) and mask.shape == (360, 480)
        values = set(np.unique(mask).tolist())
        assert values <= set(range(11)) | {255}
        assert len(values - {255}) >= 5  # street scenes: sky, building, road, ...
    first = train.ids[0]
    mask = train.load_mask(first)
    expected = sorted(int(v) for v in np.unique(mask) if v != 255)
    subset = copy.copy(train)
    subset.ids = train.ids[:1]
    assert derive_image_labels(subset, 1) == {first: expected}
