"""The embedded default dataset: layout, determinism, scene content, fold balance, errors."""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.config import load_params
from pipeline.data import embedded as E
from pipeline.errors import PipelineError

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(seed=3, size=64, n_train=8, n_val=3, min_objects=2, max_objects=4, outline_width=1,
             single_group_prob=0.5, jpeg_quality=92)
NAMES = ["background"] + [spec.name for spec in E.CLASS_SPECS]


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory):
    """The shipped default (params.yaml as is), generated once by the stage itself."""
    from pipeline.stages.make_embedded import main

    out = tmp_path_factory.mktemp("emb") / "embedded"
    start = time.perf_counter()
    main(["--params", str(ROOT / "params.yaml"), "--out", str(out)])
    seconds = time.perf_counter() - start
    params = load_params(ROOT / "params.yaml", "embedded")
    return out, params, seconds


def read_split(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def load_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode in ("L", "P")
        return np.asarray(im)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- pure functions

def test_outline_band_hand_computed():
    label = np.zeros((5, 5), dtype=np.uint8)
    label[1:3, 1:3] = 7
    band = E.outline_band(label, 1)
    # size-2 windows: every pixel whose 2x2 neighbourhood (towards lower indices, scipy's
    # origin for even sizes) sees both labels; exactly one pixel of each touching pair.
    expected = np.zeros((5, 5), dtype=bool)
    expected[1:4, 1:4] = True
    expected[2, 2] = False
    assert np.array_equal(band, expected)
    assert not E.outline_band(label, 0).any()
    assert not E.outline_band(np.full((4, 4), 3, np.uint8), 2).any()   # image border: no band


def test_band_separates_every_pair_of_different_labels():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, (20, 20)).astype(np.uint8)
    label = np.kron(label, np.ones((3, 3), np.uint8))
    mask = label.copy()
    mask[E.outline_band(label, 1)] = 255
    pairs = [(mask[:, :-1], mask[:, 1:]), (mask[:-1], mask[1:]),          # 4-neighbours
             (mask[:-1, :-1], mask[1:, 1:]), (mask[:-1, 1:], mask[1:, :-1])]  # diagonals
    for a, b in pairs:
        assert not ((a != b) & (a != 255) & (b != 255)).any()


def test_shapes_have_the_expected_unit_areas():
    grid = (np.arange(400) + 0.5) / 200 - 1.0
    u, v = np.meshgrid(grid, grid)
    pixel = (2 / 400) ** 2
    disc = E.shape_inside("disc", u, v, {}).sum() * pixel
    square = E.shape_inside("square", u, v, {"half_side": 0.5}).sum() * pixel
    hexagon = E.shape_inside("hexagon", u, v, {}).sum() * pixel
    ring = E.shape_inside("ring", u, v, {"inner": 0.5}).sum() * pixel
    assert disc == pytest.approx(np.pi, rel=0.01)
    assert square == pytest.approx(1.0, rel=0.01)
    assert hexagon == pytest.approx(1.5 * np.sqrt(3), rel=0.01)   # circumradius 1
    assert ring == pytest.approx(np.pi * 0.75, rel=0.01)


