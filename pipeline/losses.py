"""Losses of the CAM, boundary and segmentation networks (the affinity loss lives in
:mod:`pipeline.propagation.affinity`).

Boundary-loss target encoding (uint8, one value per pixel, at the boundary net's output
size):

====  ==============================================================
0     ``BL_BACKGROUND``: not a boundary, background
1     ``BL_FOREGROUND``: not a boundary, foreground (any object class)
2     ``BL_BOUNDARY``: boundary
255   ``BL_IGNORE``: unknown (void that is no boundary); no loss
====  ==============================================================

Datasets without a background class (CamVid) have no 0 pixels: every non-boundary pixel
is foreground (:func:`boundary_loss_target` with ``background_index=None``), and the empty
background set contributes 0.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BL_BACKGROUND, BL_FOREGROUND, BL_BOUNDARY, BL_IGNORE = 0, 1, 2, 255


def multilabel_soft_margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """PSA/IRN's CAM loss: mean over images and classes of the per-class logistic loss.

    ``logits``: ``B x C``; ``targets``: ``B x C`` multi-hot (1 = class present).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    return F.multilabel_soft_margin_loss(logits, targets.to(logits.dtype))


def _mean_or_zero(values: torch.Tensor, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[mask]``; 0 (still attached to the graph) when the set is empty."""
    count = mask.sum()
    if count == 0:
        return like.sum() * 0.0
    return values[mask].sum() / count


def boundary_loss_parts(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """RETAB's boundary loss and its three terms (for logging).

    ``L_B = mean_{boundary} BCE(b, 1) + 1/2 mean_{non-bd fg} BCE(b, 0)
    + 1/2 mean_{non-bd bg} BCE(b, 0)``, each mean over its own pixel set pooled over the
    batch; ignore pixels are in no set; an empty set contributes 0.

    ``logits``: ``B x 1 x h x w`` or ``B x h x w`` boundary logits; ``target``: ``B x h x w``
    in the encoding of this module.
    """
    if logits.dim() == 4:
        if logits.shape[1] != 1:
            raise ValueError(f"boundary logits must have 1 channel, got {logits.shape[1]}")
        logits = logits[:, 0]
    if logits.shape != target.shape:
        raise ValueError(f"boundary logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape "
                         "(bring the target to the output stride with boundary_target_at_stride)")
    target = target.to(logits.device).long()
    # BCE with logits: -log(sigmoid(z)) = softplus(-z), -log(1 - sigmoid(z)) = softplus(z).
    boundary = _mean_or_zero(F.softplus(-logits), target == BL_BOUNDARY, logits)
    foreground = _mean_or_zero(F.softplus(logits), target == BL_FOREGROUND, logits)
    background = _mean_or_zero(F.softplus(logits), target == BL_BACKGROUND, logits)
    loss = boundary + foreground / 2 + background / 2
    parts = {"boundary": float(boundary.detach()), "foreground": float(foreground.detach()),
             "background": float(background.detach())}
    return loss, parts


def boundary_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RETAB's L_B (see :func:`boundary_loss_parts`)."""
    return boundary_loss_parts(logits, target)[0]


def boundary_loss_target(boundary: np.ndarray, mask: np.ndarray, background_index: int | None,
                         ignore_index: int) -> np.ndarray:
    """Encode the loss target from a boundary map and the class mask (both ``H x W``).

    ``boundary``: 1 = boundary, 0 = not, 255 = ignore (the output of
    :func:`pipeline.data.boundary_labels.boundary_target`); ``mask``: class indices with
    ``ignore_index``. Boundary wins over ignore (VOC's outline band is void in the mask).
    Other pixels are ignore where either map says so, background where the mask is
    ``background_index``, foreground elsewhere (everywhere when it is None).
    """
    if boundary.shape != mask.shape:
        raise ValueError(f"boundary map {boundary.shape} and mask {mask.shape} differ in shape")
    out = np.full(mask.shape, BL_FOREGROUND, dtype=np.uint8)
    if background_index is not None:
        out[mask == background_index] = BL_BACKGROUND
    out[(boundary == 255) | (mask == ignore_index)] = BL_IGNORE
    out[boundary == 1] = BL_BOUNDARY
    return out


def boundary_target_at_stride(target: np.ndarray | torch.Tensor, stride: int) -> np.ndarray | torch.Tensor:
    """Bring an encoded target (``H x W`` or ``B x H x W``) to ``ceil(H/stride) x ceil(W/stride)``.

    Per ``stride x stride`` cell (the last ones cover what is left): boundary if any pixel
    is a boundary (thin lines survive), else ignore if any pixel is ignore, else the
    majority of foreground vs background (ties: foreground). Returns the input's type.
    """
    is_numpy = isinstance(target, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(target)) if is_numpy else target
    squeeze = t.dim() == 2
    t = t[None] if squeeze else t
    if stride == 1:
        out = t.to(torch.uint8)
    else:
        h, w = t.shape[-2:]
        pad = (0, -w % stride, 0, -h % stride)

        def cell_count(value: int) -> torch.Tensor:
            hits = F.pad((t == value).float()[:, None], pad)  # padding counts as none of the types
            return F.avg_pool2d(hits, stride, stride, divisor_override=1)[:, 0]

        n_boundary, n_ignore = cell_count(BL_BOUNDARY), cell_count(BL_IGNORE)
        n_fg, n_bg = cell_count(BL_FOREGROUND), cell_count(BL_BACKGROUND)
        out = torch.where(n_fg >= n_bg, BL_FOREGROUND, BL_BACKGROUND).to(torch.uint8)
        out[n_ignore > 0] = BL_IGNORE
        out[n_boundary > 0] = BL_BOUNDARY
    out = out[0] if squeeze else out
    return out.numpy() if is_numpy else out


def segmentation_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixel cross-entropy averaged over the non-ignored pixels; 0 if every pixel is ignored.

    ``logits``: ``B x C x H x W``; ``target``: ``B x H x W`` class indices.
    """
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match")
    target = target.to(logits.device).long()
    if not (target != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


# --------------------------------------------------------------------------- Ref-Net RSM

def dice_loss(prob: torch.Tensor, target: torch.Tensor, tau: float = 1.0,
              valid: torch.Tensor | None = None) -> torch.Tensor:
    """Ref-Net's Dice loss with Laplace smoothing ``tau``, mean over the batch.

    Per sample: ``1 - (2 sum(p g) + tau) / (sum(p) + sum(g) + tau)`` over its pixels.
    ``prob``, ``target``: ``B x H x W`` in [0, 1]; ``valid`` (same shape, bool): only those
    pixels count (void / padding left out). The smoothing makes an all-zero target with an
    all-zero prediction a loss of 0 (the paper's "no shared category" pairs) instead of 0/0.
    Hand check: p = g = one pixel of 1 -> 1 - 3/3 = 0; p = 1, g = 0 on one pixel -> 1 - 1/2.
    """
    if valid is not None:
        weight = valid.to(prob.dtype)
        prob, target = prob * weight, target.to(prob.dtype) * weight
    dims = tuple(range(1, prob.dim()))
    inter = (prob * target).sum(dims)
    total = prob.sum(dims) + target.to(prob.dtype).sum(dims)
    return (1.0 - (2.0 * inter + tau) / (total + tau)).mean()


def gaussian_mmd(a: torch.Tensor, b: torch.Tensor, bandwidths: tuple[float, ...] | None = None) -> torch.Tensor:
    """Squared MMD (biased V-statistic) between samples ``a`` (``N x C``) and ``b`` (``M x C``)
    with a sum of Gaussian kernels ``exp(-||x - y||^2 / (2 s^2))`` over ``bandwidths`` s.

    ``bandwidths=None``: the median heuristic, one s^2 = median of the pooled squared
    distances (detached; 1 when all are 0). The V-statistic is >= 0 and exactly 0 for
    identical samples. Hand check, 1-D, a = [0], b = [1], s = 1: 2 - 2 exp(-1/2).
    """
    pooled = torch.cat([a, b], dim=0)
    sq = torch.cdist(pooled, pooled).pow(2)
    if bandwidths is None:
        positive = sq.detach()[sq.detach() > 0]
        variances = [float(positive.median()) if positive.numel() else 1.0]
    else:
        variances = [float(s) ** 2 for s in bandwidths]
    kernel = sum(torch.exp(-sq / (2.0 * v)) for v in variances)
    n = a.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2.0 * kernel[:n, n:].mean()
