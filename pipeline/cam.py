"""Class activation maps (PSA/IRN): multi-scale inference, storage, and the label rules.

Stages: ``train_cam`` -> ``infer_cam`` -> ``eval_cam`` / ``confident_labels``. This module
holds the math they share, as small functions the tests check by hand.

Inference (IRN ``make_cam``, PSA ``infer_cls``)
    For every scale s (1.0, 0.5, 1.5, 2.0) the image is resized by s, the network's ReLU'd
    CAMs of the image and of its horizontal mirror (flipped back) are added, each scale's
    map is resized bilinearly to a common grid, and the scales are summed. The sum is
    restricted to the image's labelled foreground classes, ReLU'd, and max-normalised per
    class: ``cam / (max(cam) + 1e-5)`` (IRN), so each labelled class peaks at ~1.

Storage (one compressed ``<id>.npz`` per image, :func:`write_cam_file`)
    ``cams`` float16 ``K x h x w`` with ``h = ceil(H / stride)``, ``w = ceil(W / stride)``;
    ``keys`` int64 ``K`` dataset class ids (background never), in the order of ``cams``;
    ``size`` int64 ``(H, W)``; ``stride`` int64. Images with no foreground label have
    ``K = 0``. Grid convention: cell ``i`` covers pixels ``[i*stride, (i+1)*stride)``, so
    :func:`upsample_cams` resizes to ``(h*stride, w*stride)`` and crops to ``(H, W)``
    (the exact inverse geometry when ``stride`` divides the size).

Background threshold (PSA/IRN/SEAM evaluation)
    Background score = a constant threshold t, padded as channel 0; the label is the
    argmax, so a pixel is foreground iff its highest CAM is *strictly* above t (ties go
    to background, as ``np.argmax`` returns the first maximum).

Confident labels (IRN ``cam_to_ir_label``)
    fg map = argmax with background padded at ``conf_fg`` (0.30: only strong CAM is
    foreground); bg map = argmax with background padded at ``conf_bg`` (0.05: only weak CAM
    is background). Where the two maps agree the pixel gets that label; where they
    disagree (CAM between the thresholds) it is ignore. Datasets without a background
    class: confident class where the highest CAM is >= ``conf_fg``, ignore elsewhere.

Dense CRF (optional, PSA ``infer_cls``): see :func:`crf_confident_labels`.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.augment import resize_image
from pipeline.data.batches import normalize_batch
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError
from pipeline.io import check_files_exist, load_npz, save_npz
from pipeline.metrics import confusion_matrix

# IRN/PSA: divide by max + eps, so an all-zero CAM stays zero instead of dividing by 0.
NORM_EPS = 1e-5
CAM_SUFFIX = ".npz"


# --------------------------------------------------------------------------- geometry

def strided_size(size: Sequence[int], stride: int) -> tuple[int, int]:
    """``(ceil(H / stride), ceil(W / stride))``: the CAM grid of an ``H x W`` image."""
    return (math.ceil(size[0] / stride), math.ceil(size[1] / stride))


def scaled_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """``(round(H * scale), round(W * scale))``, at least 1 pixel each."""
    return (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def resize_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize (``align_corners=False``, IRN/PSA) of ``C x h x w`` maps to ``size``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if maps.shape[0] == 0:
        return maps.new_zeros((0, *size))
    return F.interpolate(maps[None], size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)[0]


def upsample_cams(cams: np.ndarray, size: Sequence[int], stride: int) -> np.ndarray:
    """Stored ``K x h x w`` CAMs -> ``K x H x W`` float32 at image resolution.

    Resizes to ``(h * stride, w * stride)`` (the area the grid covers) and crops to
    ``size`` = (H, W), following the grid convention of the module docstring.
    """
    grid = torch.from_numpy(np.asarray(cams, dtype=np.float32))
    covered = (grid.shape[1] * stride, grid.shape[2] * stride)
    full = resize_maps(grid, covered)[:, :size[0], :size[1]]
    return np.ascontiguousarray(full.numpy())


# --------------------------------------------------------------------------- inference

def merge_flipped(cams: torch.Tensor) -> torch.Tensor:
    """``2 x C x h x w`` CAMs of (image, mirrored image) -> ``C x h x w``: sum, mirror undone."""
    return cams[0] + cams[1].flip(-1)


def multiscale_cams(cams_fn: Callable[[torch.Tensor], torch.Tensor], image: np.ndarray,
                    scales: Sequence[float], flip: bool, out_size: Sequence[int],
                    mean: Sequence[float], std: Sequence[float], channels: Sequence[int] | None = None,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """Sum over ``scales`` (and mirror images when ``flip``) of the CAMs of ``image``.

    ``cams_fn(x)`` maps a normalised ``B x 3 x H x W`` batch to ``B x C x h x w`` CAMs
    (``CAMNet.cams``). ``image``: ``H x W x 3`` uint8; each scale's maps (restricted to
    ``channels`` when given) are resized bilinearly to ``out_size`` before summing.
    Returns ``len(channels) x out_size`` float32 on the CPU; not yet normalised.
    """
    height, width = image.shape[:2]
    total = None
    for scale in scales:
        scaled = resize_image(image, scaled_size((height, width), scale))
        batch = normalize_batch(scaled[None], mean, std)
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        with torch.no_grad():
            cams = cams_fn(batch.to(device)).float()
        if channels is not None:
            cams = cams[:, list(channels)]
        merged = merge_flipped(cams) if flip else cams[0]
        resized = resize_maps(merged, out_size).cpu()
        total = resized if total is None else total + resized
    if total is None:
        raise ValueError("multiscale_cams needs at least one scale")
    return total


def cams_function(model, device: str | torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.cams`` as :func:`multiscale_cams` calls it: on the CPU the network runs
    channels_last (moved once, here), as predict_seg and train_seg do. The CAMs are those of
    the default layout to float rounding (max |diff| 0.0 on 500 x 375 VOC-size images at the
    VOC scales, tests/test_cam.py checks 1e-5); the CAM stage, the largest of the pseudo-label
    path, runs ~1.2x faster (benchmarks/pseudo_label_path_benchmark.py, docs/operations.md)."""
    if torch.device(device).type != "cpu":
        return model.cams
    model.to(memory_format=torch.channels_last)
    return lambda x: model.cams(x.contiguous(memory_format=torch.channels_last))


