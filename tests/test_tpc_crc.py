"""TPC + CRC math (pipeline/tpc_crc.py, pipeline.crnet_training.pair_loss(crc=...)) on
hand-checkable cases: the transforms keep features and mask aligned, both CRC forms (the
paper's cascade: a second pass with the roles flipped, spied on a tiny net; the earlier
branch form) and their gradient through the predicted soft mask, the TPC schedule and the
lr factor of the conditioning phase."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.crnet_training import pair_loss, segmentation_ce, variant_settings
from pipeline.errors import PipelineError
from pipeline.models.crnet import CRNet
from pipeline.tpc_crc import (
    ConditioningThenPoly, add_noise, sample_transform, sampling_grid, tpc_schedule, transform_pair, warp_mask)

IDENTITY = {"flip": False, "angle": 0.0, "zoom": 1.0, "distortion": 0.0, "phase": [0.0, 0.0], "gaussian": 0.0,
            "pepper": 0.0, "noise_seed": 0}
CFG = {"flip": 0.5, "rotation": 30, "zoom": [0.8, 1.25], "distortion": 0.05, "gaussian": 0.1, "pepper": 0.02}


def test_exact_geometric_transforms_on_a_hand_case():
    m = torch.arange(16, dtype=torch.uint8).reshape(4, 4)
    assert torch.equal(warp_mask(m, sampling_grid(IDENTITY, 4, 4), 255), m)
    assert torch.equal(warp_mask(m, sampling_grid({**IDENTITY, "flip": True}, 4, 4), 255), m.flip(-1))
    assert torch.equal(warp_mask(m, sampling_grid({**IDENTITY, "angle": 90.0}, 4, 4), 255), torch.rot90(m, -1))
    # zoom 2: the centre 2 x 2 fills the map; zoom 0.5: the map shrinks into the centre, the rest ignore
    assert torch.equal(warp_mask(m, sampling_grid({**IDENTITY, "zoom": 2.0}, 4, 4), 255),
                       torch.tensor([[5, 5, 6, 6], [5, 5, 6, 6], [9, 9, 10, 10], [9, 9, 10, 10]], dtype=torch.uint8))
    small = warp_mask(m, sampling_grid({**IDENTITY, "zoom": 0.5}, 4, 4), 255)
    assert (small[0] == 255).all() and (small[:, 0] == 255).all() and small[1, 1] == 0 and small[2, 2] == 10


def test_features_and_mask_stay_aligned_under_any_transform():
    # a mask at 32 x 32 and "features" = its 4 x 4 block means at 8 x 8: after one random transform
    # (every kind, no noise) the transformed features match the block means of the transformed mask
    mask = torch.zeros(32, 32, dtype=torch.uint8)
    mask[4:20, 8:28] = 1
    feats = F.avg_pool2d(mask[None, None].float(), 4)
    rng = np.random.default_rng(3)
    for _ in range(5):
        t = {**sample_transform({**CFG, "rotation": 40, "distortion": 0.1}, rng), "gaussian": 0.0, "pepper": 0.0}
        tf, tm = transform_pair(feats, mask, t, 255)
        assert tf.shape == feats.shape and tm.shape == mask.shape and tm.dtype == mask.dtype
        valid = tm != 255
        pooled = F.avg_pool2d(torch.where(valid, tm, 0)[None, None].float(), 4)[0, 0]
        inside = F.avg_pool2d(valid[None, None].float(), 4)[0, 0] == 1
        fg, pred = pooled[inside] > 0.5, tf[0, 0][inside] > 0.5
        agree = (fg == pred).float().mean()
        assert agree > 0.9, (t, agree)


def test_noise_is_seeded_and_pepper_zeroes_whole_cells():
    feats = torch.ones(1, 3, 10, 10) + torch.arange(100.0).reshape(10, 10)
    t = {**IDENTITY, "pepper": 0.3, "noise_seed": 7}
    out = add_noise(feats, t)
    zero = (out == 0).all(dim=1)[0]
    assert 10 < int(zero.sum()) < 60 and ((out != 0).all(dim=1) | zero).all()  # all channels or none
    assert torch.equal(out, add_noise(feats, t))
    noisy = add_noise(feats, {**IDENTITY, "gaussian": 0.1, "noise_seed": 1})
    assert not torch.equal(noisy, feats) and abs(float((noisy - feats).std()) - 0.1 * float(feats.std())) < 1.5


def test_sample_transform_stays_in_its_ranges():
    rng = np.random.default_rng(0)
    ts = [sample_transform(CFG, rng) for _ in range(200)]
    assert all(-30 <= t["angle"] <= 30 and 0.8 <= t["zoom"] <= 1.25 and 0 <= t["distortion"] <= 0.05 for t in ts)
    assert 60 < sum(t["flip"] for t in ts) < 140


class Fixed(torch.nn.Module):
    """A stand-in CRNet: fixed logits; records the query mask it was given."""

    def __init__(self, query_logits, support_logits):
        super().__init__()
        self.q, self.s, self.seen = query_logits, support_logits, []

    def forward(self, query, support, support_mask, query_mask=None, iterations=1, predict_support=True,
                ignore_index=255):
        self.seen.append(query_mask)
        return {"query": [self.q], "support": [self.s], "cooccurrence": None}


def test_crc_loss_on_a_hand_case():
    # 1 x 2 x 1 x 2 logits: query pixels (fg logit 0 vs bg 0) -> p = 0.5 each: CE ln 2;
    # support pixels with logits (0, ln 3): p(fg) = 3/4, targets [1, 0] -> (-ln 3/4 - ln 1/4) / 2
    q = torch.zeros(1, 2, 1, 2)
    s = torch.tensor([[[[0.0, 0.0]], [[math.log(3), math.log(3)]]]])
    group = {"query": torch.zeros(1, 4, 1, 2), "support": torch.zeros(1, 4, 1, 2),
             "query_mask": torch.tensor([[[1, 0]]], dtype=torch.uint8),
             "support_mask": torch.tensor([[[1, 0]]], dtype=torch.uint8), "positive": torch.tensor([True])}
    model = Fixed(q, s)
    loss, parts = pair_loss(model, group, 1, 1.0, 0.0, 255, crc="branch")
    expected_support = (-math.log(0.75) - math.log(0.25)) / 2
    assert parts["query_ce"] == pytest.approx(math.log(2)) and parts["support_ce"] == pytest.approx(expected_support)
    assert float(loss) == pytest.approx(math.log(2) + expected_support)
    assert model.seen[-1] is None  # CRC: the support branch never sees the query's ground truth
    pair_loss(model, group, 1, 1.0, 0.0, 255)
    assert model.seen[-1] is group["query_mask"]


def test_branch_crc_trains_through_the_predicted_soft_mask():
    torch.manual_seed(0)
    net = CRNet([4], hidden=8)
    query, support = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    smask = torch.zeros(1, 12, 12, dtype=torch.uint8)
    smask[:, 2:8, 2:8] = 1
    cyclic = net(query, support, smask, iterations=2)
    grad = torch.autograd.grad(cyclic["support"][-1].sum(), cyclic["query"][-1], allow_unused=True)[0]
    assert grad is not None and grad.abs().sum() > 0  # the support prediction depends on the soft query mask
    known = net(query, support, smask, query_mask=smask, iterations=2)
    grad = torch.autograd.grad(known["support"][-1].sum(), known["query"][-1], allow_unused=True)[0]
    assert grad is None  # with the ground-truth query mask it does not


def test_conditioning_then_poly_lr_factor():
    f = ConditioningThenPoly(conditioning_steps=3, ratio=0.01, training_steps=10, power=1.0)
    assert [f(s) for s in range(3)] == [0.01] * 3
    assert f(3) == 1.0 and f(8) == pytest.approx(0.5) and f(13) == 0.0


def test_variant_settings_of_the_tpc_crc_variants():
    params = {"crnet": {"train": {"novel_images": "background"}, "ablation": {"variants": {"no_cache": {"cache": False}}},
                        "tpc_crc": {"variants": {"tpc_crc": {"tpc": True, "crc": "cascade"}, "crc": {"crc": "cascade"},
                                                 "crc_branch": {"crc": "branch"}}}}}
    full = variant_settings(params, "full")
    assert not full["tpc"] and not full["crc"] and full["cache"]
    both = variant_settings(params, "tpc_crc_seed2")
    assert both["tpc"] and both["crc"] == "cascade" and both["cache"]
    assert variant_settings(params, "crc")["crc"] == "cascade" and not variant_settings(params, "crc")["tpc"]
    assert variant_settings(params, "crc_branch")["crc"] == "branch"
    with pytest.raises(PipelineError, match="crnet.tpc_crc.variants"):
        variant_settings(params, "nope")


class Spy(torch.nn.Module):
    """A tiny CRNet whose forward calls (arguments and outputs) are recorded, with a hook on the
    cross-reference's query-branch FC (what it receives: the pooled projected query)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = CRNet([4], hidden=8)
        self.calls, self.query_branch = [], []
        self.net.cross.fc_query.register_forward_hook(lambda m, inp, out: self.query_branch.append(inp[0]))

    def forward(self, query, support, support_mask, **kw):
        if support_mask.is_floating_point():
            support_mask.retain_grad()
        out = self.net(query, support, support_mask, **kw)
        self.calls.append({"query": query, "support": support, "support_mask": support_mask, **kw, "out": out})
        return out


