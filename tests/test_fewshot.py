"""Few-shot math (pipeline/fewshot.py): masked average pooling, the prototype floor and its
all-zero support mask, k-shot fusion, the binary prediction; hand-computed cases."""
from __future__ import annotations

import torch

from pipeline.fewshot import (area_matrix, binary_prediction, cosine_map, fuse_probabilities, mask_weights,
                              masked_average_pooling, prototype_probability)


def test_masked_average_pooling_by_hand():
    # 2 channels on a 2x2 grid; weights pick the top row fully and the bottom-left by half.
    feats = torch.tensor([[[1.0, 3.0], [5.0, 7.0]], [[2.0, 2.0], [4.0, 0.0]]])
    w = torch.tensor([[[[1.0, 1.0], [0.5, 0.0]]]])
    proto, has = masked_average_pooling(feats, w)
    # channel 0: (1 + 3 + 2.5) / 2.5 = 2.6; channel 1: (2 + 2 + 2) / 2.5 = 2.4
    assert torch.allclose(proto, torch.tensor([[2.6, 2.4]]))
    assert has.tolist() == [True]


def test_masked_average_pooling_of_an_empty_mask_is_zero_not_nan():
    proto, has = masked_average_pooling(torch.ones(1, 3, 2, 2), torch.zeros(1, 1, 2, 2))
    assert torch.equal(proto, torch.zeros(1, 3)) and has.tolist() == [False]


def test_mask_weights_ignore_counts_for_neither_region_and_resize_is_the_area_share():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [255, 255, 0, 0], [255, 255, 0, 1]], dtype=torch.uint8)
    fg, bg = mask_weights(mask, (4, 4))
    assert fg.sum() == 5 and bg.sum() == 7  # 4 ignored pixels in neither
    fg2, bg2 = mask_weights(mask, (2, 2))  # halving = 2x2 block means
    assert torch.allclose(fg2[0, 0], torch.tensor([[1.0, 0.0], [0.0, 0.25]]))
    assert torch.allclose(bg2[0, 0], torch.tensor([[0.0, 1.0], [0.0, 0.75]]))


def test_mask_weights_of_a_soft_mask_are_the_probability_with_gradient():
    soft = torch.tensor([[0.25, 1.0], [0.0, 0.5]], requires_grad=True)
    fg, bg = mask_weights(soft, (2, 2))
    assert torch.allclose(fg[0, 0], soft.detach()) and torch.allclose(bg[0, 0], 1 - soft.detach())
    fg.sum().backward()
    assert torch.equal(soft.grad, torch.ones(2, 2))  # CRC's cascade trains through it
    hard = mask_weights(torch.tensor([[1, 0]], dtype=torch.uint8), (1, 2))[0]
    assert torch.equal(hard[0, 0], torch.tensor([[1.0, 0.0]]))  # label masks stay labels


def test_area_matrix_by_hand_for_a_non_integer_ratio():
    # 3 pixels onto 2 cells: cell 0 spans [0, 1.5) = pixel 0 and half of pixel 1.
    assert torch.allclose(area_matrix(3, 2), torch.tensor([[2 / 3, 1 / 3, 0.0], [0.0, 1 / 3, 2 / 3]]))
    assert torch.allclose(area_matrix(2, 4), torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))


def test_mask_weights_are_the_class_share_per_cell_not_a_point_sample():
    # A one-pixel-wide object column at x = 1 of a 6 x 6 mask, onto a 2 x 2 grid (3 x 3 px per
    # cell): the left cells hold 1/3 object each. Bilinear without antialias samples x = 1.0
    # and 4.0 (pixel centres of the two cells' middles) and would give 1 and 0 instead.
    mask = torch.zeros(6, 6, dtype=torch.uint8)
    mask[:, 1] = 1
    mask[0, 3:] = 255  # top-right cell: 3 of its 9 pixels ignored
    fg, bg = mask_weights(mask, (2, 2))
    assert torch.allclose(fg[0, 0], torch.tensor([[1 / 3, 0.0], [1 / 3, 0.0]]))
    assert torch.allclose(bg[0, 0], torch.tensor([[2 / 3, 6 / 9], [2 / 3, 1.0]]))
    # 5 x 5 -> 2 x 2 (non-integer: 2.5 px per cell): the centre pixel weighs 0.25 / 6.25 in each cell
    centre = torch.zeros(5, 5, dtype=torch.uint8)
    centre[2, 2] = 1
    fg, _ = mask_weights(centre, (2, 2))
    assert torch.allclose(fg[0, 0], torch.full((2, 2), 0.25 / 6.25))