def normalize_cams(cams: torch.Tensor | np.ndarray, eps: float = NORM_EPS):
    """ReLU, then divide each class map by its maximum + ``eps`` (IRN/PSA max-normalisation)."""
    if isinstance(cams, np.ndarray):
        cams = np.maximum(cams, 0)
        if cams.shape[0] == 0:
            return cams.astype(np.float32)
        return (cams / (cams.max(axis=(1, 2), keepdims=True) + eps)).astype(np.float32)
    cams = torch.relu(cams)
    if cams.shape[0] == 0:
        return cams
    return cams / (cams.amax(dim=(1, 2), keepdim=True) + eps)


def label_channels(labels: Sequence[int], foreground_indices: Sequence[int]) -> tuple[list[int], list[int]]:
    """(classifier channels, class ids) of an image's labels, in class-id order.

    The CAM classifier has one channel per foreground class: channel j is class
    ``foreground_indices[j]``. Labels that are not foreground classes are an error.
    """
    position = {c: j for j, c in enumerate(foreground_indices)}
    keys = sorted(set(int(c) for c in labels))
    unknown = [c for c in keys if c not in position]
    if unknown:
        raise ValueError(f"class ids {unknown} are not foreground classes")
    return [position[c] for c in keys], keys


def multi_hot(labels: Sequence[int], foreground_indices: Sequence[int]) -> np.ndarray:
    """Classification target: float32 vector over the classifier channels, 1 = class present."""
    channels, _ = label_channels(labels, foreground_indices)
    target = np.zeros(len(foreground_indices), dtype=np.float32)
    target[channels] = 1.0
    return target


# --------------------------------------------------------------------------- storage

def cam_path(cam_dir: str | os.PathLike, image_id: str) -> Path:
    return Path(cam_dir) / f"{image_id}{CAM_SUFFIX}"


def write_cam_file(path: str | os.PathLike, cams: np.ndarray, keys: Sequence[int], size: Sequence[int],
                   stride: int) -> None:
    """Store one image's normalised CAMs (format in the module docstring), atomically."""
    cams = np.asarray(cams)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    expected = (len(keys), *strided_size(size, stride))
    if cams.shape != expected:
        raise ValueError(f"cams of shape {cams.shape}, expected {expected} for size {tuple(size)} "
                         f"and stride {stride}")
    save_npz(path, cams=cams.astype(np.float16), keys=keys, size=np.asarray(size, dtype=np.int64),
             stride=np.asarray(stride, dtype=np.int64))


