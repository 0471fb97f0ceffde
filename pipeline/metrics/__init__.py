"""Segmentation metrics (pure numpy): semantic (confusion-matrix based) and few-shot episodic.

See :mod:`pipeline.metrics.semantic` and :mod:`pipeline.metrics.episodic` for the exact
conventions (ignore handling, NaN for absent classes, which FB-IoU).
"""
from pipeline.metrics.episodic import (
    EpisodeIoUAccumulator,
    episode_intersection_union,
    format_mean_std,
    mean_std_over_seeds,
    summaries_over_seeds,
)
from pipeline.metrics.semantic import (
    ConfusionAccumulator,
    confusion_matrix,
    confusion_or_error,
    coverage,
    foreground_background_iou,
    frequency_weighted_iou,
    harmonic_mean,
    NOVEL_ERROR_KEYS,
    labelled_pixel_accuracy,
    mean_iou,
    mean_pixel_accuracy,
    novel_error_breakdown,
    per_class_accuracy,
    per_class_iou,
    pixel_accuracy,
    summarize_confusion,
)

__all__ = [
    "ConfusionAccumulator",
    "EpisodeIoUAccumulator",
    "confusion_matrix",
    "confusion_or_error",
    "coverage",
    "episode_intersection_union",
    "format_mean_std",
    "mean_std_over_seeds",
    "summaries_over_seeds",
    "foreground_background_iou",
    "frequency_weighted_iou",
    "harmonic_mean",
    "NOVEL_ERROR_KEYS",
    "labelled_pixel_accuracy",
    "mean_iou",
    "mean_pixel_accuracy",
    "novel_error_breakdown",
    "per_class_accuracy",
    "per_class_iou",
    "pixel_accuracy",
    "summarize_confusion",
]
