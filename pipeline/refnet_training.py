"""Ref-Net's setting, training and prediction, shared by its stages (pipeline/methods/refnet).

**Setting** (:func:`draw_setting`, pure): the target categories (a fold's novel classes, or
one class in the single-category setting); per target category K reference images drawn
with a seed from the *train* images holding it (>= ``min_pixels`` px), their masks used;
the other train images holding a target category form S (image-level labels only); O,
the open-source set, is (image, class) pairs of train images without any target pixel,
with their masks. K larger than the images available uses them all (the class is marked
``short``). K = 0 (the single-category R(0)): no target mask at all; each target category
is then conditioned on seeded open-source pairs (image * its mask of an O class), and only
the critics and the self-supervision shape the target output (Dice and the representation
loss are off, :func:`effective_switches`).

**Selection setting** (:func:`select_scope`, pure): to choose a setting (the critics'
weight) without val scores and without novel-class data, base classes of a fold play the
targets (pseudo-targets) on the train images without any novel pixel.

**Training** (:func:`train_refnet`), per step: ``n_critic`` updates of each critic
(Adam 1e-4, betas (0, 0.9), WGAN-GP lambda 10: the paper), then one step of the
segmentation net (Adam 1e-4, the paper's) on
``xi L_dice + zeta L_rep + eta L_sel - lambda (D_o(fake) + D_i(fake))`` (the critics' term joins
after ``warmup_steps`` RSM-only steps: a critic of random masks has no boundary to teach; with
``critic_warmup`` the critics already train during them):

* L_dice on labelled pairs: a reference image as target, another reference of the same
  class as condition (itself when K = 1); with probability ``negative_prob`` the condition
  is of a class the target lacks, so the target mask is all zero (the paper's rule).
  Augmentation: horizontal flip of the cached features and the mask.
* L_rep: Gaussian MMD (median heuristic) between E(pred * target) and E(m_ref * x_ref),
  pooled per image, over the batch of unlabelled pairs (S and the references as targets).
* L_sel: ``|| w' F(Ax) - A(w F(x)) ||^2``, the paper's squared norm (a sum over the pixels A
  keeps inside the image, averaged over the batch), A a random affine (rotation, scale,
  translation) applied to the cached feature grid (not to the pixels: the encoder is frozen
  and cached), w the band of radius r of the prediction (detached: it selects pixels, as
  the paper's weight map).
* Critics on [x, m, x*m] at ``size`` px: outer (object masks) and inner (background
  masks 1 - m). Every mask a critic sees -- real, pseudo, predicted -- takes the
  prediction's path (:func:`critic_path`: averaged onto the feature grid, upsampled
  bilinearly), so softness tells real from fake nothing; real masks have MSRC's void filled
  from the nearest labelled pixel (:func:`fill_void`), not called background. Pseudo
  triplets dilate the open-source mask (inner: the background mask, i.e. erode the object)
  by a disk of an integer radius drawn per sample on ``1..`` :func:`pseudo_radius_bound`
  of that object (a share of its inradius, so erosion never empties it).
* lambda: ``adversarial_weight`` (the paper's 1) or, with ``adversarial_balance`` b, the
  weight that holds ``|d(lambda L_adv)/dp| = b |d L_dice/dp|`` at the prediction
  (:func:`balanced_weight`).
* Health per step in the history: the gradient norm of each weighted term at the prediction
  (``grad_dice``, ``grad_rep``, ``grad_sel``, ``grad_adv``) and the adversarial / Dice ratio,
  the predicted vs true foreground share of the unlabelled batch (the true one from the
  targets' masks: logged, never used), each critic's Wasserstein estimate.

Everything runs on a fixed grid: features resized to ``grid`` x ``grid`` cells, images and
masks to ``size`` x ``size`` px (non-square photos are squashed; predictions are resized
back to each val mask's own size and scored there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from pipeline.adversarial import (
    critic_generator_loss, critic_loss, gradient_penalty, triplet, wasserstein_estimate)
from pipeline.data.augment import resize_image, resize_mask
from pipeline.errors import PipelineError
from pipeline.losses import dice_loss, gaussian_mmd
from pipeline.models.refnet import BoundaryCritic, RefNet, pooled_encoding
from pipeline.morphology import boundary_band
from pipeline.training import load_model, read_model_meta

FULL = "full"
SWITCHES = ("dice", "representation", "self_supervision", "condition", "pseudo", "outer_critic", "inner_critic")
ALL = "all"


# --------------------------------------------------------------------------- the setting

@dataclass
class Setting:
    """Who is what in one training job (:func:`draw_setting`)."""

    targets: list[int]
    shots: int | None                                   # None = all
    references: dict[int, list[tuple[str, int]]]        # target class -> [(image id, mask class)]
    available: dict[int, int]                           # target class -> train images holding it
    short: list[int]                                    # classes with fewer images than K
    unlabelled: list[str]                               # S: image-level labels only
    open_source: list[tuple[str, int]]                  # O: (image id, class) with masks
    zero_shot: bool = field(default=False)

    def to_json(self) -> dict:
        return {"targets": self.targets, "shots": self.shots if self.shots is not None else ALL,
                "references": {str(c): [list(p) for p in v] for c, v in self.references.items()},
                "available": {str(c): n for c, n in self.available.items()}, "short": self.short,
                "unlabelled": len(self.unlabelled), "open_source": len(self.open_source), "zero_shot": self.zero_shot}


def parse_shots(text: str | int) -> int | None:
    """K from a wildcard / param: an integer >= 0, or ``all`` (None)."""
    if str(text) == ALL:
        return None
    k = int(text)
    if k < 0:
        raise ValueError(f"K must be >= 0 or 'all', got {text}")
    return k


def draw_setting(pixel_counts: Mapping[str, Sequence[int]], train_ids: Sequence[str], targets: Sequence[int],
                 open_classes: Sequence[int], shots: int | None, seed: int, min_pixels: int,
                 zero_shot_references: int = 5, where: str = "open-source set") -> Setting:
    """The setting of one job from the train images' pixel counts (module docstring).

    A train image with any pixel of a target class never enters O. An empty O is one
    :class:`PipelineError` naming ``where``."""
    targets = [int(c) for c in targets]
    holding = {c: sorted(i for i in train_ids if pixel_counts[i][c] >= min_pixels) for c in targets}
    open_ids = sorted(i for i in train_ids if not any(pixel_counts[i][c] > 0 for c in targets))
    open_source = [(i, int(c)) for i in open_ids for c in open_classes if pixel_counts[i][c] >= min_pixels]
    if not open_source:
        raise PipelineError(where, f"the open-source set is empty: no train image without the target classes "
                            f"holds an open-source class with >= {min_pixels} px")
    references, short = {}, []
    for c in targets:
        rng = np.random.default_rng([seed, c])
        if shots == 0:
            order = rng.permutation(len(open_source))[:zero_shot_references]
            references[c] = [open_source[j] for j in order]
            continue
        order = [holding[c][j] for j in rng.permutation(len(holding[c]))]
        k = len(order) if shots is None else min(shots, len(order))
        if shots is not None and shots > len(order):
            short.append(c)
        references[c] = [(i, c) for i in order[:k]]
        if not references[c]:
            raise PipelineError(where, f"target class {c} is in no train image with >= {min_pixels} px")
    used = {i for c in targets if shots != 0 for i, _ in references[c]}
    unlabelled = sorted({i for c in targets for i in holding[c]} - used)
    return Setting(targets, shots, references, {c: len(holding[c]) for c in targets}, short, unlabelled,
                   open_source, zero_shot=shots == 0)


def select_scope(pixel_counts: Mapping[str, Sequence[int]], train_ids: Sequence[str], base_classes: Sequence[int],
                 novel_classes: Sequence[int], count: int, seed: int, fold: int) -> tuple[list[int], list[int], list[str]]:
    """The selection setting of a fold (scope ``select<k>``), on base-class data only:
    ``(pseudo-targets, open-source classes, train ids kept)``.

    ``count`` pseudo-targets are a sample of the fold's base object classes (numpy rng seeded
    with ``[seed, fold]``), O's classes the other base classes; every train image holding any
    pixel of a novel class is dropped (from S, O and the references alike), so no novel mask
    and no novel image enters. Fewer than ``count + 1`` base classes is one
    :class:`PipelineError` naming ``refnet.select.classes``."""
    base = sorted(int(c) for c in base_classes)
    if len(base) < count + 1:
        raise PipelineError("params.yaml", f"refnet.select.classes = {count} needs at least {count + 1} base "
                            f"classes (pseudo-targets and one open-source class); fold {fold} has {len(base)}")
    rng = np.random.default_rng([seed, fold])
    targets = sorted(base[j] for j in rng.choice(len(base), size=count, replace=False))
    novel = [int(c) for c in novel_classes]
    kept = [i for i in train_ids if not any(pixel_counts[i][c] > 0 for c in novel)]
    return targets, [c for c in base if c not in targets], kept


def effective_switches(variant: Mapping[str, bool], zero_shot: bool,
                       where: str = "refnet.ablation.variants") -> dict[str, bool]:
    """The variant's switches (all on by default); without any target mask (K = 0) Dice and
    the representation loss have nothing to compare with and are off."""
    unknown = sorted(set(variant) - set(SWITCHES))
    if unknown:
        raise PipelineError("params.yaml", f"{where}: unknown switch '{unknown[0]}' "
                            f"(known: {', '.join(SWITCHES)})")
    out = {name: bool(variant.get(name, True)) for name in SWITCHES}
    if zero_shot:
        out["dice"] = out["representation"] = False
    return out


def inradius(mask: np.ndarray) -> float:
    """The radius of the largest disk inside a binary mask: the largest Euclidean distance of an
    object pixel to the nearest background pixel of the image (outside the image does not count,
    as :func:`pipeline.morphology.erode` treats it). 0 for an empty mask; an all-object mask
    (nothing to erode towards) gets the image's larger side."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return 0.0
    if mask.all():
        return float(max(mask.shape))
    return float(ndimage.distance_transform_edt(mask).max())


