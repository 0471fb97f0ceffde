"""Backbones: pretrained weights really load (keys, shapes, a real ImageNet prediction),
output strides, freezing, ResNet-50 from a local file, one-line errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline.torchvision_shim  # noqa: F401
from pipeline.config import REPO_ROOT
from pipeline.errors import PipelineError
from pipeline.models.backbone import (TIMM_EFFICIENTNET_ARCH, _load_state_dict_file, backbone_normalization,
                                      build_backbone, efficientnet_lite0_classifier, efficientnet_lite0_weights_file,
                                      map_state_dict_by_position)
from conftest import CAMVID_ROOT
# Car crop from CamVid 0001TP_009240 (the largest car region of the set, found via its
# mask, class 8): rows 156..354, columns 196..480 of the 480 x 360 image.
CAR_IMAGE, CAR_BOX = "0001TP_009240", (196, 156, 480, 354)
# ImageNet classes that are cars or car parts.
CAR_CLASSES = {407, 436, 468, 479, 511, 569, 581, 609, 627, 656, 661, 675, 705, 717, 734, 751, 817, 864, 867}


def _car_crop_tensor(mean, std) -> torch.Tensor:
    image = Image.open(CAMVID_ROOT / "JPEGImages" / f"{CAR_IMAGE}.jpg").convert("RGB")
    crop = image.crop(CAR_BOX).resize((224, 224), Image.BICUBIC)
    scaled = np.asarray(crop, dtype=np.float32) / 255.0
    normalized = (scaled - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return torch.from_numpy(normalized.transpose(2, 0, 1).copy())[None]


def test_packaged_weights_match_all_296_tensors_by_position_and_shape():
    import timm

    source = _load_state_dict_file(efficientnet_lite0_weights_file())
    target = [(k, v.shape) for k, v in timm.create_model(TIMM_EFFICIENTNET_ARCH).state_dict().items()]
    mapped = map_state_dict_by_position(source, target, "weights")
    assert len(source) == len(target) == len(mapped) == 296
    assert all(mapped[k].shape == shape for k, shape in target)
    model = efficientnet_lite0_classifier(pretrained=True)
    for (key, tensor), original in zip(model.state_dict().items(), source.values()):
        assert torch.equal(tensor, original), key


@pytest.mark.skipif(not (CAMVID_ROOT / "JPEGImages" / f"{CAR_IMAGE}.jpg").exists(), reason="CamVid not present")
def test_pretrained_classifier_recognises_a_real_car_and_random_one_does_not():
    mean, std = backbone_normalization({"name": "efficientnet_lite0"})
    x = _car_crop_tensor(mean, std)
    pretrained = efficientnet_lite0_classifier(pretrained=True).eval()
    with torch.no_grad():
        top5 = pretrained(x).softmax(1)[0].topk(5).indices.tolist()
    assert set(top5) & CAR_CLASSES, top5
    torch.manual_seed(0)
    random_model = efficientnet_lite0_classifier(pretrained=False).eval()
    with torch.no_grad():
        random_top5 = random_model(x).softmax(1)[0].topk(5).indices.tolist()
    assert not set(random_top5) & CAR_CLASSES, random_top5


def test_feature_backbone_carries_the_pretrained_weights():
    backbone = build_backbone({"name": "efficientnet_lite0", "output_stride": 16})
    full = efficientnet_lite0_classifier(pretrained=True).state_dict()
    own = backbone.body.state_dict()
    assert len(own) == 288  # the classifier's 296 minus conv_head, bn2 (6) and classifier (2)
    assert all(torch.equal(own[k], full[k]) for k in own)


@pytest.mark.parametrize("output_stride, strides", [(8, [2, 4, 8, 8, 8]), (16, [2, 4, 8, 16, 16]),
                                                    (32, [2, 4, 8, 16, 32])])
def test_efficientnet_levels_channels_and_strides(output_stride, strides):
    backbone = build_backbone({"output_stride": output_stride, "pretrained": False}).eval()
    assert backbone.channels == [16, 24, 40, 112, 320]
    assert backbone.strides == strides
    with torch.no_grad():
        feats = backbone(torch.zeros(1, 3, 100, 68))
    for f, c, s in zip(feats, backbone.channels, strides):
        assert f.shape == (1, c, -(-100 // s), -(-68 // s))


def test_normalization_per_backbone():
    assert backbone_normalization({"name": "efficientnet_lite0"}) == ((0.5,) * 3, (0.5,) * 3)
    assert backbone_normalization({"name": "resnet50"}) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_freeze_bn_and_frozen_blocks():
    backbone = build_backbone({"pretrained": False, "freeze_bn": True, "frozen_blocks": 2, "output_stride": 16})
    backbone.train()
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    assert not any(p.requires_grad for p in backbone.body.blocks[1].parameters())
    assert not backbone.body.conv_stem.weight.requires_grad
    assert any(p.requires_grad for p in backbone.body.blocks[2].parameters())
    # Running statistics stay fixed in training mode.
    before = bns[-1].running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64))
    assert torch.equal(bns[-1].running_mean, before)


def test_unfrozen_batchnorm_trains_when_freeze_bn_is_false():
    backbone = build_backbone({"pretrained": False, "freeze_bn": False, "frozen_blocks": 1, "output_stride": 16})
    backbone.train()
    assert not backbone.body.blocks[0][0].bn1.training  # inside a frozen block
    assert backbone.body.blocks[3][0].bn1.training and backbone.body.blocks[3][0].bn1.weight.requires_grad


def test_resnet50_loads_a_local_state_dict_and_dilates(tmp_path: Path):
    from pipeline.torchvision_shim import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone({"name": "resnet50", "weights": str(path), "output_stride": 16})
    assert torch.equal(backbone.layers[3][2].conv3.weight, reference.layer4[2].conv3.weight)
    assert torch.equal(backbone.stem[1].running_var, reference.bn1.running_var)
    assert backbone.channels == [64, 256, 512, 1024, 2048] and backbone.strides == [2, 4, 8, 16, 16]
    with torch.no_grad():
        feats = backbone.eval()(torch.zeros(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 4]


def test_resnet50_bad_weights_file_is_one_line_error(tmp_path: Path):
    bad = tmp_path / "not_resnet.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(PipelineError) as err:
        build_backbone({"name": "resnet50", "weights": str(bad)})
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(PipelineError, match="garbage.pth"):
        build_backbone({"name": "resnet50", "weights": str(garbage)})


@pytest.mark.parametrize("cfg, key", [({"name": "vgg16"}, "backbone.name"), ({"output_stride": 4}, "backbone.output_stride"),
                                      ({"frozen_blocks": 8}, "backbone.frozen_blocks"),
                                      ({"name": "resnet50", "frozen_blocks": 5}, "backbone.frozen_blocks"),
                                      ({"colour": 1}, "backbone.colour")])
def test_bad_backbone_params_name_the_key(cfg, key):
    with pytest.raises(PipelineError, match=key.replace(".", r"\.")):
        build_backbone({"pretrained": False, **cfg})


def test_params_yaml_backbone_sections_build():
    from pipeline.config import load_params

    params = load_params(REPO_ROOT / "params.yaml", "embedded")
    backbone = build_backbone({**params["backbone"], "pretrained": False})
    assert backbone.output_stride == params["backbone"]["output_stride"]
    frozen = backbone.body.blocks[:params["backbone"]["frozen_blocks"]]
    assert not any(p.requires_grad for p in frozen.parameters())
    for dataset in ("voc", "camvid"):
        build_backbone({**load_params(REPO_ROOT / "params.yaml", dataset)["backbone"], "pretrained": False})
