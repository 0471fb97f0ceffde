"""Pixel pairs within a radius, their predicted affinities, pair labels and the AffinityNet loss.

Conventions (PSA, Ahn & Kwak 2018; RETAB, Zhou et al. 2022):

* A *pair* joins pixel ``i = (y, x)`` of an ``h x w`` grid (flattened row-major,
  ``i = y * w + x``) with pixel ``j = (y + dy, x + dx)`` for an offset ``(dy, dx)`` from
  :func:`pair_offsets`. The offsets are a half disc (``dy^2 + dx^2 < radius^2``, ``dy > 0``
  or ``dy == 0 and dx > 0``), so every unordered pair within the radius appears once.
* Unlike PSA, which keeps only "from" pixels whose whole half disc lies inside the image
  (its borders lose ``radius - 1`` rows/columns of pairs), every pair with *both* pixels
  inside the image is kept. The pair list is the concatenation, offset by offset in
  :func:`pair_offsets` order, of the row-major list of valid "from" pixels; all functions
  here and in :mod:`pipeline.propagation.random_walk` share that order
  (:func:`pair_index_arrays`).
* Predicted affinity ``a_ij = exp(-mean_d |f_i - f_j|)`` in (0, 1].
"""
from __future__ import annotations

import functools
from typing import Mapping

import numpy as np
import torch

from pipeline.errors import PipelineError

#: PSA's epsilon inside the logarithms of the affinity loss.
LOSS_EPS = 1e-5
#: Largest radius accepted (as in the params schema): ~pi * 64^2 / 2 pairs per pixel already.
MAX_RADIUS = 64


def check_radius(radius: int) -> int:
    """``affinity.radius`` must be an integer in [1, 64] (radius 1 has no pairs, only self-loops)."""
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)):
        raise PipelineError("params.yaml", f"affinity.radius = {radius!r} must be an integer >= 1")
    if not 1 <= radius <= MAX_RADIUS:
        raise PipelineError("params.yaml", f"affinity.radius = {radius} is out of range [1, {MAX_RADIUS}]")
    return int(radius)


def pair_offsets(radius: int) -> list[tuple[int, int]]:
    """Half-disc offsets ``(dy, dx)`` with ``dy^2 + dx^2 < radius^2``, in PSA's order.

    First ``(0, 1) .. (0, radius-1)``, then rows ``dy = 1 .. radius-1`` with
    ``dx = -(radius-1) .. radius-1``. Each unordered pixel pair is reached by exactly one
    offset (the opposite offset ``(-dy, -dx)`` is never included).
    """
    radius = check_radius(radius)
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dx * dx + dy * dy < radius * radius:
                offsets.append((dy, dx))
    return offsets


def _offset_windows(h: int, w: int, dy: int, dx: int) -> tuple[slice, slice, slice, slice] | None:
    """Row/column slices of the "from" and "to" pixels of offset (dy, dx) inside h x w."""
    x0, x1 = max(0, -dx), w - max(0, dx)
    if dy >= h or x1 <= x0:
        return None
    return slice(0, h - dy), slice(x0, x1), slice(dy, h), slice(x0 + dx, x1 + dx)


def _check_grid(h: int, w: int) -> None:
    if h < 1 or w < 1:
        raise ValueError(f"grid size must be positive, got {h}x{w}")


