"""Heads: output shapes and strides, CAM math, parameter groups, gradients, metadata."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.models import AffinityNet, BoundaryNet, CAMNet, DeepLabASPP
from pipeline.models.affinity_net import level_widths
from pipeline.models.deeplab import default_rates

# Random weights keep these tests fast; the pretrained path is tested in test_backbone.py.
OS16 = {"name": "efficientnet_lite0", "pretrained": False, "output_stride": 16, "frozen_blocks": 2}
OS8 = {"name": "efficientnet_lite0", "pretrained": False, "output_stride": 8}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_cam_net_logits_and_cams():
    net = CAMNet(OS16, num_classes=5).eval()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        logits, cams, features = net(x), net.cams(x), net.backbone(x)[-1]
    assert logits.shape == (2, 5)
    assert cams.shape == (2, 5, 3, 3) and net.out_stride == 16
    assert (cams >= 0).all()
    # Logits = classifier applied to the pooled features = mean of the un-ReLU'd CAMs.
    raw = F.conv2d(features, net.classifier.weight)
    torch.testing.assert_close(logits, raw.mean(dim=(2, 3)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cams, raw.clamp(min=0))


def test_boundary_net_output_at_stride_4():
    net = BoundaryNet(OS16).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 52, 36))
    assert out.shape == (1, 1, 13, 9) and net.out_stride == 4
    assert net.levels == [1, 2, 3, 4]  # stride 4, 8, 16, 16 levels


@pytest.mark.parametrize("cfg", [OS16, OS8])
def test_affinity_net_embedding_at_stride_8(cfg):
    net = AffinityNet(cfg, feat_dim=448).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 72))
    assert out.shape == (1, 448, 8, 9) and net.out_stride == 8
    assert [p.out_channels for p in net.projections] == [64, 128, 256]  # PSA's split of 448
    assert net.meta["feat_dim"] == 448


def test_level_widths_split():
    assert level_widths(448, 3) == [64, 128, 256]
    assert level_widths(100, 3) == [14, 28, 58]
    assert sum(level_widths(37, 3)) == 37


def test_affinity_net_pair_affinities():
    pytest.importorskip("pipeline.propagation.affinity")
    from pipeline.propagation.affinity import num_pairs

    net = AffinityNet(OS16, feat_dim=64).eval()
    with torch.no_grad():
        aff = net.affinities(torch.randn(1, 3, 48, 48), radius=3)
    assert aff.shape == (1, num_pairs(6, 6, 3))
    assert (aff > 0).all() and (aff <= 1).all()


def test_deeplab_logits_at_input_size_and_rates():
    net = DeepLabASPP(OS16, num_classes=21).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 90, 70))
    assert out.shape == (1, 21, 90, 70)
    assert net.rates == (6, 12, 18) and default_rates(8) == (12, 24, 36)
    assert DeepLabASPP(OS16, num_classes=1, rates=(2, 4, 6)).rates == (2, 4, 6)


def test_heads_train_with_batch_of_one():
    # GroupNorm heads: batch size 1 works in training mode (the image-pooling branch is 1x1).
    net = DeepLabASPP(OS16, num_classes=1).train()
    net(torch.randn(1, 3, 32, 32)).mean().backward()


@pytest.mark.parametrize("make", [lambda: CAMNet(OS16, 3), lambda: BoundaryNet(OS16),
                                  lambda: AffinityNet(OS16, 32), lambda: DeepLabASPP(OS16, 3)])
def test_param_groups_backbone_lr_and_heads_10x(make):
    net = make()
    groups = net.param_groups(0.01)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert groups[0]["lr"] == 0.01 and groups[1]["lr"] == pytest.approx(0.1)
    in_groups = {id(p) for g in groups for p in g["params"]}
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert in_groups == trainable  # every trainable parameter exactly once, frozen ones left out
    assert sum(len(g["params"]) for g in groups) == len(in_groups)
    backbone_ids = {id(p) for p in net.backbone.parameters()}
    assert all(id(p) in backbone_ids for p in groups[0]["params"])
    assert not any(id(p) in backbone_ids for p in groups[1]["params"])
    # A gradient step reaches the heads and the unfrozen backbone, not the frozen part.
    net.train()
    out = net(torch.randn(2, 3, 32, 32))
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None for p in groups[1]["params"])
    assert net.backbone.body.blocks[6][0].conv_pwl.weight.grad is not None
    assert net.backbone.body.blocks[0][0].conv_dw.weight.grad is None


def test_meta_names_backbone_stride_and_classes():
    assert CAMNet(OS16, 4).meta == {"model": "CAMNet", "backbone": "efficientnet_lite0", "output_stride": 16,
                                    "num_classes": 4}
    assert BoundaryNet(OS8).meta["output_stride"] == 8


def test_resnet50_heads_build():
    cfg = {"name": "resnet50", "pretrained": False, "output_stride": 16}
    net = BoundaryNet(cfg).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 1, 16, 16)