def read_cam_file(path: str | os.PathLike, num_classes: int | None = None,
                  background_index: int | None = None) -> dict:
    """One CAM file, checked: ``{'cams': float32 K x h x w, 'keys': list, 'size': (H, W), 'stride': int}``.

    With ``num_classes`` the keys must be class ids of the dataset other than
    ``background_index``. Every problem is a PipelineError naming the file.
    """
    if not Path(path).is_file():
        raise PipelineError(path, "CAM file not found (rerun stage infer_cam)")
    data = load_npz(path)
    missing = [k for k in ("cams", "keys", "size", "stride") if k not in data]
    if missing:
        raise PipelineError(path, f"not a CAM file: no '{missing[0]}' array")
    cams, keys, size, stride = data["cams"], data["keys"].reshape(-1), data["size"].reshape(-1), data["stride"]
    if size.shape != (2,) or stride.size != 1 or int(stride) < 1 or (size < 1).any():
        raise PipelineError(path, f"invalid size {size.tolist()} or stride {stride.tolist()}")
    stride = int(stride)
    expected = (len(keys), *strided_size(size, stride))
    if cams.shape != expected:
        raise PipelineError(path, f"cams have shape {cams.shape}, expected {expected} "
                            f"(K = {len(keys)} keys, image {size[0]}x{size[1]}, stride {stride})")
    keys = [int(k) for k in keys]
    if num_classes is not None:
        bad = [k for k in keys if not 0 <= k < num_classes or k == background_index]
        if bad:
            raise PipelineError(path, f"keys {bad} are not foreground class ids of this dataset "
                                f"(made for another dataset?)")
    if len(set(keys)) != len(keys):
        raise PipelineError(path, f"duplicate keys {keys}")
    cams = cams.astype(np.float32)
    if not np.isfinite(cams).all():
        raise PipelineError(path, "cams contain NaN or infinite values")
    return {"cams": cams, "keys": keys, "size": (int(size[0]), int(size[1])), "stride": stride}


def check_cam_files_exist(cam_dir: str | os.PathLike, ids: Sequence[str]) -> None:
    """Fail before any work if the directory or one listed image's CAM file is missing."""
    check_files_exist(cam_dir, ids, CAM_SUFFIX, "CAM file",
                      directory_problem="CAM directory not found (run stage infer_cam)")


# --------------------------------------------------------------------------- label rules

def background_threshold_labels(cams: np.ndarray, keys: Sequence[int], threshold: float,
                                background_index: int) -> np.ndarray:
    """Argmax over [threshold (background), cams]: class ids ``H x W`` (int64).

    ``cams``: ``K x H x W`` normalised CAMs of the classes ``keys``. Ties go to background.
    """
    padded = np.concatenate([np.full((1, *cams.shape[1:]), threshold, dtype=np.float32),
                             np.asarray(cams, dtype=np.float32)])
    lookup = np.asarray([background_index, *keys], dtype=np.int64)
    return lookup[np.argmax(padded, axis=0)]


def argmax_labels(cams: np.ndarray, keys: Sequence[int], void_index: int) -> np.ndarray:
    """Argmax over the labelled classes (no background class); ``void_index`` where K = 0."""
    if len(keys) == 0:
        return np.full(cams.shape[1:], void_index, dtype=np.int64)
    return np.asarray(keys, dtype=np.int64)[np.argmax(cams, axis=0)]


def max_and_argmax(cams: np.ndarray, keys: Sequence[int], fill_label: int) -> tuple[np.ndarray, np.ndarray]:
    """(highest CAM, its class id) per pixel; (0, ``fill_label``) where K = 0."""
    if len(keys) == 0:
        return (np.zeros(cams.shape[1:], dtype=np.float32), np.full(cams.shape[1:], fill_label, dtype=np.int64))
    return cams.max(axis=0), np.asarray(keys, dtype=np.int64)[np.argmax(cams, axis=0)]


