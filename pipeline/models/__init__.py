"""Networks: backbones (EfficientNet-Lite0 offline weights, ResNet-50) and the heads.

- :mod:`~pipeline.models.backbone`      ``build_backbone``, ``backbone_normalization``
- :mod:`~pipeline.models.cam_net`       ``CAMNet``: image classifier + CAMs (PSA/IRN)
- :mod:`~pipeline.models.boundary_net`  ``BoundaryNet``: boundary logits at stride 4 (IRN)
- :mod:`~pipeline.models.affinity_net`  ``AffinityNet``: embedding at stride 8 (PSA)
- :mod:`~pipeline.models.deeplab`       ``DeepLabASPP``: DeepLab-v3 seg net (also the L-Net)

Every network takes ``params["backbone"]`` and builds its own backbone; ``param_groups(lr)``
gives backbone parameters at ``lr`` and new layers at ``10 * lr``; ``meta`` says what the
weights fit (backbone, output stride, number of classes).
"""
from pipeline.models.affinity_net import AffinityNet
from pipeline.models.backbone import BackboneModel, backbone_normalization, build_backbone
from pipeline.models.boundary_net import BoundaryNet
from pipeline.models.cam_net import CAMNet
from pipeline.models.deeplab import DeepLabASPP

__all__ = ["AffinityNet", "BackboneModel", "BoundaryNet", "CAMNet", "DeepLabASPP",
           "backbone_normalization", "build_backbone"]
