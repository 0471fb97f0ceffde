"""Semantic-segmentation metrics from a confusion matrix (pure numpy).

Conventions (the usual ones of FCN / DeepLab / mmseg evaluation):

* The confusion matrix ``cm`` has one row per ground-truth class and one column per
  predicted class: ``cm[g, p]`` counts pixels of GT class ``g`` predicted as ``p``.
  Pixels whose GT is the ignore index (VOC's 255 outline band) are not counted at all.
* Optionally ``cm`` has one extra last column, "void": pixels the prediction left
  unlabelled (pseudo labels mark uncertain pixels with the ignore index). Void pixels
  are misses of their GT class: they count in the GT totals (rows) and in no class's
  prediction total, so every metric below is the same formula with or without it.
* A class absent from both the GT and the prediction has IoU = NaN (0/0): it says
  nothing about the method. Means over classes (mIoU, MPA) skip NaN; a mean over an
  all-NaN set is NaN. A class present in only one of the two has IoU = 0.
* FB-IoU (few-shot convention, PANet/HSNet): merge all foreground classes into one,
  then average the background IoU and the merged-foreground IoU. Confusions between
  two foreground classes count as correct foreground. Undefined (NaN) for datasets
  without a background class.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pipeline.errors import PipelineError


def _check_num_classes(num_classes: int) -> None:
    if not 1 <= num_classes <= 1024:
        raise ValueError(f"num_classes = {num_classes}: must be in [1, 1024]")


def _prediction_columns(pred: np.ndarray, num_classes: int, void_index: int | None) -> np.ndarray:
    """Column index of every predicted pixel: the class, or ``num_classes`` for void.

    Validates the range (values outside ``[0, n)`` other than ``void_index`` are errors).
    The array is returned unchanged when it holds only classes (the common case: one
    min/max pass, no copy); uint8 stays uint8 so the fast pair-count path applies.
    """
    n = num_classes
    low, high = int(pred.min()), int(pred.max())
    if low >= 0 and high < n:
        return pred
    outside = (pred < 0) | (pred >= n)
    if void_index is not None:
        outside &= pred != void_index
    if outside.any():
        bad = sorted(int(v) for v in np.unique(pred[outside]))[:5]
        allowed = f" (or void {void_index})" if void_index is not None else ""
        raise ValueError(f"prediction label(s) {bad} out of range [0, {n - 1}]{allowed}")
    void_column = np.asarray(n, dtype=pred.dtype if n <= np.iinfo(pred.dtype).max else np.int64)
    return np.where(pred == void_index, void_column, pred)


def _counts_uint8(gt: np.ndarray, pred_cols: np.ndarray, num_classes: int,
                  ignore_index: int | None, cols: int) -> np.ndarray:
    """Pair counts of uint8 GT and uint8 columns: one bincount of ``cols * gt + pred``.

    The key is built in uint16 (a quarter of the memory traffic of int64): this is the
    path every PNG-based evaluation takes. Rows of the ``(256, cols)`` count table that
    are neither a class nor the ignore index reveal invalid GT values for free.
    """
    n = num_classes
    key_dtype = np.uint16 if 256 * cols <= 65536 else np.int64
    key = gt.astype(key_dtype)
    key *= key_dtype(cols)
    key += pred_cols
    counts = np.bincount(key.ravel(), minlength=256 * cols).reshape(256, cols)
    extra = counts[n:].sum(axis=1)  # rows n..255
    if ignore_index is not None and n <= ignore_index < 256:
        extra[ignore_index - n] = 0
    if extra.any():
        raise ValueError(_bad_gt_message(gt, n, ignore_index))
    return counts[:n].copy()


def _counts_generic(gt: np.ndarray, pred_cols: np.ndarray, num_classes: int,
                    ignore_index: int | None, cols: int) -> np.ndarray:
    """Pair counts for any integer dtypes: ignored GT -> row n (dropped), invalid -> row n + 1."""
    n = num_classes
    gt = gt.astype(np.int64, copy=False)
    rows = np.where((gt >= 0) & (gt < n), gt, n + 1)
    if ignore_index is not None:
        rows[gt == ignore_index] = n
    key = rows * cols + pred_cols
    counts = np.bincount(key.ravel(), minlength=(n + 2) * cols).reshape(n + 2, cols)
    if counts[n + 1].any():
        raise ValueError(_bad_gt_message(gt, n, ignore_index))
    return counts[:n].copy()


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                     ignore_index: int | None = 255, void_index: int | None = None) -> np.ndarray:
    """Confusion matrix (int64) of one image or a batch: rows GT, columns prediction.

    ``gt`` and ``pred`` are integer arrays of the same shape. GT pixels equal to
    ``ignore_index`` are skipped. Prediction values must lie in ``[0, num_classes)``,
    except ``void_index`` (if given) which marks unlabelled pixels and adds a last
    "void" column (shape ``(n, n + 1)`` instead of ``(n, n)``).

    Raises ``ValueError`` for a shape mismatch, a prediction value out of range, a GT
    value that is neither a class nor ``ignore_index``, or an ignore/void index that
    collides with a class (stages turn it into a ``PipelineError`` naming the file).
    Cost: one bincount per image (about 1 ms for a 500x375 uint8 pair).
    """
    _check_num_classes(num_classes)
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"shape mismatch: ground truth {gt.shape} vs prediction {pred.shape}")
    if not (np.issubdtype(gt.dtype, np.integer) and np.issubdtype(pred.dtype, np.integer)):
        raise ValueError(f"labels must be integer arrays (got {gt.dtype} and {pred.dtype})")
    n = num_classes
    for name, index in (("ignore", ignore_index), ("void", void_index)):
        if index is not None and 0 <= index < n:
            raise ValueError(f"{name} index {index} is a class index (classes are 0..{n - 1})")
    cols = n + 1 if void_index is not None else n
    if gt.size == 0:
        return np.zeros((n, cols), dtype=np.int64)
    pred_cols = _prediction_columns(pred, n, void_index)
    if gt.dtype == np.uint8 and pred_cols.dtype == np.uint8 and n <= 256:
        return _counts_uint8(gt, pred_cols, n, ignore_index, cols)
    return _counts_generic(gt, pred_cols, n, ignore_index, cols)


def _bad_gt_message(gt: np.ndarray, num_classes: int, ignore_index: int | None) -> str:
    values = np.unique(gt)
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore_index)]
    return (f"ground-truth label(s) {bad[:5]} are neither a class in [0, {num_classes - 1}] "
            f"nor the ignore index {ignore_index}")


def _split(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, GT pixels per class, predicted pixels per class) as float64."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.shape[0]
    if cm.ndim != 2 or cm.shape[1] not in (n, n + 1):
        raise ValueError(f"confusion matrix must be (n, n) or (n, n + 1), got {cm.shape}")
    tp = np.diag(cm[:, :n]).copy()
    gt_total = cm.sum(axis=1)
    pred_total = cm[:, :n].sum(axis=0)
    return tp, gt_total, pred_total


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with NaN where den == 0 (no warnings)."""
    out = np.full(np.shape(num), np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=np.asarray(den) > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU_c = TP / (TP + FP + FN) per class; NaN for classes absent from GT and prediction."""
    tp, gt_total, pred_total = _split(cm)
    return _ratio(tp, gt_total + pred_total - tp)


def mean_iou(cm: np.ndarray, class_indices: Sequence[int] | None = None) -> float:
    """Mean of the per-class IoUs over ``class_indices`` (all classes if None), NaN skipped."""
    iou = per_class_iou(cm)
    if class_indices is not None:
        iou = iou[np.asarray(list(class_indices), dtype=np.int64)]
    return _nanmean(iou)


def pixel_accuracy(cm: np.ndarray) -> float:
    """PA: correctly labelled pixels / evaluated pixels (void pixels count as wrong)."""
    tp, gt_total, _ = _split(cm)
    total = gt_total.sum()
    return float(tp.sum() / total) if total > 0 else float("nan")


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall per class, TP / GT pixels; NaN for classes with no GT pixel."""
    tp, gt_total, _ = _split(cm)
    return _ratio(tp, gt_total)


def mean_pixel_accuracy(cm: np.ndarray) -> float:
    """MPA: mean over classes present in the GT of the per-class accuracy."""
    return _nanmean(per_class_accuracy(cm))


def frequency_weighted_iou(cm: np.ndarray) -> float:
    """FWIoU = sum_c (GT pixels of c / all pixels) * IoU_c (classes absent from GT weigh 0)."""
    tp, gt_total, pred_total = _split(cm)
    total = gt_total.sum()
    if total == 0:
        return float("nan")
    iou = per_class_iou(cm)
    present = gt_total > 0  # union > 0 there, so iou is finite
    return float((gt_total[present] / total * iou[present]).sum())


def foreground_background_iou(cm: np.ndarray, background_index: int | None) -> float:
    """FB-IoU: mean of background IoU and merged-foreground IoU (NaN without a background).

    If one of the two is 0/0 (e.g. no foreground anywhere, in GT or prediction), the
    other alone is the result.
    """
    if background_index is None:
        return float("nan")
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.shape[0]
    b = background_index
    fg = np.array([c for c in range(n) if c != b], dtype=np.int64)
    tp_bg = cm[b, b]
    gt_bg, pred_bg = cm[b, :].sum(), cm[:n, b].sum()
    tp_fg = cm[np.ix_(fg, fg)].sum()
    gt_fg, pred_fg = cm[fg, :].sum(), cm[:, fg].sum()
    ious = _ratio(np.array([tp_bg, tp_fg]), np.array([gt_bg + pred_bg - tp_bg, gt_fg + pred_fg - tp_fg]))
    return _nanmean(ious)


def harmonic_mean(a: float, b: float) -> float:
    """Harmonic mean of base and novel mIoU (hIoU of generalized few-shot papers)."""
    if np.isnan(a) or np.isnan(b):
        return float("nan")
    return 0.0 if a + b == 0 else float(2 * a * b / (a + b))


def coverage(cm: np.ndarray) -> float:
    """Fraction of evaluated pixels the prediction labelled (1.0 without a void column)."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    if total == 0:
        return float("nan")
    void = cm[:, cm.shape[0]:].sum()
    return float(1.0 - void / total)


def labelled_pixel_accuracy(cm: np.ndarray) -> float:
    """Accuracy over the pixels the prediction labelled (pseudo-label precision)."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.shape[0]
    labelled = cm[:, :n].sum()
    return float(np.trace(cm[:, :n]) / labelled) if labelled > 0 else float("nan")


class ConfusionAccumulator:
    """Streams images into one confusion matrix; metrics are computed on the sum.

    Dataset-level IoU is therefore sum-of-intersections over sum-of-unions (the VOC
    protocol), not a mean of per-image IoUs.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, void_index: int | None = None):
        _check_num_classes(num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.void_index = void_index
        cols = num_classes + 1 if void_index is not None else num_classes
        self.matrix = np.zeros((num_classes, cols), dtype=np.int64)
        self.count = 0

    def update(self, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """Add one image (or a batch); returns that image's confusion matrix."""
        cm = confusion_matrix(gt, pred, self.num_classes, self.ignore_index, self.void_index)
        self.matrix += cm
        self.count += 1
        return cm

    def merge(self, other: "ConfusionAccumulator") -> None:
        """Add another accumulator's counts (parallel workers, shards)."""
        if other.matrix.shape != self.matrix.shape:
            raise ValueError(f"cannot merge accumulators of shapes {other.matrix.shape} and {self.matrix.shape}")
        self.matrix += other.matrix
        self.count += other.count

    def summary(self, background_index: int | None = None,
                base_classes: Sequence[int] | None = None,
                novel_classes: Sequence[int] | None = None) -> dict:
        """All metrics as plain floats (NaN where undefined); per-class IoU as a list."""
        return summarize_confusion(self.matrix, background_index, base_classes, novel_classes)


#: Keys of :func:`novel_error_breakdown` (and of every fold's evaluate metrics file).
NOVEL_ERROR_KEYS = ("novel_recall", "novel_to_background", "novel_to_base", "novel_to_other_novel", "novel_to_void",
                    "novel_precision", "false_novel_from_background", "false_novel_from_base",
                    "false_novel_from_other_novel")


def novel_error_breakdown(cm: np.ndarray, background_index: int | None, base_classes: Sequence[int],
                          novel_classes: Sequence[int]) -> dict:
    """Where novel-class errors go, pooled over the novel classes (fractions in [0, 1]).

    Over ground-truth novel pixels (they sum to 1 with ``novel_to_void`` for void
    predictions): ``novel_recall`` (the right class), ``novel_to_background``,
    ``novel_to_base`` (a base class: the look-alike confusion weak-shot methods fight) and
    ``novel_to_other_novel``. Over pixels predicted as a novel class: ``novel_precision`` and
    where the false ones come from, ``false_novel_from_background`` / ``_from_base`` /
    ``_from_other_novel``. ``None`` where a pixel set is empty (no novel GT, no novel
    prediction). Two rows with the same novel mIoU can differ here: one misses objects into
    the background, the other paints base objects as novel.
    """
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.shape[0]
    novel = np.asarray(list(novel_classes), dtype=np.int64)
    base = np.asarray([c for c in base_classes if c != background_index], dtype=np.int64)
    if novel.size == 0:
        raise ValueError("novel_error_breakdown needs at least one novel class")
    if np.any((novel < 0) | (novel >= n)) or np.any((base < 0) | (base >= n)):
        raise ValueError(f"class index out of range 0..{n - 1}")
    background = np.asarray([] if background_index is None else [background_index], dtype=np.int64)

    def share(part: float, whole: float) -> float | None:
        return float(part / whole) if whole > 0 else None

    rows = cm[novel]  # ground-truth novel pixels, by prediction
    gt_novel = rows.sum()
    correct = cm[novel, novel].sum()
    to_novel = rows[:, novel].sum()
    cols = cm[:n, novel]  # predicted novel, by ground truth
    pred_novel = cols.sum()
    from_novel = cols[novel].sum()
    shares = (share(correct, gt_novel), share(rows[:, background].sum(), gt_novel),
              share(rows[:, base].sum(), gt_novel), share(to_novel - correct, gt_novel),
              share(rows[:, n:].sum(), gt_novel),
              share(correct, pred_novel), share(cols[background].sum(), pred_novel),
              share(cols[base].sum(), pred_novel), share(from_novel - correct, pred_novel))
    return dict(zip(NOVEL_ERROR_KEYS, shares))


def summarize_confusion(cm: np.ndarray, background_index: int | None = None,
                        base_classes: Sequence[int] | None = None,
                        novel_classes: Sequence[int] | None = None) -> dict:
    """Every metric of this module from one confusion matrix, as a flat dict of floats."""
    out = {
        "miou": mean_iou(cm),
        "pixel_accuracy": pixel_accuracy(cm),
        "mean_pixel_accuracy": mean_pixel_accuracy(cm),
        "fwiou": frequency_weighted_iou(cm),
        "fb_iou": foreground_background_iou(cm, background_index),
        "per_class_iou": [float(v) for v in per_class_iou(cm)],
    }
    if base_classes is not None:
        out["miou_base"] = mean_iou(cm, base_classes)
    if novel_classes is not None:
        out["miou_novel"] = mean_iou(cm, novel_classes)
    if base_classes is not None and novel_classes is not None:
        out["miou_harmonic"] = harmonic_mean(out["miou_base"], out["miou_novel"])
        if len(novel_classes):
            out.update(novel_error_breakdown(cm, background_index, base_classes, novel_classes))
    cm = np.asarray(cm)
    if cm.shape[1] == cm.shape[0] + 1:
        out["coverage"] = coverage(cm)
        out["labelled_pixel_accuracy"] = labelled_pixel_accuracy(cm)
    return out


def confusion_or_error(where: object, gt: np.ndarray, pred: np.ndarray, num_classes: int,
                       ignore_index: int | None = 255, void_index: int | None = None) -> np.ndarray:
    """``confusion_matrix`` for stages: any data problem becomes a PipelineError naming ``where``."""
    try:
        return confusion_matrix(gt, pred, num_classes, ignore_index, void_index)
    except ValueError as err:
        raise PipelineError(where, str(err)) from None
