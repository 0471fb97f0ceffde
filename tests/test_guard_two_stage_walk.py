"""Guard: stage propagate's two-stage walk uses the boundary cells the right way round.

Hand case on a 1 x 3 affinity grid (cells A B C, stride 8, so an 8 x 24 image), radius 2
(pairs A-B and B-C only), every affinity 1 (so beta does not matter), logt 1 (2 steps per
stage). Scores: background [0, 1, 1], class [1, 0, 0] (the object is cell A).

* B is a boundary cell (the right wiring). Stage 1 links non-boundary cells only: A and C
  are not neighbours, nothing moves. Stage 2 only feeds B (column B of T is
  [1/3, 1/3, 1/3], A and C keep their values): B = (A + B + C) / 3 twice gives
  background 2/3 -> (0 + 2/3 + 1) / 3 = 5/9, class 1/3 -> (1 + 1/3 + 0) / 3 = 4/9.
  Result: background [0, 5/9, 1], class [1, 4/9, 0]; argmax [class, bg, bg].
* No boundary cell: stage 1 is PSA's walk (columns A [1/2, 1/2, 0], B [1/3]*3,
  C [0, 1/2, 1/2]): background [1/2, 2/3, 1] -> [7/12, 13/18, 5/6], class [1/2, 1/3, 0]
  -> [5/12, 5/18, 1/6]: the object cell A is flooded (7/12 > 5/12), all background.
* A and C boundary (the inverted wiring): stage 2 feeds A and C from B: background
  [3/4, 1, 1], class [1/4, 0, 0]: all background too.
"""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipeline.cam import write_cam_file
from pipeline.io import load_npz
from pipeline.methods.retab import propagate as propagate_stage
from conftest import tiny_params, write_tiny_voc, write_yaml

H, W, CELL = 8, 24, 8
WALK_PARAMS = {"propagation": {"beta": 8, "logt": 1, "alpha": 16, "method": "sparse", "flip": False,
                               "batch_size": 1, "boundary_cell_fraction": 0.25},
               "affinity": {"radius": 2}, "boundary": {"tau": 0.5, "erosion": 0}}
SCORES = np.array([[[0.0, 1.0, 1.0]], [[1.0, 0.0, 0.0]]], np.float32)  # background, class
AFF = np.ones(2, np.float32)  # pairs A-B, B-C
WITH_BOUNDARY = [[[0, 5 / 9, 1]], [[1, 4 / 9, 0]]]
NO_BOUNDARY = [[[7 / 12, 13 / 18, 5 / 6]], [[5 / 12, 5 / 18, 1 / 6]]]
INVERTED = [[[3 / 4, 1, 1]], [[1 / 4, 0, 0]]]


def walk_cfg(method: str = "sparse") -> dict:
    params = copy.deepcopy(WALK_PARAMS)
    params["propagation"]["method"] = method
    return propagate_stage.propagation_config(params, "two_stage")


@pytest.mark.parametrize("method", ["sparse", "dense"])
def test_revise_two_stage_by_hand(method):
    cfg = walk_cfg(method)
    assert cfg["radius"] == 2 and cfg["logt"] == 1
    middle = np.array([[False, True, False]])
    out = propagate_stage.revise(SCORES, AFF, cfg, "two_stage", middle)
    np.testing.assert_allclose(out, WITH_BOUNDARY, atol=1e-6)
    assert out.argmax(axis=0).tolist() == [[1, 0, 0]]  # the object cell stays the object
    none = propagate_stage.revise(SCORES, AFF, cfg, "two_stage", np.zeros((1, 3), bool))
    np.testing.assert_allclose(none, NO_BOUNDARY, atol=1e-6)
    assert none.argmax(axis=0).tolist() == [[0, 0, 0]]  # the boundary is what saves cell A
    outer = propagate_stage.revise(SCORES, AFF, cfg, "two_stage", ~middle)
    np.testing.assert_allclose(outer, INVERTED, atol=1e-6)


