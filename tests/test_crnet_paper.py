"""CRNet's paper row and the rows beyond it (issue 21 items 3-5), by hand: the k-shot finetune's
pair list, the dense co-occurrence target, the PFENet prior, the feature-space mosaic."""
from __future__ import annotations

from pipeline.methods.crnet.test_crnet import finetune_pairs


def test_finetune_pairs_are_the_ordered_pairs_of_distinct_supports():
    pairs = finetune_pairs(7, ["a", "b", "c"])
    assert [(p["query"], p["support"]) for p in pairs] == [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"),
                                                          ("c", "a"), ("c", "b")]  # k(k-1) = 6, no (x, x)
    assert all(p["class"] == 7 and p["positive"] and not p["flip_query"] and not p["flip_support"] for p in pairs)
    assert finetune_pairs(7, ["a"]) == []  # one support: nothing to finetune on (the stage keeps the model)
