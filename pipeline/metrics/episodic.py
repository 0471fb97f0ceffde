"""Few-shot episodic evaluation (PASCAL-5i protocol of OSLSM/PANet/PFENet/HSNet).

Each episode segments one class ``c`` in a query image: the prediction and the GT are
binary (1 = class ``c``, 0 = everything else) with the ignore index (255) in the GT
marking pixels that are not evaluated (VOC's outline band; HSNet/PFENet also set the
prediction there to ignore).

Per episode we count, for background (0) and foreground (1), the intersection
``|P ∩ G|`` and the union ``|P ∪ G|`` over non-ignored pixels. Then, following HSNet's
``AverageMeter`` and PANet's ``Metric``:

* class IoU: ``IoU_c = sum_{episodes of c} I_fg / sum_{episodes of c} U_fg`` -- the sums
  run over all episodes of the class *before* dividing, so a large object weighs more
  than a small one. This is not the mean of per-episode IoUs (``episode_mean_iou``
  reports that for comparison).
* mIoU: mean of ``IoU_c`` over the fold's classes. A fold class with no episode has
  NaN IoU and is left out of the mean (HSNet would count it as 0; we would rather not
  silently lower the score -- ``episodes_per_class`` shows it).
* FB-IoU (HSNet/PANet): background and foreground intersections and unions are summed
  over all episodes (of the fold's classes) and ``FB-IoU = (I_bg/U_bg + I_fg/U_fg) / 2``.
* ``fb_iou_episode_mean``: the mean over episodes of each episode's own FB-IoU -- a
  second, per-episode reading some papers use; reported next to the HSNet number
  because the two differ and papers are not always explicit about which they mean.

Masks are compared at the label's own (original) resolution: ``episode_intersection_union``
refuses a prediction of another shape. The episode's binary ground truth comes from the
class mask through :func:`pipeline.data.episodes.episode_mask`.

Over episode seeds (one file of episodes per seed, :mod:`pipeline.data.episodes`) a score is
reported as mean +- sample std over the seeds, never as the best seed
(:func:`mean_std_over_seeds`, :func:`summaries_over_seeds`).
"""
from __future__ import annotations

import math
import statistics
from typing import Iterable, Mapping, Sequence

import numpy as np


