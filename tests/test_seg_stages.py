"""Stages train_seg and predict_seg on a tiny VOC-layout dataset built in tmp_path.

Dataset "tiny": classes [background, cat, dog, bus], 32x32 images, one fold whose novel
class is bus (3). Train: t0, t1, t2 hold cat/dog squares (base samples), t3, t4 a bus
square (novel samples); val: v0 (cat), v1 (bus). The backbone is built without ImageNet
weights and trained for one epoch, so the tests check plumbing, not accuracy.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import segmentation
from pipeline.config import load_params
from pipeline.data.label_png import read_label_png, write_label_png
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError
from pipeline.stages import predict_seg, train_seg
from conftest import TINY_CLASSES, Box, box_mask, run_fails, tiny_params, write_tiny_voc, write_yaml

CLASSES = TINY_CLASSES
SIZE = 32
TRAIN = {"t0": 1, "t1": 2, "t2": 1, "t3": 3, "t4": 3}
VAL = {"v0": 1, "v1": 3}
BASE, NOVEL = ["t0", "t1", "t2"], ["t3", "t4"]


def square(value: int, offset: int) -> Box:
    """A 16x16 square of class ``value``, ``offset`` rows down."""
    return (value, 4 + offset, 20 + offset, 6, 22)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(params path, dataset root, work dir) of the tiny dataset."""
    base = tmp_path_factory.mktemp("seg")
    offsets = {image_id: i % 4 for i, image_id in enumerate({**TRAIN, **VAL})}
    data = write_tiny_voc(base / "tiny", {i: [square(v, offsets[i])] for i, v in TRAIN.items()},
                          {i: [square(v, offsets[i])] for i, v in VAL.items()})
    params = tiny_params(data, [["bus"]], {"overrides.tiny": {
        "backbone": {"pretrained": False, "output_stride": 16},
        "segmentation": {"train": {"crop": SIZE, "scale_range": [1.0, 1.0], "batch_size": 2, "epochs": 1,
                                   "lr": 0.001},
                         "predict": {"scales": [1.0, 0.75], "flip": True}}}})
    params_path = write_yaml(base / "params.yaml", params)

    work = base / "work"
    work.mkdir()
    assert data.labels() == {i: [v] for i, v in {**TRAIN, **VAL}.items()}
    data.write_labels(work / "image_labels.json")
    assert data.fold([3])["base_samples"] == BASE and data.fold([3])["novel_samples"] == NOVEL
    data.write_fold(work / "fold0.json", [3])
    pseudo = work / "pseudo"
    pseudo.mkdir()
    for image_id in TRAIN:  # pseudo labels: every object pixel called "dog" (2), one void row
        label = box_mask([square(2, 0)], SIZE)
        label[0] = 255
        write_label_png(pseudo / f"{image_id}.png", label)
    return params_path, data.root, work


def train_args(tiny, out_dir: Path, supervision: str, pseudo: Path | None = None, fold: Path | None = None):
    params_path, _, work = tiny
    args = ["--params", str(params_path), "--supervision", supervision, "--labels", str(work / "image_labels.json"),
            "--out", str(out_dir / "model.pt"), "--history", str(out_dir / "history.tsv"), "--threads", "1"]
    if pseudo is not None:
        args += ["--pseudo", str(pseudo)]
    if fold is not None:
        args += ["--fold-file", str(fold)]
    return args


def run_expect_error(main, argv, capsys) -> str:
    return run_fails(main, argv, capsys, alone=True)


# --------------------------------------------------------------------------- pure parts

def test_target_sources_per_supervision():
    ids = ["t0", "t1", "t3"]
    assert segmentation.target_sources(ids, "gt") == {"t0": "gt", "t1": "gt", "t3": "gt"}
    assert segmentation.target_sources(ids, "pseudo") == {"t0": "pseudo", "t1": "pseudo", "t3": "pseudo"}
    fold = {"base_samples": ["t0", "t1"], "novel_samples": ["t3"]}
    assert segmentation.target_sources(ids, "mixed", fold) == {"t0": "gt", "t1": "gt", "t3": "pseudo"}


@pytest.mark.parametrize("fold, problem", [
    ({"base_samples": ["t0", "t1"], "novel_samples": ["t1", "t3"]}, "both a base and a novel"),
    ({"base_samples": ["t0", "t1"], "novel_samples": ["x9"]}, "not in the train split"),
    ({"base_samples": ["t0"], "novel_samples": ["t3"]}, "neither base nor novel"),
])
def test_target_sources_rejects_bad_folds(fold, problem):
    with pytest.raises(PipelineError, match=problem):
        segmentation.target_sources(["t0", "t1", "t3"], "mixed", fold, "fold.json")


