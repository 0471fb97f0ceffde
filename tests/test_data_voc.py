"""VOCDataset on tiny VOC-layout data made here, on real CamVid, and every bad-input path."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.data.labels import class_pixel_counts, derive_image_labels, present_classes
from pipeline.data.voc import VOCDataset, parse_split_line
from pipeline.errors import PipelineError

REPO_ROOT = Path(__file__).resolve().parent.parent
CAMVID_ROOT = (REPO_ROOT / "../shared/data/camvid").resolve()
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]
CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
                  "pedestrian", "bicyclist"]


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), 256 RGB triples flattened."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def save_mask(path: Path, mask: np.ndarray, mode: str = "P") -> None:
    """Mask PNG as VOC stores it ('P': indices + colour palette) or plain grey ('L')."""
    height, width = mask.shape
    im = Image.frombytes(mode, (width, height), np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    if mode == "P":
        im.putpalette(voc_palette())
    im.save(path)


def write_voc(root: Path, splits: dict[str, dict[str, np.ndarray]], mask_mode: str = "P") -> Path:
    """VOC layout under ``root``: JPEGImages, SegmentationClass, ImageSets/Segmentation."""
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/Segmentation").mkdir(parents=True, exist_ok=True)
    for split, samples in splits.items():
        for image_id, mask in samples.items():
            image = rng.integers(0, 256, size=mask.shape + (3,), dtype=np.uint8)
            Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
            save_mask(root / "SegmentationClass" / f"{image_id}.png", mask, mask_mode)
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(samples) + "\n")
    return root


def voc_cfg(root: Path, **changes) -> dict:
    cfg = {"name": "tiny", "root": str(root), "image_dir": "JPEGImages", "mask_dir": "SegmentationClass",
           "splits": {"train": "ImageSets/Segmentation/train.txt", "val": "ImageSets/Segmentation/val.txt"},
           "classes": list(VOC_CLASSES), "background": "background", "ignore_index": 255,
           "boundary_source": "outline", "novel_classes": "pascal5i"}
    cfg.update(changes)
    return cfg


def block_mask(shape=(12, 16), fill=0, blocks=()) -> np.ndarray:
    """Mask of ``fill`` with rectangular blocks ((y0, y1, x0, x1, class), ...)."""
    mask = np.full(shape, fill, dtype=np.uint8)
    for y0, y1, x0, x1, c in blocks:
        mask[y0:y1, x0:x1] = c
    return mask


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write_voc(tmp_path / "VOC", {
        "train": {"a": block_mask(blocks=[(2, 6, 2, 6, 1), (0, 12, 15, 16, 255)]),
                  "b": block_mask(blocks=[(0, 3, 0, 3, 7)])},
        "val": {"c": block_mask(blocks=[(4, 8, 4, 12, 15)])},
    })


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
    assert np.array_equal(mask, block_mask(blocks=[(2, 6, 2, 6, 1), (0, 12, 15, 16, 255)]))


def test_grey_l_mode_masks_and_no_background(tmp_path):
    mask = block_mask(shape=(5, 7), fill=3, blocks=[(0, 2, 0, 7, 10)])
    root = write_voc(tmp_path / "cv", {"train": {"x": mask}, "val": {"y": mask}}, mask_mode="L")
    ds = VOCDataset(voc_cfg(root, classes=CAMVID_CLASSES, background=None), "val")
    assert ds.background_index is None and ds.foreground_indices == list(range(11))
    assert np.array_equal(ds.load_mask("y"), mask)


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
    assert "root" in err.problem


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
    save_mask(tiny / "SegmentationClass/b.png", block_mask(blocks=[(0, 1, 0, 1, 21), (1, 2, 1, 2, 40)]))
    ds = VOCDataset(voc_cfg(tiny), "train")
    assert "[21, 40]" in expect_error(tiny / "SegmentationClass/b.png", ds.load_mask, "b").problem


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

needs_camvid = pytest.mark.skipif(not CAMVID_ROOT.is_dir(), reason="../shared/data/camvid not present")


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
