"""The segmentation network every method trains through the shared stages, and its feature cache.

Stages train_seg, predict_seg and seg_features (and L-Net's train_pnet) build the network
with :func:`build_seg_model`, record what its weights fit with :func:`model_meta`, read
pseudo labels with :func:`load_target` and, with ``segmentation.feature_cache`` on, run
only the head on the frozen backbone's cached features (:func:`load_feature_cache`,
written by stage seg_features once per split).

Which label map supervises each train image is :func:`target_sources`: ``gt`` and
``pseudo`` use one source for every image; ``mixed`` uses the ground truth for the fold's
base samples (their novel-class pixels become ignore: weak-shot's protocol) and pseudo
labels for its novel samples.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.config import check_range, params_hash, section
from pipeline.data.augment import resize_image
from pipeline.data.batches import normalize_batch
from pipeline.data.folds import mask_novel_pixels
from pipeline.data.label_png import read_class_png
from pipeline.data.voc import VOCDataset, image_size
from pipeline.errors import PipelineError
from pipeline.io import check_files_exist
from pipeline.models import DeepLabASPP
from pipeline.models.deeplab import deeplab_meta
from pipeline.runtime import progress
from pipeline.training import load_model

GT, PSEUDO = "gt", "pseudo"  # label sources of target_sources


# v2: features grouped by image size (any mix of sizes); v1 held one N x C x h x w tensor.
CACHE_FORMAT = "seg-features-v2"
OLD_CACHE_FORMATS = ("seg-features-v1",)



def feature_cache_enabled(params: dict) -> bool:
    return bool(section(params, "segmentation").get("feature_cache", False))



def cache_meta(model: DeepLabASPP) -> dict:
    """What cached features depend on: the backbone (name, stride, weights file) and the input scale.

    Not ``pretrained``: predict_seg builds its net without ImageNet weights (the model file
    brings them), the cache was made with them; with a frozen backbone they are the same.
    """
    cfg = model.backbone_cfg
    return {"backbone": cfg["name"], "output_stride": cfg["output_stride"], "weights": cfg.get("weights"),
            "input_scale": model.input_scale}



def check_frozen_backbone(model: DeepLabASPP, where: str = "params.yaml") -> None:
    """Cached features are only exact when no backbone weight trains."""
    if any(p.requires_grad for p in model.backbone.parameters()):
        raise PipelineError(where, "segmentation.feature_cache: true needs a backbone that does not train "
                            "(set segmentation.frozen_blocks to every block group, e.g. 7 for efficientnet_lite0)")



def size_groups(sizes: Sequence[Sequence[int]]) -> list[tuple[tuple[int, int], list[int]]]:
    """``[((H, W), positions), ...]``: the positions of equal sizes, groups in the order of
    their first image, positions ascending (one group, ``0..N-1``, when all sizes agree)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, size in enumerate(sizes):
        groups.setdefault((int(size[0]), int(size[1])), []).append(k)
    return list(groups.items())



def cache_positions(cache: dict) -> dict[str, tuple[int, int]]:
    """``{image_id: (group, row)}``: where each image's features lie in a cache's ``groups``."""
    return {cache["ids"][k]: (g, row) for g, group in enumerate(cache["groups"])
            for row, k in enumerate(group["index"])}



def cached_features(cache: dict, positions: dict[str, tuple[int, int]], image_id: str
                    ) -> tuple[torch.Tensor, tuple[int, int]]:
    """(``1 x C x h x w`` float16 features, the image's (H, W)) of ``image_id``."""
    g, row = positions[image_id]
    group = cache["groups"][g]
    return group["features"][row:row + 1], tuple(group["image_size"])



def _check_cache_groups(path: Path, cache: dict, stage: str = "seg_features") -> None:
    """Every id in exactly one size group, with one feature map per listed image."""
    groups = cache.get("groups")
    if not isinstance(groups, list) or (not groups and cache["ids"]):
        raise PipelineError(path, f"damaged feature cache (no size groups); rerun {stage}")
    seen = []
    for group in groups:
        index, features = group.get("index"), group.get("features")
        if (not isinstance(features, torch.Tensor) or features.dim() != 4 or not isinstance(index, list)
                or features.shape[0] != len(index) or len(group.get("image_size") or ()) != 2):
            raise PipelineError(path, "damaged feature cache (a size group's features do not match its "
                                f"images); rerun {stage}")
        seen.extend(index)
    if sorted(seen) != list(range(len(cache["ids"]))):
        raise PipelineError(path, "damaged feature cache (its size groups do not cover each image once); "
                            f"rerun {stage}")



