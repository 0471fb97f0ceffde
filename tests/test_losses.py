"""Losses, checked against hand-computed values.

softplus(0) = ln 2, softplus(ln 3) = ln 4, softplus(-ln 3) = ln(4/3).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.losses import (BL_BACKGROUND, BL_BOUNDARY, BL_FOREGROUND, BL_IGNORE, boundary_loss,
                             boundary_loss_parts, boundary_loss_target, boundary_target_at_stride,
                             multilabel_soft_margin, segmentation_ce)

LN2, LN3 = math.log(2), math.log(3)


def test_multilabel_soft_margin_hand_computed():
    logits = torch.tensor([[0.0, LN3]])
    targets = torch.tensor([[1, 0]])
    # -log sigmoid(0) = ln 2 ; -log(1 - sigmoid(ln 3)) = ln 4 ; mean over the 2 classes.
    assert multilabel_soft_margin(logits, targets).item() == pytest.approx(1.5 * LN2)


def test_boundary_loss_hand_computed():
    logits = torch.tensor([[[[0.0, LN3, -LN3], [2.0, 0.0, 0.0]]]], requires_grad=True)
    target = torch.tensor([[[BL_BOUNDARY, BL_FOREGROUND, BL_BACKGROUND],
                            [BL_IGNORE, BL_BOUNDARY, BL_BACKGROUND]]], dtype=torch.uint8)
    loss, parts = boundary_loss_parts(logits, target)
    boundary = LN2                               # two boundary pixels at logit 0
    foreground = math.log(4)                     # one fg pixel at logit ln 3
    background = (math.log(4 / 3) + LN2) / 2     # bg pixels at -ln 3 and 0
    assert parts["boundary"] == pytest.approx(boundary)
    assert parts["foreground"] == pytest.approx(foreground)
    assert parts["background"] == pytest.approx(background)
    assert loss.item() == pytest.approx(boundary + foreground / 2 + background / 2)
    loss.backward()
    assert logits.grad[0, 0, 1, 0] == 0  # the ignored pixel gets no gradient
    # A 3-D logits tensor (no channel axis) gives the same value.
    assert boundary_loss(logits.detach()[:, 0], target).item() == pytest.approx(loss.item())


def test_boundary_loss_empty_sets_contribute_zero():
    logits = torch.tensor([[[[0.0, LN3]]]])
    no_background = torch.tensor([[[BL_BOUNDARY, BL_FOREGROUND]]])
    assert boundary_loss(logits, no_background).item() == pytest.approx(LN2 + math.log(4) / 2)
    all_ignored = torch.full((1, 1, 2), BL_IGNORE)
    logits.requires_grad_(True)
    loss = boundary_loss(logits, all_ignored)
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph, no NaN
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_boundary_loss_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="boundary_target_at_stride"):
        boundary_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 8, 8))


def test_boundary_loss_target_encoding():
    mask = np.array([[0, 3, 255], [255, 0, 3]], dtype=np.uint8)
    boundary = np.array([[0, 1, 1], [255, 0, 0]], dtype=np.uint8)  # 1 bd, 0 not, 255 ignore
    expected = np.array([[BL_BACKGROUND, BL_BOUNDARY, BL_BOUNDARY],
                         [BL_IGNORE, BL_BACKGROUND, BL_FOREGROUND]], dtype=np.uint8)
    np.testing.assert_array_equal(boundary_loss_target(boundary, mask, 0, 255), expected)
    # No background class (CamVid): every non-boundary pixel is foreground.
    no_bg = expected.copy()
    no_bg[no_bg == BL_BACKGROUND] = BL_FOREGROUND
    np.testing.assert_array_equal(boundary_loss_target(boundary, mask, None, 255), no_bg)


def test_boundary_target_at_stride_rules():
    target = np.array([[0, 0, 1, 1, 0],
                       [0, 1, 1, 2, 0],
                       [255, 0, 1, 1, 1],
                       [0, 0, 0, 1, 1]], dtype=np.uint8)
    expected = np.array([[BL_BACKGROUND, BL_BOUNDARY, BL_BACKGROUND],
                         [BL_IGNORE, BL_FOREGROUND, BL_FOREGROUND]], dtype=np.uint8)
    out = boundary_target_at_stride(target, 2)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    batch = torch.from_numpy(np.stack([target, target]))
    torch.testing.assert_close(boundary_target_at_stride(batch, 2), torch.from_numpy(np.stack([expected] * 2)))
    tie = np.array([[0, 1]], dtype=np.uint8)
    np.testing.assert_array_equal(boundary_target_at_stride(tie, 2), [[BL_FOREGROUND]])
    np.testing.assert_array_equal(boundary_target_at_stride(target, 1), target)


def test_segmentation_ce_hand_computed():
    logits = torch.tensor([[[[0.0, LN3, 5.0]], [[0.0, 0.0, -5.0]]]])  # B=1, C=2, H=1, W=3
    target = torch.tensor([[[0, 1, 255]]])
    # pixel 0: -log(1/2) = ln 2 ; pixel 1: -log(1/4) = ln 4 ; pixel 2 ignored.
    assert segmentation_ce(logits, target, 255).item() == pytest.approx((LN2 + math.log(4)) / 2)
    all_ignored = torch.full((1, 1, 3), 255)
    assert segmentation_ce(logits, all_ignored, 255).item() == 0.0
