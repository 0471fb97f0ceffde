"""P-Net: discriminator shapes (Table 1), the adversarial losses of Eqs. 3-5 by hand, the
separation of the two nets' gradients, and stage train_pnet on the L-Net tiny dataset
(conftest.make_lnet_tiny; pre-training switch, outputs, bad input)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from pipeline import adversarial as adv
from pipeline.config import load_params
from pipeline.data.label_png import write_label_png
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError
from pipeline.methods.lnet import train_pnet
from pipeline.models.pnet import PNet
from pipeline.stages.train_seg import build_seg_model, model_meta
from pipeline.training import load_model, save_model
from conftest import LNET_NOVEL, make_lnet_tiny, run_fails, run_ok


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --- discriminator ------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(32, 32), (45, 71), (96, 96)])
def test_pnet_gives_one_logit_per_input_for_any_crop(size):
    net = PNet(pool_size=8).eval()
    with torch.no_grad():
        logits = net(torch.randn(3, 3, *size))
        prob = net.probability(torch.randn(2, 3, *size))
    assert logits.shape == (3,) and prob.shape == (2,)
    assert ((prob > 0) & (prob < 1)).all()


def test_pnet_layers_follow_table_1():
    net = PNet(pool_size=4)
    convs = [m for m in net.features.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 64, 128, 128]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.features.modules()) == 3
    fcs = [m for m in net.classifier if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(128 * 16, 256), (256, 512), (512, 1)]
    assert sum(isinstance(m, nn.Tanh) for m in net.classifier) == 2
    assert net.meta == {"model": "PNet", "pool_size": 4}


# --- losses by hand -----------------------------------------------------------------------

def test_discriminator_loss_hand_computed():
    zero = torch.zeros(3)
    assert float(adv.discriminator_loss(zero, zero)) == pytest.approx(2 * math.log(2))
    # real z = 1: -log sigmoid(1) = log(1 + e^-1); fake z = -1: -log(1 - sigmoid(-1)) = log(1 + e^-1)
    value = adv.discriminator_loss(torch.tensor([1.0]), torch.tensor([-1.0]))
    assert float(value) == pytest.approx(2 * math.log1p(math.exp(-1)))
    # means per set: real {0, 2}, fake {0}
    value = adv.discriminator_loss(torch.tensor([0.0, 2.0]), torch.tensor([0.0]))
    assert float(value) == pytest.approx((math.log(2) + math.log1p(math.exp(-2))) / 2 + math.log(2))
    # no real pairs in the batch: the fake term alone, still differentiable
    fake = torch.tensor([0.5], requires_grad=True)
    value = adv.discriminator_loss(torch.zeros(0), fake)
    assert float(value.detach()) == pytest.approx(math.log1p(math.exp(0.5)))
    value.backward()
    assert float(fake.grad) == pytest.approx(1 / (1 + math.exp(-0.5)))


def test_non_saturating_generator_loss_hand_computed():
    assert float(adv.generator_loss(torch.zeros(4))) == pytest.approx(math.log(2))
    assert float(adv.generator_loss(torch.tensor([-2.0]))) == pytest.approx(math.log1p(math.exp(2)))
    assert float(adv.minimax_generator_loss(torch.tensor([-2.0]))) == pytest.approx(-math.log1p(math.exp(-2)))
    assert float(adv.generator_loss(torch.zeros(0))) == 0.0
    # D confidently rejects (z = -10): the minimax gradient vanishes, the non-saturating one does not
    z = torch.tensor([-10.0], requires_grad=True)
    adv.generator_loss(z).backward()
    assert float(z.grad) == pytest.approx(-1 / (1 + math.exp(-10)))
    z2 = torch.tensor([-10.0], requires_grad=True)
    adv.minimax_generator_loss(z2).backward()
    assert abs(float(z2.grad)) < 1e-4
    total = adv.segmentation_objective(torch.tensor(0.3), torch.tensor(0.7), 0.5)
    assert float(total) == pytest.approx(0.65)


def test_category_pairs_from_targets():
    targets = torch.tensor([[[0, 1], [1, 255]],
                            [[3, 3], [0, 2]],
                            [[255, 255], [0, 0]]])
    b, c = adv.category_pairs(targets, num_classes=4, background_index=0)
    assert b.tolist() == [0, 1, 1] and c.tolist() == [1, 2, 3]
    b, c = adv.category_pairs(targets, num_classes=4, background_index=0, min_pixels=2)
    assert b.tolist() == [0, 1] and c.tolist() == [1, 3]
    b, c = adv.category_pairs(targets, num_classes=4, background_index=None)  # no background class
    assert list(zip(b.tolist(), c.tolist())) == [(0, 0), (0, 1), (1, 0), (1, 2), (1, 3), (2, 0)]


def test_masks_and_masked_images():
    targets = torch.tensor([[[1, 0], [255, 1]]])
    probs = torch.tensor([[[[0.6, 0.5], [0.4, 0.1]], [[0.4, 0.5], [0.6, 0.9]]]], requires_grad=True)
    b, c = torch.tensor([0]), torch.tensor([1])
    fake = adv.predicted_masks(probs, b, c)
    torch.testing.assert_close(fake, torch.tensor([[[0.4, 0.5], [0.6, 0.9]]]))
    real = adv.ground_truth_masks(targets, b, c, fake, num_classes=2)
    torch.testing.assert_close(real, torch.tensor([[[1.0, 0.0], [0.6, 1.0]]]))  # void copies the prediction
    assert not real.requires_grad  # S gets no gradient through the real masks
    images = torch.arange(12, dtype=torch.float32).reshape(1, 3, 2, 2)
    masked = adv.masked_images(images, real, b)
    assert masked.shape == (1, 3, 2, 2)
    torch.testing.assert_close(masked[0, 2], images[0, 2] * real[0])
    assert adv.split_by_flag(torch.tensor([0, 1, 1]), [True, False]).tolist() == [True, False, False]


class TinySeg(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def grads(module):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def test_finetune_step_gives_each_net_only_its_own_objective_gradient():
    system = train_pnet.AdversarialPair(TinySeg(), PNet(pool_size=2))
    images = torch.randn(2, 3, 16, 16)
    targets = torch.zeros(2, 16, 16, dtype=torch.long)
    targets[0, 2:8, 2:8] = 1
    targets[1, 4:12, 4:12] = 2
    targets[1, 0, :] = 255
    batch = {"image": images, "targets": [targets], "strong": torch.tensor([True, False])}
    loss, parts = train_pnet.finetune_step(system, batch, 3, 0, 255, lambda_adv=0.5)
    loss.backward()
    seg_joint, disc_joint = grads(system.seg), grads(system.disc)
    assert parts["pairs"] == 2 and parts["real_pairs"] == 1

    # Reference: each objective on its own.
    system.zero_grad()
    logits = system.seg(images)
    probs = torch.softmax(logits, 1)
    b, c = adv.category_pairs(targets, 3, 0)
    fake = adv.masked_images(images, adv.predicted_masks(probs, b, c), b)
    for p in system.disc.parameters():
        p.requires_grad_(False)
    seg_only = torch.nn.functional.cross_entropy(logits, targets, ignore_index=255) \
        + 0.5 * adv.generator_loss(system.disc(fake))
    seg_only.backward()
    for p in system.disc.parameters():
        p.requires_grad_(True)
    for joint, ref in zip(seg_joint, grads(system.seg)):
        torch.testing.assert_close(joint, ref)
    system.zero_grad()
    real_masks = adv.ground_truth_masks(targets, b[:1], c[:1], adv.predicted_masks(probs, b, c)[:1], 3)
    d_only = adv.discriminator_loss(system.disc(adv.masked_images(images, real_masks, b[:1])),
                                    system.disc(fake.detach()))
    d_only.backward()
    for joint, ref in zip(disc_joint, grads(system.disc)):
        torch.testing.assert_close(joint, ref)
    assert float(loss.detach()) == pytest.approx(float(seg_only.detach()) + float(d_only.detach()), rel=1e-5)


def test_optimizer_choice():
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": 1e-5}, {"params": [nn.Parameter(torch.zeros(1))],
                                                                      "lr": 1e-3}]
    cfg = {"optimizer": "adam", "momentum": 0.9, "weight_decay": 0.0}
    adam = train_pnet.make_optimizer(groups, cfg)
    assert isinstance(adam, torch.optim.Adam) and [g["lr"] for g in adam.param_groups] == [1e-5, 1e-3]
    assert adam.param_groups[0]["betas"] == train_pnet.ADAM_BETAS
    assert isinstance(train_pnet.make_optimizer(groups, {**cfg, "optimizer": "sgd"}), torch.optim.SGD)
    with pytest.raises(PipelineError, match="pnet.train.optimizer"):
        train_pnet.make_optimizer(groups, {**cfg, "optimizer": "rmsprop"})


# --- the stage ------------------------------------------------------------------------------

def tiny_seg_model(tiny, num_classes=4):
    """(model, meta) as stage train_seg builds and describes it for the tiny dataset."""
    params = load_params(tiny["params"])
    model = build_seg_model(params, num_classes)
    return model, model_meta(model, VOCDataset(params["data"], "train"))


def seg_start(tmp_path, tiny):
    """A starting segmentation model (train_seg's file format) and GT-based weak pseudo labels."""
    model, meta = tiny_seg_model(tiny)
    path = tmp_path / "seg_lnet.pt"
    save_model(path, model, {**meta, "supervision": "mixed"})
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    for image_id in LNET_NOVEL:
        write_label_png(pseudo / f"{image_id}.png", tiny["data"].masks[image_id])
    return path, pseudo


def pnet_args(tiny, tmp_path, seg, pseudo, tag):
    out = tmp_path / tag
    return ["--params", tiny["params"], "--seg-model", seg, "--pseudo", pseudo, "--fold-file", tiny["fold"],
            "--labels", tiny["labels"], "--out", out / "model.pt", "--out-discriminator", out / "disc.pt",
            "--history", out / "history.tsv", "--threads", 1]


@pytest.mark.parametrize("pretrain", [True, False])
def test_train_pnet_stage_and_pretrain_switch(tmp_path, pretrain):
    tiny = make_lnet_tiny(tmp_path, overrides={"pnet": {"pretrain": pretrain}})
    seg, pseudo = seg_start(tmp_path, tiny)
    run_ok(train_pnet.main, pnet_args(tiny, tmp_path, seg, pseudo, "out"))
    out = tmp_path / "out"
    phases = [ln.split("\t")[0] for ln in (out / "history.tsv").read_text().splitlines()[1:]]
    assert phases == (["pretrain", "finetune"] if pretrain else ["finetune"])
    refined, expected = tiny_seg_model(tiny)
    meta = load_model(out / "model.pt", refined, expected_meta=expected)  # predict_seg's check
    assert meta["refined_by"] == "pnet" and meta["supervision"] == "mixed"
    assert meta["pnet"]["pretrain"] is pretrain
    disc_meta = load_model(out / "disc.pt", PNet(load_params(tiny["params"])["pnet"]["pool_size"]))
    assert disc_meta["model"] == "PNet"
    assert not list(out.glob("*checkpoint*"))
    start, _ = tiny_seg_model(tiny)
    load_model(seg, start)
    changed = [not torch.equal(a, b) for a, b in zip(start.state_dict().values(), refined.state_dict().values())
               if a.is_floating_point()]
    assert any(changed)  # S was fine-tuned


def test_train_pnet_bad_inputs_name_the_file(tmp_path, capsys):
    tiny = make_lnet_tiny(tmp_path)
    seg, pseudo = seg_start(tmp_path, tiny)
    good_t7 = (pseudo / "t7.png").read_bytes()
    (pseudo / "t7.png").unlink()
    line = run_fails(train_pnet.main, pnet_args(tiny, tmp_path, seg, pseudo, "out"), capsys)
    assert "t7.png" in line and "pseudo label missing" in line
    write_label_png(pseudo / "t7.png", np.zeros((5, 5), np.uint8))
    line = run_fails(train_pnet.main, pnet_args(tiny, tmp_path, seg, pseudo, "out"), capsys)
    assert "t7.png" in line and "5x5" in line
    (pseudo / "t7.png").write_bytes(good_t7)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    line = run_fails(train_pnet.main, pnet_args(tiny, tmp_path, junk, pseudo, "out"), capsys)
    assert "junk.pt" in line
    wrong, meta = tiny_seg_model(tiny, num_classes=7)
    save_model(tmp_path / "wrong.pt", wrong, meta)
    line = run_fails(train_pnet.main, pnet_args(tiny, tmp_path, tmp_path / "wrong.pt", pseudo, "out"), capsys)
    assert "wrong.pt" in line and "num_classes" in line
    assert not (tmp_path / "out" / "model.pt").exists()