def pseudo_radius_bound(mask: np.ndarray, fraction: float) -> int:
    """The largest pseudo radius r of one open-source object (0: too thin for any).

    Erosion by ``disk(r)`` keeps the pixels whose distance to the background exceeds r, so it
    leaves the object non-empty iff ``r < inradius``. The bound is ``floor(fraction * R)``
    (at least 1) and below R: with ``fraction`` 1/2 a disk of radius R gains ``2Rr + r^2`` px by
    dilation and loses ``2Rr - r^2`` by erosion, at most 5:3 apart, so neither critic's pseudo
    triplet is much easier to spot than the other's. An object with R <= 1 (a line one pixel
    wide) has no such radius: 0."""
    radius = inradius(mask)
    if radius <= 1.0:
        return 0
    return int(max(1, min(math.ceil(radius) - 1, math.floor(fraction * radius))))


def draw_pseudo_radii(bounds: Sequence[int], rng: np.random.Generator) -> list[int]:
    """One integer radius per sample, uniform on ``1..bound`` (the paper draws r per pseudo
    triplet from a range; ours is each object's own, :func:`pseudo_radius_bound`)."""
    if any(int(b) < 1 for b in bounds):
        raise ValueError(f"every pseudo-radius bound must be >= 1, got {list(bounds)}")
    return [int(rng.integers(1, int(b) + 1)) for b in bounds]


