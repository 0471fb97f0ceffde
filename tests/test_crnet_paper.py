"""CRNet's paper row and the rows beyond it (issue 21 items 3-5), by hand: the k-shot finetune's
pair list, the dense co-occurrence target, the PFENet prior, the feature-space mosaic."""
from __future__ import annotations

import torch

from pipeline.crnet_training import cooccurrence_bce
from pipeline.fewshot import mask_weights
from pipeline.methods.crnet.test_crnet import finetune_pairs
from pipeline.models.crnet import CRNet, training_free_prior


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


def _prior_case():
    # Query: 3 cells (1 x 3) of 2 channels, (1, 0), (1, 1), (1, 3); support: 2 cells, (0, 1) object
    # and (1, 0) background (mask 0 -> a zero vector after masking).
    query = torch.tensor([[[[1.0, 1.0, 1.0]], [[0.0, 1.0, 3.0]]]])
    support = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]]]])
    fg = torch.tensor([[[[1.0, 0.0]]]])
    return query, support, fg


def test_training_free_prior_by_hand():
    query, support, fg = _prior_case()
    # max cosine to the masked support cells: 0, 1/sqrt(2), 3/sqrt(10); min-max: 0, 0.7454, 1
    raw = torch.tensor([0.0, 2 ** -0.5, 3 / 10 ** 0.5])
    want = (raw - raw.min()) / (raw.max() - raw.min())
    got = training_free_prior(query, support, fg)
    assert got.shape == (1, 1, 1, 3)
    assert torch.allclose(got[0, 0, 0], want, atol=1e-5)
    assert torch.allclose(want, torch.tensor([0.0, 0.74536, 1.0]), atol=1e-4)
    assert torch.equal(training_free_prior(query, support, torch.zeros_like(fg)), torch.zeros(1, 1, 1, 3))


def test_the_prior_row_feeds_the_prior_of_the_query_against_the_masked_support():
    # Goes red if the model computes the prior from the wrong image (query against itself, the
    # support against the query) or ignores the support mask or the prior input.
    levels = [3, 2]
    torch.manual_seed(0)
    query, support = torch.randn(2, 5, 4, 5), torch.randn(2, 5, 3, 3)
    mask = torch.zeros(2, 12, 12, dtype=torch.uint8)
    mask[:, 2:7, 3:9] = 1
    net = CRNet(levels, hidden=8, prior=True).eval()
    with torch.no_grad():
        out = net(query, support, mask, query_mask=torch.ones(2, 16, 20, dtype=torch.uint8), iterations=2)
    fg, _ = mask_weights(mask, (3, 3))
    want = training_free_prior(query[:, -2:], support[:, -2:], fg)
    assert torch.allclose(out["prior"][0], want)
    assert not torch.allclose(training_free_prior(query[:, -2:], query[:, -2:], mask_weights(mask, (4, 5))[0]), want)
    qfg, _ = mask_weights(torch.ones(2, 16, 20, dtype=torch.uint8), (4, 5))
    assert torch.allclose(out["prior"][1], training_free_prior(support[:, -2:], query[:, -2:], qfg))
    # the prediction reads the prior: another support object changes it through the prior alone
    net_no_prior_weight = CRNet(levels, hidden=8, prior=True).eval()
    net_no_prior_weight.load_state_dict(net.state_dict())
    with torch.no_grad():
        net_no_prior_weight.refine.fuse[0].weight[:, -2] = 0.0  # the prior's input channel (before the cache)
        a = net(query, support, mask, iterations=1)["query"][0]
        b = net_no_prior_weight(query, support, mask, iterations=1)["query"][0]
    assert not torch.allclose(a, b)


def test_feature_mosaic_puts_the_other_image_beside_and_its_objects_are_background():
    from pipeline.data.fewshot_features import feature_mosaic
    # target: 1 channel, 2 x 2 grid, 4 x 4 mask with the class in its top-left quarter;
    # other: 2 x 1 grid, 4 x 2 mask without the class (0) and a void column (255).
    target = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    target_mask = torch.zeros(4, 4, dtype=torch.uint8)
    target_mask[:2, :2] = 1
    other = torch.tensor([[[7.0], [8.0]]])
    other_mask = torch.tensor([[0, 255]] * 4, dtype=torch.uint8)
    feats, mask = feature_mosaic(target, target_mask, other, other_mask, target_left=True)
    assert torch.equal(feats, torch.tensor([[[1.0, 2.0, 7.0], [3.0, 4.0, 8.0]]]))
    assert mask.shape == (4, 6) and torch.equal(mask[:, :4], target_mask)
    assert torch.equal(mask[:, 4:], other_mask)  # the other image's pixels: background or void, never the class
    assert int((mask == 1).sum()) == 4
    feats, mask = feature_mosaic(target, target_mask, other, other_mask, target_left=False)
    assert torch.equal(feats[0, :, 1:], target[0]) and torch.equal(mask[:, 2:], target_mask)


def test_add_mosaics_pairs_queries_with_images_without_the_class():
    import numpy as np
    from pipeline.crnet_training import add_mosaics
    pairs = [{"class": 1, "query": "a", "support": "b", "positive": True} for _ in range(200)]
    out = add_mosaics(pairs, {1: ["x", "y", "a"]}, 0.5, np.random.default_rng(0))
    chosen = [p for p in out if p.get("mosaic_with")]
    assert 60 < len(chosen) < 140 and {p["mosaic_with"] for p in chosen} == {"x", "y"}
    assert {p["mosaic_left"] for p in chosen} == {True, False}
    assert add_mosaics(pairs, {1: ["x"]}, 0.0, np.random.default_rng(0)) == pairs