def boundary_png(path: Path) -> Path:
    """8 x 24 boundary map: cell A all 127 (< tau 0.5 * 255), a 2-px line of 255 in cell B
    (16 of 64 pixels = the 0.25 cell fraction), a 1-px line in cell C (8 of 64: too few)."""
    prob = np.zeros((H, W), np.uint8)
    prob[:, 0:8] = 127
    prob[:, 11:13] = 255
    prob[:, 20] = 255
    Image.fromarray(prob, mode="L").save(path)
    return path


def test_read_boundary_cells_by_hand(tmp_path):
    boundary_png(tmp_path / "p0.png")
    cells = propagate_stage.read_boundary_cells(tmp_path, "p0", (H, W), (1, 3), CELL, walk_cfg())
    assert cells.tolist() == [[False, True, False]]


@pytest.fixture
def tiny_propagate(tmp_path):
    """One 8 x 24 train image p0 (class 'cat' = 1), its CAM, labels and boundary map."""
    grey = (100, 100, 100)  # one colour, no noise: the image carries nothing (affinities are fixed)
    data = write_tiny_voc(tmp_path / "VOC", {"p0": [(1, 0, H, 0, 8)]}, val=["p0"],
                          classes=["background", "cat", "dog"], size=(H, W), colours={0: grey, 1: grey}, noise=0,
                          mask_mode="L")
    changes = {"device": "cpu", "overrides": {}, "backbone.pretrained": False,
               **{f"{section}.{key}": value for section, values in WALK_PARAMS.items()
                  for key, value in values.items()}}
    params = write_yaml(tmp_path / "params.yaml", tiny_params(data, [["dog"]], changes))
    labels = data.write_labels(tmp_path / "labels.json")
    assert data.labels() == {"p0": [1]}
    cams = tmp_path / "cams"
    cams.mkdir()
    cam = np.zeros((1, H, W), np.float32)
    cam[0, :, :8] = 1.0  # stride 1: the CAM is already full resolution, no interpolation
    write_cam_file(cams / "p0.npz", cam, [1], (H, W), 1)
    boundary = tmp_path / "boundary"
    boundary.mkdir()
    boundary_png(boundary / "p0.png")
    return {"params": params, "labels": labels, "cams": cams, "boundary": boundary, "out": tmp_path / "revised"}


def test_propagate_stage_two_stage_by_hand(tiny_propagate, monkeypatch):
    """The whole stage (CAM -> grid scores, boundary map -> cells, walk, npz) with the
    AffinityNet replaced by fixed affinities 1: the hand result above, not all background."""
    seen = {}

    def fixed_model(path, params, device):
        return SimpleNamespace(out_stride=CELL), {"variant": "retab"}

    def fixed_affinities(model, images, radius, flip):
        seen.update(shape=tuple(images.shape), radius=radius)
        return np.ones((images.shape[0], 2), np.float32), (1, 3)

    monkeypatch.setattr(propagate_stage, "load_affinity_model", fixed_model)
    monkeypatch.setattr(propagate_stage, "predict_affinities", fixed_affinities)
    s = tiny_propagate
    propagate_stage.main(["--params", str(s["params"]), "--walk", "two_stage", "--cams", str(s["cams"]),
                          "--labels", str(s["labels"]), "--affinity", "unused.pt", "--boundary", str(s["boundary"]),
                          "--out", str(s["out"]), "--threads", "1"])
    assert seen == {"shape": (1, 3, H, W), "radius": 2}
    record = load_npz(s["out"] / "p0.npz")
    assert record["keys"].tolist() == [0, 1] and int(record["stride"]) == CELL
    scores = record["scores"].astype(np.float32)
    np.testing.assert_allclose(scores, WITH_BOUNDARY, atol=2e-3)
    assert scores.argmax(axis=0).tolist() == [[1, 0, 0]]