def cascade_group():
    torch.manual_seed(1)
    smask = torch.zeros(2, 12, 12, dtype=torch.uint8)
    smask[:, 2:8, 2:8] = 1
    qmask = torch.zeros(2, 12, 12, dtype=torch.uint8)
    qmask[:, 4:12, 0:6] = 1
    return {"query": torch.randn(2, 4, 6, 6), "support": torch.randn(2, 4, 6, 6), "query_mask": qmask,
            "support_mask": smask, "positive": torch.tensor([True, True])}


def test_cascade_crc_second_pass_flips_the_roles_through_the_query_branch():
    spy, group = Spy(), cascade_group()
    loss, parts = pair_loss(spy, group, 2, 1.0, 0.0, 255, crc="cascade")
    assert len(spy.calls) == 2 and "cycle_ce" in parts
    first, second = spy.calls
    # stage one: CRNet's own pass, with the query's ground truth for its support branch
    assert first["query"] is group["query"] and first["support_mask"] is group["support_mask"]
    assert first["query_mask"] is group["query_mask"]
    # stage two: the support image is the query, the query image the support ...
    assert torch.equal(second["query"], group["support"]) and torch.equal(second["support"], group["query"])
    # ... and its support mask is stage one's soft query mask, not detached
    soft = torch.softmax(first["out"]["query"][-1], dim=1)[:, 1]
    assert torch.allclose(second["support_mask"], soft) and second["support_mask"].grad_fn is not None
    assert second["predict_support"] is False
    # the support image went through the query branch of the cross-reference (its FC weights)
    assert torch.allclose(spy.query_branch[1], spy.net.project(group["support"]).mean(dim=(2, 3)))
    # the stage-two term is the CE against the ORIGINAL support mask, mean over iterations
    expected = torch.stack([segmentation_ce(F.interpolate(o, size=(12, 12), mode="bilinear", align_corners=False),
                                            group["support_mask"], 255) for o in second["out"]["query"]]).mean()
    assert parts["cycle_ce"] == pytest.approx(float(expected.detach()), rel=1e-5)
    # end to end: the stage-two loss reaches stage one through the soft mask
    loss.backward()
    assert second["support_mask"].grad is not None and second["support_mask"].grad.abs().sum() > 0