def read_feature_cache(path: str | Path, expected_meta: dict, ids: list[str], stage: str = "seg_features") -> dict:
    """A feature cache file (layout of :func:`load_feature_cache`) checked against the
    ``meta`` its reader expects and the split's ids; errors name the file and ``stage``,
    the stage that writes it (seg_features, or CRNet's crnet_features)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(path, f"feature cache not found (stage {stage})")
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file
        raise PipelineError(path, f"unreadable feature cache ({type(err).__name__}: {err})") from None
    if isinstance(cache, dict) and cache.get("format") in OLD_CACHE_FORMATS:
        raise PipelineError(path, f"feature cache of an older format ({cache['format']}; this code reads "
                            f"{CACHE_FORMAT}); rerun {stage}")
    if not isinstance(cache, dict) or cache.get("format") != CACHE_FORMAT:
        raise PipelineError(path, f"not a feature cache of stage {stage}")
    if cache["meta"] != expected_meta:
        diff = [f"{k}: file has {cache['meta'].get(k)!r}, the network {v!r}" for k, v in expected_meta.items()
                if cache["meta"].get(k) != v]
        raise PipelineError(path, "features of another network (" + "; ".join(diff) + f"); rerun {stage}")
    if list(cache["ids"]) != list(ids):
        if len(cache["ids"]) != len(ids):
            raise PipelineError(path, f"holds {len(cache['ids'])} images, the split {len(ids)} (another split "
                                f"or dataset?); rerun {stage}")
        k = next(k for k, (a, b) in enumerate(zip(cache["ids"], ids)) if a != b)
        raise PipelineError(path, f"holds other images than the split (image {k + 1}: {cache['ids'][k]!r}, the "
                            f"split's {ids[k]!r}; another split or dataset?); rerun {stage}")
    _check_cache_groups(path, cache, stage)
    return cache


def load_feature_cache(path: str | Path, model: DeepLabASPP, ids: list[str]) -> dict:
    """A cache file checked against ``model`` (same backbone / scale) and the split's ids.

    Layout (stage seg_features): ``ids`` in split order and ``groups``, one per image size:
    ``image_size`` (H, W), ``index`` (positions in ``ids``) and ``features``
    (``len(index) x C x h x w`` float16); see :func:`cache_positions`.
    """
    return read_feature_cache(path, cache_meta(model), ids)


FEATURE_BATCH = 16  # images per backbone pass (memory only: the features do not depend on it)


@torch.no_grad()
def split_features(features_fn, dataset: VOCDataset, mean, std, device, desc: str = "seg features",
                   batch: int = FEATURE_BATCH) -> list[dict]:
    """A feature cache's ``groups``: per image size, the float16 ``features_fn(images)`` of its
    images (in split order), the backbone run on batches of one size group."""
    from pipeline.data.batches import normalize_batch

    sizes = [image_size(dataset.image_path(image_id))[::-1] for image_id in dataset.ids]  # (H, W)
    groups = size_groups(sizes)
    batches = [(size, index[start:start + batch]) for size, index in groups
               for start in range(0, len(index), batch)]
    chunks: dict[tuple[int, int], list[torch.Tensor]] = {size: [] for size, _ in groups}
    for size, index in progress(batches, desc=desc, total=len(batches)):
        images = []
        for k in index:
            image = dataset.load_image(dataset.ids[k])
            if image.shape[:2] != size:
                raise PipelineError(dataset.image_path(dataset.ids[k]), f"decodes to {image.shape[1]}x"
                                    f"{image.shape[0]} pixels, its header says {size[1]}x{size[0]}")
            images.append(image)
        x = normalize_batch(np.stack(images), mean, std).to(device)
        chunks[size].append(features_fn(x).to(torch.float16).cpu())
    return [{"image_size": list(size), "index": index, "features": torch.cat(chunks[size])}
            for size, index in groups]


SUPERVISIONS = ("gt", "pseudo", "mixed")



PSEUDO_SUFFIX = ".png"



def seg_backbone_cfg(params: dict) -> dict:
    """``params['backbone']`` with the segmentation net's own output stride and frozen
    block groups, where ``segmentation`` sets them (null: the backbone's)."""
    cfg = dict(params["backbone"])
    seg = section(params, "segmentation")
    for key in ("output_stride", "frozen_blocks"):
        if seg.get(key) is not None:
            cfg[key] = seg[key]
    return cfg



def aspp_rates(params: dict) -> tuple[int, ...] | None:
    """``segmentation.aspp_rates`` as a tuple, or None for DeepLab-v3's rates at the stride."""
    rates = section(params, "segmentation").get("aspp_rates")
    return None if rates is None else tuple(int(r) for r in rates)



def input_scale(params: dict) -> float:
    """``segmentation.input_scale`` (> 0): the factor images are resized by for the network."""
    scale = float(section(params, "segmentation").get("input_scale", 1.0))
    check_range(scale, "segmentation.input_scale", 0, low_open=True)
    return scale



def build_seg_model(params: dict, num_classes: int) -> DeepLabASPP:
    """The segmentation network the params describe (shared with stage predict_seg)."""
    head = section(params, "segmentation").get("head", "v3")
    return DeepLabASPP(seg_backbone_cfg(params), num_classes, aspp_rates(params), head=head,
                       input_scale=input_scale(params))



def model_meta(model: DeepLabASPP, dataset: VOCDataset) -> dict:
    """What the weights fit: architecture, head, rates, input scale and the classes they predict."""
    return class_model_meta(model, dataset.class_names)


def class_model_meta(model: DeepLabASPP, class_names: Sequence[str]) -> dict:
    """:func:`model_meta` from the class names alone (no dataset split needed)."""
    return {**deeplab_meta(model), "input_scale": model.input_scale, "class_names": list(class_names)}


def load_seg_model(params: dict, path: str | os.PathLike, class_names: Sequence[str]) -> DeepLabASPP:
    """The trained segmentation net of a model file (stage train_seg, or L-Net's train_pnet),
    built from the params and checked against the file's meta (a mismatch: one line naming the
    file), in eval mode on the CPU. The file holds every weight: no ImageNet weights are loaded."""
    model = build_seg_model({**params, "backbone": {**params["backbone"], "pretrained": False}}, len(class_names))
    load_model(path, model, class_model_meta(model, class_names))
    return model.eval()



def target_sources(train_ids: list[str], supervision: str, fold: dict | None = None,
                   fold_path: str | os.PathLike = "--fold-file") -> dict[str, str]:
    """``{image_id: 'gt' | 'pseudo'}``: which label map supervises each train image.

    ``gt``/``pseudo``: the same source for every image. ``mixed``: GT for the fold's
    ``base_samples``, pseudo labels for its ``novel_samples``; the two lists must be
    disjoint, lie in the train split and cover it (errors name ``fold_path``).
    """
    if supervision in (GT, PSEUDO):
        return dict.fromkeys(train_ids, supervision)
    if supervision != "mixed":
        raise PipelineError("--supervision", f"'{supervision}' is not one of {', '.join(SUPERVISIONS)}")
    if fold is None:
        raise PipelineError("--fold-file", "supervision 'mixed' needs a fold file (base/novel samples)")
    base, novel = fold["base_samples"], fold["novel_samples"]
    both = set(base) & set(novel)
    if both:
        raise PipelineError(fold_path, f"'{sorted(both)[0]}' is listed as both a base and a novel sample")
    known = set(train_ids)
    outside = [i for i in [*base, *novel] if i not in known]
    if outside:
        raise PipelineError(fold_path, f"lists {len(outside)} id(s) not in the train split "
                            f"(first: {outside[0]!r}); was it made for another dataset?")
    sources = {**dict.fromkeys(base, GT), **dict.fromkeys(novel, PSEUDO)}
    missing = [i for i in train_ids if i not in sources]
    if missing:
        raise PipelineError(fold_path, f"{len(missing)} train image(s) are neither base nor novel samples "
                            f"(first: {missing[0]!r})")
    return {i: sources[i] for i in train_ids}



def pseudo_path(pseudo_dir: Path, image_id: str) -> Path:
    return pseudo_dir / f"{image_id}{PSEUDO_SUFFIX}"



def check_pseudo_dir(pseudo_dir: Path, ids: list[str]) -> None:
    """Fail before any work if the directory or one listed pseudo label is missing."""
    check_files_exist(pseudo_dir, ids, PSEUDO_SUFFIX, "pseudo label",
                      directory_problem="pseudo-label directory not found", listed="images that need one")



def load_target(image_id: str, source: str, dataset: VOCDataset, image_shape: tuple[int, int],
                pseudo_dir: Path | None, novel_classes: list[int]) -> np.ndarray:
    """The HxW class map that supervises ``image_id``: its GT (novel pixels -> ignore) or pseudo label."""
    if source == GT:
        return mask_novel_pixels(dataset.load_mask(image_id), novel_classes, dataset.ignore_index)
    return read_class_png(pseudo_path(pseudo_dir, image_id), *image_shape, dataset.num_classes,
                          dataset.ignore_index, "pseudo label")



def check_pseudo_labels(dataset: VOCDataset, sources: dict[str, str], pseudo_dir: Path) -> None:
    """Every pseudo label the run needs exists and is valid (one decode each, before training)."""
    ids = [i for i, s in sources.items() if s == PSEUDO]
    check_pseudo_dir(pseudo_dir, ids)
    for image_id in progress(ids, desc="check pseudo labels"):
        width, height = image_size(dataset.image_path(image_id))
        read_class_png(pseudo_path(pseudo_dir, image_id), height, width, dataset.num_classes,
                       dataset.ignore_index, "pseudo label")



def directory_fingerprint(directory: Path | None) -> str | None:
    """Hash of the file names, sizes and mtimes in ``directory``: a rewritten pseudo-label
    directory makes an old checkpoint stale."""
    if directory is None:
        return None
    with os.scandir(directory) as entries:
        stats = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries)
    return params_hash(stats)


