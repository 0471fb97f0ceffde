"""The one place torchvision is imported (import ``torchvision`` from here, never directly).

torchvision 0.28.0 on PyPI is a CUDA build: on CPU-only torch 2.13.0 its ``_C.so`` does
not load, and ``import torchvision`` fails with "operator torchvision::nms does not exist"
because ``torchvision/_meta_registrations.py`` registers fake kernels for ops that were
never defined. We load ``_C.so`` when it loads (GPU machines: this module then does
nothing else); otherwise we define the op schemas the import-time registrations need.
Models and transforms work afterwards; the compiled ops (nms, roi_align) and
``torchvision.io`` decoding do not, and the pipeline uses PIL for decoding.
"""
from __future__ import annotations

import importlib.util
import os

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align": "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward": "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width, int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align": "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward": "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
    "float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
    "SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool": "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width) -> (Tensor, Tensor)",
    "_ps_roi_pool_backward": "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
    "float spatial_scale, SymInt pooled_height, SymInt pooled_width, SymInt batch_size, "
    "SymInt channels, SymInt height, SymInt width) -> Tensor",
    "roi_pool": "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width) -> (Tensor, Tensor)",
    "_roi_pool_backward": "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width) -> Tensor",
    "deform_conv2d": "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, "
    "SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward": "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, "
    "Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, "
    "SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, SymInt offset_groups, "
    "bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
}

_library = None  # keep the Library object alive: dropping it unregisters the schemas


def _ops_missing() -> bool:
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute lookup is the probe
        return False
    except (AttributeError, RuntimeError):
        return True


def ensure_torchvision_ops() -> bool:
    """Make ``import torchvision`` work; return True if the real compiled ops are loaded."""
    global _library
    if not _ops_missing():
        return True
    spec = importlib.util.find_spec("torchvision")
    if spec is not None and spec.origin:
        so = os.path.join(os.path.dirname(spec.origin), "_C.so")
        try:
            torch.ops.load_library(so)
            if not _ops_missing():
                return True
        except (OSError, RuntimeError):
            pass
    if _library is None:
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS.values():
            _library.define(schema)
    return False


REAL_OPS = ensure_torchvision_ops()
import torchvision  # noqa: E402  (must follow the op registration above)

__all__ = ["torchvision", "REAL_OPS", "ensure_torchvision_ops"]