def test_cascade_crc_target_is_the_support_mask_and_negatives_have_no_term():
    spy, group = Spy(), cascade_group()
    _, parts = pair_loss(spy, group, 1, 1.0, 0.0, 255, crc="cascade")
    flipped = {**group, "support_mask": 1 - group["support_mask"]}
    _, parts_flipped = pair_loss(Spy(), flipped, 1, 1.0, 0.0, 255, crc="cascade")
    assert parts["cycle_ce"] != pytest.approx(parts_flipped["cycle_ce"])
    negative = {**group, "positive": torch.tensor([False, False])}
    spy = Spy()
    _, parts = pair_loss(spy, negative, 1, 1.0, 0.0, 255, crc="cascade")
    assert len(spy.calls) == 1 and "cycle_ce" not in parts
    half = {**group, "positive": torch.tensor([True, False])}
    spy = Spy()
    pair_loss(spy, half, 1, 1.0, 0.0, 255, crc="cascade")
    assert spy.calls[1]["query"].shape[0] == 1  # only the positive pair returns
    _, base = pair_loss(Spy(), group, 1, 1.0, 0.0, 255)
    assert "cycle_ce" not in base
    with pytest.raises(ValueError, match="crc"):
        pair_loss(Spy(), group, 1, 1.0, 0.0, 255, crc="both")


def test_tpc_schedule_keeps_the_papers_shape():
    shares = {"epoch_share": 0.15, "lr_share": 0.01}
    assert tpc_schedule(200, 2.5e-3, shares) == (30, pytest.approx(2.5e-5))  # the paper's own numbers
    assert tpc_schedule(50, 2.5e-3, shares) == (8, pytest.approx(2.5e-5))  # 7.5 rounded up
    assert tpc_schedule(8, 1e-3, shares) == (2, pytest.approx(1e-5))  # embedded / MSRC
    assert tpc_schedule(2, 1e-3, shares)[0] == 1  # never zero epochs
