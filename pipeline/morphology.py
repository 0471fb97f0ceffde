"""Grey-level morphology with a disk, on batches of soft masks (torch, differentiable).

Ref-Net's boundary-aware self-supervision weighs the prediction by the band
``w = dilation(m) - erosion(m)`` (disk of radius r), and its pseudo triplets dilate masks
by a disk of random radius. Grey dilation = the maximum over the disk around each pixel,
erosion = the minimum; outside the image counts as 0 for the dilation and as 1 for the
erosion (the border does not erode an object that touches it). For a binary mask these are
the binary operations of scipy/skimage with ``disk(r)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def disk(radius: int) -> torch.Tensor:
    """``(2r+1) x (2r+1)`` bool: the pixels within Euclidean distance r of the centre
    (skimage.morphology.disk)."""
    r = int(radius)
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    y, x = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    return (x * x + y * y) <= r * r


def _neighbourhood_max(masks: torch.Tensor, radius: int, pad_value: float) -> torch.Tensor:
    """Max over the disk around each pixel of ``masks`` (``B x H x W``)."""
    r = int(radius)
    if r == 0:
        return masks
    batch, height, width = masks.shape
    padded = F.pad(masks[:, None], (r, r, r, r), value=pad_value)
    patches = F.unfold(padded, 2 * r + 1)  # B x (2r+1)^2 x HW
    inside = disk(r).reshape(-1).to(masks.device)
    return patches[:, inside].amax(dim=1).reshape(batch, height, width)


def dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey dilation of ``B x H x W`` masks by ``disk(radius)``."""
    return _neighbourhood_max(masks, radius, 0.0)


def erode(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey erosion of ``B x H x W`` masks by ``disk(radius)`` (the dual of :func:`dilate`)."""
    return -_neighbourhood_max(-masks, radius, -1.0)


def boundary_band(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Ref-Net's w: ``dilate(m, r) - erode(m, r)``, 1 on a band of width ~2r around the
    boundary of a binary mask, 0 deep inside and far outside."""
    return dilate(masks, radius) - erode(masks, radius)
