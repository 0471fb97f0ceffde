"""Boundary maps of the RETAB boundary net: storage format, thresholding, and scoring.

On disk (stage ``infer_boundary``): ``<dir>/<id>.png``, one channel uint8 per image at
the image's size, value ``round(p * 255)`` where ``p`` is the predicted probability that
the pixel lies on a semantic boundary. The stages that use the maps (affinity training,
the two-stage random walk, the report figure) decide "boundary or not" at use time with
``boundary.tau`` and may shrink the non-boundary region by ``boundary.erosion`` pixels
(:func:`non_boundary_mask`), so a change of tau never needs the network again.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.config import check_range, section
from pipeline.errors import PipelineError

PROB_SCALE = 255  # uint8 value of probability 1


def prob_to_uint8(prob: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 ``round(p * 255)`` (values outside are clipped)."""
    return np.rint(np.clip(prob, 0.0, 1.0) * PROB_SCALE).astype(np.uint8)


def uint8_to_prob(prob_uint8: np.ndarray) -> np.ndarray:
    """The stored uint8 map back to float32 probabilities in [0, 1]."""
    return np.asarray(prob_uint8, dtype=np.float32) / PROB_SCALE


def check_boundary_params(boundary_cfg: dict) -> None:
    """``boundary.tau`` in (0, 1) and ``boundary.erosion`` >= 0, else one line naming the key.

    The schema checks the same ranges when params.yaml is loaded; this guards callers
    that build the section themselves (tests, notebooks).
    """
    if "tau" not in boundary_cfg:
        raise PipelineError("params.yaml", "missing key 'boundary.tau'")
    check_range(float(boundary_cfg["tau"]), "boundary.tau", 0.0, 1.0, low_open=True, high_open=True)
    erosion = boundary_cfg.get("erosion", 0)
    if isinstance(erosion, bool) or not isinstance(erosion, int):
        raise PipelineError("params.yaml", f"boundary.erosion = {erosion!r} must be an integer")
    check_range(erosion, "boundary.erosion", 0)


def boundary_net_backbone_cfg(params: dict, pretrained: bool | None = None) -> dict:
    """``params["backbone"]`` with the boundary net's own ``boundary.output_stride`` (null:
    the backbone's); ``pretrained`` overrides the ImageNet-weights switch when given."""
    cfg = dict(params["backbone"])
    output_stride = params.get("boundary", {}).get("output_stride")
    if output_stride is not None:
        cfg["output_stride"] = output_stride
    if pretrained is not None:
        cfg["pretrained"] = pretrained
    return cfg


def boundary_mask(prob_uint8: np.ndarray, tau: float) -> np.ndarray:
    """Bool map: pixels whose stored probability is at least ``tau`` (0 < tau < 1)."""
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau must lie in (0, 1), got {tau}")
    return uint8_to_prob(prob_uint8) >= np.float32(tau)


def non_boundary_mask(prob_uint8: np.ndarray, tau: float, erosion: int) -> np.ndarray:
    """Bool map of confidently non-boundary pixels: probability below ``tau``, then eroded.

    ``erosion`` = r > 0 removes every non-boundary pixel within Chebyshev distance r of a
    boundary pixel (binary erosion by a (2r+1) x (2r+1) square), a safety margin around
    predicted boundaries that are slightly too thin or misplaced. The image border does
    not erode (it is not a boundary): outside the image counts as non-boundary.
    """
    if isinstance(erosion, bool) or not isinstance(erosion, (int, np.integer)) or erosion < 0:
        raise ValueError(f"erosion must be an integer >= 0, got {erosion!r}")
    inside = ~boundary_mask(prob_uint8, tau)
    if erosion == 0 or inside.all():
        return inside
    side = 2 * int(erosion) + 1
    # A square is separable: two 1-D erosions give the same result, faster.
    out = ndimage.binary_erosion(inside, structure=np.ones((1, side), bool), border_value=1)
    return ndimage.binary_erosion(out, structure=np.ones((side, 1), bool), border_value=1)


def _near(mask: np.ndarray, tolerance: int) -> np.ndarray:
    """Pixels within Chebyshev distance ``tolerance`` of a True pixel of ``mask``."""
    if tolerance == 0 or not mask.any():
        return mask
    side = 2 * tolerance + 1
    out = ndimage.binary_dilation(mask, structure=np.ones((1, side), bool))
    return ndimage.binary_dilation(out, structure=np.ones((side, 1), bool))


def boundary_f1(pred_bool: np.ndarray, target_uint8: np.ndarray, tolerance: int = 0) -> dict:
    """Precision, recall and F1 of a predicted boundary map against a boundary target.

    ``target_uint8``: 1 boundary, 0 not boundary, 255 ignore (the output of
    :func:`pipeline.data.boundary_labels.boundary_target`); ignore pixels count neither
    as predictions nor as targets. ``tolerance`` = t: a predicted pixel is correct when a
    target boundary pixel lies within Chebyshev distance t, and a target pixel is found
    when a predicted pixel lies within t (t = 0: pixel-exact; the BSDS protocol tolerates
    small offsets the same way, without its one-to-one matching).

    Returns ``{"precision", "recall", "f1", "tp_pred", "pred", "tp_target", "target"}``:
    the counts behind precision (``tp_pred / pred``) and recall (``tp_target / target``)
    so scores over many images can be pooled by summing counts
    (:func:`pooled_boundary_f1`). Precision is NaN when nothing is predicted, recall when
    there is no target; F1 is then 0, or NaN when both are.
    """
    pred = np.asarray(pred_bool, dtype=bool)
    target = np.asarray(target_uint8)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    valid = target != 255
    gt = target == 1
    pred = pred & valid
    counts = {
        "tp_pred": int((pred & _near(gt, tolerance)).sum()),
        "pred": int(pred.sum()),
        "tp_target": int((gt & _near(pred, tolerance)).sum()),
        "target": int(gt.sum()),
    }
    return {**f1_from_counts(counts), **counts}


def f1_from_counts(counts: dict) -> dict:
    """``precision``, ``recall``, ``f1`` from the counts of :func:`boundary_f1`."""
    precision = counts["tp_pred"] / counts["pred"] if counts["pred"] else float("nan")
    recall = counts["tp_target"] / counts["target"] if counts["target"] else float("nan")
    if precision + recall > 0:
        f1 = 2 * precision * recall / (precision + recall)
    elif np.isnan(precision) and np.isnan(recall):
        f1 = float("nan")  # nothing predicted and nothing to find
    else:
        f1 = 0.0  # predictions but no target, or a target and no (correct) predictions
    return {"precision": precision, "recall": recall, "f1": f1}


def pooled_boundary_f1(per_image: list[dict]) -> dict:
    """Dataset-level scores from per-image :func:`boundary_f1` results (counts summed)."""
    keys = ("tp_pred", "pred", "tp_target", "target")
    counts = {k: int(sum(r[k] for r in per_image)) for k in keys}
    return {**f1_from_counts(counts), **counts}


def boundary_config(params: dict) -> tuple[float, int]:
    """``(boundary.tau, boundary.erosion)``: the non-boundary rule shared with stage propagate."""
    from pipeline.boundary import check_boundary_params

    boundary = section(params, "boundary")
    check_boundary_params(boundary)
    return float(boundary["tau"]), int(boundary.get("erosion", 0))
