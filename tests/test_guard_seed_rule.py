"""Guard: in self-diffusion a class seed on low objectness stays a class seed only.

Rule (pipeline/propagation/superpixel_diffusion.py, "Seeds"): a superpixel with mean
L-Net M below ``background_seed_threshold`` is a background seed (q = 0 for every class)
*unless* it is a class seed (its CAM region): then it is a seed of its class only and
floats in the other classes' problems.

Hand case: SLIC is replaced by four fixed vertical stripes (superpixels 0..3 of a 4x4
image of one colour, so only M enters the edge weights), graph 0 - 1 - 2 - 3.

    superpixel        0        1      2        3
    mean M            0.0      0.5    0.5      0.0      (background_seed_threshold 0.3)
    CAM               class 1  -      class 2  -
    seeds             1 only   free   2        background

Edge weights (sigma 1): z = exp(-|dM| / 2): w = exp(-1/4) on 0-1 and 2-3, 1 on 1-2.

* class 1 (seeds q0 = 1, q3 = 0): q1 = (w + q2) / (1 + w), q2 = q1 / (1 + w), so
  q1 = (1 + w) / (2 + w) = 0.640, q2 = 1 / (2 + w) = 0.362;
* class 2 (seed q2 = 1, q3 = 0; 0 and 1 float): 0 and 1 only reach 2, q0 = q1 = 1.

Labels: 0 -> class 1 (q tie 1/1, higher mean CAM), 1 -> class 2 (1 > 0.640), 2 -> class 2,
3 -> background. Were superpixel 0 also a background seed, class 2 would see q0 = 0 and
q1 = 1 / (1 + w) = 0.562 < 0.640, and superpixel 1 would turn class 1.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.propagation import superpixel_diffusion as sd

CFG = {"slic_n_segments": 4, "slic_compactness": 10.0, "slic_sigma": 0.0, "slic_max_iter": 5, "sigma": 1.0,
       "cam_region_threshold": 0.5, "cam_region_min_overlap": 0.5, "background_seed_threshold": 0.3,
       "background_threshold": 0.5}
W = math.exp(-0.25)


@pytest.fixture
def stripes(monkeypatch):
    """Fixed superpixels (column index) and a spy on the harmonic solve."""
    labels = np.tile(np.arange(4, dtype=np.int32), (4, 1))
    monkeypatch.setattr(sd, "slic_superpixels", lambda *args, **kwargs: labels.copy())
    solved = {}
    real_solve = sd.harmonic_solve

    def spy(n_nodes, edges, weights, seed_mask, seed_values=None):
        solved.update(seed_mask=np.array(seed_mask), weights=np.array(weights))
        solved["q"] = real_solve(n_nodes, edges, weights, seed_mask, seed_values)
        return solved["q"]

    monkeypatch.setattr(sd, "harmonic_solve", spy)
    image = np.full((4, 4, 3), (120, 90, 60), np.uint8)
    agnostic = np.tile([0.0, 0.5, 0.5, 0.0], (4, 1))
    cam_1 = np.tile([1.0, 0.0, 0.0, 0.0], (4, 1))
    cam_2 = np.tile([0.0, 0.0, 1.0, 0.0], (4, 1))
    return image, agnostic, {1: cam_1, 2: cam_2}, solved


def test_class_seed_on_low_objectness_is_no_background_seed(stripes):
    image, agnostic, cams, solved = stripes
    label, info = sd.diffuse_image(image, agnostic, cams, CFG, background_index=0, source="stripes")
    np.testing.assert_allclose(solved["weights"], [W, 1.0, W], atol=1e-12)
    # seed sets per class column: superpixel 0 is fixed for class 1 only
    assert solved["seed_mask"].tolist() == [[True, False], [False, False], [False, True], [True, True]]
    np.testing.assert_allclose(solved["q"][:, 0], [1, (1 + W) / (2 + W), 1 / (2 + W), 0], atol=1e-9)
    np.testing.assert_allclose(solved["q"][:, 1], [1, 1, 1, 0], atol=1e-9)
    assert info["background_seed_superpixels"] == 1  # superpixel 3 only
    assert info["seed_superpixels"] == {"1": 1, "2": 1}
    assert label.tolist() == [[1, 2, 2, 0]] * 4


def test_without_a_background_class_the_same_seeds_hold(stripes):
    image, agnostic, cams, solved = stripes
    label, info = sd.diffuse_image(image, agnostic, cams, CFG, background_index=None, ignore_index=255)
    assert label.tolist() == [[1, 2, 2, 255]] * 4  # the rule's visible effect: superpixel 1 is class 2
    assert info["background_seed_superpixels"] == 1