def fill_void(mask: np.ndarray, ignore_index: int) -> np.ndarray:
    """A class mask with every void pixel (``ignore_index``) given the class of the nearest
    labelled pixel: MSRC's unlabelled areas are unknown, not background, so a critic's real
    mask must not call them background. A mask without a labelled pixel is returned as it is."""
    void = mask == ignore_index
    if not void.any() or void.all():
        return mask.copy()
    _, (rows, cols) = ndimage.distance_transform_edt(void, return_indices=True)
    return mask[rows, cols]


def critic_path(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Masks as the critics see them: averaged onto the ``grid`` x ``grid`` cells and upsampled
    bilinearly back to their size, the path the prediction takes (logits on the feature grid,
    bilinear upsampling). Real, pseudo and predicted masks all pass through it, so how soft an
    edge is tells the critics nothing about where the mask came from."""
    size = masks.shape[-2:]
    pooled = F.adaptive_avg_pool2d(masks[:, None].float(), (grid, grid))
    return F.interpolate(pooled, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


# --------------------------------------------------------------------------- cached inputs

class ImageBank:
    """Features on the fixed grid, images in [0, 1] and class masks at ``size`` px, by id."""

    def __init__(self, store, dataset, ids: Sequence[str], grid: int, size: int):
        self.index = {i: n for n, i in enumerate(dict.fromkeys(ids))}
        order = list(self.index)
        feats = [F.interpolate(store.features(i), size=(grid, grid), mode="bilinear", align_corners=False)
                 for i in order]
        self.features = torch.cat(feats) if feats else torch.zeros(0)
        self.images = torch.from_numpy(np.stack([resize_image(dataset.load_image(i), (size, size)) for i in order])
                                       ).permute(0, 3, 1, 2).float() / 255.0 if order else torch.zeros(0)
        self.masks = torch.from_numpy(np.stack([resize_mask(store.class_mask(i), (size, size)) for i in order])
                                      ).long() if order else torch.zeros(0)
        # the critics' real masks: void given the nearest labelled pixel's class (fill_void)
        self.filled = torch.stack([torch.from_numpy(fill_void(m.numpy(), dataset.ignore_index)) for m in self.masks]
                                  ) if order else torch.zeros(0)
        self.size = size
        self.ignore_index = dataset.ignore_index

    def take(self, ids: Sequence[str], flips: Sequence[bool] | None = None, filled: bool = False) -> dict:
        """Features, images and class masks of ``ids`` (``filled``: void filled, :func:`fill_void`)."""
        rows = torch.tensor([self.index[i] for i in ids], dtype=torch.long)
        feats, images = self.features[rows], self.images[rows]
        masks = (self.filled if filled else self.masks)[rows]
        if flips is not None:
            flip = torch.tensor(list(flips), dtype=torch.bool)
            feats = torch.where(flip[:, None, None, None], feats.flip(-1), feats)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            masks = torch.where(flip[:, None, None], masks.flip(-1), masks)
        return {"features": feats, "images": images, "masks": masks}

    def class_masks(self, ids: Sequence[str], classes: Sequence[int], flips=None,
                    filled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(binary masks of each id's class, valid pixels) at ``size``; ``filled``: void pixels
        take the nearest labelled pixel's class (all valid then)."""
        masks = self.take(ids, flips, filled)["masks"]
        cls = torch.tensor(list(classes))[:, None, None]
        return (masks == cls).float(), masks != self.ignore_index


def reference_batch(bank: ImageBank, pairs: Sequence[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, images, binary masks) of reference pairs (image id, mask class)."""
    ids = [i for i, _ in pairs]
    masks, _ = bank.class_masks(ids, [c for _, c in pairs])
    taken = bank.take(ids)
    return taken["features"], taken["images"], masks


# --------------------------------------------------------------------------- sampling

def labelled_pairs(setting: Setting, labels: Mapping[str, Sequence[int]], count: int, negative_prob: float,
                   rng: np.random.Generator) -> list[tuple[str, int, tuple[str, int]]]:
    """Dice pairs (target id, target class or -1 for an all-zero target, reference pair)."""
    out = []
    for _ in range(count):
        c = setting.targets[rng.integers(len(setting.targets))]
        refs = setting.references[c]
        j = int(rng.integers(len(refs)))
        target = refs[j][0]
        others = [p for p in setting.targets if p != c and p not in labels.get(target, ())]
        if others and rng.random() < negative_prob:
            other = others[rng.integers(len(others))]
            ref_list = setting.references[other]
            out.append((target, -1, ref_list[int(rng.integers(len(ref_list)))]))
            continue
        i = int(rng.integers(len(refs) - 1)) if len(refs) > 1 else j
        if len(refs) > 1 and i >= j:
            i += 1
        out.append((target, c, refs[i]))
    return out


def target_pairs(setting: Setting, labels: Mapping[str, Sequence[int]]) -> list[tuple[str, int]]:
    """(target image, class in its image-level labels) over S and the references' images."""
    images = sorted(set(setting.unlabelled) | {i for c in setting.targets for i, m in setting.references[c]
                                               if m == c})
    return [(i, c) for i in images for c in setting.targets if c in labels.get(i, ())]


def random_affine(count: int, rng: np.random.Generator, rotate_deg: float, scale: float,
                  translate: float) -> torch.Tensor:
    """``count x 2 x 3`` affine matrices for F.affine_grid (normalised coordinates)."""
    angle = np.deg2rad(rng.uniform(-rotate_deg, rotate_deg, count))
    factor = rng.uniform(1.0 - scale, 1.0 + scale, count)
    shift = rng.uniform(-translate, translate, (count, 2))
    cos, sin = np.cos(angle) / factor, np.sin(angle) / factor
    theta = np.stack([np.stack([cos, -sin, shift[:, 0]], 1), np.stack([sin, cos, shift[:, 1]], 1)], 1)
    return torch.from_numpy(theta).float()


def warp(maps: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``maps`` (``B x C x H x W``) resampled by ``theta``; outside the image is 0."""
    grid = F.affine_grid(theta, list(maps.shape), align_corners=False)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def squared_norm_per_sample(diff: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The paper's squared L2 norm ``|| . ||^2`` of each sample's map: the SUM of the squares
    over the kept pixels (not their mean: at 64 px the mean is 4096 times smaller), averaged
    over the batch (the expectation over samples). ``diff``, ``keep``: ``B x H x W``."""
    return ((diff ** 2) * keep.to(diff.dtype)).flatten(1).sum(1).mean()


def self_supervision_loss(model: RefNet, target_feats: torch.Tensor, ref_feats: torch.Tensor, ref_masks: torch.Tensor,
                          prob: torch.Tensor, theta: torch.Tensor, radius: int) -> torch.Tensor:
    """Ref-Net's boundary-aware self-supervision: ``|| w' F(Ax) - A(w F(x)) ||^2`` summed over the
    pixels that stay inside the image (:func:`squared_norm_per_sample`), A applied to the
    feature grid and to the maps."""
    size = prob.shape[-2:]
    prob_a = model.probability(warp(target_feats, theta), ref_feats, ref_masks, size)
    band, band_a = boundary_band(prob.detach(), radius), boundary_band(prob_a.detach(), radius)
    moved = warp((band * prob)[:, None], theta)[:, 0]
    inside = warp(torch.ones_like(prob)[:, None], theta)[:, 0] > 0.999
    return squared_norm_per_sample(band_a * prob_a - moved, inside)


def foreground_share(masks: torch.Tensor, valid: torch.Tensor, threshold: float = 0.5) -> float:
    """The share of valid pixels above ``threshold`` (the training-health foreground share)."""
    count = valid.sum()
    return float(((masks > threshold) & valid).sum() / count) if count > 0 else float("nan")


def gradient_norm(loss: torch.Tensor, at: torch.Tensor) -> float:
    """``|| d loss / d at ||_2`` over the whole tensor (graph kept for the real backward)."""
    if not loss.requires_grad:
        return 0.0
    (grad,) = torch.autograd.grad(loss, at, retain_graph=True, allow_unused=True)
    return 0.0 if grad is None else float(grad.norm())


def balanced_weight(fixed: float, balance: float | None, dice_norm: float, adversarial_norm: float) -> float:
    """The adversarial weight of one step. ``balance`` None: the fixed weight (the paper's 1).
    Else the weight that makes ``|| d(weight * L_adv) / dp || = balance * || d L_dice / dp ||``
    at the prediction p this step (detached: a scale, not a path for gradients), the fixed weight
    when either norm is 0 (no Dice this step, or a critic with no gradient)."""
    if balance is None or dice_norm <= 0.0 or adversarial_norm <= 0.0:
        return float(fixed)
    return float(balance) * dice_norm / adversarial_norm


def fresh_critic_separation(real_batch, fake_batch, steps: int, channels: int, lr: float,
                            betas: tuple[float, float], gp_weight: float, seed: int) -> list[float]:
    """The Wasserstein estimate per step of a fresh critic trained (plain WGAN-GP, no pseudo
    triplets) to tell ``real_batch()`` from ``fake_batch()`` triplets: the diagnostic of what the
    critics can separate. Fake drawn from the real distribution: about 0; a large value with the
    target images' own ground truth as fake means the critic separates on image content or
    mask softness, not on boundaries."""
    generator = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        critic = BoundaryCritic(channels)
    optimizer = torch.optim.Adam(critic.parameters(), lr=lr, betas=betas)
    estimates = []
    for _ in range(int(steps)):
        real, fake = real_batch(), fake_batch()
        device = real.device
        critic.to(device)
        d_real, d_fake = critic(real), critic(fake)
        eps = torch.rand(real.shape[0], generator=generator).to(device)
        loss = critic_loss(d_real, d_fake, None, gradient_penalty(critic, real, fake, eps), gp_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        estimates.append(wasserstein_estimate(d_real.detach(), d_fake.detach()))
    return estimates


def last_quarter_mean(values: Sequence[float]) -> float:
    """The mean of the last quarter of a curve (at least one value)."""
    values = list(values)
    if not values:
        return float("nan")
    tail = values[-max(1, len(values) // 4):]
    return float(sum(tail) / len(tail))


# --------------------------------------------------------------------------- training

@dataclass
class TrainConfig:
    steps: int
    warmup_steps: int        # RSM-only steps before the critics' term joins the net's loss
    batch_size: int
    lr: float
    negative_prob: float
    dice_tau: float
    weights: dict            # dice, representation, self_supervision, adversarial
    boundary_radius: int
    affine: dict
    flip: bool
    n_critic: int
    critic_lr: float
    critic_betas: tuple[float, float]
    gp_weight: float
    critic_channels: int
    pseudo_radius_fraction: float   # per-sample bound of the pseudo radius (pseudo_radius_bound)
    grid: int                       # the critics' mask path (critic_path): the prediction's grid
    adversarial_balance: float | None = None   # hold the adversarial / Dice gradient ratio (balanced_weight)
    critic_warmup: bool = False     # the critics also train during the warm-up steps
    diagnostic_steps: int = 0       # fresh-critic separation after training (critic_diagnostic)


def critic_pool(setting: Setting, bank: ImageBank, fraction: float) -> tuple[list[tuple[str, int]], dict]:
    """(O pairs whose objects admit a pseudo radius, their bounds) from the void-filled masks at
    the bank's size: a pair with bound 0 (inradius <= 1 px) is left out of the critics' batches,
    real and pseudo alike, so every pseudo triplet keeps an object after erosion."""
    bounds = {}
    for pair in setting.open_source:
        mask, _ = bank.class_masks([pair[0]], [pair[1]], filled=True)
        bounds[pair] = pseudo_radius_bound(mask[0].numpy() > 0.5, fraction)
    pool = [p for p in setting.open_source if bounds[p] >= 1]
    if not pool:
        raise PipelineError("open-source set", "no open-source object is wider than 2 px at refnet.size: "
                            "no pseudo radius leaves an eroded object")
    return pool, bounds


def pseudo_masks(region: torch.Tensor, radii: Sequence[int]) -> torch.Tensor:
    """Each binary ``region`` mask dilated by a disk of its own radius: the pixels within
    Euclidean distance r of the region (= :func:`pipeline.morphology.dilate` with ``disk(r)``
    on binary masks, outside the image adding nothing) from one distance transform per mask,
    ~20x faster than the disk's unfold at r = 12 on 64 px. No gradient: pseudo masks are data."""
    out = []
    for mask, r in zip(region.detach().cpu().numpy() > 0.5, radii):
        if not mask.any():
            out.append(mask)
            continue
        out.append(ndimage.distance_transform_edt(~mask) <= int(r))
    return torch.from_numpy(np.stack(out)).to(region.device, region.dtype)


def train_refnet(model: RefNet, setting: Setting, bank: ImageBank, labels: Mapping[str, Sequence[int]],
                 cfg: TrainConfig, switches: Mapping[str, bool], seed: int, device: str, log) -> tuple[list[dict], dict]:
    """Train ``model`` in place; returns the per-step history and the critics' state dicts
    (plus ``"diagnostic"``: :func:`critic_diagnostic`'s result when ``cfg.diagnostic_steps``)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    pairs = target_pairs(setting, labels)
    if not pairs:
        raise PipelineError("image labels", "no train image holds a target class (nothing to segment)")
    critics = {name: BoundaryCritic(cfg.critic_channels).to(device) for name in ("outer", "inner")
               if switches[f"{name}_critic"]}
    critic_opts = {name: torch.optim.Adam(c.parameters(), lr=cfg.critic_lr, betas=cfg.critic_betas)
                   for name, c in critics.items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    model.to(device).train()
    size = (bank.size, bank.size)
    bsz = cfg.batch_size
    history = []
    pool, bounds = critic_pool(setting, bank, cfg.pseudo_radius_fraction) if critics else ([], {})

    def unlabelled_batch():
        chosen = [pairs[j] for j in rng.integers(len(pairs), size=bsz)]
        refs = [setting.references[c][int(rng.integers(len(setting.references[c])))] for _, c in chosen]
        target = bank.take([i for i, _ in chosen])
        ref_feats, ref_images, ref_masks = reference_batch(bank, refs)
        # the target's own mask: training health only (foreground share), never a loss
        truth, valid = bank.class_masks([i for i, _ in chosen], [c for _, c in chosen])
        return (target["features"].to(device), target["images"].to(device), ref_feats.to(device),
                ref_masks.to(device), truth.to(device), valid.to(device))

    def open_batch():
        chosen = [pool[j] for j in rng.integers(len(pool), size=bsz)]
        masks, _ = bank.class_masks([i for i, _ in chosen], [c for _, c in chosen], filled=True)
        images = bank.take([i for i, _ in chosen])["images"]
        radii = {name: draw_pseudo_radii([bounds[p] for p in chosen], rng) for name in ("outer", "inner")}
        return images.to(device), masks.to(device), radii

    def critic_inputs(name, images, masks):
        # outer: the object mask; inner: the background mask; both on the prediction's path
        return triplet(images, critic_path(masks if name == "outer" else 1.0 - masks, cfg.grid))

    for step in range(1, cfg.steps + 1):
        row = {"step": step}
        adversarial = critics if step > cfg.warmup_steps else {}
        training_critics = critics if (adversarial or cfg.critic_warmup) else {}
        # ---- critics (n_critic updates each, the segmentation net fixed)
        for _ in range(cfg.n_critic if training_critics else 0):
            feats, images, ref_feats, ref_masks, _, _ = unlabelled_batch()
            with torch.no_grad():
                fake_masks = model.probability(feats, ref_feats, ref_masks, size)
            open_images, open_masks, radii = open_batch()
            for name, critic in training_critics.items():
                real = critic_inputs(name, open_images, open_masks)
                fake = critic_inputs(name, images, fake_masks)
                d_real, d_fake = critic(real), critic(fake)
                d_pseudo = None
                if switches["pseudo"]:
                    # inner: the background dilated = the object eroded (pseudo_radius_bound keeps it)
                    region = open_masks if name == "outer" else 1.0 - open_masks
                    pseudo_region = pseudo_masks(region, radii[name])
                    d_pseudo = critic(triplet(open_images, critic_path(pseudo_region, cfg.grid)))
                eps = torch.rand(bsz, device=device)
                loss = critic_loss(d_real, d_fake, d_pseudo, gradient_penalty(critic, real, fake, eps), cfg.gp_weight)
                critic_opts[name].zero_grad(set_to_none=True)
                loss.backward()
                critic_opts[name].step()
                row[f"critic_{name}"] = float(loss.detach())
                row[f"w_{name}"] = wasserstein_estimate(d_real.detach(), d_fake.detach())
        # ---- segmentation net
        total = torch.zeros((), device=device)
        dice_term, dice_prob = None, None
        if switches["dice"]:
            chosen = labelled_pairs(setting, labels, bsz, cfg.negative_prob, rng)
            flips = rng.random(bsz) < 0.5 if cfg.flip else None
            ids = [t for t, _, _ in chosen]
            target = bank.take(ids, flips)
            gt, valid = bank.class_masks(ids, [c for _, c, _ in chosen], flips)
            ref_feats, _, ref_masks = reference_batch(bank, [r for _, _, r in chosen])
            dice_prob = model.probability(target["features"].to(device), ref_feats.to(device), ref_masks.to(device), size)
            loss_dice = dice_loss(dice_prob, gt.to(device), cfg.dice_tau, valid.to(device))
            dice_term = cfg.weights["dice"] * loss_dice
            total = total + dice_term
            row["loss_dice"] = float(loss_dice.detach())
            row["grad_dice"] = gradient_norm(dice_term, dice_prob)
        needs_unlabelled = switches["representation"] or switches["self_supervision"] or adversarial
        if needs_unlabelled:
            feats, images, ref_feats, ref_masks, truth, valid = unlabelled_batch()
            prob = model.probability(feats, ref_feats, ref_masks, size)
            row["fg_pred"] = foreground_share(prob.detach(), valid)
            row["fg_true"] = foreground_share(truth, valid)
            if switches["representation"]:
                loss_rep = gaussian_mmd(pooled_encoding(model.encode(feats), prob),
                                        pooled_encoding(model.encode(ref_feats), ref_masks))
                total = total + cfg.weights["representation"] * loss_rep
                row["loss_rep"] = float(loss_rep.detach())
                row["grad_rep"] = gradient_norm(cfg.weights["representation"] * loss_rep, prob)
            if switches["self_supervision"]:
                theta = random_affine(bsz, rng, cfg.affine["rotate_deg"], cfg.affine["scale"],
                                      cfg.affine["translate"]).to(device)
                loss_sel = self_supervision_loss(model, feats, ref_feats, ref_masks, prob, theta, cfg.boundary_radius)
                total = total + cfg.weights["self_supervision"] * loss_sel
                row["loss_sel"] = float(loss_sel.detach())
                row["grad_sel"] = gradient_norm(cfg.weights["self_supervision"] * loss_sel, prob)
            if adversarial:
                adv = torch.zeros((), device=device)
                for name, critic in adversarial.items():
                    term = critic_generator_loss(critic(critic_inputs(name, images, prob)))
                    adv = adv + term
                    row[f"loss_adv_{name}"] = float(term.detach())
                # health: both gradients at the prediction (norms over each batch's probability maps)
                adv_norm = gradient_norm(adv, prob)
                dice_norm = row.get("grad_dice", 0.0)
                weight = balanced_weight(cfg.weights["adversarial"], cfg.adversarial_balance, dice_norm, adv_norm)
                total = total + weight * adv
                row["adv_weight"] = weight
                row["grad_adv"] = weight * adv_norm
                row["grad_ratio"] = weight * adv_norm / dice_norm if dice_norm > 0 else float("nan")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        for critic in critics.values():  # the net's step must not leave gradients in the critics
            critic.zero_grad(set_to_none=True)
        optimizer.step()
        row["loss"] = float(total.detach())
        if not math.isfinite(row["loss"]):
            raise PipelineError("training", f"the loss is not finite at step {step} ({row})")
        history.append(row)
        if step % max(1, cfg.steps // 10) == 0 or step == cfg.steps:
            log.info("step %d/%d %s", step, cfg.steps, " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "step"))
    model.eval()
    states = {name: c.state_dict() for name, c in critics.items()}
    if cfg.diagnostic_steps and critics:
        states["diagnostic"] = critic_diagnostic(model, setting, bank, labels, cfg, pool, seed, device)
        log.info("critic diagnostic (fresh critics, mean W over the last quarter of %d steps): %s",
                 cfg.diagnostic_steps, states["diagnostic"])
    return history, states


@torch.no_grad()
def _predicted(model: RefNet, feats, ref_feats, ref_masks, size):
    return model.probability(feats, ref_feats, ref_masks, size)


def critic_diagnostic(model: RefNet, setting: Setting, bank: ImageBank, labels: Mapping[str, Sequence[int]],
                      cfg: TrainConfig, pool: Sequence[tuple[str, int]], seed: int, device: str) -> dict:
    """What the critics can tell apart (issue 23's check), for each critic form (outer: object
    masks, inner: background masks): fresh critics trained ``cfg.diagnostic_steps`` steps on
    real = open-source triplets vs fake = the target images with (a) the trained net's
    predictions, (b) their own ground-truth masks (void filled), both on the critics' mask path.
    The same seed draws the same batches for (a) and (b). Returns the mean Wasserstein estimate
    over the last quarter of the steps per form and fake source. The target masks here are a
    diagnostic only: nothing is chosen on them."""
    pairs = target_pairs(setting, labels)
    size = (bank.size, bank.size)
    out = {}
    for name in ("outer", "inner"):
        out[name] = {}
        for source in ("prediction", "ground_truth"):
            rng = np.random.default_rng([seed, 23])

            def real_batch():
                chosen = [pool[j] for j in rng.integers(len(pool), size=cfg.batch_size)]
                masks, _ = bank.class_masks([i for i, _ in chosen], [c for _, c in chosen], filled=True)
                images = bank.take([i for i, _ in chosen])["images"]
                region = masks if name == "outer" else 1.0 - masks
                return triplet(images, critic_path(region, cfg.grid)).to(device)

            def fake_batch():
                chosen = [pairs[j] for j in rng.integers(len(pairs), size=cfg.batch_size)]
                ids = [i for i, _ in chosen]
                taken = bank.take(ids)
                # drawn for both sources, so (a) and (b) see the same images in the same order
                refs = [setting.references[c][int(rng.integers(len(setting.references[c])))] for _, c in chosen]
                if source == "ground_truth":
                    masks, _ = bank.class_masks(ids, [c for _, c in chosen], filled=True)
                else:
                    ref_feats, _, ref_masks = reference_batch(bank, refs)
                    masks = _predicted(model, taken["features"].to(device), ref_feats.to(device),
                                       ref_masks.to(device), size).cpu()
                region = masks if name == "outer" else 1.0 - masks
                return triplet(taken["images"], critic_path(region, cfg.grid)).to(device)

            curve = fresh_critic_separation(real_batch, fake_batch, cfg.diagnostic_steps, cfg.critic_channels,
                                            cfg.critic_lr, cfg.critic_betas, cfg.gp_weight, seed)
            out[name][source] = last_quarter_mean(curve)
    return out


# --------------------------------------------------------------------------- prediction and scores

def load_refnet(path) -> tuple[RefNet, dict]:
    """(the Ref-Net of a model file of stage train_refnet, in eval mode on the CPU; the file's meta);
    a file of another kind is one line naming it."""
    meta = read_model_meta(path)
    if meta.get("task") != "refnet":
        raise PipelineError(path, "not a model file of stage train_refnet")
    model = RefNet(meta["in_channels"], meta["hidden"], tuple(meta["aspp_rates"]), meta["condition"])
    load_model(path, model)
    return model.eval(), meta


@torch.no_grad()
def class_probability(model: RefNet, features: torch.Tensor, references: Sequence[tuple[torch.Tensor, torch.Tensor]],
                      size: tuple[int, int]) -> torch.Tensor:
    """``H x W`` probability of one class: the mean over its reference (features, mask) pairs."""
    probs = [model.probability(features, ref_feats, ref_mask, size)[0] for ref_feats, ref_mask in references]
    return torch.stack(probs).mean(0)


def combine_classes(probs: Mapping[int, np.ndarray], shape: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """One label map over {0 = background, 1..T}: ``probs`` maps label index -> ``H x W``
    probability; the highest score wins where several exceed ``threshold``."""
    out = np.zeros(shape, dtype=np.int64)
    if not probs:
        return out
    keys = sorted(probs)
    stack = np.stack([probs[k] for k in keys])
    best = stack.argmax(0)
    out[stack.max(0) > threshold] = np.asarray(keys)[best][stack.max(0) > threshold]
    return out


def target_ground_truth(mask: np.ndarray, targets: Sequence[int], ignore_index: int) -> np.ndarray:
    """The GT over {background, targets}: target class t -> its index 1..T, void kept,
    everything else (background and non-target classes) -> 0."""
    out = np.zeros(mask.shape, dtype=np.int64)
    for index, c in enumerate(targets, start=1):
        out[mask == c] = index
    out[mask == ignore_index] = ignore_index
    return out


def step_tsv(history: Sequence[Mapping]) -> str:
    """history.tsv of train_refnet: ``step`` then every column in the order first seen
    (blank where a step lacks it, e.g. the critics' columns in a variant without them)."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    lines = ["\t".join(keys)]
    for row in history:
        lines.append("\t".join("" if row.get(k) is None else (f"{row[k]:.6g}" if isinstance(row[k], float)
                                                                else str(row[k])) for k in keys))
    return "\n".join(lines) + "\n"
