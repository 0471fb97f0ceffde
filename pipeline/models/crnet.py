"""CRNet: Cross-Reference Networks for few-shot segmentation (Liu et al., CVPR 2020).

No public code exists; this follows the paper's text and CANet (``icoz69/CaNet``, the same
group's predecessor) for what the text leaves open.

Encoder (siamese): the shared ImageNet backbone (:func:`pipeline.models.backbone.build_backbone`),
frozen as in CANet/CRNet. :func:`encoder_features` takes its mid- and high-level maps
(``levels``, e.g. EfficientNet-Lite0 levels 2 and 3: 40 + 112 channels, both at stride 8
with output stride 8) and concatenates them at the finest of their grids. Because the
encoder never trains, the few-shot stages compute these features once per image and
:class:`CRNet` works on them; ``CRNet`` itself holds no backbone.

:class:`CRNet` (``forward(query, support, support_mask)``):

1. *Projection* (shared by both branches): 1x1 conv to ``hidden`` channels + ReLU.
2. *Cross-reference module*: per branch, global average pooling -> FC -> ReLU -> FC ->
   sigmoid gives a channel vector; the two vectors are multiplied element-wise (what both
   images hold) and reweight both feature maps. An auxiliary decoder (``dense_cooccurrence``,
   the paper) predicts the co-occurring object's map in both images from the reweighted
   features (target: the pair's class mask in each; BCE), so the channel product itself must
   find the shared object; ``dense_cooccurrence=False``: one linear logit per branch on pooled
   features (whether the class occurs), whose BCE never left its prior here.
3. *Condition module* (one module for both branches): the other image's foreground
   features average-pooled under its mask (:func:`pipeline.fewshot.masked_average_pooling`),
   expanded over the grid, concatenated with the branch's features, 1x1 conv, then a
   residual block of two 3x3 convs. The query is conditioned on the support's mask; the
   support on the query's mask: the ground truth in training (both images of a training
   pair are annotated), else the query's predicted foreground probability (soft, not
   detached: TPC + CRC's cyclic constraint trains through it).
4. *Mask refinement with a probability cache* (CANet's iterative optimisation module): the
   cache (foreground probability, zero at first) is concatenated with the features, then a
   downsample block (3x3 conv, stride 2), a global-convolution block (1x7 -> 7x1 plus
   7x1 -> 1x7, summed) and a combine block (upsample, concatenate with the block input,
   3x3 conv, residual) feed a 1x1 classifier of {background, foreground}. The softmax
   foreground becomes the next cache (detached, as CANet's history mask). Each iteration's
   logits are returned; 5 iterations at test. Both query and support masks are predicted.

Ablation switches (constructor): ``cross_reference``, ``condition``, ``refinement`` (False:
a 3x3 conv + classifier once), ``cache`` (False: the refinement never sees its previous
output, so every iteration gives the same logits), ``single_level`` (only the last level's
channels of the cached features), ``refine_cross`` (True, the paper: the refinement's input is
the condition module's output concatenated with the cross-reference module's reinforced
features; False: the condition output alone, this project's first reading),
``dense_cooccurrence`` (above), ``prior`` (False in the paper row; True: the row "CRNet + prior",
beyond the paper: PFENet's training-free prior, :func:`training_free_prior` on the frozen
encoder's highest cached level, is one more channel of the refinement's input, so the net sees
where the query resembles the support's object before any learned layer can ignore it).
``iterations`` is a forward argument (1-5).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.fewshot import mask_weights, masked_average_pooling

# The switches and the full model's value of each (the paper row). A model file written before a
# switch existed was built as the switch's LEGACY value (pipeline.crnet_training.load_crnet).
SWITCH_DEFAULTS = {"cross_reference": True, "condition": True, "refinement": True, "cache": True,
                   "single_level": False, "refine_cross": True, "dense_cooccurrence": True, "prior": False}
SWITCHES = tuple(SWITCH_DEFAULTS)
LEGACY = {"refine_cross": False, "dense_cooccurrence": False, "prior": False}
PRIOR_EPS = 1e-7  # PFENet's min-max normalisation eps (model/PFENet.py: cosine_eps)


def encoder_features(backbone: nn.Module, images: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """The backbone's maps at ``levels`` (indices into its finest-first list), resized
    bilinearly to the finest of them and concatenated: ``B x sum(channels) x h x w``."""
    maps = backbone(images)
    chosen = [maps[i] for i in levels]
    size = max((m.shape[-2:] for m in chosen), key=lambda s: s[0] * s[1])
    chosen = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
              for m in chosen]
    return torch.cat(chosen, dim=1)


def training_free_prior(query: torch.Tensor, support: torch.Tensor, support_fg: torch.Tensor) -> torch.Tensor:
    """PFENet's training-free prior (Tian et al., TPAMI 2020, model/PFENet.py): per query cell,
    the highest cosine similarity to any cell of the support's masked features (features times
    the foreground weight, so a background cell is a zero vector with cosine 0), min-max
    normalised over the query's cells: ``B x 1 x h x w`` in [0, 1].

    ``query``: ``B x C x h x w`` and ``support``: ``B x C x h_s x w_s`` frozen high-level
    features; ``support_fg``: ``B x 1 x h_s x w_s`` foreground weights on the support grid. An
    all-zero mask gives a zero prior everywhere."""
    q = F.normalize(query.flatten(2), dim=1, eps=PRIOR_EPS)                   # B x C x Nq
    s = F.normalize((support * support_fg).flatten(2), dim=1, eps=PRIOR_EPS)  # B x C x Ns
    best = torch.bmm(q.transpose(1, 2), s).max(dim=2).values                  # B x Nq
    low = best.min(dim=1, keepdim=True).values
    high = best.max(dim=1, keepdim=True).values
    return ((best - low) / (high - low + PRIOR_EPS)).reshape(query.shape[0], 1, *query.shape[-2:])


def _conv(cin: int, cout: int, kernel=3, stride: int = 1) -> nn.Conv2d:
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel[0] // 2, kernel[1] // 2))


class CrossReference(nn.Module):
    """Channel vectors of both branches (GAP -> FC -> ReLU -> FC -> sigmoid), their product,
    and the co-occurrence predictions of the reweighted features: ``dense`` (the paper) a small
    decoder shared by both branches (3x3 conv -> ReLU -> 1x1 conv) that predicts the
    co-occurring object's map in each image (``B x 1 x h x w`` logits); else one linear logit
    per branch on the pooled features (``B``), this project's first reading."""

    def __init__(self, channels: int, reduction: int = 16, dense: bool = True):
        super().__init__()
        inner = max(channels // reduction, 8)
        self.dense = dense
        self.fc_query = nn.Sequential(nn.Linear(channels, inner), nn.ReLU(inplace=True), nn.Linear(inner, channels))
        self.fc_support = nn.Sequential(nn.Linear(channels, inner), nn.ReLU(inplace=True), nn.Linear(inner, channels))
        if dense:
            self.decoder = nn.Sequential(_conv(channels, channels), nn.ReLU(inplace=True), nn.Conv2d(channels, 1, 1))
        else:
            self.head_query = nn.Linear(channels, 1)
            self.head_support = nn.Linear(channels, 1)

    def forward(self, query: torch.Tensor, support: torch.Tensor):
        vq = torch.sigmoid(self.fc_query(query.mean(dim=(2, 3))))
        vs = torch.sigmoid(self.fc_support(support.mean(dim=(2, 3))))
        common = (vq * vs)[:, :, None, None]
        query, support = query * common, support * common
        if self.dense:
            logits = (self.decoder(query), self.decoder(support))
        else:
            logits = (self.head_query(query.mean(dim=(2, 3)))[:, 0], self.head_support(support.mean(dim=(2, 3)))[:, 0])
        return query, support, logits


class Condition(nn.Module):
    """Features + the other image's masked-average prototype -> 1x1 conv -> residual block."""

    def __init__(self, channels: int):
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.ReLU(inplace=True))
        self.res = nn.Sequential(_conv(channels, channels), nn.ReLU(inplace=True), _conv(channels, channels))

    def forward(self, features: torch.Tensor, prototype: torch.Tensor) -> torch.Tensor:
        expanded = prototype[:, :, None, None].expand(-1, -1, *features.shape[-2:])
        x = self.fuse(torch.cat([features, expanded], dim=1))
        return F.relu(x + self.res(x))