def test_scene_classes_are_distinct_and_single_group_when_asked():
    rng = np.random.default_rng(1)
    for _ in range(200):
        k = int(rng.integers(2, 5))
        classes = E.sample_scene_classes(rng, k, 1.0)
        assert len(set(classes)) == len(classes) == k
        assert len({(c - 1) // E.FOLD_SIZE for c in classes}) == 1
        mixed = E.sample_scene_classes(rng, 7, 0.0)
        assert len(set(mixed)) == 7 and all(1 <= c <= 20 for c in mixed)


def test_render_sample_types_values_and_occlusion():
    cfg = dict(SMALL, size=96)
    occluded = 0
    for index in range(12):
        scene = E.render_scene(E.sample_rng(0, "train", index), cfg)
        assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
        assert scene.mask.shape == (96, 96) and scene.mask.dtype == np.uint8
        assert set(np.unique(scene.mask)) <= set(range(21)) | {255}
        assert len(set(scene.class_ids)) == len(scene.class_ids) >= 1
        # Every painted object stays visible (at least MIN_VISIBLE_FRACTION of its pixels).
        for vis, full in zip(scene.visible_pixels, scene.full_pixels):
            assert vis >= E.MIN_VISIBLE_FRACTION * full
        occluded += scene.occluded
    assert occluded >= 2
    image, mask = E.render_sample(E.sample_rng(0, "train", 0), cfg)
    assert image.shape == (96, 96, 3)
    assert np.array_equal(mask, E.render_scene(E.sample_rng(0, "train", 0), cfg).mask)


def test_validate_config_names_the_key():
    with pytest.raises(PipelineError, match="embedded_data.min_objects"):
        E.validate_config(dict(SMALL, min_objects=5, max_objects=3), NAMES)
    with pytest.raises(PipelineError, match="embedded_data.max_objects"):
        E.validate_config(dict(SMALL, max_objects=21), NAMES)
    with pytest.raises(PipelineError, match="datasets.embedded.classes"):
        E.validate_config(SMALL, NAMES[:5])


# ---------------------------------------------------------------- determinism

def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    E.generate_dataset(tmp_path / "a", SMALL, NAMES)
    first = tree_bytes(tmp_path / "a")
    E.generate_dataset(tmp_path / "b", SMALL, NAMES)
    second = tree_bytes(tmp_path / "b")
    assert first == second
    E.generate_dataset(tmp_path / "c", dict(SMALL, seed=4), NAMES)
    other = tree_bytes(tmp_path / "c")
    assert first.keys() == other.keys()
    jpgs = [k for k in first if k.endswith(".jpg")]
    assert all(first[k] != other[k] for k in jpgs)
    # Each image has its own stream: a longer train split keeps the first images.
    E.generate_dataset(tmp_path / "d", dict(SMALL, n_train=10), NAMES)
    longer = tree_bytes(tmp_path / "d")
    assert all(longer[k] == first[k] for k in jpgs)


# ---------------------------------------------------------------- the shipped default

def test_default_layout_is_voc_and_readable(default_dataset):
    root, params, _ = default_dataset
    cfg = params["embedded_data"]
    train, val = read_split(root, "train"), read_split(root, "val")
    assert len(train) == cfg["n_train"] and len(val) == cfg["n_val"] and not set(train) & set(val)
    for image_id in train[:20] + val[:5]:
        with Image.open(root / "JPEGImages" / f"{image_id}.jpg") as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (cfg["size"], cfg["size"])
        mask = load_mask(root / "SegmentationClass" / f"{image_id}.png")
        assert mask.shape == (cfg["size"], cfg["size"])
        assert set(np.unique(mask)) <= set(range(21)) | {255}
    # The shared reader takes the dataset as it takes VOC.
    from pipeline.data.voc import VOCDataset

    data_cfg = dict(params["data"], root=str(root))
    ds = VOCDataset(data_cfg, "train")
    assert len(ds) == cfg["n_train"] and ds.num_classes == 21 and ds.background_index == 0
    assert ds.load_image(ds.ids[0]).shape == (cfg["size"], cfg["size"], 3)
    assert ds.load_mask(ds.ids[0]).dtype == np.uint8
    readme = (root / "README.md").read_text()
    assert all(name in readme for name in params["data"]["classes"])


def test_default_masks_have_outline_bands_and_touching_objects(default_dataset):
    root, params, _ = default_dataset
    with_band = touching = 0
    ids = read_split(root, "train")[:60]
    for image_id in ids:
        mask = load_mask(root / "SegmentationClass" / f"{image_id}.png")
        objects = (mask > 0) & (mask < 255)
        if not objects.any():
            continue
        band = mask == 255
        with_band += band.any()
        # No two different labels meet without the band between them.
        assert not ((mask[:, 1:] != mask[:, :-1]) & ~band[:, 1:] & ~band[:, :-1]).any()
        assert not ((mask[1:] != mask[:-1]) & ~band[1:] & ~band[:-1]).any()
        # A band pixel with two different object classes next to it: touching objects.
        padded = np.pad(mask, 1, constant_values=255)
        neigh = np.stack([padded[1 + dy:1 + dy + mask.shape[0], 1 + dx:1 + dx + mask.shape[1]]
                          for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))])
        obj = np.where((neigh > 0) & (neigh < 255), neigh, 0)
        distinct = (obj.max(0) != np.where(obj > 0, obj, 255).min(0)) & (obj.max(0) > 0)
        touching += bool((band & distinct).any())
    assert with_band == len(ids)
    assert touching >= 5


def test_default_stats_match_files_and_meet_targets(default_dataset):
    root, params, seconds = default_dataset
    stats = json.loads((root / "stats.json").read_text())
    names = params["data"]["classes"]
    assert stats["classes"] == names
    for split in ("train", "val"):
        pixels = np.zeros(256, dtype=np.int64)
        images = np.zeros(21, dtype=np.int64)
        present_by_id = {}
        for image_id in read_split(root, split):
            counts = np.bincount(load_mask(root / "SegmentationClass" / f"{image_id}.png").ravel(),
                                 minlength=256)
            pixels += counts
            images += counts[:21] > 0
            present_by_id[image_id] = {c for c in range(1, 21) if counts[c]}
        s = stats["splits"][split]
        assert [s["class_pixel_counts"][n] for n in names] == pixels[:21].tolist()
        assert [s["class_image_counts"][n] for n in names] == images.tolist()
        assert s["ignore_pixels"] == pixels[255]
        assert s["images_with_occlusion"] > 0.2 * s["n_images"]
        for row in s["folds"]:
            novel = set(range(5 * row["fold"] + 1, 5 * row["fold"] + 6))
            assert row["novel_classes"] == sorted(novel)
            assert row["novel_samples"] == sum(1 for p in present_by_id.values() if p & novel)
            assert row["base_samples"] == s["n_images"] - row["novel_samples"]
    train = stats["splits"]["train"]
    n = train["n_images"]
    # Targets from the issue: every class in >= 8% of train images; per fold >= 25% base
    # samples and a good share of novel samples.
    assert min(train["class_image_counts"][name] for name in names[1:]) >= 0.08 * n
    assert all(stats["splits"]["val"]["class_image_counts"][name] >= 3 for name in names[1:])
    for row in train["folds"]:
        assert row["base_samples"] >= 0.25 * n
        assert row["novel_samples"] >= 0.25 * n
    # Budget is 30 s on one core; allow for a shared, loaded test machine.
    assert seconds < 90


# ---------------------------------------------------------------- CLI failures

def _run_stage(tmp_path: Path, change: dict) -> tuple[subprocess.CompletedProcess, Path]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["embedded_data"].update(change)
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.make_embedded", "--params", str(bad),
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    return proc, out


@pytest.mark.parametrize("change, key", [
    ({"min_objects": 5, "max_objects": 3}, "embedded_data.min_objects"),
    ({"jpeg_quality": 0}, "embedded_data.jpeg_quality"),
    ({"single_group_prob": 1.5}, "embedded_data.single_group_prob"),
])
def test_bad_params_exit_2_with_one_line(tmp_path, change, key):
    proc, out = _run_stage(tmp_path, change)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0]
    assert not out.exists()
    assert not list(tmp_path.glob(".tmp-*"))