def test_mixed_targets_are_gt_for_base_and_pseudo_for_novel(tiny):
    params_path, root, work = tiny
    params = load_params(params_path)
    dataset = VOCDataset(params["data"], "train")
    sources = segmentation.target_sources(dataset.ids, "mixed", json.loads((work / "fold0.json").read_text()))
    for image_id, source in sources.items():
        target = segmentation.load_target(image_id, source, dataset, (SIZE, SIZE), work / "pseudo", [3])
        expected = dataset.load_mask(image_id) if image_id in BASE else read_label_png(work / "pseudo" / f"{image_id}.png")
        np.testing.assert_array_equal(target, expected)
    assert [sources[i] for i in BASE] == ["gt"] * 3 and [sources[i] for i in NOVEL] == ["pseudo"] * 2


def test_mixed_base_sample_novel_pixels_become_ignore(tiny):
    params_path, _, work = tiny
    dataset = VOCDataset(load_params(params_path)["data"], "train")
    target = segmentation.load_target("t0", "gt", dataset, (SIZE, SIZE), None, [1])  # pretend cat is novel
    assert set(np.unique(target)) == {0, 255}


def test_seg_backbone_and_head_from_params(tiny):
    params = load_params(tiny[0])
    params["segmentation"].update({"head": "v2", "output_stride": 32, "frozen_blocks": 7, "aspp_rates": [1, 2]})
    assert segmentation.seg_backbone_cfg(params)["output_stride"] == 32
    model = segmentation.build_seg_model(params, len(CLASSES))
    assert model.head_type == "v2" and model.rates == (1, 2)
    assert [g["name"] for g in model.param_groups(0.01)] == ["head"]  # every backbone group frozen
    opt = train_seg.make_optimizer(model.param_groups(0.01), {**params["segmentation"]["train"], "optimizer": "adamw"})
    assert isinstance(opt, __import__("torch").optim.AdamW) and opt.param_groups[0]["lr"] == pytest.approx(0.1)


# --------------------------------------------------------------------------- stages

