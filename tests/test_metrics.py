"""Metrics against hand-computed cases (every expected number is worked out in comments)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.data.episodes import episode_mask
from pipeline.errors import PipelineError
from pipeline.metrics import (
    ConfusionAccumulator,
    EpisodeIoUAccumulator,
    confusion_matrix,
    confusion_or_error,
    coverage,
    episode_intersection_union,
    foreground_background_iou,
    format_mean_std,
    mean_std_over_seeds,
    summaries_over_seeds,
    frequency_weighted_iou,
    harmonic_mean,
    labelled_pixel_accuracy,
    novel_error_breakdown,
    mean_iou,
    mean_pixel_accuracy,
    per_class_accuracy,
    per_class_iou,
    pixel_accuracy,
    summarize_confusion,
)

# Three classes (0 = background), ignore 255.
#   gt   = 0 0 1      pred = 0 1 1
#          1 2 255           1 0 2
# The 255 pixel is not counted (its prediction 2 is irrelevant). The five counted pixels:
#   (gt, pred) = (0,0) (0,1) (1,1) (1,1) (2,0)
GT = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 0, 2]], dtype=np.uint8)
CM = np.array([[1, 1, 0],   # gt 0: one right, one predicted as 1
               [0, 2, 0],   # gt 1: both right
               [1, 0, 0]])  # gt 2: predicted as 0


def test_confusion_matrix_skips_ignored_gt():
    np.testing.assert_array_equal(confusion_matrix(GT, PRED, 3, ignore_index=255), CM)


def test_confusion_matrix_same_for_other_integer_dtypes():
    cm = confusion_matrix(GT.astype(np.int32), PRED.astype(np.int64), 3, ignore_index=255)
    np.testing.assert_array_equal(cm, CM)


def test_confusion_matrix_matches_naive_count_on_random_data():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 6, size=(40, 30)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 6, size=gt.shape).astype(np.uint8)
    naive = np.zeros((6, 6), dtype=np.int64)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g != 255:
            naive[g, p] += 1
    np.testing.assert_array_equal(confusion_matrix(gt, pred, 6), naive)
    np.testing.assert_array_equal(confusion_matrix(gt.astype(np.int16), pred.astype(np.int16), 6), naive)
    # With void predictions (255): uint8 fast path and generic path agree with a naive count.
    pred[rng.random(gt.shape) < 0.2] = 255
    naive = np.zeros((6, 7), dtype=np.int64)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g != 255:
            naive[g, 6 if p == 255 else p] += 1
    np.testing.assert_array_equal(confusion_matrix(gt, pred, 6, void_index=255), naive)
    np.testing.assert_array_equal(confusion_matrix(gt.astype(np.int32), pred.astype(np.int32), 6,
                                                   void_index=255), naive)


def test_per_class_iou_hand_computed():
    # class 0: TP 1, GT 2, predicted 2 (col 0 = 1 + 0 + 1) -> 1 / (2 + 2 - 1) = 1/3
    # class 1: TP 2, GT 2, predicted 3 (col 1 = 1 + 2 + 0) -> 2 / (2 + 3 - 2) = 2/3
    # class 2: TP 0, GT 1, predicted 0                     -> 0 / 1 = 0
    np.testing.assert_allclose(per_class_iou(CM), [1 / 3, 2 / 3, 0.0])
    assert mean_iou(CM) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)      # 1/3
    assert mean_iou(CM, [1, 2]) == pytest.approx((2 / 3 + 0) / 2)      # 1/3
    assert mean_iou(CM, [0, 1]) == pytest.approx((1 / 3 + 2 / 3) / 2)  # 1/2


def test_pixel_accuracies_and_fwiou_hand_computed():
    # PA: diagonal 1 + 2 + 0 = 3 of 5 counted pixels.
    assert pixel_accuracy(CM) == pytest.approx(3 / 5)
    # per-class accuracy (recall): 1/2, 2/2, 0/1 -> MPA = 1/2
    np.testing.assert_allclose(per_class_accuracy(CM), [0.5, 1.0, 0.0])
    assert mean_pixel_accuracy(CM) == pytest.approx(0.5)
    # FWIoU: GT frequencies 2/5, 2/5, 1/5 -> 2/5 * 1/3 + 2/5 * 2/3 + 1/5 * 0 = 6/15
    assert frequency_weighted_iou(CM) == pytest.approx(6 / 15)


def test_fb_iou_hand_computed():
    # background (0): TP 1, GT 2, predicted 2 -> 1/3
    # foreground {1, 2} merged: fg->fg = cm[1,1] + cm[1,2] + cm[2,1] + cm[2,2] = 2,
    #   GT fg = 3, predicted fg = col1 + col2 = 3 + 0 -> 2 / (3 + 3 - 2) = 1/2
    # FB-IoU = (1/3 + 1/2) / 2 = 5/12
    assert foreground_background_iou(CM, 0) == pytest.approx(5 / 12)
    assert math.isnan(foreground_background_iou(CM, None))  # no background class (CamVid)


def test_fb_iou_counts_fg_confusions_as_foreground():
    # gt 1 1, pred 2 2: mIoU sees two wrong pixels, FB-IoU sees perfect foreground.
    cm = confusion_matrix(np.array([1, 1, 0]), np.array([2, 2, 0]), 3)
    assert foreground_background_iou(cm, 0) == pytest.approx(1.0)
    assert per_class_iou(cm)[1] == 0.0


def test_absent_class_is_nan_and_left_out_of_means():
    # Same pixels with a fourth class that appears nowhere: IoU 0/0 = NaN.
    cm = confusion_matrix(GT, PRED, 4)
    iou = per_class_iou(cm)
    assert math.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx(1 / 3)             # (1/3 + 2/3 + 0) / 3, class 3 skipped
    assert mean_iou(cm, [0, 3]) == pytest.approx(1 / 3)     # only class 0 counts
    assert math.isnan(mean_iou(cm, [3]))                    # nothing defined -> NaN, no warning
    assert mean_pixel_accuracy(cm) == pytest.approx(0.5)    # class 3 has no GT pixel
    assert frequency_weighted_iou(cm) == pytest.approx(6 / 15)


def test_class_only_in_prediction_has_zero_iou():
    # gt 0 0, pred 0 1: class 1 predicted but absent from GT -> IoU 0 (not NaN), and it
    # lowers mIoU: (1/2 + 0) / 2.
    cm = confusion_matrix(np.array([0, 0]), np.array([0, 1]), 2)
    np.testing.assert_allclose(per_class_iou(cm), [0.5, 0.0])
    assert mean_iou(cm) == pytest.approx(0.25)


def test_void_predictions_count_as_misses():
    # gt 0 1 1, pred void 1 0 (void = 255): matrix 2 x 3 with a void column.
    cm = confusion_matrix(np.array([0, 1, 1], np.uint8), np.array([255, 1, 0], np.uint8), 2, void_index=255)
    np.testing.assert_array_equal(cm, [[0, 0, 1], [1, 1, 0]])
    # class 0: TP 0, GT 1, predicted 1 (gt 1 -> 0) -> 0/2 = 0
    # class 1: TP 1, GT 2, predicted 1             -> 1/2
    np.testing.assert_allclose(per_class_iou(cm), [0.0, 0.5])
    assert pixel_accuracy(cm) == pytest.approx(1 / 3)            # 1 right of 3 counted
    assert coverage(cm) == pytest.approx(2 / 3)                  # 2 of 3 labelled
    assert labelled_pixel_accuracy(cm) == pytest.approx(1 / 2)   # 1 right of 2 labelled
    summary = summarize_confusion(cm)
    assert summary["coverage"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_prediction_out_of_range_is_an_error(dtype):
    with pytest.raises(ValueError, match=r"prediction label\(s\) \[3\] out of range"):
        confusion_matrix(np.array([0, 1], dtype), np.array([3, 1], dtype), 3)
    with pytest.raises(ValueError, match="out of range"):
        confusion_matrix(np.array([0, 1], dtype), np.array([255, 1], dtype), 3)  # 255 without void mode
    # In void mode, only the void value is allowed beyond the classes (3 is still an error).
    with pytest.raises(ValueError, match=r"\[3\]"):
        confusion_matrix(np.array([0, 1], dtype), np.array([3, 255], dtype), 3, void_index=255)


def test_negative_prediction_is_an_error():
    with pytest.raises(ValueError, match=r"\[-1\]"):
        confusion_matrix(np.array([0, 1]), np.array([-1, 1]), 3)


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_unknown_gt_label_is_an_error(dtype):
    with pytest.raises(ValueError, match=r"ground-truth label\(s\) \[7\]"):
        confusion_matrix(np.array([0, 7, 255], dtype), np.array([0, 1, 1], dtype), 3)


def test_shape_mismatch_and_void_collision_are_errors():
    with pytest.raises(ValueError, match="shape mismatch"):
        confusion_matrix(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), 3)
    with pytest.raises(ValueError, match="ignore index 0 is a class"):
        confusion_matrix(np.zeros(2, np.uint8), np.zeros(2, np.uint8), 3, ignore_index=0)
    with pytest.raises(ValueError, match="void index 1 is a class"):
        confusion_matrix(np.zeros(2, np.uint8), np.zeros(2, np.uint8), 3, void_index=1)
    with pytest.raises(PipelineError, match="pred.png: prediction label"):
        confusion_or_error("pred.png", np.zeros(2, np.uint8), np.full(2, 9, np.uint8), 3)


def test_empty_input_gives_zero_matrix_and_nan_scores():
    cm = confusion_matrix(np.zeros((0, 0), np.uint8), np.zeros((0, 0), np.uint8), 3)
    assert cm.shape == (3, 3) and cm.sum() == 0
    assert math.isnan(mean_iou(cm)) and math.isnan(pixel_accuracy(cm))


def test_accumulator_sums_images_not_per_image_ious():
    # image A: gt 1 1 1 1 0 0, pred 1 1 1 1 0 0 -> class-1 IoU 1
    # image B: gt 1 0 0 0 0 0, pred 0 1 0 0 0 0 -> class-1 IoU 0
    # dataset class-1 IoU = (4 + 0) / (4 + 2) = 2/3, not the per-image mean 1/2.
    acc = ConfusionAccumulator(2)
    cm_a = acc.update(np.array([1, 1, 1, 1, 0, 0]), np.array([1, 1, 1, 1, 0, 0]))
    cm_b = acc.update(np.array([1, 0, 0, 0, 0, 0]), np.array([0, 1, 0, 0, 0, 0]))
    assert per_class_iou(cm_a)[1] == 1.0 and per_class_iou(cm_b)[1] == 0.0
    assert per_class_iou(acc.matrix)[1] == pytest.approx(2 / 3)
    assert acc.count == 2
    other = ConfusionAccumulator(2)
    other.update(np.array([0]), np.array([0]))
    acc.merge(other)
    assert acc.count == 3 and acc.matrix[0, 0] == 2 + 4 + 1


def test_summary_has_base_novel_and_harmonic():
    # With CM: base [0, 1] -> (1/3 + 2/3) / 2 = 1/2; novel [2] -> 0; harmonic 2*0.5*0/(0.5) = 0.
    assert math.isnan(ConfusionAccumulator(3).summary(background_index=0)["miou"])  # nothing seen yet
    s = summarize_confusion(CM, background_index=0, base_classes=[0, 1], novel_classes=[2])
    assert s["miou_base"] == pytest.approx(0.5)
    assert s["miou_novel"] == 0.0
    assert s["miou_harmonic"] == 0.0
    assert s["fb_iou"] == pytest.approx(5 / 12)
    assert harmonic_mean(0.5, 0.25) == pytest.approx(2 * 0.5 * 0.25 / 0.75)  # 1/3
    assert math.isnan(harmonic_mean(float("nan"), 0.5))


# ---------------------------------------------------------------------------------------
# Few-shot episodic protocol. Three episodes of fold classes [1, 2, 3]:
#   E1, class 1 (large object): gt 1 1 1 1 1 1 0 0, pred identical
#       fg I 6 U 6 (IoU 1); bg I 2 U 2 (IoU 1)
#   E2, class 1 (small object): gt 1 0 0 0 0 0 0 0, pred 0 1 0 0 0 0 0 0
#       fg I 0 U 2 (IoU 0); bg: both bg at 6 pixels, either bg at 8 -> I 6 U 8 (3/4)
#   E3, class 2, with two ignored pixels:
#       gt   1 1 0 0 255 255 0 0
#       pred 1 0 0 0  1   1  1 0
#       counted pixels (0,1,2,3,6,7): gt 1 1 0 0 0 0, pred 1 0 0 0 1 0
#       fg I 1 (pixel 0), U 3 (pixels 0,1,6) -> 1/3
#       bg I 3 (pixels 2,3,7), U 5 (pixels 1,2,3,6,7) -> 3/5
E1 = (np.array([1, 1, 1, 1, 1, 1, 0, 0]), np.array([1, 1, 1, 1, 1, 1, 0, 0]))
E2 = (np.array([0, 1, 0, 0, 0, 0, 0, 0]), np.array([1, 0, 0, 0, 0, 0, 0, 0]))
E3 = (np.array([1, 0, 0, 0, 1, 1, 1, 0]), np.array([1, 1, 0, 0, 255, 255, 0, 0]))


def test_episode_intersection_union_hand_computed():
    inter, union = episode_intersection_union(*E3)
    np.testing.assert_array_equal(inter, [3, 1])
    np.testing.assert_array_equal(union, [5, 3])
    inter, union = episode_intersection_union(*E2)
    np.testing.assert_array_equal(inter, [6, 0])
    np.testing.assert_array_equal(union, [8, 2])


def test_episodic_class_iou_accumulates_over_episodes():
    acc = EpisodeIoUAccumulator([1, 2, 3])
    assert acc.update(*E1, class_id=1) == 1.0
    assert acc.update(*E2, class_id=1) == 0.0
    assert acc.update(*E3, class_id=2) == pytest.approx(1 / 3)
    iou = acc.class_iou()
    # class 1: (6 + 0) / (6 + 2) = 3/4 -- the mean of its episode IoUs would be 1/2.
    assert iou[1] == pytest.approx(3 / 4)
    assert iou[2] == pytest.approx(1 / 3)
    assert math.isnan(iou[3])  # no episode of class 3
    s = acc.summary()
    # mIoU over the fold's classes with episodes: (3/4 + 1/3) / 2 = 13/24
    assert s["miou"] == pytest.approx(13 / 24)
    # per-episode mean of foreground IoU: (1 + 0 + 1/3) / 3 = 4/9 (differs from 13/24)
    assert s["episode_mean_iou"] == pytest.approx(4 / 9)
    # HSNet FB-IoU: fg I 6+0+1 = 7, U 6+2+3 = 11; bg I 2+6+3 = 11, U 2+8+5 = 15
    #   -> (7/11 + 11/15) / 2 = 113/165
    assert s["fb_iou"] == pytest.approx(113 / 165)
    # episode-mean FB-IoU: E1 (1+1)/2 = 1, E2 (0 + 3/4)/2 = 3/8, E3 (1/3 + 3/5)/2 = 7/15
    #   -> (1 + 3/8 + 7/15) / 3 = 221/360
    assert s["fb_iou_episode_mean"] == pytest.approx(221 / 360)
    assert s["episodes"] == 3
    assert s["episodes_per_class"] == {"1": 2, "2": 1, "3": 0}


def test_episode_without_foreground_anywhere():
    # gt and pred all background: fg IoU 0/0 = NaN, episode FB-IoU = bg IoU = 1.
    acc = EpisodeIoUAccumulator([5])
    assert math.isnan(acc.update(np.zeros(4, int), np.zeros(4, int), 5))
    assert acc.summary()["fb_iou_episode_mean"] == 1.0
    assert math.isnan(acc.miou())


def test_episode_errors():
    acc = EpisodeIoUAccumulator([1])
    with pytest.raises(ValueError, match="not one of the fold's classes"):
        acc.update(np.zeros(2, int), np.zeros(2, int), 4)
    with pytest.raises(ValueError, match="binary"):
        episode_intersection_union(np.array([0, 2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="ground truth must be"):
        episode_intersection_union(np.array([0, 1]), np.array([0, 3]))
    with pytest.raises(ValueError, match="shape mismatch"):
        episode_intersection_union(np.zeros(2, int), np.zeros(3, int))
    # bool predictions are fine
    inter, _ = episode_intersection_union(np.array([True, False]), np.array([1, 0]))
    np.testing.assert_array_equal(inter, [1, 1])


def test_episode_masks_from_class_masks_at_label_resolution():
    # Class masks (VOC ids, 255 outline) of two episodes of class 3 in a fold [3, 4]:
    #   E_a gt class mask 0 3 3 7 255 0 -> binary 0 1 1 0 255 0 ; pred 0 1 0 1 1 0
    #       counted pixels 0,1,2,3,5: fg I 1 (px 1), U 3 (px 1,2,3) ; bg I 2 (px 0,5), U 4 (px 0,2,3,5)
    #   E_b gt class mask 3 3 0 0 (no background class needed) ; pred 1 1 1 0
    #       fg I 2, U 3 ; bg I 1, U 2
    # class 3: (1 + 2) / (3 + 3) = 1/2 ; FB-IoU: fg 3/6, bg (2 + 1)/(4 + 2) = 1/2 -> 1/2
    # per-episode mean IoU: (1/3 + 2/3) / 2 = 1/2 ; class 4 has no episode (NaN, left out)
    acc = EpisodeIoUAccumulator([3, 4])
    gt_a = episode_mask(np.array([0, 3, 3, 7, 255, 0], np.uint8), 3)
    np.testing.assert_array_equal(gt_a, [0, 1, 1, 0, 255, 0])
    assert acc.update(np.array([0, 1, 0, 1, 1, 0]), gt_a, 3) == pytest.approx(1 / 3)
    assert acc.update(np.array([1, 1, 1, 0]), episode_mask(np.array([3, 3, 0, 0]), 3), 3) == pytest.approx(2 / 3)
    s = acc.summary()
    assert s["class_iou"]["3"] == pytest.approx(1 / 2) and math.isnan(s["class_iou"]["4"])
    assert s["miou"] == pytest.approx(1 / 2)
    assert s["fb_iou"] == pytest.approx(1 / 2)
    assert s["episode_mean_iou"] == pytest.approx(1 / 2)
    # a prediction at another resolution than the label is refused
    with pytest.raises(ValueError, match="shape mismatch"):
        acc.update(np.zeros(3, int), gt_a, 3)


def test_mean_std_over_seeds_is_mean_and_sample_std_never_the_best():
    # seeds 0..2: 0.5, 0.7, 0.6 -> mean 0.6; deviations -0.1, 0.1, 0 -> sample var 0.02/2 = 0.01, std 0.1
    stat = mean_std_over_seeds({2: 0.6, 0: 0.5, 1: 0.7})
    assert stat["mean"] == pytest.approx(0.6) and stat["std"] == pytest.approx(0.1)
    assert stat["n"] == 3 and stat["seeds"] == [0, 1, 2]
    assert format_mean_std(stat) == "60.0 ± 10.0"
    one = mean_std_over_seeds({4: 0.25})
    assert one == {"mean": 0.25, "std": None, "n": 1, "seeds": [4]}
    assert format_mean_std(one) == "25.0"
    bad = mean_std_over_seeds({0: 0.5, 1: float("nan")})
    assert math.isnan(bad["mean"]) and math.isnan(bad["std"])  # a seed is never dropped
    with pytest.raises(ValueError):
        mean_std_over_seeds({})


def test_summaries_over_seeds_hand_computed():
    # two seeds' summaries: miou 0.4 / 0.6 -> 0.5 +- sqrt(0.02) ; class 3 IoU 0.2 / 0.4 -> 0.3 +- sqrt(0.02)
    def summary(miou, c3):
        return {"miou": miou, "fb_iou": 0.7, "fb_iou_episode_mean": 0.65, "episode_mean_iou": miou - 0.1,
                "class_iou": {"3": c3, "4": 2 * miou - c3}}

    out = summaries_over_seeds({0: summary(0.4, 0.2), 1: summary(0.6, 0.4)})
    assert out["miou"]["mean"] == pytest.approx(0.5) and out["miou"]["std"] == pytest.approx(math.sqrt(0.02))
    assert out["fb_iou"]["mean"] == pytest.approx(0.7) and out["fb_iou"]["std"] == pytest.approx(0.0)
    assert out["episode_mean_iou"]["mean"] == pytest.approx(0.4)
    assert out["class_iou"]["3"]["mean"] == pytest.approx(0.3)
    assert out["class_iou"]["3"]["std"] == pytest.approx(math.sqrt(0.02))
    assert out["class_iou"]["4"]["mean"] == pytest.approx(0.7)  # 0.6 and 0.8


# ---------------------------------------------------------------------------------------
# Where novel pixels go. Classes: 0 background, 1 base, 2 and 3 novel, plus a void column.
# Rows are ground truth, columns the prediction (0, 1, 2, 3, void):
#   GT 0:  50  5  3  2  0
#   GT 1:   4 30  6  0  0
#   GT 2:   5  5 20  4  6    40 novel-2 pixels
#   GT 3:   1  2  1 16  0    20 novel-3 pixels
# Over the 60 GT novel pixels: right class 20 + 16 = 36 (0.6); to background 5 + 1 = 6
# (0.1); to base 5 + 2 = 7; to the other novel class 4 + 1 = 5; to void 6 (0.1).
# Predicted novel (columns 2 and 3, 52 pixels): right 36; from background 3 + 2 = 5; from
# base 6; from the other novel class 4 + 1 = 5.
NOVEL_CM = np.array([[50, 5, 3, 2, 0],
                     [4, 30, 6, 0, 0],
                     [5, 5, 20, 4, 6],
                     [1, 2, 1, 16, 0]])


def test_novel_error_breakdown_hand_computed():
    b = novel_error_breakdown(NOVEL_CM, background_index=0, base_classes=[0, 1], novel_classes=[2, 3])
    assert b["novel_recall"] == pytest.approx(36 / 60)
    assert b["novel_to_background"] == pytest.approx(6 / 60)
    assert b["novel_to_base"] == pytest.approx(7 / 60)
    assert b["novel_to_other_novel"] == pytest.approx(5 / 60)
    assert b["novel_to_void"] == pytest.approx(6 / 60)
    assert sum(b[k] for k in ("novel_recall", "novel_to_background", "novel_to_base", "novel_to_other_novel",
                              "novel_to_void")) == pytest.approx(1.0)
    assert b["novel_precision"] == pytest.approx(36 / 52)
    assert b["false_novel_from_background"] == pytest.approx(5 / 52)
    assert b["false_novel_from_base"] == pytest.approx(6 / 52)
    assert b["false_novel_from_other_novel"] == pytest.approx(5 / 52)
    # the summary of a fold carries the same numbers
    s = summarize_confusion(NOVEL_CM, background_index=0, base_classes=[0, 1], novel_classes=[2, 3])
    assert s["novel_to_base"] == pytest.approx(7 / 60)


def test_novel_error_breakdown_without_background_or_novel_predictions():
    # No background class (CamVid): 'to bg' is 0 and base holds every non-novel class.
    cm = np.array([[10, 0], [3, 0]])  # class 1 novel: never predicted, its 3 GT pixels all went to class 0
    b = novel_error_breakdown(cm, background_index=None, base_classes=[0], novel_classes=[1])
    assert b["novel_recall"] == 0.0 and b["novel_to_base"] == 1.0 and b["novel_to_background"] == 0.0
    assert b["novel_precision"] is None and b["false_novel_from_base"] is None  # nothing predicted novel
    with pytest.raises(ValueError, match="out of range"):
        novel_error_breakdown(cm, background_index=None, base_classes=[0], novel_classes=[5])