def sweep_confusions(cams: np.ndarray, keys: Sequence[int], gt: np.ndarray, thresholds: Sequence[float],
                     num_classes: int, background_index: int, ignore_index: int) -> np.ndarray:
    """Confusion matrices (``T x n x n``, rows GT) of the background-threshold labels of one image.

    Same labels as :func:`background_threshold_labels` for each threshold (a pixel is
    foreground iff its highest CAM is strictly above it), computed from one max/argmax.
    """
    top, top_label = max_and_argmax(cams, keys, background_index)
    out = np.empty((len(thresholds), num_classes, num_classes), dtype=np.int64)
    for t, threshold in enumerate(thresholds):
        pred = np.where(top > np.float32(threshold), top_label, background_index)
        out[t] = confusion_matrix(gt, pred, num_classes, ignore_index)
    return out


def agree_or_ignore(first: np.ndarray, second: np.ndarray, ignore_index: int) -> np.ndarray:
    """The common label where two label maps agree, ``ignore_index`` where they differ (uint8)."""
    out = np.where(first == second, first, ignore_index)
    return out.astype(np.uint8)


def confident_threshold_labels(cams: np.ndarray, keys: Sequence[int], conf_fg: float, conf_bg: float,
                               background_index: int, ignore_index: int) -> np.ndarray:
    """IRN's confident labels: uint8 ``H x W`` of class ids, background, or ``ignore_index``."""
    fg_map = background_threshold_labels(cams, keys, conf_fg, background_index)
    bg_map = background_threshold_labels(cams, keys, conf_bg, background_index)
    return agree_or_ignore(fg_map, bg_map, ignore_index)


def confident_no_background(cams: np.ndarray, keys: Sequence[int], conf_fg: float,
                            ignore_index: int) -> np.ndarray:
    """No background class: the argmax class where the highest CAM is >= ``conf_fg``, else ignore."""
    top, top_label = max_and_argmax(cams, keys, ignore_index)
    return np.where(top >= conf_fg, top_label, ignore_index).astype(np.uint8)


# --------------------------------------------------------------------------- dense CRF

def crf_available() -> bool:
    """Whether the optional ``pydensecrf`` module (PyPI ``pydensecrf2``) is importable."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def crf_inference(image: np.ndarray, probs: np.ndarray, iterations: int = 10, gaussian_sxy: float = 3,
                  gaussian_compat: float = 3, bilateral_sxy: float = 80, bilateral_srgb: float = 13,
                  bilateral_compat: float = 10) -> np.ndarray:
    """Fully connected CRF (Kraehenbuehl & Koltun) with PSA's kernels; returns ``L x H x W`` marginals.

    ``probs``: ``L x H x W`` non-negative scores, used as probabilities (``-log p`` unaries,
    clipped away from 0 by pydensecrf's ``unary_from_softmax``).
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    n_labels, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.asarray(probs, dtype=np.float32))))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=np.ascontiguousarray(image),
                             compat=bilateral_compat)
    return np.asarray(crf.inference(int(iterations)), dtype=np.float32).reshape(n_labels, height, width)


def crf_background_labels(image: np.ndarray, cams: np.ndarray, keys: Sequence[int], alpha: float,
                          background_index: int, crf_options: dict) -> np.ndarray:
    """PSA: background score ``(1 - max cam) ** alpha``, dense CRF, argmax -> class ids ``H x W``."""
    background = np.power(1.0 - cams.max(axis=0, keepdims=True), alpha) if len(keys) else \
        np.ones((1, *cams.shape[1:]), dtype=np.float32)
    marginals = crf_inference(image, np.concatenate([background, cams]).astype(np.float32), **crf_options)
    return np.asarray([background_index, *keys], dtype=np.int64)[np.argmax(marginals, axis=0)]


def crf_confident_labels(image: np.ndarray, cams: np.ndarray, keys: Sequence[int], alpha_fg: float,
                         alpha_bg: float, background_index: int, ignore_index: int,
                         crf_options: dict | None = None) -> np.ndarray:
    """PSA's CRF confident labels: a low alpha (4: strong background, only confident foreground
    survives) and a high alpha (32: weak background, only confident background survives),
    each refined by the CRF; labels where the two agree, ``ignore_index`` elsewhere."""
    options = dict(crf_options or {})
    fg_map = crf_background_labels(image, cams, keys, alpha_fg, background_index, options)
    bg_map = crf_background_labels(image, cams, keys, alpha_bg, background_index, options)
    return agree_or_ignore(fg_map, bg_map, ignore_index)


def cam_backbone_cfg(params: dict) -> dict:
    """``params['backbone']`` with the CAM network's output stride (``cam.output_stride``)."""
    cfg = dict(params["backbone"])
    output_stride = params["cam"].get("output_stride")
    if output_stride is not None:
        cfg["output_stride"] = output_stride
    return cfg



