"""Few-shot segmentation math shared by the few-shot methods (CRNet today; TPC + CRC and
Ref-Net build on it): masked average pooling, the training-free prototype floor, k-shot
probability fusion and the binary prediction of a foreground probability.

Masks here are *episode* masks (:func:`pipeline.data.episodes.episode_mask`): 1 = the
episode's class, 0 = everything else, ``ignore_index`` (255) = not used. Feature maps are
``B x C x h x w`` (or ``C x h x w``); a mask of another size is brought to the feature
grid by :func:`mask_weights` (area average, so a stride-8 cell that is half object weighs 0.5;
ignored pixels weigh 0 for both foreground and background).

Prototype floor (PANet, Wang et al. ICCV 2019, without its alignment loss;
``kaixin96/PANet`` models/fewshot.py): the foreground prototype is the masked average of
the support features under the class mask, the background prototype the masked average
under the rest; k shots average their prototypes. Each query position is scored by cosine
similarity to both prototypes times ``scale`` (PANet: 20), softmax over {background,
foreground}: the predicted class is the argmax.

All-zero support mask (no pixel of the class in any support): there is no foreground to
pool, the foreground prototype is undefined, and the floor predicts **background
everywhere** (foreground probability 0). A support without any background pixel (no
background prototype) makes every query pixel foreground. No NaN is produced either way.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

PANET_SCALE = 20.0  # PANet's cosine-similarity temperature (models/fewshot.py: scaler = 20)
EPS = 1e-5


def area_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``n_out x n_in`` matrix of the share of each output cell's span that each input pixel
    covers: output cell i spans ``[i * n_in / n_out, (i + 1) * n_in / n_out)`` in pixel units
    and pixel j spans ``[j, j + 1)``; a row sums to 1. ``A @ x`` is the exact area average of a
    1-D signal, also for non-integer ratios (3 pixels -> 2 cells: rows [2/3, 1/3, 0] and
    [0, 1/3, 2/3])."""
    scale = n_in / n_out
    lo = torch.arange(n_out, dtype=torch.float64)[:, None] * scale
    px = torch.arange(n_in, dtype=torch.float64)[None, :]
    overlap = (torch.minimum(lo + scale, px + 1) - torch.maximum(lo, px)).clamp_min(0)
    return (overlap / scale).to(torch.float32)


def area_average(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``B x K x H x W`` maps averaged over the area of each cell of a ``size`` = (h, w) grid
    (separable: :func:`area_matrix` along each axis)."""
    h, w = int(size[0]), int(size[1])
    rows = area_matrix(maps.shape[-2], h).to(maps.device)
    cols = area_matrix(maps.shape[-1], w).to(maps.device)
    return torch.einsum("ih,bkhw,jw->bkij", rows, maps, cols)


def mask_weights(mask: torch.Tensor, size: Sequence[int], ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """``(foreground, background)`` weights ``B x 1 x h x w`` of an episode mask ``B x H x W``
    (or ``H x W``) on a feature grid of ``size`` = (h, w): the area share of class pixels and
    of non-class, non-ignored pixels under each cell (:func:`area_average`; a point sample,
    e.g. bilinear without antialias, would drop a thin object between sample points). A
    floating-point ``mask`` is a *soft* foreground probability (CRC's cascade: a predicted query
    mask as the next pass's support mask): foreground ``mask``, background ``1 - mask``, no
    ignore, gradient kept."""
    if mask.dim() == 2:
        mask = mask[None]
    if mask.is_floating_point():
        fg = mask[:, None]
        bg = 1 - fg
    else:
        fg = (mask == 1).float()[:, None]
        bg = (mask == 0).float()[:, None]
    if tuple(fg.shape[-2:]) != tuple(size):
        both = area_average(torch.cat([fg, bg], dim=1), size)
        fg, bg = both[:, :1], both[:, 1:]
    return fg, bg


def masked_average_pooling(features: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prototype B x C, has_mass B)``: ``sum(features * w) / sum(w)`` per image.

    ``weights`` is ``B x 1 x h x w`` on the features' grid. An image whose weights sum to 0
    gets a zero prototype and ``has_mass`` False (never NaN)."""
    if features.dim() == 3:
        features = features[None]
    if weights.dim() == 3:
        weights = weights[None]
    mass = weights.sum(dim=(2, 3))  # B x 1
    pooled = (features * weights).sum(dim=(2, 3)) / mass.clamp_min(EPS)
    has_mass = mass[:, 0] > EPS
    return pooled * has_mass[:, None].to(pooled.dtype), has_mass


def cosine_map(features: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``B x h x w`` of each position of ``features`` (``B x C x h x w``)
    to ``prototype`` (``B x C`` or ``C``)."""
    if prototype.dim() == 1:
        prototype = prototype[None].expand(features.shape[0], -1)
    return F.cosine_similarity(features, prototype[:, :, None, None], dim=1, eps=EPS)


def prototype_probability(query: torch.Tensor, supports: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                          scale: float = PANET_SCALE, ignore_index: int = 255) -> torch.Tensor:
    """Foreground probability ``h x w`` of the prototype floor on the query's feature grid.

    ``query``: ``C x h x w``; ``supports``: k feature maps ``C x h_i x w_i``; ``masks``: their
    episode masks ``H_i x W_i``. Prototypes are averaged over the shots that have the
    region (see the module docstring for empty regions)."""
    fg_protos, bg_protos = [], []
    for feats, mask in zip(supports, masks):
        fg_w, bg_w = mask_weights(mask, feats.shape[-2:], ignore_index)
        fg, has_fg = masked_average_pooling(feats, fg_w)
        bg, has_bg = masked_average_pooling(feats, bg_w)
        if bool(has_fg[0]):
            fg_protos.append(fg[0])
        if bool(has_bg[0]):
            bg_protos.append(bg[0])
    h, w = query.shape[-2:]
    if not fg_protos:
        return query.new_zeros(h, w)
    if not bg_protos:
        return query.new_ones(h, w)
    q = query[None]
    sims = torch.stack([cosine_map(q, torch.stack(bg_protos).mean(0))[0],
                        cosine_map(q, torch.stack(fg_protos).mean(0))[0]])
    return torch.softmax(scale * sims, dim=0)[1]


def fuse_probabilities(probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
    """k-shot probability-averaging fusion: the mean of the per-support foreground maps."""
    if not len(probabilities):
        raise ValueError("no probabilities to fuse")
    return torch.stack(list(probabilities)).mean(0)


def binary_prediction(probability: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """uint8 ``H x W`` prediction at the label's resolution: the foreground probability
    (any grid) resized bilinearly to ``size``, foreground where it is above 0.5 (the argmax
    of {background, foreground})."""
    p = probability.to(torch.float32)
    if tuple(p.shape[-2:]) != tuple(size):
        p = F.interpolate(p.reshape(1, 1, *p.shape[-2:]), size=tuple(size), mode="bilinear", align_corners=False)
    return (p.reshape(tuple(size)) > 0.5).to(torch.uint8)
