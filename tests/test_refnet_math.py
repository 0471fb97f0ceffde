"""Ref-Net's math against hand-computed cases: Dice with Laplace smoothing, MMD, the disk
band, the WGAN-GP penalty and critic loss, the setting's draws, combining per-class masks,
and the scores (MPA, FWIoU) of the shared confusion-matrix code."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.adversarial import (
    critic_generator_loss, critic_loss, gradient_penalty, interpolates, triplet, wasserstein_estimate)
from pipeline.errors import PipelineError
from pipeline.losses import dice_loss, gaussian_mmd
from pipeline.metrics.semantic import frequency_weighted_iou, mean_pixel_accuracy
from pipeline.models.refnet import BoundaryCritic, RefNet
from pipeline.morphology import boundary_band, dilate, disk, erode
from pipeline.refnet_training import (
    combine_classes, draw_setting, effective_switches, parse_shots, random_affine,
    target_ground_truth, warp)


def test_dice_with_laplace_smoothing_by_hand():
    p = torch.tensor([[[1.0, 0.0], [0.5, 0.0]]])
    g = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    # 2 * (1 + 0.5) + 1 = 4 over 1.5 + 2 + 1 = 4.5
    assert float(dice_loss(p, g, tau=1.0)) == pytest.approx(1 - 4 / 4.5)
    # all-zero target and prediction (no shared category): loss 0, not 0/0
    zero = torch.zeros(1, 2, 2)
    assert float(dice_loss(zero, zero, tau=1.0)) == 0.0
    # one wrong pixel: 1 - 1 / (1 + 1)
    assert float(dice_loss(torch.tensor([[[1.0]]]), torch.tensor([[[0.0]]]))) == pytest.approx(0.5)
    # void pixels do not count
    valid = torch.tensor([[[True, True], [False, True]]])
    assert float(dice_loss(p, g, 1.0, valid)) == pytest.approx(1 - 3 / 3)


def test_mmd_identical_samples_is_zero_and_hand_case():
    a = torch.randn(5, 3)
    assert float(gaussian_mmd(a, a.clone(), (1.0,))) == pytest.approx(0.0, abs=1e-6)
    assert float(gaussian_mmd(a, a.clone())) == pytest.approx(0.0, abs=1e-6)  # median heuristic
    value = gaussian_mmd(torch.tensor([[0.0]]), torch.tensor([[1.0]]), (1.0,))
    assert float(value) == pytest.approx(2 - 2 * math.exp(-0.5))


def test_disk_dilation_erosion_and_band():
    assert disk(1).sum() == 5 and disk(2).sum() == 13  # skimage.morphology.disk
    mask = torch.zeros(1, 7, 7)
    mask[0, 2:5, 2:5] = 1.0  # a 3x3 square
    grown = dilate(mask, 1)
    assert grown.sum() == 9 + 4 * 3  # the square plus one row on each side (no corners)
    shrunk = erode(mask, 1)
    assert shrunk.sum() == 1 and shrunk[0, 3, 3] == 1
    band = boundary_band(mask, 1)
    assert band.sum() == (9 + 12) - 1 and band[0, 3, 3] == 0 and band[0, 0, 0] == 0
    # the border does not erode an object touching it
    full = torch.ones(1, 4, 4)
    assert erode(full, 1).sum() == 16 and boundary_band(full, 1).sum() == 0


def test_gradient_penalty_of_a_linear_critic():
    weights = torch.tensor([0.6, 0.8, 2.0])  # norm sqrt(0.36 + 0.64 + 4) = sqrt(5)

    def critic(x):
        return (x * weights).sum(1)

    real, fake = torch.randn(4, 3), torch.randn(4, 3)
    penalty = gradient_penalty(critic, real, fake, torch.rand(4))
    assert float(penalty) == pytest.approx((math.sqrt(5) - 1) ** 2, rel=1e-5)
    unit = torch.tensor([0.6, 0.8, 0.0])
    assert float(gradient_penalty(lambda x: (x * unit).sum(1), real, fake, torch.rand(4))) == pytest.approx(0, abs=1e-10)
    mixed = interpolates(torch.ones(2, 3), torch.zeros(2, 3), torch.tensor([0.25, 1.0]))
    assert mixed[0].tolist() == [0.25] * 3 and mixed[1].tolist() == [1.0] * 3


def test_critic_loss_formula():
    d_real, d_fake, d_pseudo = torch.tensor([2.0, 4.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0])
    penalty = torch.tensor(0.5)
    # 1/2 * 1 + 1/2 * 1 - 3 + 10 * 0.5
    assert float(critic_loss(d_real, d_fake, d_pseudo, penalty, 10.0)) == pytest.approx(0.5 + 0.5 - 3 + 5)
    assert float(critic_loss(d_real, d_fake, None, penalty, 10.0)) == pytest.approx(1 - 3 + 5)
    assert wasserstein_estimate(d_real, d_fake) == pytest.approx(2.0)
    assert float(critic_generator_loss(d_fake)) == -1.0
    t = triplet(torch.ones(1, 3, 2, 2) * 0.5, torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    assert t.shape == (1, 7, 2, 2) and t[0, 3].tolist() == [[1, 0], [0, 1]] and t[0, 4, 0, 1] == 0
    assert BoundaryCritic(8)(torch.zeros(2, 7, 32, 32)).shape == (2,)


def test_all_zero_reference_mask_segments_nothing():
    torch.manual_seed(0)
    model = RefNet(6, hidden=64, aspp_rates=(1,)).eval()
    target, reference = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4)
    masks = torch.zeros(2, 8, 8)
    masks[1, 2:5, 2:5] = 1
    with torch.no_grad():
        prob = model.probability(target, reference, masks, (8, 8))
    assert prob.shape == (2, 8, 8) and float(prob[0].abs().max()) == 0.0 and float(prob[1].min()) > 0
    # its Dice target is all zero as well: the loss is 0
    assert float(dice_loss(prob[:1], torch.zeros(1, 8, 8))) == 0.0


COUNTS = {  # pixels of classes [background, a, b, c]
    "t1": [10, 20, 0, 0], "t2": [10, 20, 0, 0], "t3": [10, 20, 0, 5],
    "o1": [10, 0, 30, 0], "o2": [10, 0, 30, 40], "o3": [10, 0, 0, 0],
}


def test_setting_draws_references_from_the_target_train_images():
    setting = draw_setting(COUNTS, sorted(COUNTS), [1], [2, 3], 2, seed=0, min_pixels=16)
    refs = [i for i, c in setting.references[1]]
    assert len(refs) == 2 and set(refs) <= {"t1", "t2", "t3"} and not setting.short
    assert setting.unlabelled == sorted({"t1", "t2", "t3"} - set(refs))
    # O: images without any target pixel, their open-source classes with >= min_pixels px
    assert setting.open_source == [("o1", 2), ("o2", 2), ("o2", 3)]
    again = draw_setting(COUNTS, sorted(COUNTS), [1], [2, 3], 2, seed=0, min_pixels=16)
    assert again.references == setting.references  # seeded


def test_k_larger_than_available_uses_all_and_marks_the_class():
    setting = draw_setting(COUNTS, sorted(COUNTS), [1], [2, 3], 20, seed=0, min_pixels=16)
    assert sorted(i for i, _ in setting.references[1]) == ["t1", "t2", "t3"] and setting.short == [1]
    assert setting.unlabelled == [] and setting.to_json()["short"] == [1]
    every = draw_setting(COUNTS, sorted(COUNTS), [1], [2, 3], parse_shots("all"), seed=0, min_pixels=16)
    assert len(every.references[1]) == 3 and every.short == [] and every.to_json()["shots"] == "all"


def test_empty_open_source_set_is_one_error():
    with pytest.raises(PipelineError, match="the open-source set is empty"):
        draw_setting(COUNTS, ["t1", "t2", "o3"], [1], [2, 3], 1, seed=0, min_pixels=16, where="fold.json")


def test_zero_shot_is_conditioned_on_open_source_pairs():
    setting = draw_setting(COUNTS, sorted(COUNTS), [1], [2, 3], 0, seed=0, min_pixels=16, zero_shot_references=2)
    assert setting.zero_shot and len(setting.references[1]) == 2
    assert all(pair in setting.open_source for pair in setting.references[1])
    assert setting.unlabelled == ["t1", "t2", "t3"]  # every target image is unlabelled
    switches = effective_switches({}, zero_shot=True)
    assert not switches["dice"] and not switches["representation"] and switches["outer_critic"]
    with pytest.raises(PipelineError, match="unknown switch 'nope'"):
        effective_switches({"nope": False}, zero_shot=False)


def test_identity_affine_leaves_maps_unchanged():
    theta = random_affine(2, np.random.default_rng(0), 0.0, 0.0, 0.0)
    maps = torch.rand(2, 1, 8, 8)
    assert torch.allclose(warp(maps, theta), maps, atol=1e-5)


def test_combine_classes_takes_the_highest_score():
    probs = {1: np.array([[0.9, 0.6, 0.2]]), 2: np.array([[0.7, 0.8, 0.1]])}
    assert combine_classes(probs, (1, 3), 0.5).tolist() == [[1, 2, 0]]
    assert combine_classes({}, (1, 2)).tolist() == [[0, 0]]
    gt = target_ground_truth(np.array([[0, 3, 5, 255]]), [5, 3], 255)
    assert gt.tolist() == [[0, 2, 1, 255]]


def test_mpa_and_fwiou_by_hand():
    cm = np.array([[6, 2], [1, 1]])  # rows GT
    # accuracies 6/8 and 1/2; IoUs 6/9 and 1/4; GT shares 8/10 and 2/10
    assert mean_pixel_accuracy(cm) == pytest.approx((0.75 + 0.5) / 2)
    assert frequency_weighted_iou(cm) == pytest.approx(0.8 * 6 / 9 + 0.2 * 0.25)


def test_critic_stability_summary_by_hand():
    from pipeline.methods.refnet.report import critic_stability

    tsv = "step\tw_outer\tw_inner\n1\t\t\n2\t1\t-2\n3\t-3\t2\n4\t2\t2\n5\t4\tnan\n"
    out = critic_stability(tsv)
    assert out["outer"] == {"steps": 4, "finite": True, "first_quarter_mean_abs": 1.0, "last_quarter_mean_abs": 4.0,
                            "max_abs": 4.0}
    assert out["inner"]["finite"] is False
