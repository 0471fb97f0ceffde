"""Pairs within a radius, predicted affinities, pair labels and the AffinityNet loss."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.propagation.affinity import (
    affinity_loss,
    num_pairs,
    pair_indices,
    pair_labels,
    pair_offsets,
    pairwise_affinity,
)


# ---------------------------------------------------------------- offsets and indices

def test_pair_offsets_radius_2_by_hand():
    # dy^2 + dx^2 < 4 in the half plane: right neighbour and the three below.
    assert pair_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]


def test_pair_offsets_radius_1_is_empty():
    assert pair_offsets(1) == []


def test_pair_offsets_radius_5_is_psa_half_disc():
    offsets = pair_offsets(5)
    assert len(offsets) == 34  # PSA's 34 search directions at radius 5
    assert len(set(offsets)) == 34
    for dy, dx in offsets:
        assert dy * dy + dx * dx < 25
        assert dy > 0 or (dy == 0 and dx > 0)
        assert (-dy, -dx) not in offsets
    # Every offset of the full disc (except 0) is one of ours or the opposite of one.
    full = {(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if 0 < dy * dy + dx * dx < 25}
    assert full == set(offsets) | {(-dy, -dx) for dy, dx in offsets}


@pytest.mark.parametrize("bad", [0, -3, 2.5, "5", True])
def test_radius_validation_names_key(bad):
    with pytest.raises(PipelineError, match="affinity.radius"):
        pair_offsets(bad)


def test_pair_indices_1x3_radius_2_by_hand():
    from_idx, to_idx = pair_indices(1, 3, 2)
    assert from_idx.tolist() == [0, 1]
    assert to_idx.tolist() == [1, 2]


def test_pair_indices_2x2_radius_2_by_hand():
    # Grid  0 1 / 2 3: offsets (0,1): 0-1, 2-3; (1,-1): 1-2; (1,0): 0-2, 1-3; (1,1): 0-3.
    from_idx, to_idx = pair_indices(2, 2, 2)
    assert list(zip(from_idx.tolist(), to_idx.tolist())) == [(0, 1), (2, 3), (1, 2), (0, 2), (1, 3), (0, 3)]


@pytest.mark.parametrize("h,w,radius", [(7, 5, 3), (4, 9, 5), (3, 3, 5), (6, 6, 1)])
def test_pair_indices_are_exactly_the_unordered_pairs_within_radius(h, w, radius):
    from_idx, to_idx = pair_indices(h, w, radius)
    got = [tuple(sorted(p)) for p in zip(from_idx.tolist(), to_idx.tolist())]
    assert len(got) == len(set(got)) == num_pairs(h, w, radius)
    expected = set()
    for i in range(h * w):
        for j in range(i + 1, h * w):
            (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
            if (yi - yj) ** 2 + (xi - xj) ** 2 < radius * radius:
                expected.add((i, j))
    assert set(got) == expected


# ---------------------------------------------------------------- affinities

def test_pairwise_affinity_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    feats = torch.rand(2, 6, 5, 7, generator=gen)
    aff = pairwise_affinity(feats, 3)
    from_idx, to_idx = pair_indices(5, 7, 3)
    flat = feats.reshape(2, 6, -1)
    expected = torch.exp(-(flat[:, :, from_idx] - flat[:, :, to_idx]).abs().mean(dim=1))
    assert aff.shape == (2, from_idx.numel())
    torch.testing.assert_close(aff, expected)
    assert float(aff.min()) > 0 and float(aff.max()) <= 1


def test_pairwise_affinity_by_hand_and_gradient():
    # 1 x 2 grid, D = 2: f0 = (0, 0), f1 = (1, 3) -> mean |diff| = 2 -> exp(-2).
    feats = torch.tensor([[[[0.0, 1.0]], [[0.0, 3.0]]]], requires_grad=True)
    aff = pairwise_affinity(feats, 2)
    assert aff.shape == (1, 1)
    assert math.isclose(float(aff.detach()), math.exp(-2), rel_tol=1e-6)
    aff.sum().backward()
    assert torch.isfinite(feats.grad).all()


def test_pairwise_affinity_identical_features_is_one_and_tiny_grid():
    assert torch.allclose(pairwise_affinity(torch.ones(1, 3, 4, 4), 5), torch.ones(1, num_pairs(4, 4, 5)))
    assert pairwise_affinity(torch.ones(1, 3, 1, 1), 5).shape == (1, 0)
    with pytest.raises(ValueError):
        pairwise_affinity(torch.ones(3, 4, 4), 5)


# ---------------------------------------------------------------- pair labels

def _pairs_of(mask: torch.Tensor, h: int, w: int, radius: int) -> set[tuple[int, int]]:
    from_idx, to_idx = pair_indices(h, w, radius)
    return {(int(a), int(b)) for a, b, m in zip(from_idx, to_idx, mask) if m}


def test_pair_labels_1x4_by_hand_with_ignore():
    # labels 0 0 1 255, radius 3 -> pairs (0,1) (1,2) (2,3) (0,2) (1,3).
    labels = np.array([[0, 0, 1, 255]], dtype=np.uint8)
    out = pair_labels(labels, 3, ignore_index=255, background_index=0)
    assert _pairs_of(out["bg_pos"], 1, 4, 3) == {(0, 1)}
    assert _pairs_of(out["fg_pos"], 1, 4, 3) == set()
    assert _pairs_of(out["neg"], 1, 4, 3) == {(1, 2), (0, 2)}
    # Pairs touching the ignore pixel (2,3), (1,3) are in no set.
    assert out["bg_pos"].dtype == torch.bool and out["bg_pos"].shape == (5,)


def test_pair_labels_fg_pairs_and_no_background_class():
    labels = np.array([[2, 2, 0, 0]])
    with_bg = pair_labels(labels, 2, background_index=0)
    assert _pairs_of(with_bg["fg_pos"], 1, 4, 2) == {(0, 1)}
    assert _pairs_of(with_bg["bg_pos"], 1, 4, 2) == {(2, 3)}
    # CamVid-style: no background class, every equal-label pair is an fg pair.
    no_bg = pair_labels(labels, 2, background_index=None)
    assert _pairs_of(no_bg["fg_pos"], 1, 4, 2) == {(0, 1), (2, 3)}
    assert not no_bg["bg_pos"].any()
    assert _pairs_of(no_bg["neg"], 1, 4, 2) == {(1, 2)}


def test_pair_labels_valid_pixels_drop_pairs_touching_invalid():
    labels = np.array([[0, 0, 1, 255]])
    valid = np.array([[True, False, True, True]])  # pixel 1 is a predicted boundary
    out = pair_labels(labels, 3, valid_pixels=valid)
    assert _pairs_of(out["bg_pos"], 1, 4, 3) == set()
    assert _pairs_of(out["neg"], 1, 4, 3) == {(0, 2)}


def test_pair_labels_batch_and_2x2():
    # Grid 0 1 / 2 3 with labels 5 5 / 5 7; second image all ignore.
    labels = torch.tensor([[[5, 5], [5, 7]], [[255, 255], [255, 255]]])
    out = pair_labels(labels, 2, background_index=0)
    assert out["fg_pos"].shape == (2, 6)
    assert _pairs_of(out["fg_pos"][0], 2, 2, 2) == {(0, 1), (1, 2), (0, 2)}
    assert _pairs_of(out["neg"][0], 2, 2, 2) == {(2, 3), (1, 3), (0, 3)}
    assert not out["fg_pos"][1].any() and not out["neg"][1].any()
    # A single H x W valid mask is broadcast over the batch.
    valid = torch.tensor([[True, True], [True, False]])
    masked = pair_labels(labels, 2, valid_pixels=valid)
    assert _pairs_of(masked["neg"][0], 2, 2, 2) == set()


def test_pair_labels_sets_are_disjoint_on_random_map():
    rng = np.random.default_rng(1)
    labels = rng.choice([0, 1, 2, 255], size=(9, 11))
    out = pair_labels(labels, 4)
    total = out["bg_pos"].int() + out["fg_pos"].int() + out["neg"].int()
    assert int(total.max()) <= 1


# ---------------------------------------------------------------- loss

def test_affinity_loss_by_hand():
    aff = torch.tensor([0.5, 0.8, 0.1, 0.9])
    labels = {"bg_pos": torch.tensor([True, False, False, False]),
              "fg_pos": torch.tensor([False, True, False, False]),
              "neg": torch.tensor([False, False, True, True])}
    loss, parts = affinity_loss(aff, labels)
    eps = 1e-5
    bg = -math.log(0.5 + eps)
    fg = -math.log(0.8 + eps)
    neg = (-math.log(1 + eps - 0.1) - math.log(1 + eps - 0.9)) / 2
    assert math.isclose(float(loss), bg / 4 + fg / 4 + neg / 2, rel_tol=1e-6)
    assert math.isclose(parts["neg_loss"], neg, rel_tol=1e-6)
    assert parts["neg_count"] == 2 and parts["bg_count"] == 1


def test_affinity_loss_empty_sets_are_zero_not_nan():
    aff = torch.tensor([[0.3, 0.7]], requires_grad=True)
    empty = torch.zeros(1, 2, dtype=torch.bool)
    loss, parts = affinity_loss(aff, {"bg_pos": empty, "fg_pos": empty, "neg": empty})
    assert float(loss.detach()) == 0.0 and parts["bg_loss"] == 0.0
    loss.backward()
    assert torch.equal(aff.grad, torch.zeros_like(aff))
    # Only a negative set: the positive terms contribute 0, no NaN.
    loss, parts = affinity_loss(aff, {"bg_pos": empty, "fg_pos": empty, "neg": torch.tensor([[True, False]])})
    assert math.isclose(float(loss.detach()), -math.log(1 + 1e-5 - 0.3) / 2, rel_tol=1e-6)
    assert not math.isnan(parts["fg_loss"])


def test_affinity_loss_end_to_end_gradient_and_shape_check():
    feats = torch.rand(2, 4, 6, 6, requires_grad=True)
    labels = pair_labels(torch.randint(0, 3, (2, 6, 6)), 3)
    loss, _ = affinity_loss(pairwise_affinity(feats, 3), labels)
    loss.backward()
    assert torch.isfinite(feats.grad).all()
    with pytest.raises(ValueError):
        affinity_loss(torch.rand(3), {"bg_pos": torch.zeros(2, dtype=torch.bool),
                                      "fg_pos": torch.zeros(3, dtype=torch.bool),
                                      "neg": torch.zeros(3, dtype=torch.bool)})


def test_affinity_by_pair_type_hand_computed():
    from pipeline.propagation.affinity import affinity_by_pair_type, pair_indices

    # 1 x 3 grid, radius 2 (offsets with dy^2 + dx^2 < 4; one row: only (0, 1)): pairs
    # (0,1) and (1,2), in pair_indices order (checked below).
    labels = np.array([[5, 5, 0]])  # class 5 (novel) twice, then background
    src, dst = pair_indices(1, 3, 2)
    pairs = sorted(zip(src.tolist(), dst.tolist()))
    assert pairs == [(0, 1), (1, 2)]
    order = {pair: k for k, pair in enumerate(zip(src.tolist(), dst.tolist()))}
    aff = np.zeros(2, np.float32)
    aff[order[(0, 1)]], aff[order[(1, 2)]] = 0.9, 0.2
    out = affinity_by_pair_type(aff, labels, 2, novel_classes=[5])
    assert out["within_novel"] == {"pairs": 1, "sum": pytest.approx(0.9), "mean": pytest.approx(0.9)}
    assert out["across"]["pairs"] == 1 and out["across"]["mean"] == pytest.approx(0.2)
    assert out["within_base"] == {"pairs": 0, "sum": 0.0, "mean": None}
    assert out["background"]["pairs"] == 0
    # class 5 as a base class: the same pair counts as within-base
    assert affinity_by_pair_type(aff, labels, 2, novel_classes=[3])["within_base"]["pairs"] == 1
    with pytest.raises(ValueError, match="pairs"):
        affinity_by_pair_type(np.zeros(3), labels, 2, novel_classes=[5])
