"""Adversarial objective of the P-Net (Xiao et al., AAAI 2018, Eqs. 3-5), as pure functions.

Notation: S is the segmentation network, D the P-Net (:class:`pipeline.models.pnet.PNet`),
I an image, Y^c the ground-truth binary mask of category c, S(I)^c the predicted softmax
probability of c. ``I * m`` is the image multiplied by a mask (broadcast over channels).

* Eq. 3, the P-Net: ``L_D = - sum log D(I * Y^c) - sum log(1 - D(I * S(I)^c))``; real
  pairs come from images of strong categories only (they alone have Y), fake pairs from
  every image. :func:`discriminator_loss` (means instead of sums, so lambda does not
  depend on the batch composition).
* Eq. 4, the segmentation network on strong categories: its pixel loss plus
  ``lambda * sum log(1 - D(I * S(I)^c))`` to minimise. That minimax form saturates: when
  D confidently rejects a prediction (D -> 0) its gradient vanishes. We use the
  non-saturating form ``- lambda * sum log D(I * S(I)^c)`` (Goodfellow et al. 2014), which
  has the same fixed point: :func:`generator_loss` (and :func:`minimax_generator_loss`
  for reference).
* Eq. 5, weak categories: the same adversarial term on predictions of weak-category
  images (their pixel loss uses the L-Net's pseudo labels L_w).

Logits throughout: D = sigmoid(z), so ``-log D = softplus(-z)`` and
``-log(1 - D) = softplus(z)``, exact and stable for any z.

Which (image, category) pairs: the foreground categories present in the image's target
map (ground truth for strong images, pseudo label for weak ones) after cropping
(:func:`category_pairs`). Using the target of the crop, not the image-level labels, keeps
"real" masks from ever being empty while a crop that cut an object away asks S to
predict it anyway.

Ground-truth masks and void pixels: VOC's 255 outline band and crop padding are unknown
in Y. A real mask of 0 there and a predicted mask of ~0.5 would let D tell real from fake
by the band alone; :func:`ground_truth_masks` copies the (detached) prediction into
unknown pixels, so real and fake agree wherever the ground truth says nothing.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def _mean(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Mean of ``values``; 0 (attached to ``like``'s graph) when there are none."""
    if values.numel() == 0:
        return like.sum() * 0.0
    return values.mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 3: ``mean -log D(real) + mean -log(1 - D(fake))`` from P-Net logits.

    Either set may be empty (a batch without strong images has no real pairs); its term
    is then 0. Hand check: all logits 0 (D = 1/2) gives ``2 log 2``.
    """
    real = _mean(F.softplus(-real_logits), real_logits)
    fake = _mean(F.softplus(fake_logits), fake_logits)
    return real + fake


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating Eq. 4/5 term for S: ``mean -log D(I * S(I)^c)`` (0 without pairs)."""
    return _mean(F.softplus(-fake_logits), fake_logits)


def minimax_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 4 as written, to minimise: ``mean log(1 - D(I * S(I)^c))`` (reference only)."""
    return _mean(-F.softplus(fake_logits), fake_logits)


def segmentation_objective(pixel_loss: torch.Tensor, adversarial: torch.Tensor, weight: float) -> torch.Tensor:
    """Eq. 4/5 total for S: pixel loss + lambda * adversarial term."""
    return pixel_loss + float(weight) * adversarial


def category_pairs(targets: torch.Tensor, num_classes: int, background_index: int | None,
                   min_pixels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch index, class index) of every foreground class with ``>= min_pixels`` pixels.

    ``targets``: ``B x H x W`` class indices (any other value, e.g. 255, is ignored).
    Returns two int64 tensors of equal length, sorted by image then class.
    """
    batch = targets.shape[0]
    flat = targets.reshape(batch, -1).long()
    valid = (flat >= 0) & (flat < num_classes)
    offsets = torch.arange(batch, device=flat.device)[:, None] * num_classes
    counts = torch.bincount((flat + offsets)[valid], minlength=batch * num_classes).reshape(batch, num_classes)
    present = counts >= min_pixels
    if background_index is not None:
        present[:, background_index] = False
    batch_index, class_index = torch.nonzero(present, as_tuple=True)
    return batch_index, class_index