# --------------------------------------------------------------------------- inference on whole images
# (stage predict_seg on a split, stage segment_folder on a folder of the user's images)

def predict_config(params: dict) -> dict:
    """``segmentation.predict`` checked: a non-empty list of positive scales and a flip flag."""
    scales = section(params, "segmentation.predict.scales")
    flip = section(params, "segmentation.predict.flip")
    if not isinstance(scales, list) or not scales:
        raise PipelineError("params.yaml", "segmentation.predict.scales must be a non-empty list")
    for scale in scales:
        check_range(scale, "segmentation.predict.scales[]", 0, low_open=True)
    return {"scales": [float(s) for s in scales], "flip": bool(flip)}


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) of the image rescaled by ``scale`` (at least 1 px each)."""
    return max(1, round(height * scale)), max(1, round(width * scale))


@torch.no_grad()
def class_probabilities(model: torch.nn.Module, image: np.ndarray, scales: list[float], flip: bool,
                        mean, std, device: str | torch.device,
                        memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``C x H x W`` softmax probabilities of an HxWx3 uint8 image, averaged over scales (+ flip)."""
    height, width = image.shape[:2]
    total = None
    for scale in scales:
        scaled = resize_image(image, scaled_size(height, width, scale))
        x = normalize_batch(scaled[None], mean, std).to(device)
        if flip:
            x = torch.cat([x, torch.flip(x, dims=[3])])
        logits = model(x.contiguous(memory_format=memory_format))
        logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        probs = logits.float().softmax(dim=1)
        if flip:
            probs = probs[:1] + torch.flip(probs[1:], dims=[3])
        total = probs[0] if total is None else total + probs[0]
    return total / (len(scales) * (2 if flip else 1))


def predict_label_map(model: torch.nn.Module, image: np.ndarray, scales: list[float], flip: bool,
                      mean, std, device: str | torch.device,
                      memory_format: torch.memory_format = torch.contiguous_format) -> np.ndarray:
    """HxW uint8 argmax of :func:`class_probabilities`."""
    probs = class_probabilities(model, image, scales, flip, mean, std, device, memory_format)
    return probs.argmax(dim=0).to(torch.uint8).cpu().numpy()