def cam_model_meta(model, class_names: list[str]) -> dict:
    """What a CAM model file fits: the network's meta plus the foreground class names."""
    return {**model.meta, "classes": list(class_names)}


def load_checked_cams(cam_dir: str | Path, image_id: str, dataset: VOCDataset, labels: dict,
                      labels_path: str, size: tuple[int, int]) -> dict:
    """One image's CAM file, checked against the dataset, the image size and the image's labels."""
    path = cam_path(cam_dir, image_id)
    record = read_cam_file(path, dataset.num_classes, dataset.background_index)
    if record["size"] != tuple(size):
        raise PipelineError(path, f"made for a {record['size'][1]}x{record['size'][0]} image, but "
                            f"{dataset.image_path(image_id)} is {size[1]}x{size[0]} (stale CAMs?)")
    if sorted(record["keys"]) != sorted(int(c) for c in labels[image_id]):
        raise PipelineError(path, f"has classes {record['keys']} but {labels_path} labels the image "
                            f"{sorted(labels[image_id])} (stale CAMs? rerun stage infer_cam)")
    return record


def image_cams(cam_file: dict, path: str | Path, classes: list[int], size: tuple[int, int]) -> dict[int, np.ndarray]:
    """{class: H x W CAM in [0, 1]} of ``classes`` from a checked CAM file (errors name ``path``)."""
    if tuple(cam_file["size"]) != tuple(size):
        raise PipelineError(path, f"CAMs were made for a {cam_file['size'][1]}x{cam_file['size'][0]} image, "
                            f"but the image is {size[1]}x{size[0]} (stale CAMs? rerun stage infer_cam)")
    missing = [c for c in classes if c not in cam_file["keys"]]
    if missing:
        raise PipelineError(path, f"has no CAM for class(es) {missing} of the image labels "
                            f"(keys {cam_file['keys']}; stale CAMs? rerun stage infer_cam)")
    rows = [cam_file["keys"].index(c) for c in classes]
    if not rows:
        return {}
    full = upsample_cams(cam_file["cams"][rows], size, cam_file["stride"])
    return {c: np.clip(full[k], 0.0, 1.0) for k, c in enumerate(classes)}


def read_best_threshold(path: str | os.PathLike, has_background: bool) -> float | None:
    """The background threshold of stage eval_cam's JSON (``best_threshold``; None for datasets
    without a background class). Errors name the file."""
    from pipeline.io import read_json

    document = read_json(path)
    if not isinstance(document, dict) or "best_threshold" not in document:
        raise PipelineError(path, "no 'best_threshold' (not an eval_cam output?)")
    value = document["best_threshold"]
    if not has_background:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise PipelineError(path, f"best_threshold = {value!r} must be a number in [0, 1] for a dataset "
                            "with a background class")
    return float(value)


# PSA's confident-label alphas around its background alpha 16: (1 - max CAM) ** 4 (low alpha,
# confident foreground) and ** 32 (high alpha, confident background). In thresholds: 0.28 and
# 0.08 around PSA's 0.12 cut, the band IRN sets by hand (conf_fg 0.30, conf_bg 0.05).
PSA_CONFIDENT_ALPHA_RATIOS = {"conf_fg": 4 / 16, "conf_bg": 32 / 16}


def confident_thresholds_for(threshold: float) -> dict[str, float]:
    """``confident_labels.conf_fg/conf_bg: auto``: PSA's confident band around a CAM background
    threshold ``t`` (the fold's best on its base samples). ``t`` gives the background alpha at
    which it is the fg/bg edge (:func:`~pipeline.propagation.random_walk.alpha_for_threshold`);
    PSA's ratios 4/16 and 32/16 of that alpha give the two thresholds. ``t`` = 0.12 (PSA's
    alpha 16) gives 0.28 / 0.08; 0.55 (embedded fold 0) 0.76 / 0.43; 0.40 (MSRC fold 0) 0.64 / 0.29."""
    from pipeline.propagation.random_walk import alpha_for_threshold, threshold_for_alpha

    alpha = alpha_for_threshold(threshold)
    return {key: threshold_for_alpha(alpha * ratio) for key, ratio in PSA_CONFIDENT_ALPHA_RATIOS.items()}
