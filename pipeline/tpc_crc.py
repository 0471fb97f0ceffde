"""TPC + CRC on CRNet ("Improved similarity propagation for one-shot semantic segmentation":
transformed-pair conditioning and the cyclic reinforcement constraint; no public code).

**TPC** (transformed-pair conditioning): conditioning epochs before the training, whose
pairs are one image and a transformed copy of it: the support is the image, the query the
copy (:func:`tpc_pairs`, :func:`tpc_batches`). The schedule keeps the paper's *shape*
(:func:`tpc_schedule`): 30 conditioning epochs at lr 2.5e-5 before 200 training epochs at
CANet's 2.5e-3 become ``epoch_share`` (0.15) of ``crnet.train.epochs``, rounded up, at
``lr_share`` (0.01) of ``crnet.train.lr``. CRNet's encoder is
frozen and its features cached (:mod:`pipeline.data.fewshot_features`), so the transforms act
on the cached *feature maps* and, with the same sampling grid, on the mask
(:func:`sampling_grid`, :func:`transform_pair`): horizontal flip, rotation, zoom and a smooth
non-linear (sinusoidal) distortion are exact counterparts of the image transforms up to the
encoder's receptive field; Gaussian and pepper noise have no faithful feature-space
equivalent, so they are applied to the feature maps (Gaussian: ``gaussian`` x the map's std
per element; pepper: a ``pepper`` share of grid cells set to zero, all channels). Running the
frozen encoder on transformed images instead would cost one encoder pass per TPC pair on
the CPU (docs/tpc_crc.md: measured). Pixels that come from outside the source map are zero features
and *ignore* in the mask.

**CRC** (cyclic reinforcement constraint), :func:`pipeline.crnet_training.pair_loss`:
``crc="cascade"`` is the paper's (Section 3, Eq. 1): stage one predicts the query mask from
(support, support mask, query); stage two is the *same network with the inputs flipped*: the
support image is the query, the stage-one *soft* query mask (not detached) the support mask,
and it predicts the original support mask. Loss: CRNet's own loss + ``support_weight`` x the
stage-two CE, end to end through the soft mask (the gradient through the mask is what makes
the cycle constrain the query prediction). Stage two goes through the query branch of the
cross-reference (its per-branch FC weights in the query role), which the earlier form never
did. ``crc="branch"`` (the earlier form, kept as variants ``crc_branch``/``tpc_crc_branch``):
CRNet's own support branch, conditioned on the query's predicted soft mask instead of its
ground truth. The 2-class softmax CE is the paper's BCE on the logit difference.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.training import poly_lr_factor

TRANSFORM_KEYS = ("flip", "rotation", "zoom", "distortion", "gaussian", "pepper")
STRESS_TESTS = ("identical", "zero_mask")  # the paper's Table 7: support = query; all-zero support mask


def sample_transform(cfg: dict, rng: np.random.Generator) -> dict:
    """One random transform of ``crnet.tpc_crc.train.transforms``: ``flip`` (probability),
    ``rotation`` (max degrees, uniform in +-), ``zoom`` ([low, high], log-uniform),
    ``distortion`` (max amplitude in normalized units, uniform in [0, max]; random phases),
    ``gaussian`` (noise std relative to the map's std), ``pepper`` (share of grid cells zeroed)."""
    low, high = (float(v) for v in cfg["zoom"])
    return {"flip": bool(rng.random() < float(cfg["flip"])),
            "angle": float(rng.uniform(-1, 1) * float(cfg["rotation"])),
            "zoom": float(math.exp(rng.uniform(math.log(low), math.log(high)))),
            "distortion": float(rng.uniform(0, 1) * float(cfg["distortion"])),
            "phase": [float(v) for v in rng.uniform(0, 2 * math.pi, size=2)],
            "gaussian": float(cfg["gaussian"]), "pepper": float(cfg["pepper"]),
            "noise_seed": int(rng.integers(2 ** 31))}


def sampling_grid(t: dict, height: int, width: int) -> torch.Tensor:
    """``1 x height x width x 2`` grid for :func:`torch.nn.functional.grid_sample`
    (``align_corners=False``): where each output cell reads the source. It is a function of
    normalized coordinates only, so maps of any resolution (features, masks) get the same
    geometric transform. Rotation is in the image's own aspect (a square stays a square);
    zoom > 1 enlarges; the distortion shifts x by ``a sin(pi y + p0)`` and y by
    ``a sin(pi x + p1)``; the flip mirrors the output horizontally; a positive angle turns the
    content clockwise on screen (90 degrees: ``torch.rot90(m, -1)``)."""
    ys = (2 * torch.arange(height, dtype=torch.float64) + 1) / height - 1
    xs = (2 * torch.arange(width, dtype=torch.float64) + 1) / width - 1
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    if t["flip"]:
        x = -x
    aspect = width / height
    angle = math.radians(t["angle"])
    u, v = x * aspect, y  # aspect-true coordinates
    su = (math.cos(angle) * u + math.sin(angle) * v) / t["zoom"]
    sv = (-math.sin(angle) * u + math.cos(angle) * v) / t["zoom"]
    sx, sy = su / aspect, sv
    a, (p0, p1) = t["distortion"], t["phase"]
    if a:
        sx, sy = sx + a * torch.sin(math.pi * sy + p0), sy + a * torch.sin(math.pi * sx + p1)
    return torch.stack([sx, sy], dim=-1)[None].to(torch.float32)


def warp_mask(mask: torch.Tensor, grid: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``H x W`` label mask resampled (nearest) on ``grid`` (built for H x W); cells read from
    outside the source become ``ignore_index``."""
    source = mask.to(torch.float32)[None, None]
    out = F.grid_sample(source, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0]
    inside = F.grid_sample(torch.ones_like(source), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)[0, 0]
    out = torch.where(inside > 0.5, out, torch.full_like(out, float(ignore_index)))
    return out.round().to(mask.dtype)


def add_noise(features: torch.Tensor, t: dict) -> torch.Tensor:
    """``1 x C x h x w`` features + Gaussian noise (``gaussian`` x their std) with a ``pepper``
    share of the grid cells set to zero (all channels); seeded by ``t['noise_seed']``."""
    gen = torch.Generator().manual_seed(int(t["noise_seed"]))
    out = features
    if t["gaussian"] > 0:
        out = out + t["gaussian"] * float(features.std()) * torch.randn(features.shape, generator=gen)
    if t["pepper"] > 0:
        keep = (torch.rand(features.shape[-2:], generator=gen) >= t["pepper"]).to(features.dtype)
        out = out * keep
    return out


def transform_pair(features: torch.Tensor, mask: torch.Tensor, t: dict, ignore_index: int):
    """The transformed copy of an image's ``1 x C x h x w`` features and its ``H x W`` mask:
    one geometric transform for both (bilinear features, nearest mask), then noise on the
    features only. Returns ``(features, mask)``."""
    grid = sampling_grid(t, *features.shape[-2:])
    warped = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return add_noise(warped, t), warp_mask(mask, sampling_grid(t, *mask.shape[-2:]), ignore_index)


def tpc_pairs(images: dict[int, list[str]], n: int, cfg: dict, rng: np.random.Generator) -> list[dict]:
    """``n`` TPC pairs ``{class, image, transform}``: a class uniform over ``images``, one of
    its images, a random transform (:func:`sample_transform`)."""
    classes = sorted(images)
    pairs = []
    for _ in range(n):
        c = classes[int(rng.integers(len(classes)))]
        ids = images[c]
        pairs.append({"class": c, "image": ids[int(rng.integers(len(ids)))], "transform": sample_transform(cfg, rng)})
    return pairs


def tpc_item(store, pair: dict) -> dict:
    """One TPC training item: the image as support, its transformed copy as query."""
    feats, mask = store.features(pair["image"]), store.mask(pair["image"], pair["class"])
    qf, qm = transform_pair(feats, mask, pair["transform"], store.dataset.ignore_index)
    return {"query": qf[0], "support": feats[0], "query_mask": qm, "support_mask": mask,
            "positive": torch.tensor(True)}


def tpc_schedule(train_epochs: int, train_lr: float, cfg: dict) -> tuple[int, float]:
    """(conditioning epochs, conditioning lr) of a TPC training: the paper's shape scaled to
    ours -- ``ceil(epoch_share x train_epochs)`` (at least 1) epochs at ``lr_share x train_lr``
    (``cfg``: ``crnet.tpc_crc.train``). The paper's 30 of 200 epochs, 2.5e-5 of 2.5e-3: shares
    0.15 and 0.01; 50 epochs at 2.5e-3 -> 8 at 2.5e-5."""
    epochs = max(1, math.ceil(float(cfg["epoch_share"]) * int(train_epochs) - 1e-9))
    return epochs, float(cfg["lr_share"]) * float(train_lr)


class ConditioningThenPoly:
    """LR factor of a training with a TPC phase: ``ratio`` (= tpc_lr / lr) for the first
    ``conditioning_steps`` optimizer steps, then the poly decay over the remaining
    ``training_steps`` (picklable: the scheduler's state is saved in checkpoints)."""

    def __init__(self, conditioning_steps: int, ratio: float, training_steps: int, power: float = 0.9):
        self.conditioning_steps = int(conditioning_steps)
        self.ratio = float(ratio)
        self.training_steps = int(training_steps)
        self.power = float(power)

    def __call__(self, step: int) -> float:
        if step < self.conditioning_steps:
            return self.ratio
        return poly_lr_factor(step - self.conditioning_steps, self.training_steps, self.power)


def identical_input(episodes: list[dict], shots: int) -> list[dict]:
    """The identical-input stress test: each episode's ``shots`` supports are its query."""
    return [{**e, "supports": [e["query"]] * shots} for e in episodes]