def episode_intersection_union(pred: np.ndarray, gt: np.ndarray,
                               ignore_index: int | None = 255) -> tuple[np.ndarray, np.ndarray]:
    """Background/foreground intersection and union of one binary episode.

    Returns ``(inter, union)``, each an int64 array ``[background, foreground]``.
    ``pred`` holds 0/1 (bool allowed); ``gt`` holds 0/1 or ``ignore_index``.
    Raises ``ValueError`` on shape mismatch or other values.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: ground truth {gt.shape} vs prediction {pred.shape}")
    if pred.dtype == bool:
        pred = pred.view(np.uint8)
    if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(gt.dtype, np.integer)):
        raise ValueError(f"episode masks must be integer or bool arrays (got {pred.dtype}, {gt.dtype})")
    if pred.size and (int(pred.min()) < 0 or int(pred.max()) > 1):
        raise ValueError("episode prediction must be binary (0 = background, 1 = class)")
    # Pair code 2*gt + pred: 0 bg/bg, 1 bg->fg, 2 fg->bg, 3 fg/fg; ignore -> dropped bins.
    gt_code = np.asarray(gt, dtype=np.int64)
    valid = gt_code <= 1
    if ignore_index is not None:
        unknown = ~valid & (gt_code != ignore_index)
    else:
        unknown = ~valid
    if (gt_code < 0).any() or unknown.any():
        raise ValueError("episode ground truth must be 0, 1 or the ignore index")
    codes = (2 * gt_code + pred)[valid]
    counts = np.bincount(codes, minlength=4).astype(np.int64)
    bg_bg, bg_fg, fg_bg, fg_fg = counts
    inter = np.array([bg_bg, fg_fg], dtype=np.int64)
    union = np.array([bg_bg + bg_fg + fg_bg, fg_fg + fg_bg + bg_fg], dtype=np.int64)
    return inter, union


def _iou_or_nan(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    inter = np.asarray(inter, dtype=np.float64)
    union = np.asarray(union, dtype=np.float64)
    out = np.full(inter.shape, np.nan)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _nanmean(values: Iterable[float]) -> float:
    values = np.asarray(list(values), dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


class EpisodeIoUAccumulator:
    """Accumulates episodes of a fold; ``summary()`` gives the few-shot metrics."""

    def __init__(self, class_ids: Sequence[int], ignore_index: int | None = 255):
        if not class_ids:
            raise ValueError("EpisodeIoUAccumulator needs the fold's class ids")
        self.class_ids = [int(c) for c in class_ids]
        self.ignore_index = ignore_index
        # Rows: class ids of the fold in order; columns: [background, foreground].
        self._row = {c: i for i, c in enumerate(self.class_ids)}
        self.inter = np.zeros((len(self.class_ids), 2), dtype=np.int64)
        self.union = np.zeros((len(self.class_ids), 2), dtype=np.int64)
        self.episodes = np.zeros(len(self.class_ids), dtype=np.int64)
        self.episode_fg_iou: list[float] = []
        self.episode_fb_iou: list[float] = []
        # per episode, in order: {"class", "inter": [bg, fg], "union": [bg, fg]} (what a
        # stage writes so that any later grouping of episodes can be re-scored exactly)
        self.episode_counts: list[dict] = []

    def update(self, pred: np.ndarray, gt: np.ndarray, class_id: int) -> float:
        """Add one episode of ``class_id``; returns its foreground IoU (NaN if 0/0)."""
        if int(class_id) not in self._row:
            raise ValueError(f"class {class_id} is not one of the fold's classes {self.class_ids}")
        inter, union = episode_intersection_union(pred, gt, self.ignore_index)
        row = self._row[int(class_id)]
        self.inter[row] += inter
        self.union[row] += union
        self.episodes[row] += 1
        self.episode_counts.append({"class": int(class_id), "inter": inter.tolist(), "union": union.tolist()})
        ious = _iou_or_nan(inter, union)
        self.episode_fg_iou.append(float(ious[1]))
        self.episode_fb_iou.append(_nanmean(ious))
        return float(ious[1])

    def class_iou(self) -> dict[int, float]:
        """Accumulated foreground IoU per fold class (NaN for a class without episodes)."""
        iou = _iou_or_nan(self.inter[:, 1], self.union[:, 1])
        return {c: float(iou[i]) for i, c in enumerate(self.class_ids)}

    def miou(self) -> float:
        return _nanmean(self.class_iou().values())

    def fb_iou(self) -> float:
        """HSNet/PANet FB-IoU: bg and fg IoU from sums over all episodes, averaged."""
        return _nanmean(_iou_or_nan(self.inter.sum(axis=0), self.union.sum(axis=0)))

    def summary(self) -> dict:
        return {
            "miou": self.miou(),
            "class_iou": {str(c): v for c, v in self.class_iou().items()},
            "fb_iou": self.fb_iou(),
            "fb_iou_episode_mean": _nanmean(self.episode_fb_iou),
            "episode_mean_iou": _nanmean(self.episode_fg_iou),
            "episodes": int(self.episodes.sum()),
            "episodes_per_class": {str(c): int(self.episodes[i]) for i, c in enumerate(self.class_ids)},
        }


SEED_SCORES = ("miou", "fb_iou", "fb_iou_episode_mean", "episode_mean_iou")


def mean_std_over_seeds(scores: Mapping[int, float]) -> dict:
    """One score over episode seeds: ``{"mean", "std", "n", "seeds"}``, ``std`` the sample
    standard deviation (None for a single seed). Every seed counts -- there is no "best"; a
    NaN score makes mean and std NaN rather than silently dropping its seed."""
    if not scores:
        raise ValueError("no seeds to average over")
    seeds = sorted(scores)
    values = [float(scores[s]) for s in seeds]
    if any(math.isnan(v) for v in values):
        mean, std = float("nan"), float("nan")
    else:
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else None
    std = None if len(values) == 1 else std
    return {"mean": mean, "std": std, "n": len(values), "seeds": seeds}


def format_mean_std(stat: dict, scale: float = 100.0, digits: int = 1) -> str:
    """``'52.3 ± 1.2'`` (``'52.3'`` for one seed), values times ``scale``."""
    text = f"{scale * stat['mean']:.{digits}f}"
    return text if stat["std"] is None else f"{text} ± {scale * stat['std']:.{digits}f}"


def summaries_over_seeds(summaries: Mapping[int, dict]) -> dict:
    """Per-seed ``EpisodeIoUAccumulator.summary()`` dicts -> mean +- std of each score of
    :data:`SEED_SCORES` and of each class IoU (``{"miou": {...}, ..., "class_iou": {c: {...}}}``)."""
    if not summaries:
        raise ValueError("no seeds to average over")
    out = {name: mean_std_over_seeds({s: summary[name] for s, summary in summaries.items()})
           for name in SEED_SCORES}
    classes = next(iter(summaries.values()))["class_iou"]
    out["class_iou"] = {c: mean_std_over_seeds({s: summary["class_iou"][c] for s, summary in summaries.items()})
                        for c in classes}
    return out