def test_cosine_map_by_hand():
    feats = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # positions (1, 0) and (0, 2)
    assert torch.allclose(cosine_map(feats, torch.tensor([1.0, 1.0])), torch.tensor([[[2 ** -0.5, 2 ** -0.5]]]))
    assert torch.allclose(cosine_map(feats, torch.tensor([1.0, 0.0])), torch.tensor([[[1.0, 0.0]]]))


def test_prototype_floor_segments_the_support_class_and_fuses_shots():
    # channel 0 = "object", channel 1 = "background"
    support = torch.zeros(2, 4, 4)
    support[1] = 1.0
    support[0, :2, :2], support[1, :2, :2] = 1.0, 0.0
    mask = torch.zeros(4, 4, dtype=torch.uint8)
    mask[:2, :2] = 1
    query = torch.zeros(2, 4, 4)
    query[1] = 1.0
    query[0, 2:, 2:], query[1, 2:, 2:] = 1.0, 0.0
    p = prototype_probability(query, [support], [mask])
    expected = torch.zeros(4, 4, dtype=torch.uint8)
    expected[2:, 2:] = 1
    assert torch.equal(binary_prediction(p, (4, 4)), expected)
    # exact value: cos 1 vs 0, scale 20 -> sigmoid(20)
    assert torch.isclose(p[3, 3], torch.sigmoid(torch.tensor(20.0)))
    # two shots: one with an empty mask contributes only its background prototype
    p2 = prototype_probability(query, [support, support], [mask, torch.zeros(4, 4, dtype=torch.uint8)])
    assert torch.equal(binary_prediction(p2, (4, 4)), expected)


def test_prototype_floor_all_zero_support_mask_predicts_background_everywhere():
    query, support = torch.randn(3, 4, 4), torch.randn(3, 4, 4)
    zero = torch.zeros(8, 8, dtype=torch.uint8)
    p = prototype_probability(query, [support], [zero])
    assert torch.equal(p, torch.zeros(4, 4))
    assert binary_prediction(p, (8, 8)).sum() == 0
    # all object (no background to pool): every pixel foreground; all ignored: background
    assert prototype_probability(query, [support], [torch.ones(8, 8, dtype=torch.uint8)]).min() == 1
    assert prototype_probability(query, [support], [torch.full((8, 8), 255, dtype=torch.uint8)]).max() == 0


def test_fusion_averages_and_binary_prediction_upsamples():
    fused = fuse_probabilities([torch.tensor([[0.2, 0.9]]), torch.tensor([[0.6, 0.3]])])
    assert torch.allclose(fused, torch.tensor([[0.4, 0.6]]))
    pred = binary_prediction(torch.tensor([[0.0, 1.0]]), (2, 4))
    assert pred.dtype == torch.uint8 and pred.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]


def test_episodic_benchmark_runs_at_tiny_scale(capsys):
    # Smoke test of benchmarks/episodic_benchmark.py (episodes per second of evaluation).
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "episodic_benchmark.py"
    spec = importlib.util.spec_from_file_location("episodic_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--episodes", "2", "--repeats", "1", "--threads", "1", "--settings", "embedded"])
    printed = capsys.readouterr().out
    assert "episodes/s" in printed and "prototype floor, 1-shot (baseline)" in printed
    assert "CRNet 5-shot fusion, 5 iterations" in printed
