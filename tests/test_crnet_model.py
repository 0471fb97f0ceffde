"""CRNet (pipeline/models/crnet.py): shapes, the ablation switches, the probability cache,
an all-zero support mask, the encoder's level concatenation."""
from __future__ import annotations

import pytest
import torch

from pipeline.models.crnet import CRNet, encoder_features, foreground_probability

LEVELS = [6, 10]


def inputs(b=2, h=8, w=10, hs=6, ws=6, size=32):
    torch.manual_seed(0)
    q, s = torch.randn(b, sum(LEVELS), h, w), torch.randn(b, sum(LEVELS), hs, ws)
    mask = torch.zeros(b, size, size, dtype=torch.uint8)
    mask[:, 8:20, 8:20] = 1
    mask[:, 0, :] = 255
    return q, s, mask


def test_shapes_both_branches_and_cooccurrence():
    net = CRNet(LEVELS, hidden=16)
    q, s, m = inputs()
    out = net(q, s, m, iterations=3)
    assert len(out["query"]) == 3 and len(out["support"]) == 3
    assert out["query"][0].shape == (2, 2, 8, 10) and out["support"][0].shape == (2, 2, 6, 6)
    assert [t.shape for t in out["cooccurrence"]] == [(2, 1, 8, 10), (2, 1, 6, 6)]  # dense: a map per image
    pooled = CRNet(LEVELS, hidden=16, dense_cooccurrence=False)(q, s, m, iterations=1)
    assert [t.shape for t in pooled["cooccurrence"]] == [(2,), (2,)]
    assert foreground_probability(out["query"][-1]).shape == (2, 8, 10)


@pytest.mark.parametrize("switch", ["cross_reference", "condition", "refinement", "cache", "single_level",
                                    "refine_cross", "dense_cooccurrence"])
def test_each_ablation_switch_builds_runs_and_trains(switch):
    net = CRNet(LEVELS, hidden=16, **{switch: switch == "single_level"} if switch == "single_level"
                else {switch: False})
    q, s, m = inputs()
    out = net(q, s, m, query_mask=m[:, :, :], iterations=2)
    loss = sum(o.mean() for o in out["query"] + out["support"])
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert (out["cooccurrence"] is None) == (switch == "cross_reference")
    assert net.meta[switch] == (switch == "single_level")


def test_single_level_uses_only_the_last_levels_channels():
    net = CRNet(LEVELS, hidden=16, single_level=True)
    assert net.project[0].in_channels == LEVELS[-1]
    q, s, m = inputs()
    q2 = q.clone()
    q2[:, :LEVELS[0]] = 99.0  # the mid level is not read
    assert torch.equal(net(q, s, m, iterations=1)["query"][0], net(q2, s, m, iterations=1)["query"][0])


def test_cache_makes_iterations_differ_and_without_cache_they_are_equal():
    q, s, m = inputs()
    with torch.no_grad():
        out = CRNet(LEVELS, hidden=16)(q, s, m, iterations=3)["query"]
        assert not torch.equal(out[0], out[1])
        same = CRNet(LEVELS, hidden=16, cache=False)(q, s, m, iterations=3)["query"]
        assert torch.equal(same[0], same[2])
        plain = CRNet(LEVELS, hidden=16, refinement=False)(q, s, m, iterations=2)["query"]
        assert torch.equal(plain[0], plain[1])


def test_all_zero_support_mask_runs_without_nan():
    q, s, _ = inputs()
    zero = torch.zeros(2, 32, 32, dtype=torch.uint8)
    out = CRNet(LEVELS, hidden=16)(q, s, zero, iterations=5)
    assert all(torch.isfinite(o).all() for o in out["query"] + out["support"])


def test_support_branch_without_query_mask_is_conditioned_on_the_predicted_query_probability():
    net = CRNet(LEVELS, hidden=16)
    q, s, m = inputs()
    out = net(q, s, m, iterations=1)
    out["support"][0].sum().backward()
    # gradient reaches the query-prediction layers only through the soft predicted mask
    assert net.refine.classifier.weight.grad is not None


def test_wrong_channel_count_is_an_error():
    q, s, m = inputs()
    with pytest.raises(ValueError, match="channels"):
        CRNet([4, 4], hidden=8)(q, s, m)


def test_encoder_features_concatenate_levels_at_the_finest_grid():
    class Fake(torch.nn.Module):
        def forward(self, x):
            return [x[:, :1], x[:, :2, ::2, ::2], x[:, :3, ::4, ::4]]

    feats = encoder_features(Fake(), torch.randn(1, 3, 16, 16), [1, 2])
    assert feats.shape == (1, 5, 8, 8)


def test_refinement_reads_the_cross_reference_output_beside_the_condition_output():
    net = CRNet(LEVELS, hidden=16)
    assert net.refine.fuse[0].in_channels == 2 * 16 + 1  # condition output + reinforced features + cache
    assert CRNet(LEVELS, hidden=16, refine_cross=False).refine.fuse[0].in_channels == 16 + 1
