"""CRNet's paper row and the rows beyond it (issue 21 items 3-5), by hand: the k-shot finetune's
pair list, the dense co-occurrence target, the PFENet prior, the feature-space mosaic."""
from __future__ import annotations

import torch

from pipeline.crnet_training import cooccurrence_bce
from pipeline.methods.crnet.test_crnet import finetune_pairs


def test_finetune_pairs_are_the_ordered_pairs_of_distinct_supports():
    pairs = finetune_pairs(7, ["a", "b", "c"])
    assert [(p["query"], p["support"]) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"),
                                                          ("c", "a"), ("c", "b")]  # k(k-1) = 6, no (x, x)
    assert all(p["class"] == 7 and p["positive"] and not p["flip_query"] and not p["flip_support"] for p in pairs)
    assert finetune_pairs(7, ["a"]) == []  # one support: nothing to finetune on (the stage keeps the model)


def test_dense_cooccurrence_target_is_the_class_mask_of_positive_pairs_and_zero_for_negatives():
    # 2 pairs on a 2 x 2 mask (= the logits' grid): pair 0 positive, pair 1 negative; 255 left out.
    mask = torch.tensor([[[1, 0], [255, 1]], [[1, 1], [0, 255]]], dtype=torch.uint8)
    positive = torch.tensor([True, False])
    logits = torch.tensor([[[[2.0, -1.0], [5.0, 0.5]]], [[[0.0, 3.0], [-2.0, 9.0]]]])
    got = cooccurrence_bce(logits, mask, positive, 255)
    x = torch.tensor([2.0, -1.0, 0.5, 0.0, 3.0, -2.0])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])  # the negative pair's class pixels are 0 targets
    want = torch.nn.functional.binary_cross_entropy_with_logits(x, y)
    assert torch.allclose(got, want)
    # pooled logits (the pre-paper head): whether the pair is positive
    pooled = cooccurrence_bce(torch.tensor([1.0, -1.0]), mask, positive, 255)
    assert torch.allclose(pooled, torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([1.0, -1.0]), torch.tensor([1.0, 0.0])))