def masked_images(images: torch.Tensor, masks: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
    """P-Net inputs ``N x 3 x H x W``: ``images[batch_index[n]] * masks[n]``.

    ``images``: ``B x 3 x H x W``; ``masks``: ``N x H x W`` in [0, 1].
    """
    if masks.shape[0] != batch_index.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks but {batch_index.shape[0]} pair indices")
    if masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape[-2:])} and images {tuple(images.shape[-2:])} differ in size")
    return images[batch_index] * masks[:, None].to(images.dtype)


def predicted_masks(probs: torch.Tensor, batch_index: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
    """``N x H x W`` predicted probabilities S(I)^c of each pair (``probs``: ``B x C x H x W``)."""
    return probs[batch_index, class_index]


def ground_truth_masks(targets: torch.Tensor, batch_index: torch.Tensor, class_index: torch.Tensor,
                       unknown_fill: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``N x H x W`` real masks Y^c: 1 on class c, 0 on other classes, ``unknown_fill`` elsewhere.

    "Elsewhere" is every value outside 0..num_classes-1 (ignore 255, crop padding).
    ``unknown_fill`` (``N x H x W``) is detached here: the prediction fills the holes
    without S receiving gradient through the real masks.
    """
    chosen = targets[batch_index].long()
    known = (chosen >= 0) & (chosen < num_classes)
    is_class = (chosen == class_index[:, None, None]).to(unknown_fill.dtype)
    return torch.where(known, is_class, unknown_fill.detach())


def split_by_flag(batch_index: torch.Tensor, flags: Sequence[bool] | torch.Tensor) -> torch.Tensor:
    """Boolean mask over pairs: True where the pair's image has ``flags[image]`` set.

    Used to keep only strong-category images' pairs as real examples.
    """
    flags = torch.as_tensor(flags, dtype=torch.bool, device=batch_index.device)
    return flags[batch_index] if batch_index.numel() else torch.zeros(0, dtype=torch.bool, device=batch_index.device)


# --------------------------------------------------------------------------- WGAN-GP (Ref-Net BKTM)
# Ref-Net's boundary critics (IJCAI 2021, Eqs. 5-6; Gulrajani et al. 2017 for the penalty).
# A critic D scores triplets [x, m, x*m]; real = an open-source image with its GT mask,
# fake = a target image with the predicted mask, pseudo = an open-source image with its
# mask dilated (a plausible but wrong boundary the critic must also reject).


def triplet(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Critic input ``B x 7 x H x W``: ``[x, m, x * m]`` from images ``B x 3 x H x W`` and
    masks ``B x H x W``."""
    m = masks[:, None].to(images.dtype)
    return torch.cat([images, m, images * m], dim=1)


def interpolates(real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x_hat = eps * real + (1 - eps) * fake, ``eps`` one value per sample (``B``)."""
    e = eps.reshape(-1, *([1] * (real.dim() - 1))).to(real.dtype)
    return e * real + (1.0 - e) * fake


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``mean (||grad_x D(x_hat)||_2 - 1)^2`` at the interpolates (graph kept for the critic's
    update). Hand check: D(x) = sum(a * x) has gradient a everywhere, penalty (||a|| - 1)^2."""
    x_hat = interpolates(real.detach(), fake.detach(), eps).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norms = grad.reshape(grad.shape[0], -1).norm(2, dim=1)
    return ((norms - 1.0) ** 2).mean()


def critic_loss(d_real: torch.Tensor, d_fake: torch.Tensor, d_pseudo: torch.Tensor | None,
                penalty: torch.Tensor, gp_weight: float) -> torch.Tensor:
    """Ref-Net Eq. 5 for one critic, to minimise:
    ``1/2 E[D(fake)] + 1/2 E[D(pseudo)] - E[D(real)] + lambda * GP``; without pseudo triplets
    (the ablation) plain WGAN-GP: ``E[D(fake)] - E[D(real)] + lambda * GP``."""
    negative = d_fake.mean() if d_pseudo is None else 0.5 * d_fake.mean() + 0.5 * d_pseudo.mean()
    return negative - d_real.mean() + float(gp_weight) * penalty


def wasserstein_estimate(d_real: torch.Tensor, d_fake: torch.Tensor) -> float:
    """The critic's estimate of the Wasserstein distance real <-> fake: ``E[D(real)] - E[D(fake)]``
    (the training-curve quantity; it shrinks as the segmentation net fools the critic)."""
    return float(d_real.mean() - d_fake.mean())


def critic_generator_loss(d_fake: torch.Tensor) -> torch.Tensor:
    """The segmentation net's term of Eq. 6 for one critic, to minimise: ``-E[D(fake)]``."""
    return -d_fake.mean()
