"""segmentation.feature_cache on splits of mixed image sizes (cache format v2), and the
single-size case staying what it was (format v1's features, batches, loss and weights).

Datasets built in tmp_path (classes background, cat, dog, bus; backbone without ImageNet
weights, frozen; v2 head; input scale 2 at output stride 16):

* "mixed": train images of three sizes (landscape 40x30, portrait 30x40, square 32x32,
  interleaved in the split), val one of each;
* "single": every image 35x27 (odd width: a mirrored label map's every other column is
  not the strided map's mirror, so the order flip -> stride is checked too).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline import segmentation
from pipeline.config import load_params
from pipeline.data.batches import normalize_batch
from pipeline.data.label_png import read_label_png, write_label_png
from pipeline.data.voc import VOCDataset
from pipeline.errors import run_stage
from pipeline.models import backbone_normalization
from pipeline.runtime import seed_everything
from pipeline.stages import predict_seg, seg_features, train_seg
from conftest import (IGNORE, TINY_CLASSES as CLASSES, Box, box_mask, set_keys, tiny_params, write_tiny_voc,
                      write_yaml)

LANDSCAPE, PORTRAIT, SQUARE = (30, 40), (40, 30), (32, 32)  # (H, W)
MIXED_TRAIN = {"a0": (1, LANDSCAPE), "a1": (2, PORTRAIT), "a2": (3, SQUARE), "a3": (1, PORTRAIT),
               "a4": (2, LANDSCAPE), "a5": (3, PORTRAIT), "a6": (1, SQUARE)}
MIXED_VAL = {"b0": (1, PORTRAIT), "b1": (3, LANDSCAPE), "b2": (2, SQUARE)}
ODD = (27, 35)
SINGLE_TRAIN = {f"s{k}": (1 + k % 3, ODD) for k in range(5)}
SINGLE_VAL = {"w0": (1, ODD), "w1": (2, ODD)}
BASE = ["a0", "a1", "a3", "a4", "a6"]  # mixed supervision: bus (3) novel
NOVEL = ["a2", "a5"]

def object_box(value: int, size: tuple[int, int], offset: int) -> Box:
    """The one object of an image of ``size``: rows 3 + offset .. H/2 + 6 + offset, cols 4 .. W/2 + 7."""
    height, width = size
    return (value, 3 + offset, height // 2 + 6 + offset, 4, width // 2 + 7)


def make_dataset(base: Path, name: str, train: dict, val: dict, fold: bool = False) -> tuple[Path, Path]:
    """(params path, work dir) of a VOC-layout dataset: ``{id: (class, (H, W))}`` per split;
    the k-th image (train, then val) holds ``object_box(class, (H, W), k % 4)``."""
    scenes = {**train, **val}
    boxes = {i: [object_box(value, size, k % 4)] for k, (i, (value, size)) in enumerate(scenes.items())}
    data = write_tiny_voc(base / name, {i: boxes[i] for i in train}, {i: boxes[i] for i in val},
                          size={i: size for i, (_, size) in scenes.items()})
    assert data.classes == CLASSES and data.labels() == {i: [value] for i, (value, _) in scenes.items()}
    params_path = write_yaml(base / f"{name}.yaml", tiny_params(data, [["bus"]], {f"overrides.{name}": {
        "backbone": {"pretrained": False, "output_stride": 16},
        "segmentation": {"feature_cache": True, "input_scale": 2.0, "frozen_blocks": 7, "head": "v2",
                         "aspp_rates": [1, 2],
                         "train": {"batch_size": 2, "epochs": 1, "optimizer": "adamw", "lr": 0.001,
                                   "weight_decay": 0.0001, "loss_stride": 1},
                         "predict": {"scales": [1.0], "flip": False}}}}, name=name))

    work = base / f"{name}_work"
    work.mkdir()
    data.write_labels(work / "image_labels.json", dataset=name)
    if fold:
        assert data.fold([3])["novel_samples"] == NOVEL and data.fold([3])["base_samples"] == BASE
        data.write_fold(work / "fold0.json", [3], dataset=name)
        (work / "pseudo").mkdir()
        for image_id, (value, size) in train.items():  # every object pixel "dog", one void row
            label = box_mask([object_box(2, size, 0), (IGNORE, 0, 1, 0, size[1])], size)
            write_label_png(work / "pseudo" / f"{image_id}.png", label)
    return params_path, work


def changed_params(params_path: Path, out: Path, changes: dict) -> Path:
    """``params_path`` with the dotted-key ``changes`` (see ``set_keys``), written to ``out``."""
    return write_yaml(out, set_keys(yaml.safe_load(params_path.read_text()), changes))


def cached_training(params_path: Path, cache_file: Path, batch_size: int, loss_stride: int):
    """(train dataset, model, cache, make_batches, step, steps) of train_seg's cached-feature
    training on ``cache_file`` with ground truth targets."""
    params = load_params(params_path)
    dataset = VOCDataset(params["data"], "train")
    model = segmentation.build_seg_model(params, len(CLASSES))
    cache = segmentation.load_feature_cache(cache_file, model, dataset.ids)
    sources = segmentation.target_sources(dataset.ids, "gt")
    return (dataset, model, cache, *train_seg.cached_feature_training(
        cache, dataset.ids, sources, dataset, None, [], batch_size=batch_size, loss_stride=loss_stride))


def make_caches(params_path: Path, out: Path) -> dict[str, Path]:
    caches = {}
    for split in ("train", "val"):
        caches[split] = out / f"{split}.pt"
        seg_features.main(["--params", str(params_path), "--split", split, "--out", str(caches[split]),
                           "--threads", "1"])
    return caches


def train_argv(params_path: Path, work: Path, out: Path, cache: Path, supervision: str = "gt") -> list[str]:
    argv = ["--params", str(params_path), "--supervision", supervision, "--labels", str(work / "image_labels.json"),
            "--out", str(out / "model.pt"), "--history", str(out / "history.tsv"), "--features", str(cache),
            "--threads", "1"]
    if supervision == "mixed":
        argv += ["--pseudo", str(work / "pseudo"), "--fold-file", str(work / "fold0.json")]
    return argv


def state_hash(model_file: Path) -> str:
    state = torch.load(model_file, map_location="cpu", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def single_size_trained_weights(base: Path, v1_batches: bool) -> str:
    """seg_features + train_seg (gt, 2 epochs, batches of 4 of 5 images + 5 mirrors: the last
    batch of each epoch partial, loss stride 2 on an odd width) on the "single" dataset; the
    sha256 of the trained weights. With ``v1_batches`` the stage's batches come from format v1's
    make_batches (``v1_cached_batches``) on the same features and targets, all else the stage's."""
    base.mkdir()
    params_path, work = make_dataset(base, "single", SINGLE_TRAIN, SINGLE_VAL)
    changed_params(params_path, params_path, {f"overrides.single.segmentation.train.{key}": value for key, value
                                              in {"batch_size": 4, "epochs": 2, "loss_stride": 2}.items()})
    caches = make_caches(params_path, base)
    out = base / "single_model"
    cached_feature_training = train_seg.cached_feature_training

    def with_v1_batches(cache, ids, sources, dataset, pseudo_dir, novel_classes, batch_size, loss_stride):
        _, step, steps = cached_feature_training(cache, ids, sources, dataset, pseudo_dir, novel_classes,
                                                 batch_size, loss_stride)
        targets = torch.from_numpy(np.stack([dataset.load_mask(i) for i in ids]).astype(np.int64))
        return (lambda epoch, rng: v1_cached_batches(cache["groups"][0]["features"], targets, batch_size,
                                                     loss_stride, rng)), step, steps

    with pytest.MonkeyPatch.context() as patch:
        if v1_batches:
            patch.setattr(train_seg, "cached_feature_training", with_v1_batches)
        train_seg.main(train_argv(params_path, work, out, caches["train"]))
    return state_hash(out / "model.pt")


