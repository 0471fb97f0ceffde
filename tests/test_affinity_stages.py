"""Stages train_affinity, propagate and pseudo_labels on tiny VOC-layout data made here.

Six 32x32 train images with one square object each (classes 1-3; class 3 is the fold's
novel class), an untrained backbone (``pretrained: false``) and one epoch keep every run
to a few seconds. Upstream artifacts (image labels, fold file, confident labels, CAMs,
boundary maps) are written here in their documented formats.
"""
from __future__ import annotations

import json

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.boundary import prob_to_uint8
from pipeline.cam import write_cam_file
from pipeline.data.label_png import read_label_png, write_label_png
from pipeline.io import load_npz, write_json
from pipeline.methods.retab import propagate, train_affinity
from pipeline.methods.retab.train_affinity import reduce_to_grid, sample_sources
from pipeline.stages import pseudo_labels
from conftest import run_fails, run_ok, tiny_params, write_tiny_voc, write_yaml

SIZE = 32
CLASSES = ["background", "red", "green", "blue"]
# image id -> (class, top, left) of its 12x12 square object
OBJECTS = {"i0": (1, 4, 4), "i1": (2, 16, 10), "i2": (3, 8, 16), "i3": (1, 18, 2), "i4": (3, 2, 2),
           "i5": (2, 10, 12)}
