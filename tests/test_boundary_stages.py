"""Boundary maps (pipeline/boundary.py) and stages train_boundary / infer_boundary.

Pure functions are checked on hand-computed arrays. The stages run on a tiny VOC-layout
dataset built in tmp_path: classes [background, cat, dog, bus], six 32x32 train images,
fold 0 with novel class bus (images t4, t5 are novel samples; t0..t3 base samples), an
untrained-ImageNet backbone (pretrained: false) and one epoch.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.boundary import (
    boundary_f1,
    boundary_mask,
    boundary_net_backbone_cfg,
    check_boundary_params,
    non_boundary_mask,
    pooled_boundary_f1,
    prob_to_uint8,
    uint8_to_prob,
)
from pipeline.errors import PipelineError
from pipeline.methods.retab import infer_boundary, train_boundary
from pipeline.methods.retab.train_boundary import base_sample_loss_target
from pipeline.models import BoundaryNet
from pipeline.training import MODEL_FORMAT, checkpoint_path_for
from conftest import make_boundary_tiny, run_fails, run_ok, write_yaml

# --------------------------------------------------------------------------- pure functions


def test_prob_uint8_round_trip():
    prob = np.array([0.0, 0.5, 0.998, 1.0, 1.2, -0.1, 0.1])
    # 127.5 -> 128, 254.49 -> 254, 25.5 -> 26 (round half to even), clipped outside [0, 1]
    assert prob_to_uint8(prob).tolist() == [0, 128, 254, 255, 255, 0, 26]
    assert uint8_to_prob(np.array([0, 51, 255], np.uint8)).tolist() == pytest.approx([0.0, 0.2, 1.0])


def test_boundary_mask_threshold_is_inclusive():
    # 127/255 = 0.498 < 0.5 <= 128/255 = 0.502
    assert boundary_mask(np.array([127, 128, 255], np.uint8), 0.5).tolist() == [False, True, True]
    with pytest.raises(ValueError):
        boundary_mask(np.zeros(3, np.uint8), 1.0)


def test_non_boundary_mask_hand_computed():
    prob = np.full((5, 5), 10, np.uint8)
    prob[:, 2] = 200  # a vertical boundary line in column 2
    expected = np.ones((5, 5), bool)
    expected[:, 2] = False
    assert (non_boundary_mask(prob, 0.5, 0) == expected).all()
    # erosion 1: columns 1 and 3 go too; the image border does not erode columns 0 and 4
    expected[:, [1, 3]] = False
    assert (non_boundary_mask(prob, 0.5, 1) == expected).all()
    assert not non_boundary_mask(prob, 0.5, 2).any()
    # a higher tau leaves the line (200/255 = 0.78) non-boundary
    assert non_boundary_mask(prob, 0.8, 1).all()
    corner = np.zeros((4, 4), np.uint8)
    corner[0, 0] = 255
    out = non_boundary_mask(corner, 0.5, 1)
    assert out.sum() == 16 - 4 and not out[:2, :2].any()
    with pytest.raises(ValueError):
        non_boundary_mask(corner, 0.5, -1)


def test_boundary_f1_hand_computed():
    target = np.array([[1, 1, 0, 0, 255, 0]], np.uint8)
    pred = np.array([[1, 0, 1, 0, 1, 0]], bool)  # the prediction on the ignore pixel is not counted
    exact = boundary_f1(pred, target)
    assert (exact["tp_pred"], exact["pred"], exact["tp_target"], exact["target"]) == (1, 2, 1, 2)
    assert (exact["precision"], exact["recall"], exact["f1"]) == (0.5, 0.5, 0.5)
    # tolerance 1: pixel 2 is next to target pixel 1; target pixel 1 next to prediction 0 / 2
    tolerant = boundary_f1(pred, target, tolerance=1)
    assert (tolerant["precision"], tolerant["recall"], tolerant["f1"]) == (1.0, 1.0, 1.0)
    # precision 1/3, recall 1/1 -> F1 = 2 * (1/3) / (4/3) = 0.5; pooled over both images:
    second = boundary_f1(np.array([[1, 1, 1]], bool), np.array([[0, 1, 0]], np.uint8))
    assert second["f1"] == pytest.approx(0.5)
    pooled = pooled_boundary_f1([exact, second])
    assert pooled["precision"] == pytest.approx(2 / 5) and pooled["recall"] == pytest.approx(2 / 3)
    assert pooled["f1"] == pytest.approx(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3))


def test_boundary_f1_empty_sets():
    target = np.array([[1, 0]], np.uint8)
    nothing = boundary_f1(np.zeros((1, 2), bool), target)
    assert math.isnan(nothing["precision"]) and nothing["recall"] == 0.0 and nothing["f1"] == 0.0
    no_target = boundary_f1(np.zeros((1, 2), bool), np.zeros((1, 2), np.uint8))
    assert math.isnan(no_target["f1"])
    with pytest.raises(ValueError):
        boundary_f1(np.zeros((2, 2), bool), target)


def test_check_boundary_params_names_the_key():
    check_boundary_params({"tau": 0.5, "erosion": 0})
    for bad in ({"tau": 1.0}, {"tau": 0.0}, {"tau": -0.2}):
        with pytest.raises(PipelineError, match=r"boundary\.tau"):
            check_boundary_params(bad)
    with pytest.raises(PipelineError, match=r"boundary\.erosion"):
        check_boundary_params({"tau": 0.5, "erosion": -1})


def test_boundary_net_backbone_cfg():
    params = {"backbone": {"name": "efficientnet_lite0", "output_stride": 8, "pretrained": True},
              "boundary": {"output_stride": 16}}
    assert boundary_net_backbone_cfg(params, pretrained=False) == {
        "name": "efficientnet_lite0", "output_stride": 16, "pretrained": False}
    params["boundary"]["output_stride"] = None
    assert boundary_net_backbone_cfg(params)["output_stride"] == 8


def test_base_sample_loss_target_hand_computed():
    mask = np.zeros((6, 6), np.uint8)
    mask[1:3, 1:3] = 1  # base object
    mask[4:6, 4:6] = 3  # novel object left in a base sample (novel_min_pixels > 1)
    novel = mask == 3
    masked = np.where(novel, 255, mask).astype(np.uint8)
    args = {"source": "transitions", "width": 1, "ignore_index": 255}
    got = base_sample_loss_target(masked, novel, background_index=0, **args)
    # 2 boundary (both sides of each object/background change), 0 background,
    # 255: the novel object and its 1-px margin (the boundary there depends on it)
    expected = np.array([[0, 2, 2, 0, 0, 0],
                         [2, 2, 2, 2, 0, 0],
                         [2, 2, 2, 2, 0, 0],
                         [0, 2, 2, 255, 255, 255],
                         [0, 0, 0, 255, 255, 255],
                         [0, 0, 0, 255, 255, 255]])
    assert (got == expected).all()
    # no background class: every non-boundary pixel is foreground (1)
    all_fg = base_sample_loss_target(masked, novel, background_index=None, **args)
    assert (all_fg == np.where(expected == 0, 1, expected)).all()


def test_boundary_probability_has_image_size():
    torch.manual_seed(0)
    model = BoundaryNet({"name": "efficientnet_lite0", "pretrained": False, "output_stride": 16}).eval()
    with torch.inference_mode():
        prob = infer_boundary.boundary_probability(model, torch.randn(1, 3, 30, 34), flip=True)
    assert prob.shape == (1, 30, 34) and float(prob.min()) >= 0 and float(prob.max()) <= 1


def test_same_size_batches_groups_consecutive_equal_sizes():
    sizes = {"a": 4, "b": 4, "c": 4, "d": 6, "e": 4}
    batches = list(infer_boundary.same_size_batches(list(sizes), lambda i: np.zeros((sizes[i], 5, 3), np.uint8), 2))
    assert [(ids, images.shape) for ids, images in batches] == [
        (["a", "b"], (2, 4, 5, 3)), (["c"], (1, 4, 5, 3)), (["d"], (1, 6, 5, 3)), (["e"], (1, 4, 5, 3))]


# --------------------------------------------------------------------------- stages

TRAIN_IDS = ["t0", "t1", "t2", "t3", "t4", "t5"]


@pytest.fixture()
def tiny(tmp_path):
    """conftest.make_boundary_tiny: t0..t3 cat/dog squares (base samples), t4, t5 bus (novel)."""
    s = make_boundary_tiny(tmp_path, range(6), epochs=1)
    s["data"].write_labels(tmp_path / "image_labels.json")
    out = tmp_path / "boundary"
    return {**s, "params": str(s["params"]), "fold": str(s["fold"]), "labels": str(tmp_path / "image_labels.json"),
            "model": str(out / "model.pt"), "history": str(out / "history.tsv"), "maps": str(out / "maps"),
            "out": out}


def _train_argv(s, params=None, fold=None):
    return ["--params", params or s["params"], "--fold-file", fold or s["fold"], "--out", s["model"],
            "--history", s["history"], "--threads", "1"]


def _infer_argv(s, model=None, params=None):
    return ["--params", params or s["params"], "--model", model or s["model"], "--labels", s["labels"],
            "--split", "train", "--out", s["maps"], "--threads", "1"]


def test_train_then_infer(tiny, capsys):
    assert tiny["data"].fold([3])["novel_samples"] == ["t4", "t5"]
    run_ok(train_boundary.main, _train_argv(tiny))
    history = tiny["out"].joinpath("history.tsv").read_text().splitlines()
    assert history[0].split("\t") == ["epoch", "loss", "boundary", "foreground", "background",
                                      "lr_backbone", "lr_head", "batches", "seconds"]
    assert len(history) == 2 and history[1].split("\t")[-2] == "2"  # 4 base samples, batches of 2
    assert not checkpoint_path_for(tiny["model"]).exists()  # removed once the model is written
    saved = torch.load(tiny["model"], weights_only=True)
    assert saved["meta"]["novel_classes"] == [3] and saved["meta"]["output_stride"] == 16

    run_ok(infer_boundary.main, _infer_argv(tiny))
    maps = sorted(p.name for p in tiny["out"].joinpath("maps").iterdir())
    assert maps == [f"{i}.png" for i in TRAIN_IDS]  # every train image, novel samples included
    with Image.open(tiny["out"] / "maps" / "t4.png") as im:
        assert im.mode == "L" and im.size == (32, 32)


def test_infer_rejects_model_of_another_backbone(tiny, capsys):
    model = tiny["tmp"] / "resnet.pt"
    meta = {"model": "BoundaryNet", "backbone": "resnet50", "output_stride": 16, "num_classes": None,
            "dataset": "tiny"}
    torch.save({"format": MODEL_FORMAT, "meta": meta, "state_dict": {}}, model)
    run_fails(infer_boundary.main, _infer_argv(tiny, model=str(model)), capsys, str(model), "resnet50")
    assert not tiny["out"].exists()


@pytest.mark.parametrize("tau", [1.5, 0.0])
def test_tau_outside_open_interval(tiny, capsys, tau):
    tiny["raw"]["boundary"]["tau"] = tau
    params = write_yaml(tiny["tmp"] / "bad_tau.yaml", tiny["raw"])
    run_fails(train_boundary.main, _train_argv(tiny, params=str(params)), capsys, "boundary.tau")
    run_fails(infer_boundary.main, _infer_argv(tiny, params=str(params)), capsys, "boundary.tau")
    assert not tiny["out"].exists()


def test_missing_fold_file(tiny, capsys):
    missing = str(tiny["tmp"] / "fold9.json")
    run_fails(train_boundary.main, _train_argv(tiny, fold=missing), capsys, missing)
    assert not tiny["out"].exists()


def test_fold_with_unknown_base_sample(tiny, capsys):
    fold = json.loads(open(tiny["fold"]).read())
    fold["base_samples"].append("nope")
    bad = tiny["tmp"] / "fold_bad.json"
    bad.write_text(json.dumps(fold))
    run_fails(train_boundary.main, _train_argv(tiny, fold=str(bad)), capsys, str(bad), "'nope'")
    assert not tiny["out"].exists()