class Refinement(nn.Module):
    """One iteration of the mask refinement: [features, cache] -> downsample -> global
    convolution (1x7/7x1) -> combine -> {background, foreground} logits."""

    def __init__(self, channels: int, cache: bool = True, kernel: int = 7, in_channels: int | None = None):
        super().__init__()
        self.cache = cache
        cin = (channels if in_channels is None else in_channels) + (1 if cache else 0)
        self.fuse = nn.Sequential(nn.Conv2d(cin, channels, 1), nn.ReLU(inplace=True))
        self.down = nn.Sequential(_conv(channels, channels, stride=2), nn.ReLU(inplace=True))
        self.gcn_a = nn.Sequential(_conv(channels, channels, (1, kernel)), _conv(channels, channels, (kernel, 1)))
        self.gcn_b = nn.Sequential(_conv(channels, channels, (kernel, 1)), _conv(channels, channels, (1, kernel)))
        self.combine = nn.Sequential(_conv(2 * channels, channels), nn.ReLU(inplace=True), _conv(channels, channels))
        self.classifier = nn.Conv2d(channels, 2, 1)

    def forward(self, features: torch.Tensor, cache: torch.Tensor | None) -> torch.Tensor:
        x = self.fuse(torch.cat([features, cache], dim=1) if self.cache else features)
        y = F.relu(self.gcn_a(self.down(x)) + self.gcn_b(self.down(x)))
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = F.relu(x + self.combine(torch.cat([x, y], dim=1)))
        return self.classifier(x)