@functools.lru_cache(maxsize=32)
def _pair_index_arrays_cached(h: int, w: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    grid = np.arange(h * w, dtype=np.int64).reshape(h, w)
    froms, tos = [], []
    for dy, dx in pair_offsets(radius):
        win = _offset_windows(h, w, dy, dx)
        if win is None:
            continue
        fy, fx, ty, tx = win
        froms.append(grid[fy, fx].ravel())
        tos.append(grid[ty, tx].ravel())
    if not froms:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    from_idx, to_idx = np.concatenate(froms), np.concatenate(tos)
    from_idx.setflags(write=False)
    to_idx.setflags(write=False)
    return from_idx, to_idx


def pair_index_arrays(h: int, w: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy ``(from_idx, to_idx)`` int64 arrays of every pair inside the image (read-only, cached)."""
    _check_grid(h, w)
    return _pair_index_arrays_cached(int(h), int(w), check_radius(radius))


def pair_indices(h: int, w: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(from_idx, to_idx)``: flattened indices (``y * w + x``) of every pair inside the image.

    Both are 1-D int64 tensors of the same length M (the number of pairs); ``to`` is
    ``from + (dy, dx)`` for an offset of :func:`pair_offsets`. Order: offset by offset,
    row-major within an offset (the order of :func:`pairwise_affinity` and
    :func:`pair_labels`).
    """
    from_idx, to_idx = pair_index_arrays(h, w, radius)
    return torch.from_numpy(from_idx.copy()), torch.from_numpy(to_idx.copy())


def num_pairs(h: int, w: int, radius: int) -> int:
    """Number of pairs M of an ``h x w`` grid."""
    return int(pair_index_arrays(h, w, radius)[0].shape[0])


def pairwise_affinity(features: torch.Tensor, radius: int) -> torch.Tensor:
    """Affinities ``exp(-mean_d |f_i - f_j|)`` of every pair: ``B x D x H x W`` -> ``B x M``.

    Computed offset by offset on shifted views of the feature map (no gathered copies of
    the features), in the order of :func:`pair_indices`. Differentiable.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be B x D x H x W, got shape {tuple(features.shape)}")
    b, _, h, w = features.shape
    _check_grid(h, w)
    parts = []
    for dy, dx in pair_offsets(radius):
        win = _offset_windows(h, w, dy, dx)
        if win is None:
            continue
        fy, fx, ty, tx = win
        diff = features[:, :, fy, fx] - features[:, :, ty, tx]
        parts.append(torch.exp(-diff.abs().mean(dim=1)).reshape(b, -1))
    if not parts:
        return features.new_zeros((b, 0))
    return torch.cat(parts, dim=1)


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def pair_labels(label_map, radius: int, ignore_index: int = 255, background_index: int | None = 0,
                valid_pixels=None) -> dict[str, torch.Tensor]:
    """Pair supervision from a label map (PSA's bg-pos / fg-pos / neg pairs).

    ``label_map``: ``H x W`` or ``B x H x W`` class indices (numpy or torch).
    ``valid_pixels``: optional boolean mask of the same shape (``H x W`` is broadcast over
    the batch); a pair where either pixel is invalid is dropped from every set. RETAB's
    mixed supervision uses it for novel samples: only pairs where neither pixel is a
    predicted boundary pixel are supervised.

    Returns boolean tensors of shape ``(M,)`` or ``(B, M)``:

    * ``bg_pos``: both labels valid, equal and equal to ``background_index``;
    * ``fg_pos``: both labels valid, equal and not background. With
      ``background_index=None`` (datasets without a background class, e.g. CamVid) every
      equal-label pair is an ``fg_pos`` pair and ``bg_pos`` is empty;
    * ``neg``: both labels valid and different.

    Pairs touching ``ignore_index`` belong to no set.
    """
    labels = _as_tensor(label_map, "label_map").long()
    if labels.dim() not in (2, 3):
        raise ValueError(f"label_map must be H x W or B x H x W, got shape {tuple(labels.shape)}")
    h, w = labels.shape[-2:]
    from_idx, to_idx = (idx.to(labels.device) for idx in pair_indices(h, w, radius))
    flat = labels.reshape(*labels.shape[:-2], h * w)
    lab_from, lab_to = flat[..., from_idx], flat[..., to_idx]
    valid = (lab_from != ignore_index) & (lab_to != ignore_index)
    if valid_pixels is not None:
        vp = _as_tensor(valid_pixels, "valid_pixels").to(labels.device).bool()
        if tuple(vp.shape[-2:]) != (h, w) or vp.dim() > labels.dim():
            raise ValueError(f"valid_pixels shape {tuple(vp.shape)} does not match label_map {tuple(labels.shape)}")
        vflat = vp.reshape(*vp.shape[:-2], h * w)
        valid = valid & vflat[..., from_idx] & vflat[..., to_idx]
    equal = lab_from == lab_to
    if background_index is None:
        bg_pos = torch.zeros_like(valid)
        fg_pos = equal & valid
    else:
        is_bg = lab_from == background_index
        bg_pos = equal & valid & is_bg
        fg_pos = equal & valid & ~is_bg
    neg = ~equal & valid
    return {"bg_pos": bg_pos, "fg_pos": fg_pos, "neg": neg}


def affinity_by_pair_type(aff, label_map, radius: int, novel_classes, ignore_index: int = 255,
                          background_index: int | None = 0) -> dict[str, dict[str, float | int | None]]:
    """Mean predicted affinity of one image's pairs, by what ground truth says they are.

    ``aff``: ``(M,)`` pair affinities of an ``h x w`` grid (:func:`pairwise_affinity` order);
    ``label_map``: the ``h x w`` ground truth on that grid. Pair types: ``within_novel`` /
    ``within_base`` (both pixels in the same novel / base object class), ``background``
    (both background) and ``across`` (different classes). Each: ``{"pairs": n, "sum": s,
    "mean": s / n or None}``; sums let images be pooled. A weak-shot affinity net should
    rate within-novel pairs as high as within-base ones: it never saw a novel pixel label.
    """
    labels = _as_tensor(label_map, "label_map").long()
    pairs = pair_labels(labels, radius, ignore_index, background_index)
    aff = _as_tensor(aff, "aff").float().reshape(-1)
    if aff.shape[0] != pairs["neg"].shape[-1]:
        raise ValueError(f"aff has {aff.shape[0]} pairs, the {tuple(labels.shape)} grid at radius {radius}"
                         f" has {pairs['neg'].shape[-1]}")
    from_idx, _ = pair_indices(*labels.shape[-2:], radius)
    is_novel = torch.isin(labels.reshape(-1)[from_idx], torch.as_tensor(list(novel_classes), dtype=torch.long))
    masks = {"within_novel": pairs["fg_pos"] & is_novel, "within_base": pairs["fg_pos"] & ~is_novel,
             "background": pairs["bg_pos"], "across": pairs["neg"]}
    out = {}
    for name, mask in masks.items():
        n, total = int(mask.sum()), float(aff[mask].sum())
        out[name] = {"pairs": n, "sum": total, "mean": total / n if n else None}
    return out


def affinity_loss(aff: torch.Tensor, labels: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """AffinityNet loss ``bg/4 + fg/4 + neg/2`` (PSA, Eq. 7-9).

    ``bg = mean over bg_pos pairs of -log(aff + eps)``, ``fg`` likewise over ``fg_pos``,
    ``neg = mean over neg pairs of -log(1 + eps - aff)``; each mean is over its own pair
    set pooled over the whole batch (as PSA does). An empty set contributes 0 (no NaN).
    ``labels`` is the dict of :func:`pair_labels` (boolean or 0/1 masks shaped like
    ``aff``). Returns ``(loss, parts)`` where parts holds the three terms and the pair
    counts as floats, for logging.
    """
    terms = {}
    parts: dict[str, float] = {}
    for name, key, positive in (("bg", "bg_pos", True), ("fg", "fg_pos", True), ("neg", "neg", False)):
        mask = _as_tensor(labels[key], key).to(aff.device).bool()
        if mask.shape != aff.shape:
            raise ValueError(f"labels['{key}'] shape {tuple(mask.shape)} != affinity shape {tuple(aff.shape)}")
        selected = aff[mask]
        # Selecting before the log keeps unsupervised pairs out of the graph entirely.
        nll = -torch.log(selected + LOSS_EPS) if positive else -torch.log(1.0 + LOSS_EPS - selected)
        count = selected.numel()
        terms[name] = nll.sum() / max(count, 1)
        parts[f"{name}_loss"] = float(terms[name].detach())
        parts[f"{name}_count"] = float(count)
    loss = terms["bg"] / 4 + terms["fg"] / 4 + terms["neg"] / 2
    parts["loss"] = float(loss.detach())
    return loss, parts