def test_v2_head_adamw_frozen_backbone_trains_and_predicts(tiny, tmp_path):
    params_path, _, work = tiny
    params = yaml.safe_load(params_path.read_text())
    params["overrides"]["tiny"]["segmentation"].update(
        {"head": "v2", "frozen_blocks": 7, "aspp_rates": [1, 2]})
    params["overrides"]["tiny"]["segmentation"]["train"]["optimizer"] = "adamw"
    v2_params = tmp_path / "params.yaml"
    v2_params.write_text(yaml.safe_dump(params, sort_keys=False))
    argv = train_args(tiny, tmp_path, "mixed", work / "pseudo", work / "fold0.json")
    argv[argv.index("--params") + 1] = str(v2_params)
    train_seg.main(argv)
    header, row = (tmp_path / "history.tsv").read_text().splitlines()
    # every backbone block frozen: only the head's group (10x lr) is trained
    assert dict(zip(header.split("\t"), row.split("\t")))["lr_head"] == "0.01"
    predict_seg.main(["--params", str(v2_params), "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "p")])
    assert len(list((tmp_path / "p").iterdir())) == len(VAL)
    # the v3 params cannot read the v2 model: one line naming the file
    with pytest.raises(PipelineError, match="head"):
        predict_seg.main(["--params", str(params_path), "--model", str(tmp_path / "model.pt"),
                          "--out", str(tmp_path / "q")])


@pytest.mark.parametrize("supervision", ["gt", "pseudo", "mixed"])
def test_train_and_predict_each_supervision(tiny, tmp_path, supervision):
    params_path, _, work = tiny
    pseudo = work / "pseudo" if supervision != "gt" else None
    fold = work / "fold0.json" if supervision == "mixed" else None
    train_seg.main(train_args(tiny, tmp_path, supervision, pseudo, fold))
    assert (tmp_path / "model.pt").is_file()
    assert not (tmp_path / "model.checkpoint.pt").exists()
    history = (tmp_path / "history.tsv").read_text().splitlines()
    assert history[0].split("\t") == ["epoch", "loss", "lr_backbone", "lr_head", "batches", "seconds"]
    assert len(history) == 2 and history[1].split("\t")[0] == "1"
    assert float(history[1].split("\t")[2]) == pytest.approx(0.001)

    if supervision != "gt":
        return  # prediction does not depend on the supervision: checked once
    out = tmp_path / "pred"
    predict_seg.main(["--params", str(params_path), "--model", str(tmp_path / "model.pt"), "--split", "val",
                      "--out", str(out), "--threads", "1"])
    assert sorted(p.name for p in out.iterdir()) == ["v0.png", "v1.png"]
    for path in out.iterdir():
        labels = read_label_png(path)
        assert labels.shape == (SIZE, SIZE) and labels.max() < len(CLASSES)


def test_predict_rejects_a_model_of_other_classes(tiny, tmp_path, capsys):
    from pipeline.training import save_model

    params_path, _, _ = tiny
    params = load_params(params_path)
    model = segmentation.build_seg_model(params, 5)
    save_model(tmp_path / "model.pt", model, {**model.meta, "aspp_rates": list(model.rates)})
    err = run_expect_error(predict_seg.main, ["--params", str(params_path), "--model", str(tmp_path / "model.pt"),
                                              "--out", str(tmp_path / "pred")], capsys)
    assert "model.pt" in err and "num_classes" in err
    assert not (tmp_path / "pred").exists()


def test_class_probabilities_average_to_one(tiny):
    params = load_params(tiny[0])
    model = segmentation.build_seg_model(params, len(CLASSES)).eval()
    image = np.random.default_rng(1).integers(0, 255, (20, 28, 3), dtype=np.uint8)
    probs = segmentation.class_probabilities(model, image, [1.0, 0.5], True, (0.5,) * 3, (0.5,) * 3, "cpu")
    assert probs.shape == (len(CLASSES), 20, 28)
    np.testing.assert_allclose(probs.sum(0).numpy(), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- failures

def corrupt_pseudo_dir(tiny, tmp_path: Path, image_id: str, label: np.ndarray | None) -> Path:
    """Copy of the pseudo-label directory with ``image_id`` replaced (None: removed)."""
    _, _, work = tiny
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    for path in (work / "pseudo").iterdir():
        (pseudo / path.name).write_bytes(path.read_bytes())
    (pseudo / f"{image_id}.png").unlink()
    if label is not None:
        write_label_png(pseudo / f"{image_id}.png", label)
    return pseudo


@pytest.mark.parametrize("label, problem", [
    (None, "pseudo label missing"),
    (np.zeros((SIZE, SIZE + 2), np.uint8), "34x32 but its image is 32x32"),
    (np.full((SIZE, SIZE), 7, np.uint8), "values [7]"),
])
def test_bad_pseudo_label_is_one_line_naming_the_file(tiny, tmp_path, capsys, label, problem):
    pseudo = corrupt_pseudo_dir(tiny, tmp_path, "t3", label)
    out = tmp_path / "out"
    err = run_expect_error(train_seg.main, train_args(tiny, out, "pseudo", pseudo), capsys)
    assert str(pseudo / "t3.png") in err and problem in err
    assert not (out / "model.pt").exists() and not (out / "history.tsv").exists()


def test_mixed_only_needs_pseudo_labels_of_novel_samples(tiny, tmp_path):
    pseudo = corrupt_pseudo_dir(tiny, tmp_path, "t0", None)  # t0 is a base sample
    train_seg.main(train_args(tiny, tmp_path / "out", "mixed", pseudo, tiny[2] / "fold0.json"))
    assert (tmp_path / "out" / "model.pt").is_file()


def test_mixed_without_fold_file_fails(tiny, tmp_path, capsys):
    err = run_expect_error(train_seg.main, train_args(tiny, tmp_path, "mixed", tiny[2] / "pseudo"), capsys)
    assert "--fold-file" in err


def test_mixed_with_missing_fold_file_names_it(tiny, tmp_path, capsys):
    missing = tmp_path / "nope.json"
    err = run_expect_error(train_seg.main, train_args(tiny, tmp_path, "mixed", tiny[2] / "pseudo", missing), capsys)
    assert str(missing) in err and "not found" in err
    assert not (tmp_path / "model.pt").exists()


def test_pseudo_without_directory_fails(tiny, tmp_path, capsys):
    err = run_expect_error(train_seg.main, train_args(tiny, tmp_path, "pseudo"), capsys)
    assert "--pseudo" in err


def test_labels_of_another_dataset_fail(tiny, tmp_path, capsys):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"dataset": "x", "classes": CLASSES, "labels": {"t0": [1]}}))
    argv = train_args(tiny, tmp_path, "gt")
    argv[argv.index("--labels") + 1] = str(labels)
    err = run_expect_error(train_seg.main, argv, capsys)
    assert str(labels) in err and "no image-level labels" in err


# --------------------------------------------------------------------------- feature cache