class CRNet(nn.Module):
    """The CRNet head on cached encoder features (see the module docstring)."""

    def __init__(self, level_channels: Sequence[int], hidden: int = 256, cross_reference: bool = True,
                 condition: bool = True, refinement: bool = True, cache: bool = True, single_level: bool = False,
                 refine_cross: bool = True, dense_cooccurrence: bool = True, prior: bool = False,
                 reduction: int = 16):
        super().__init__()
        self.level_channels = [int(c) for c in level_channels]
        self.switches = {"cross_reference": bool(cross_reference), "condition": bool(condition),
                         "refinement": bool(refinement), "cache": bool(cache), "single_level": bool(single_level),
                         "refine_cross": bool(refine_cross), "dense_cooccurrence": bool(dense_cooccurrence),
                         "prior": bool(prior)}
        self.hidden = int(hidden)
        cin = self.level_channels[-1] if single_level else sum(self.level_channels)
        self.project = nn.Sequential(nn.Conv2d(cin, hidden, 1), nn.ReLU(inplace=True))
        self.cross = CrossReference(hidden, reduction, dense=dense_cooccurrence) if cross_reference else None
        self.condition = Condition(hidden) if condition else None
        refine_in = (2 * hidden if refine_cross else hidden) + (1 if prior else 0)
        if refinement:
            self.refine = Refinement(hidden, cache=cache, in_channels=refine_in)
        else:
            self.refine = nn.Sequential(_conv(refine_in, hidden), nn.ReLU(inplace=True), nn.Conv2d(hidden, 2, 1))

    @property
    def meta(self) -> dict:
        return {"model": "CRNet", "level_channels": self.level_channels, "hidden": self.hidden, **self.switches}

    def _levels(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[1] != sum(self.level_channels):
            raise ValueError(f"features have {features.shape[1]} channels, the net expects "
                             f"{sum(self.level_channels)} ({self.level_channels})")
        return features[:, -self.level_channels[-1]:] if self.switches["single_level"] else features

    def _refinement_input(self, conditioned: torch.Tensor, reinforced: torch.Tensor,
                          prior: torch.Tensor | None) -> torch.Tensor:
        """The refinement's input: the condition module's output and, with ``refine_cross`` (the
        paper's figure 2), the cross-reference module's reinforced features beside it; with
        ``prior``, the training-free prior as one more channel."""
        parts = [conditioned] + ([reinforced] if self.switches["refine_cross"] else [])
        return torch.cat(parts + ([prior] if prior is not None else []), dim=1)

    def _high_level(self, features: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's highest cached level (the prior's features, before any training)."""
        return features[:, -self.level_channels[-1]:]

    def _predict(self, features: torch.Tensor, iterations: int) -> list[torch.Tensor]:
        if not self.switches["refinement"]:
            return [self.refine(features)] * iterations
        if not self.switches["cache"]:
            return [self.refine(features, None)] * iterations
        cache = features.new_zeros(features.shape[0], 1, *features.shape[-2:])
        outputs = []
        for _ in range(iterations):
            logits = self.refine(features, cache)
            outputs.append(logits)
            cache = torch.softmax(logits, dim=1)[:, 1:].detach()
        return outputs

    def forward(self, query: torch.Tensor, support: torch.Tensor, support_mask: torch.Tensor,
                query_mask: torch.Tensor | None = None, iterations: int = 5, predict_support: bool = True,
                ignore_index: int = 255) -> dict:
        """``query``, ``support``: ``B x C x h x w`` encoder features (grids may differ);
        ``support_mask`` (and ``query_mask``, optional): ``B x H x W`` episode masks.

        Returns ``{"query": [B x 2 x h x w logits per iteration], "support": the same for the
        support or None, "cooccurrence": (query, support) co-occurrence logits -- maps
        ``B x 1 x h x w`` (dense) or ``B`` -- or None, "prior": (query prior, support prior or
        None) with ``prior``, else None}``."""
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, not {iterations}")
        fq = self.project(self._levels(query))
        fs = self.project(self._levels(support))
        cooccurrence = None
        if self.cross is not None:
            fq, fs, cooccurrence = self.cross(fq, fs)
        support_fg, _ = mask_weights(support_mask, fs.shape[-2:], ignore_index)
        cq = fq
        if self.condition is not None:
            cq = self.condition(fq, masked_average_pooling(fs, support_fg)[0])
        prior_query = (training_free_prior(self._high_level(query), self._high_level(support), support_fg)
                       if self.switches["prior"] else None)
        out_query = self._predict(self._refinement_input(cq, fq, prior_query), iterations)
        out_support, prior_support = None, None
        if predict_support:
            if query_mask is not None:
                query_fg, _ = mask_weights(query_mask, fq.shape[-2:], ignore_index)
            else:
                query_fg = torch.softmax(out_query[-1], dim=1)[:, 1:]
            cs = fs
            if self.condition is not None:
                cs = self.condition(fs, masked_average_pooling(fq, query_fg)[0])
            if self.switches["prior"]:
                prior_support = training_free_prior(self._high_level(support), self._high_level(query), query_fg)
            out_support = self._predict(self._refinement_input(cs, fs, prior_support), iterations)
        return {"query": out_query, "support": out_support, "cooccurrence": cooccurrence,
                "prior": (prior_query, prior_support) if self.switches["prior"] else None}


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """``B x h x w`` softmax foreground of ``B x 2 x h x w`` logits."""
    return torch.softmax(logits, dim=1)[:, 1]


def upsample_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``B x 2 x h x w`` logits resized bilinearly to the label's ``size`` (H, W)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


@torch.no_grad()
def episode_probabilities(model: CRNet, query: torch.Tensor, supports: Sequence[torch.Tensor],
                          masks: Sequence[torch.Tensor], iterations: int) -> list[torch.Tensor]:
    """Foreground probability ``h x w`` of the query after each refinement iteration, fused
    over the k supports by probability averaging (``query``: ``1 x C x h x w``; ``supports``:
    k maps ``1 x C x h_i x w_i``; ``masks``: their episode masks ``H_i x W_i``). Supports of
    one size run as one batch."""
    groups: dict[tuple, list[int]] = {}
    for i, (s, m) in enumerate(zip(supports, masks)):
        groups.setdefault((tuple(s.shape[-2:]), tuple(m.shape[-2:])), []).append(i)
    sums = [torch.zeros(query.shape[-2:], device=query.device) for _ in range(iterations)]
    for index in groups.values():
        s = torch.cat([supports[i] for i in index])
        m = torch.stack([masks[i] for i in index]).to(query.device)
        q = query.expand(len(index), -1, -1, -1)
        out = model(q, s, m, iterations=iterations, predict_support=False)["query"]
        for t, logits in enumerate(out):
            sums[t] += foreground_probability(logits).sum(0)
    return [total / len(supports) for total in sums]
