"""Pseudo-label rules and the propagate stage's grid helpers, on hand-computed arrays."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.cam import background_threshold_labels
from pipeline.pseudo_labels import (
    allowed_channels,
    pseudo_label_map,
    restricted_argmax,
    upsample_scores,
    with_threshold_background,
)
from pipeline.methods.retab.propagate import (
    boundary_on_grid,
    cams_on_grid,
    equal_size_runs,
    pool_to_grid,
    select_label_cams,
)


# --------------------------------------------------------------------------- upsampling

def test_upsample_shape_crops_the_padding():
    # 3 x 4 grid at stride 8 covers 24 x 32 px; a 20 x 27 image keeps the top-left part.
    scores = np.random.default_rng(0).random((2, 3, 4)).astype(np.float32)
    full = upsample_scores(scores, (20, 27), 8)
    assert full.shape == (2, 20, 27) and full.dtype == np.float32


def test_upsample_constant_and_linear_values():
    # A constant map stays constant; a 1 x 2 grid [0, 1] at stride 2 -> 4 px, bilinear with
    # align_corners=False: x = 0, .25, .75, 1 (edges clamp).
    np.testing.assert_allclose(upsample_scores(np.full((1, 2, 2), 0.3), (4, 4), 2), 0.3, atol=1e-6)
    row = upsample_scores(np.array([[[0.0, 1.0]]]), (1, 4), 2)[0, 0]
    np.testing.assert_allclose(row, [0.0, 0.25, 0.75, 1.0], atol=1e-6)


def test_upsample_rejects_a_grid_that_does_not_cover_the_image():
    with pytest.raises(ValueError):
        upsample_scores(np.zeros((1, 2, 2)), (20, 10), 8)


# --------------------------------------------------------------------------- restriction

def test_allowed_channels_are_image_labels_plus_background():
    assert allowed_channels([0, 3, 5, 7], [5], 0).tolist() == [True, False, True, False]
    assert allowed_channels([3, 5], [5, 3], None).tolist() == [True, True]
    assert allowed_channels([3, 5], [], None).tolist() == [False, False]


def test_restricted_argmax_ignores_classes_not_in_the_image():
    # Channel of class 7 is highest everywhere but the image is labelled {5} only.
    scores = np.array([[[0.2, 0.6]],      # background
                       [[0.5, 0.1]],      # class 5
                       [[0.9, 0.9]]])     # class 7 (not labelled)
    allowed = allowed_channels([0, 5, 7], [5], 0)
    assert restricted_argmax(scores, [0, 5, 7], allowed).tolist() == [[5, 0]]


def test_restricted_argmax_without_candidates_is_void():
    out = restricted_argmax(np.ones((2, 1, 3)), [1, 2], np.array([False, False]), void_index=255)
    assert out.tolist() == [[255, 255, 255]] and out.dtype == np.uint8


# --------------------------------------------------------------------------- threshold rule

def test_threshold_background_rule_and_ties():
    fg = np.array([[[0.3, 0.5, 0.7]],
                   [[0.6, 0.5, 0.2]]])
    scores, keys = with_threshold_background(fg, [4, 9], 0.5, 0)
    assert keys == [0, 4, 9] and scores[0].tolist() == [[0.5, 0.5, 0.5]]
    label = pseudo_label_map(fg, [4, 9], (1, 3), 1, [4, 9], 0, bg_threshold=0.5)
    # pixel 0: 0.6 > 0.5 -> class 9; pixel 1: top 0.5 == threshold -> background (tie);
    # pixel 2: 0.7 -> class 4
    assert label.tolist() == [[9, 0, 4]]
    np.testing.assert_array_equal(label, background_threshold_labels(fg, [4, 9], 0.5, 0))


def test_threshold_rule_matches_eval_cam_on_random_cams():
    rng = np.random.default_rng(1)
    cams = rng.random((3, 5, 6)).astype(np.float32)
    for threshold in (0.05, 0.3, 0.6):
        label = pseudo_label_map(cams, [2, 5, 6], (5, 6), 1, [2, 5, 6], 0, bg_threshold=threshold)
        np.testing.assert_array_equal(label, background_threshold_labels(cams, [2, 5, 6], threshold, 0))


def test_revised_scores_without_background_class_take_the_argmax():
    scores = np.array([[[0.1, 0.8]], [[0.4, 0.3]]])
    assert pseudo_label_map(scores, [3, 1], (1, 2), 1, [1, 3], None).tolist() == [[1, 3]]
    # no labels and no background: nothing can be predicted
    assert pseudo_label_map(scores, [3, 1], (1, 2), 1, [], None).tolist() == [[255, 255]]


def test_threshold_needs_a_background_class():
    with pytest.raises(ValueError):
        pseudo_label_map(np.ones((1, 1, 1)), [1], (1, 1), 1, [1], None, bg_threshold=0.5)


def test_pseudo_label_upsamples_to_image_size():
    # 2 x 2 grid at stride 4 for a 7 x 6 image: background left column, class 2 right column.
    scores = np.array([[[1.0, 0.0], [1.0, 0.0]],
                       [[0.0, 1.0], [0.0, 1.0]]])
    label = pseudo_label_map(scores, [0, 2], (7, 6), 4, [2], 0)
    assert label.shape == (7, 6)
    assert (label[:, :4] == 0).all() and (label[:, 4:] == 2).all()


# --------------------------------------------------------------------------- propagate grid helpers

def test_pool_to_grid_averages_in_image_pixels_only():
    maps = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    # cell 2, grid 2 x 2 over a 3 x 4 image: the bottom cells hold one image row each
    pooled = pool_to_grid(maps, (2, 2), 2)
    np.testing.assert_allclose(pooled[0], [[(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4],
                                           [(8 + 9) / 2, (10 + 11) / 2]])


def test_boundary_on_grid_by_fraction():
    boundary = np.zeros((4, 4), bool)
    boundary[0, 0] = True          # 1 of 4 pixels of cell (0, 0)
    boundary[2:4, 2] = True        # 2 of 4 pixels of cell (1, 1)
    assert boundary_on_grid(boundary, (2, 2), 2, 0.25).tolist() == [[True, False], [False, True]]
    assert boundary_on_grid(boundary, (2, 2), 2, 0.5).tolist() == [[False, False], [False, True]]


def test_cams_on_grid_background_at_full_resolution():
    # One class, CAM 1 on the left half of a 1 x 4 image, 0 on the right; cell 4.
    cams = np.array([[[1.0, 1.0, 0.0, 0.0]]], dtype=np.float32)
    grid = cams_on_grid(cams, 1, (1, 4), (1, 1), 4, alphas=[16], with_background=True)
    # fg mean 0.5 (max-normalised: 1 / (1 + 1e-5)); background (1 - fg) ** 16 is ~0 on the
    # left and 1 on the right, so its mean is 0.5, not (1 - 0.5) ** 16.
    np.testing.assert_allclose(grid[:, 0, 0], [0.5, 0.5], atol=1e-4)
    no_bg = cams_on_grid(cams, 1, (1, 4), (1, 1), 4, alphas=[16], with_background=False)
    assert no_bg.shape == (1, 1, 1)


def test_select_label_cams_follows_the_labels_and_names_a_missing_channel(tmp_path):
    cams = np.stack([np.full((2, 2), v, np.float32) for v in (1, 2, 3)])
    chosen, keys = select_label_cams(cams, [4, 7, 9], [9, 4], tmp_path / "x.npz")
    assert keys == [9, 4] and chosen[:, 0, 0].tolist() == [3, 1]
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="x.npz"):
        select_label_cams(cams, [4, 7, 9], [5], tmp_path / "x.npz")


def test_equal_size_runs_split_on_size_change_and_batch_size():
    a, b = np.zeros((4, 4, 3)), np.zeros((4, 5, 3))
    assert equal_size_runs([a, a, a, b, b, a], 2) == [[0, 1], [2], [3, 4], [5]]
    assert equal_size_runs([a, a, a], 1) == [[0], [1], [2]]