@pytest.fixture(scope="module")
def cached(tiny, tmp_path_factory):
    """Params with segmentation.feature_cache on (frozen backbone, input scale 2) and the
    train/val caches of stage seg_features."""
    from pipeline.stages import seg_features

    params_path, _, _ = tiny
    base = tmp_path_factory.mktemp("cache")
    params = yaml.safe_load(params_path.read_text())
    params["overrides"]["tiny"]["segmentation"].update(
        {"feature_cache": True, "input_scale": 2.0, "frozen_blocks": 7, "head": "v2", "aspp_rates": [1, 2],
         "predict": {"scales": [1.0], "flip": False}})
    path = base / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    caches = {}
    for split in ("train", "val"):
        caches[split] = base / f"{split}.pt"
        seg_features.main(["--params", str(path), "--split", split, "--out", str(caches[split]), "--threads", "1"])
    return path, caches, base


def test_seg_features_cache_holds_every_image(cached):
    import torch

    from pipeline.segmentation import CACHE_FORMAT

    _, caches, _ = cached
    train = torch.load(caches["train"], weights_only=True)
    assert train["format"] == CACHE_FORMAT and train["ids"] == list(TRAIN)
    (group,) = train["groups"]  # one image size: one group holding every image in split order
    assert list(group["image_size"]) == [SIZE, SIZE] and list(group["index"]) == list(range(len(TRAIN)))
    # input scale 2 at output stride 16: 64 px -> a 4x4 grid
    assert group["features"].dtype == torch.float16 and tuple(group["features"].shape[::2]) == (len(TRAIN), 4)
    assert torch.load(caches["val"], weights_only=True)["ids"] == list(VAL)


def test_training_on_cached_features_equals_the_model_run_on_images(cached, tiny):
    """The head trained on the cache is a full model: predict_seg from the cache and from
    the images (same network, backbone frozen) write the same labels."""
    import torch

    path, caches, base = cached
    _, _, work = tiny
    argv = train_args(tiny, base, "mixed", work / "pseudo", work / "fold0.json")
    argv[argv.index("--params") + 1] = str(path)
    train_seg.main(argv + ["--features", str(caches["train"])])
    header, row = (base / "history.tsv").read_text().splitlines()
    assert dict(zip(header.split("\t"), row.split("\t")))["batches"] == "5"  # 5 images + 5 mirrors, batches of 2
    meta = torch.load(base / "model.pt", weights_only=True)["meta"]
    assert meta["input_scale"] == 2.0
    predict_seg.main(["--params", str(path), "--model", str(base / "model.pt"), "--features", str(caches["val"]),
                      "--out", str(base / "from_cache"), "--threads", "1"])
    # the same params without the cache run the backbone on the images
    params = yaml.safe_load(path.read_text())
    params["overrides"]["tiny"]["segmentation"]["feature_cache"] = False
    plain = base / "plain.yaml"
    plain.write_text(yaml.safe_dump(params, sort_keys=False))
    predict_seg.main(["--params", str(plain), "--model", str(base / "model.pt"), "--out", str(base / "from_images"),
                      "--threads", "1"])
    for image_id in VAL:
        cached_pred = read_label_png(base / "from_cache" / f"{image_id}.png")
        image_pred = read_label_png(base / "from_images" / f"{image_id}.png")
        assert (cached_pred == image_pred).mean() > 0.98  # float16 cache: rare argmax ties may flip


def test_feature_cache_failure_paths(cached, tiny, capsys):
    path, caches, base = cached
    _, _, work = tiny
    argv = train_args(tiny, base / "bad", "gt")
    argv[argv.index("--params") + 1] = str(path)
    assert "--features" in run_expect_error(train_seg.main, argv, capsys)          # cache on, none given
    line = run_expect_error(train_seg.main, argv + ["--features", str(caches["val"])], capsys)
    assert "val.pt" in line and "split" in line                                      # another split's cache
    params = yaml.safe_load(path.read_text())
    params["overrides"]["tiny"]["segmentation"]["input_scale"] = 1.0
    other = base / "scale1.yaml"
    other.write_text(yaml.safe_dump(params, sort_keys=False))
    argv[argv.index("--params") + 1] = str(other)
    line = run_expect_error(train_seg.main, argv + ["--features", str(caches["train"])], capsys)
    assert "input_scale" in line and "train.pt" in line                              # another network's features
    params["overrides"]["tiny"]["segmentation"].update({"input_scale": 2.0, "frozen_blocks": 0})
    other.write_text(yaml.safe_dump(params, sort_keys=False))
    assert "frozen_blocks" in run_expect_error(train_seg.main, argv + ["--features", str(caches["train"])], capsys)
    assert not (base / "bad" / "model.pt").exists()
