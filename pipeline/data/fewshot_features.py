"""Frozen-encoder features of the few-shot branch, computed once per split and cached.

CANet and CRNet keep the ImageNet encoder fixed (their k-shot finetune trains everything
but the encoder), so the encoder features of an image never change: stage
``crnet_features`` computes them once per split (``work/<dataset>/crnet/features/<split>.pt``,
the layout of :func:`pipeline.segmentation.read_feature_cache`: size groups of float16
maps) and every few-shot stage (training, the episodic tests, the prototype floor) reads
them. Augmentation is a horizontal flip of the cached maps (and masks), as train_seg does.

``crnet.encoder`` (params): ``levels`` (backbone levels concatenated at the finest of their
grids, :func:`pipeline.models.crnet.encoder_features`), ``output_stride`` and
``input_scale`` (images are resized by it before the encoder; masks stay at their own
resolution and predictions are scored there).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import check_range, section
from pipeline.data.episodes import episode_mask
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError
from pipeline.models.backbone import BLOCK_GROUPS, build_backbone, resolve_backbone_cfg
from pipeline.models.crnet import encoder_features
from pipeline.segmentation import cache_positions, read_feature_cache

FEATURES_STAGE = "crnet_features"
# Channels of each backbone level, finest first (pipeline/models/backbone.py's table).
LEVEL_CHANNELS = {"efficientnet_lite0": [16, 24, 40, 112, 320], "resnet50": [64, 256, 512, 1024, 2048]}


def encoder_cfg(params: dict) -> dict:
    """``crnet.encoder`` checked: levels, output stride, input scale (errors name the key)."""
    enc = dict(section(params, "crnet.encoder"))
    check_range(float(enc["input_scale"]), "crnet.encoder.input_scale", 0, low_open=True)
    backbone = frozen_backbone_cfg(params, enc)
    levels = [int(v) for v in enc["levels"]]
    if not levels or len(set(levels)) != len(levels) or min(levels) < 0 or max(levels) > 4:
        raise PipelineError("params.yaml", f"crnet.encoder.levels = {enc['levels']} must be distinct backbone "
                            "levels 0..4 (finest first)")
    return {"levels": levels, "output_stride": backbone["output_stride"], "input_scale": float(enc["input_scale"]),
            "backbone": backbone["name"], "weights": backbone["weights"],
            "level_channels": [LEVEL_CHANNELS[backbone["name"]][i] for i in levels]}


def frozen_backbone_cfg(params: dict, enc: dict | None = None) -> dict:
    """``params['backbone']`` at the encoder's output stride with every block group frozen."""
    enc = enc if enc is not None else section(params, "crnet.encoder")
    cfg = dict(params["backbone"])
    cfg["output_stride"] = enc.get("output_stride") or cfg.get("output_stride", 8)
    cfg = resolve_backbone_cfg(cfg)
    cfg["frozen_blocks"] = BLOCK_GROUPS[cfg["name"]]
    cfg["freeze_bn"] = True
    return cfg


class Encoder(torch.nn.Module):
    """The frozen siamese encoder: the backbone at ``input_scale``, ``levels`` concatenated."""

    def __init__(self, params: dict):
        super().__init__()
        self.cfg = encoder_cfg(params)
        self.backbone = build_backbone(frozen_backbone_cfg(params)).eval()
        self.channels = [self.backbone.channels[i] for i in self.cfg["levels"]]
        if self.channels != self.cfg["level_channels"]:
            raise RuntimeError(f"backbone levels have {self.channels} channels, the table says "
                               f"{self.cfg['level_channels']}")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scale = self.cfg["input_scale"]
        if scale != 1.0:
            images = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        return encoder_features(self.backbone, images, self.cfg["levels"])


def feature_mosaic(target: torch.Tensor, target_mask: torch.Tensor, other: torch.Tensor, other_mask: torch.Tensor,
                   target_left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A two-image query made on the cached feature grid (issue 21: make the support necessary):
    ``other``'s features (``C x h_o x w_o``) resized bilinearly to the height of ``target``'s
    (``C x h x w``) and put beside them, left or right; the episode masks likewise, ``other``'s
    resized (nearest) to the target mask's height and to the width that keeps the target's
    label-to-grid ratio, so the joint mask still maps linearly onto the joint grid.

    ``other_mask`` is the episode mask of the pair's class in the other image (0 or 255 where
    the class is absent): the other image's object is background, so predicting every object
    (objectness alone) is wrong on half of the mosaic. Returns ``(features C x h x (w + w'),
    mask H x (W + W'))``."""
    c, h, w = target.shape
    height, width = target_mask.shape[-2:]
    w_other = max(1, round(other.shape[-1] * h / other.shape[-2]))
    other = F.interpolate(other[None], size=(h, w_other), mode="bilinear", align_corners=False)[0]
    mask_width = max(1, round(w_other * width / w))
    other_mask = F.interpolate(other_mask[None, None].float(), size=(height, mask_width), mode="nearest")[0, 0]
    other_mask = other_mask.to(target_mask.dtype)
    feats = (target, other) if target_left else (other, target)
    masks = (target_mask, other_mask) if target_left else (other_mask, target_mask)
    return torch.cat(feats, dim=-1), torch.cat(masks, dim=-1)


class FeatureStore:
    """One split's cached features and episode masks, by image id.

    ``features(id, flip=False)``: ``1 x C x h x w`` float32; ``mask(id, class_id)``: the
    episode mask ``H x W`` (uint8 tensor) of a class (masks decoded once, then kept)."""

    def __init__(self, path: str | os.PathLike, params: dict, dataset: VOCDataset):
        self.cache = read_feature_cache(path, encoder_cfg(params), list(dataset.ids), FEATURES_STAGE)
        self.level_channels = list(self.cache["meta"]["level_channels"])
        self.positions = cache_positions(self.cache)
        self.dataset = dataset
        self.path = path
        self._masks: dict[str, np.ndarray] = {}

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.positions

    def features(self, image_id: str, flip: bool = False) -> torch.Tensor:
        g, row = self.positions[image_id]
        feats = self.cache["groups"][g]["features"][row:row + 1].float()
        return feats.flip(-1) if flip else feats

    def class_mask(self, image_id: str) -> np.ndarray:
        """The image's class-index mask (decoded once)."""
        if image_id not in self._masks:
            self._masks[image_id] = self.dataset.load_mask(image_id)
        return self._masks[image_id]

    def mask(self, image_id: str, class_id: int, flip: bool = False) -> torch.Tensor:
        """Episode mask of ``class_id`` (:func:`pipeline.data.episodes.episode_mask`) as a tensor."""
        out = torch.from_numpy(episode_mask(self.class_mask(image_id), class_id, self.dataset.ignore_index))
        return out.flip(-1) if flip else out

    def check_ids(self, ids, where: str | os.PathLike, what: str) -> None:
        """Every id is an image of this split (else one line naming ``where``)."""
        for image_id in ids:
            if image_id not in self.positions:
                raise PipelineError(where, f"{what} '{image_id}' is not an image of the {self.dataset.split} split "
                                    f"({self.dataset.list_path})")