COLOURS = {0: (40, 40, 40), 1: (220, 30, 30), 2: (30, 200, 40), 3: (30, 40, 220)}
NOVEL = [3]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """Dataset, params file and every upstream artifact, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("tiny")
    data = write_tiny_voc(root / "VOC", {i: [(cls, top, top + 12, left, left + 12)]
                                         for i, (cls, top, left) in OBJECTS.items()},
                          val=["i0"], classes=CLASSES, colours=COLOURS)
    params = tiny_params(data, [["blue"]], {
        "backbone.pretrained": False, "backbone.output_stride": 16, "backbone.frozen_blocks": 0,
        "affinity.radius": 3, "affinity.feat_dim": 28,
        "affinity.train": {"crop": 32, "scale_range": [0.9, 1.1], "batch_size": 2, "epochs": 1, "lr": 0.01,
                           "momentum": 0.9, "weight_decay": 0.0005},
        "propagation.logt": 3, "boundary.tau": 0.5, "boundary.erosion": 0})
    params_path = write_yaml(root / "params.yaml", params)

    assert data.labels() == {i: [OBJECTS[i][0]] for i in OBJECTS}
    labels_path = data.write_labels(root / "image_labels.json")
    fold_path = data.write_fold(root / "fold0.json", NOVEL)
    assert data.fold(NOVEL)["novel_samples"] == ["i2", "i4"]

    cams, confident, boundary = root / "cams", root / "confident", root / "boundary"
    for d in (cams, confident, boundary):
        d.mkdir()
    for image_id, mask in data.masks.items():
        cls = OBJECTS[image_id][0]
        # CAM at stride 4: 1 on the object's cells, 0.2 around them (the classic blurry CAM)
        grid = (mask[::4, ::4] == cls).astype(np.float32)
        grid = np.maximum(grid, 0.2 * (np.pad(grid, 1, mode="edge")[:-2, 1:-1] > 0))
        write_cam_file(cams / f"{image_id}.npz", grid[None], [cls], (SIZE, SIZE), 4)
        conf = mask.copy()
        edge = np.zeros_like(mask, bool)
        edge[1:] |= mask[1:] != mask[:-1]
        edge[:-1] |= mask[1:] != mask[:-1]
        edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
        edge[:, :-1] |= mask[:, 1:] != mask[:, :-1]
        conf[edge] = 255  # uncertain band around each object, as confident labels have
        write_label_png(confident / f"{image_id}.png", conf)
        Image.fromarray(prob_to_uint8(edge.astype(np.float32))).save(boundary / f"{image_id}.png")
    return {"root": root, "params": str(params_path), "labels": str(labels_path), "fold": str(fold_path),
            "cams": str(cams), "confident": str(confident), "boundary": str(boundary), "raw_params": params}


def train_args(tiny, variant: str, out: Path) -> list[str]:
    args = ["--params", tiny["params"], "--variant", variant, "--confident", tiny["confident"],
            "--labels", tiny["labels"], "--out", str(out / "model.pt"), "--history", str(out / "history.tsv"),
            "--threads", "1"]
    if variant != "cam":
        args += ["--fold-file", tiny["fold"]]
    if variant == "retab":
        args += ["--boundary", tiny["boundary"]]
    return args


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory) -> dict:
    """One model per variant (trained once for the module)."""
    out = {}
    for variant in ("cam", "gt", "retab"):
        directory = tmp_path_factory.mktemp(f"aff_{variant}")
        run_ok(train_affinity.main, train_args(tiny, variant, directory))
        out[variant] = directory
    return out


# --------------------------------------------------------------------------- train_affinity

def test_train_affinity_writes_model_history_and_no_checkpoint(trained):
    for variant, directory in trained.items():
        model = torch.load(directory / "model.pt", weights_only=True)
        assert model["meta"]["variant"] == variant and model["meta"]["model"] == "AffinityNet"
        rows = (directory / "history.tsv").read_text().splitlines()
        assert {"epoch", "loss", "bg_loss", "fg_loss", "neg_loss"} <= set(rows[0].split("\t"))
        assert len(rows) == 2 and np.isfinite(float(rows[1].split("\t")[1]))
        assert not (directory / "model.checkpoint.pt").exists()


def test_interrupted_training_resumes_to_identical_weights(tiny, tmp_path, capsys, monkeypatch, caplog):
    """Killed during epoch 2 of 2 (after epoch 1's checkpoint): a rerun resumes there and ends
    with the weights of an uninterrupted run."""
    import pipeline.training

    params = copy.deepcopy(tiny["raw_params"])
    params["affinity"]["train"]["epochs"] = 2
    params_path = write_yaml(tmp_path / "params.yaml", params)
    args = {name: train_args({**tiny, "params": str(params_path)}, "cam", tmp_path / name)
            for name in ("reference", "resumed")}
    run_ok(train_affinity.main, args["reference"])

    real_checkpoint = pipeline.training.save_checkpoint
    calls = []

    def crash_on_second(path, state):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed in epoch 2")
        real_checkpoint(path, state)

    monkeypatch.setattr(pipeline.training, "save_checkpoint", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        train_affinity.main(args["resumed"])
    assert (tmp_path / "resumed/model.checkpoint.pt").exists() and not (tmp_path / "resumed/model.pt").exists()
    monkeypatch.setattr(pipeline.training, "save_checkpoint", real_checkpoint)
    with caplog.at_level("INFO", logger="pipeline"):
        run_ok(train_affinity.main, args["resumed"])
    assert "after epoch 1/2" in caplog.text
    resumed = torch.load(tmp_path / "resumed/model.pt", weights_only=True)["state_dict"]
    reference = torch.load(tmp_path / "reference/model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert len((tmp_path / "resumed/history.tsv").read_text().splitlines()) == 3


def test_sample_sources_by_variant():
    fold = {"base_samples": ["a", "b"], "novel_samples": ["c"]}
    assert sample_sources("cam", ["a", "b", "c"], None) == {"a": "cam", "b": "cam", "c": "cam"}
    assert sample_sources("gt", ["a", "b", "c"], fold) == {"a": "gt", "b": "gt", "c": "cam"}


def test_reduce_to_grid_takes_cell_centre_pixels():
    maps = torch.arange(64).reshape(1, 8, 8)
    # 8 -> 2: cell centres at 2 and 6 (pixel-centre nearest: (i + .5) * 4 = 2, 6)
    assert reduce_to_grid(maps, (2, 2)).tolist() == [[[18, 22], [50, 54]]]


def test_retab_variant_needs_boundary_maps(tiny, tmp_path, capsys):
    args = train_args(tiny, "retab", tmp_path / "out")
    args[args.index("--boundary") + 1] = str(tmp_path / "nowhere")
    run_fails(train_affinity.main, args, capsys, "nowhere", alone=True)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- propagate

def propagate_args(tiny, trained, walk: str, out: Path, params: str | None = None) -> list[str]:
    variant = "retab" if walk == "two_stage" else "cam"
    args = ["--params", params or tiny["params"], "--walk", walk, "--cams", tiny["cams"], "--labels",
            tiny["labels"], "--affinity", str(trained[variant] / "model.pt"), "--out", str(out), "--threads", "1"]
    if walk == "two_stage":
        args += ["--boundary", tiny["boundary"]]
    return args


@pytest.mark.parametrize("walk", ["single", "two_stage"])
def test_propagate_writes_revised_scores_and_pseudo_labels(tiny, trained, tmp_path, capsys, walk):
    out = tmp_path / "revised"
    run_ok(propagate.main, propagate_args(tiny, trained, walk, out))
    assert sorted(p.stem for p in out.glob("*.npz")) == sorted(OBJECTS)
    walk_info = json.loads((out / "walk.json").read_text())  # the walk as run
    assert walk_info["walk"] == walk and sum(walk_info["images_per_logt"].values()) == len(OBJECTS)
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".npz") == ["walk.json"]
    record = load_npz(out / "i2.npz")
    assert record["scores"].dtype == np.float16 and record["scores"].shape == (2, 4, 4)
    assert record["keys"].tolist() == [0, 3] and record["size"].tolist() == [SIZE, SIZE]
    assert int(record["stride"]) == 8
    assert np.isfinite(record["scores"].astype(np.float32)).all()

    labels_out = tmp_path / "pseudo"
    run_ok(pseudo_labels.main, ["--params", tiny["params"], "--scores", str(out), "--labels", tiny["labels"],
                                "--out", str(labels_out)])
    for image_id, (cls, _, _) in OBJECTS.items():
        label = read_label_png(labels_out / f"{image_id}.png")
        assert label.shape == (SIZE, SIZE)
        assert set(np.unique(label).tolist()) <= {0, cls}  # only background and the image's class


def test_pseudo_labels_from_raw_cams_use_the_eval_threshold(tiny, tmp_path, capsys):
    eval_path = tmp_path / "eval.json"
    write_json(eval_path, {"best_threshold": 0.5, "miou": 0.5})
    out = tmp_path / "pseudo"
    run_ok(pseudo_labels.main, ["--params", tiny["params"], "--scores", tiny["cams"], "--labels",
                                tiny["labels"], "--cam-eval", str(eval_path), "--out", str(out)])
    label = read_label_png(out / "i0.png")
    # The CAM is 1 on the object (rows/cols 4..15 at stride 4 -> cells 1..3) and 0.2 around:
    # above 0.5 only well inside the object, background elsewhere.
    assert label[9, 9] == 1 and label[0, 0] == 0 and label[30, 30] == 0
    assert set(np.unique(label).tolist()) == {0, 1}


# --------------------------------------------------------------------------- bad input

def test_missing_cam_file_is_named_and_nothing_is_written(tiny, trained, tmp_path, capsys):
    cams = tmp_path / "cams"
    cams.mkdir()
    for image_id in OBJECTS:
        if image_id != "i3":
            (cams / f"{image_id}.npz").write_bytes((Path(tiny["cams"]) / f"{image_id}.npz").read_bytes())
    out = tmp_path / "revised"
    args = propagate_args(tiny, trained, "single", out)
    args[args.index("--cams") + 1] = str(cams)
    run_fails(propagate.main, args, capsys, str(cams / "i3.npz"), alone=True)
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("section,key,value", [
    ("propagation", "logt", -1), ("affinity", "radius", -2), ("propagation", "beta", 0),
    ("propagation", "beta", -1.5)])
def test_bad_walk_params_are_named(tiny, trained, tmp_path, capsys, section, key, value):
    params = copy.deepcopy(tiny["raw_params"])
    params[section][key] = value
    path = write_yaml(tmp_path / "params.yaml", params)
    out = tmp_path / "revised"
    run_fails(propagate.main, propagate_args(tiny, trained, "single", out, params=str(path)), capsys,
              f"{section}.{key}", alone=True)
    assert not out.exists()


def test_missing_score_file_for_pseudo_labels(tiny, tmp_path, capsys):
    out = tmp_path / "pseudo"
    run_fails(pseudo_labels.main, ["--params", tiny["params"], "--scores", str(tmp_path / "none"),
                                   "--labels", tiny["labels"], "--out", str(out)], capsys, str(tmp_path / "none"),
              alone=True)
    assert not out.exists()


def test_raw_cams_without_cam_eval_are_refused(tiny, tmp_path, capsys):
    out = tmp_path / "pseudo"
    run_fails(pseudo_labels.main, ["--params", tiny["params"], "--scores", tiny["cams"], "--labels",
                                   tiny["labels"], "--out", str(out)], capsys, "--cam-eval", alone=True)
    assert not out.exists()


# --------------------------------------------------------------------------- alpha: auto

def _params_with(tiny, path: Path, **propagation) -> str:
    params = copy.deepcopy(tiny["raw_params"])
    params["propagation"].update(propagation)
    return str(write_yaml(path, params))


@pytest.mark.parametrize("walk", ["single", "two_stage"])
def test_alpha_auto_with_one_candidate_equals_that_alpha(tiny, trained, tmp_path, walk):
    # The walk is linear: walking base samples with a background channel per candidate, then
    # keeping one, must give exactly what a walk with that alpha alone gives.
    fixed, auto = tmp_path / "fixed", tmp_path / "auto"
    run_ok(propagate.main, propagate_args(tiny, trained, walk, fixed,
                                          params=_params_with(tiny, tmp_path / "a.yaml", alpha=4)))
    run_ok(propagate.main, propagate_args(tiny, trained, walk, auto,
                                          params=_params_with(tiny, tmp_path / "b.yaml", alpha="auto",
                                                              alpha_candidates=[4]))
           + ["--fold-file", tiny["fold"]])
    for image_id in OBJECTS:
        a, b = load_npz(fixed / f"{image_id}.npz"), load_npz(auto / f"{image_id}.npz")
        assert np.array_equal(a["scores"], b["scores"]) and a["keys"].tolist() == b["keys"].tolist()
    info = json.loads((auto / "walk.json").read_text())
    assert info["alpha"] == 4 and list(info["base_miou_per_alpha"]) == ["4"]


def test_alpha_auto_picks_the_best_candidate_on_base_samples(tiny, trained, tmp_path, monkeypatch):
    # Record which masks the stage opens: base samples only (i2, i4 hold the novel class).
    from pipeline.data.voc import VOCDataset

    opened = []
    original = VOCDataset.load_mask
    monkeypatch.setattr(VOCDataset, "load_mask", lambda self, i: opened.append(i) or original(self, i))
    out = tmp_path / "revised"
    run_ok(propagate.main, propagate_args(tiny, trained, "single", out,
                                          params=_params_with(tiny, tmp_path / "p.yaml", alpha="auto",
                                                              alpha_candidates=[0.25, 2, 64]))
           + ["--fold-file", tiny["fold"]])
    assert sorted(set(opened)) == ["i0", "i1", "i3", "i5"]
    info = json.loads((out / "walk.json").read_text())
    scores = {float(a): m for a, m in info["base_miou_per_alpha"].items()}
    assert info["alpha"] == max(scores, key=scores.get) and len(scores) == 3
    assert sorted(p.stem for p in out.glob("*.npz")) == sorted(OBJECTS)
    assert load_npz(out / "i2.npz")["scores"].shape == (2, 4, 4)  # one background channel kept


def test_alpha_auto_without_a_fold_file_is_named(tiny, trained, tmp_path, capsys):
    out = tmp_path / "revised"
    run_fails(propagate.main, propagate_args(tiny, trained, "single", out,
                                             params=_params_with(tiny, tmp_path / "p.yaml", alpha="auto")),
              capsys, "propagation.alpha", alone=True)
    assert not out.exists()