def run_expect_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_stage(main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """(params path, work dir, caches) of the mixed-size dataset."""
    base = tmp_path_factory.mktemp("mixed")
    params_path, work = make_dataset(base, "mixed", MIXED_TRAIN, MIXED_VAL, fold=True)
    return params_path, work, make_caches(params_path, base)


# --------------------------------------------------------------------------- pure parts

def test_size_groups_in_order_of_first_image():
    sizes = [(30, 40), (40, 30), (30, 40), (32, 32), (40, 30)]
    assert segmentation.size_groups(sizes) == [((30, 40), [0, 2]), ((40, 30), [1, 4]), ((32, 32), [3])]
    assert segmentation.size_groups([(8, 8)] * 3) == [((8, 8), [0, 1, 2])]


# --------------------------------------------------------------------------- mixed sizes

def test_mixed_size_cache_holds_every_image_at_its_size(mixed):
    params_path, _, caches = mixed
    cache = torch.load(caches["train"], weights_only=True)
    assert cache["format"] == segmentation.CACHE_FORMAT == "seg-features-v2"
    assert cache["ids"] == list(MIXED_TRAIN)
    assert [(tuple(g["image_size"]), g["index"]) for g in cache["groups"]] == [
        (LANDSCAPE, [0, 4]), (PORTRAIT, [1, 3, 5]), (SQUARE, [2, 6])]
    params = load_params(params_path)
    dataset = VOCDataset(params["data"], "train")
    seed_everything(int(params["seed"]))  # the backbone's random init (no ImageNet weights) of seg_features
    model = segmentation.build_seg_model(params, len(CLASSES)).eval()
    positions = segmentation.cache_positions(cache)
    for image_id, (_, size) in MIXED_TRAIN.items():
        features, cached_size = segmentation.cached_features(cache, positions, image_id)
        assert cached_size == size and features.dtype == torch.float16
        # the image at input scale 2, output stride 16
        assert tuple(features.shape[-2:]) == (-(-2 * size[0] // 16), -(-2 * size[1] // 16))
        x = normalize_batch(dataset.load_image(image_id)[None], *backbone_normalization(params["backbone"]))
        with torch.no_grad():
            fresh = model.features(x)
        torch.testing.assert_close(features.float(), fresh, rtol=2e-3, atol=2e-3)  # float16 rounding


def test_cached_training_batches_within_a_size_group(mixed):
    params_path, work, caches = mixed
    _, model, _, make_batches, step, steps = cached_training(params_path, caches["train"], 2, 2)
    # landscape 2 + 2 mirrors, portrait 3 + 3, square 2 + 2: 2 + 3 + 2 batches of <= 2
    assert steps == 7
    rng = np.random.default_rng(3)
    for _ in range(2):
        batches = make_batches(0, rng)
        assert len(batches) == steps
        seen = 0
        for batch in batches:
            height, width = batch["targets"].shape[-2:]
            size = next(s for _, s in MIXED_TRAIN.values() if (-(-s[0] // 2), -(-s[1] // 2)) == (height, width))
            assert batch["features"].shape[-2:] == (-(-2 * size[0] // 16), -(-2 * size[1] // 16))
            assert batch["features"].dtype == torch.float32 and batch["targets"].dtype == torch.int64
            loss, _ = step(model, batch)
            assert torch.isfinite(loss)
            seen += len(batch["targets"])
        assert seen == 2 * len(MIXED_TRAIN)  # every image and its mirror once per epoch


def test_mixed_size_cached_prediction_equals_the_model_run_on_images(mixed, tmp_path):
    """Head trained on the mixed-size cache; predict_seg from the cache and from the images
    (same network, frozen backbone) write the same labels, each at its image's size."""
    params_path, work, caches = mixed
    train_seg.main(train_argv(params_path, work, tmp_path, caches["train"], "mixed"))
    header, row = (tmp_path / "history.tsv").read_text().splitlines()
    assert dict(zip(header.split("\t"), row.split("\t")))["batches"] == "7"
    predict_seg.main(["--params", str(params_path), "--model", str(tmp_path / "model.pt"),
                      "--features", str(caches["val"]), "--out", str(tmp_path / "from_cache"), "--threads", "1"])
    plain = changed_params(params_path, tmp_path / "plain.yaml", {"overrides.mixed.segmentation.feature_cache": False})
    predict_seg.main(["--params", str(plain), "--model", str(tmp_path / "model.pt"),
                      "--out", str(tmp_path / "from_images"), "--threads", "1"])
    for image_id, (_, size) in MIXED_VAL.items():
        cached_pred = read_label_png(tmp_path / "from_cache" / f"{image_id}.png")
        image_pred = read_label_png(tmp_path / "from_images" / f"{image_id}.png")
        assert cached_pred.shape == image_pred.shape == size
        assert (cached_pred == image_pred).mean() > 0.98  # float16 cache: rare argmax ties may flip


def test_feature_cache_errors_name_the_file(mixed, tmp_path, capsys):
    params_path, work, caches = mixed
    argv = train_argv(params_path, work, tmp_path, caches["train"])
    # a cache of the same number of other images (the split's ids reordered)
    cache = torch.load(caches["train"], weights_only=True)
    cache["ids"] = cache["ids"][1:] + cache["ids"][:1]
    other = tmp_path / "other_ids.pt"
    torch.save(cache, other)
    line = run_expect_error(train_seg.main, [*argv[:-4], "--features", str(other), "--threads", "1"], capsys)
    assert str(other) in line and "other images" in line and "'a1'" in line
    # a cache of format v1 (one tensor, one size)
    old = tmp_path / "v1.pt"
    torch.save({"format": "seg-features-v1", "ids": list(MIXED_TRAIN), "image_size": [30, 40],
                "features": torch.zeros(len(MIXED_TRAIN), 1, 1, 1, dtype=torch.float16),
                "meta": torch.load(caches["train"], weights_only=True)["meta"]}, old)
    line = run_expect_error(train_seg.main, [*argv[:-4], "--features", str(old), "--threads", "1"], capsys)
    assert str(old) in line and "older format" in line and "rerun seg_features" in line
    # a size group that lost an image
    cache = torch.load(caches["train"], weights_only=True)
    cache["groups"][1]["index"] = cache["groups"][1]["index"][:-1]
    cache["groups"][1]["features"] = cache["groups"][1]["features"][:-1]
    damaged = tmp_path / "damaged.pt"
    torch.save(cache, damaged)
    line = run_expect_error(train_seg.main, [*argv[:-4], "--features", str(damaged), "--threads", "1"], capsys)
    assert str(damaged) in line and "damaged" in line
    # another input scale
    scale1 = changed_params(params_path, tmp_path / "scale1.yaml", {"overrides.mixed.segmentation.input_scale": 1.0})
    line = run_expect_error(train_seg.main, train_argv(scale1, work, tmp_path, caches["train"]), capsys)
    assert str(caches["train"]) in line and "input_scale" in line
    assert not (tmp_path / "model.pt").exists()


# --------------------------------------------------------------------------- one size: as format v1

def v1_cached_batches(features, targets, batch_size, loss_stride, rng):
    """Format v1's train_seg.cached_feature_training make_batches (commit 062305e), verbatim
    but for its inputs: ``features`` (N x C x h x w float16), ``targets`` (N x H x W int64)."""
    features = torch.cat([features, features.flip(-1)])
    targets = torch.cat([targets, targets.flip(-1)])[:, ::loss_stride, ::loss_stride].contiguous()
    order = torch.from_numpy(rng.permutation(len(features)))
    return [{"features": features[order[k:k + batch_size]].float(), "targets": targets[order[k:k + batch_size]]}
            for k in range(0, len(order), batch_size)]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    base = tmp_path_factory.mktemp("single")
    params_path, work = make_dataset(base, "single", SINGLE_TRAIN, SINGLE_VAL)
    return params_path, work, make_caches(params_path, base), base


def test_single_size_cache_is_format_v1s_features(single):
    """One group, every image in split order, features of the same 16-image backbone passes."""
    params_path, _, caches, _ = single
    params = load_params(params_path)
    dataset = VOCDataset(params["data"], "train")
    cache = torch.load(caches["train"], weights_only=True)
    assert [(g["image_size"], g["index"]) for g in cache["groups"]] == [(list(ODD), list(range(len(SINGLE_TRAIN))))]
    seed_everything(int(params["seed"]))
    model = segmentation.build_seg_model(params, len(CLASSES)).eval()
    x = normalize_batch(np.stack([dataset.load_image(i) for i in dataset.ids]), *backbone_normalization(params["backbone"]))
    with torch.no_grad():
        v1 = model.features(x).to(torch.float16)  # v1: one batch of <= 16 images, in split order
    assert torch.equal(cache["groups"][0]["features"], v1)


@pytest.mark.parametrize("loss_stride", [1, 2])
def test_single_size_batches_and_loss_equal_format_v1s(single, loss_stride):
    params_path, _, caches, _ = single
    dataset, model, cache, make_batches, step, steps = cached_training(params_path, caches["train"], 4, loss_stride)
    assert steps == 3  # v1: count_steps(2 * 5, 4, drop_last=False)
    targets = torch.from_numpy(np.stack([dataset.load_mask(i) for i in dataset.ids]).astype(np.int64))
    new_rng, old_rng = np.random.default_rng(7), np.random.default_rng(7)
    for epoch in range(3):
        new = make_batches(epoch, new_rng)
        old = v1_cached_batches(cache["groups"][0]["features"], targets, 4, loss_stride, old_rng)
        assert len(new) == len(old) == steps
        for a, b in zip(new, old):
            assert torch.equal(a["features"], b["features"]) and a["features"].is_contiguous()
            assert torch.equal(a["targets"], b["targets"]) and a["targets"].dtype == b["targets"].dtype
            old_logits = model.logits_from_features(b["features"], tuple(targets[:, ::loss_stride, ::loss_stride]
                                                                         .shape[-2:]))
            old_loss = train_seg.segmentation_ce(old_logits, b["targets"], dataset.ignore_index)
            assert torch.equal(step(model, a)[0], old_loss)
    assert new_rng.bit_generator.state == old_rng.bit_generator.state  # one permutation per epoch


def test_single_size_cache_trained_weights_equal_format_v1s(tmp_path):
    """The whole training on the single-size cache ends in the weights that format v1's batches
    give, both trained in this run (a stored hash would differ across CPU vendors)."""
    assert single_size_trained_weights(tmp_path / "v2", False) == single_size_trained_weights(tmp_path / "v1", True)
