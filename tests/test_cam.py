"""Pure CAM functions (pipeline/cam.py), on hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import cam
from pipeline.errors import PipelineError
from pipeline.metrics import confusion_matrix


def test_grid_sizes():
    assert cam.strided_size((9, 8), 4) == (3, 2)      # ceil(9/4) = 3, ceil(8/4) = 2
    assert cam.strided_size((128, 128), 4) == (32, 32)
    assert cam.scaled_size((10, 6), 0.5) == (5, 3)
    assert cam.scaled_size((10, 6), 1.5) == (15, 9)
    assert cam.scaled_size((1, 1), 0.1) == (1, 1)     # never empty


def test_merge_flipped_undoes_the_mirror():
    plain = torch.tensor([[[1.0, 2.0, 3.0]]])
    mirrored = torch.tensor([[[10.0, 20.0, 30.0]]])   # CAMs of the mirrored image
    merged = cam.merge_flipped(torch.stack([plain, mirrored]))
    assert merged.tolist() == [[[31.0, 22.0, 13.0]]]  # 1+30, 2+20, 3+10


def test_normalize_cams_relu_then_max():
    raw = torch.tensor([[[0.0, 2.0, -1.0, 4.0]], [[0.0, 0.0, 0.0, 0.0]]])
    out = cam.normalize_cams(raw)
    assert out[0, 0].tolist() == pytest.approx([0, 2 / (4 + 1e-5), 0, 4 / (4 + 1e-5)])
    assert out[1].abs().max() == 0                      # all-zero map stays 0 (eps, no NaN)
    as_numpy = cam.normalize_cams(raw.numpy())
    assert as_numpy.dtype == np.float32 and np.allclose(as_numpy, out.numpy())
    assert cam.normalize_cams(torch.zeros(0, 3, 3)).shape == (0, 3, 3)


def _constant_cams_fn(x: torch.Tensor) -> torch.Tensor:
    """Fake network: channel 0 of the input at full resolution, plus a second channel of 1s."""
    return torch.cat([x[:, :1], torch.ones_like(x[:, :1])], dim=1)


def test_multiscale_cams_sums_scales_and_flips():
    image = np.full((8, 12, 3), 255, dtype=np.uint8)
    # mean 0, std 1: normalised pixel = 255/255 = 1 everywhere, at every scale.
    total = cam.multiscale_cams(_constant_cams_fn, image, [1.0, 0.5, 1.5], True, (2, 3), (0, 0, 0), (1, 1, 1))
    assert total.shape == (2, 2, 3)
    assert torch.allclose(total, torch.full((2, 2, 3), 6.0))    # 3 scales x (image + mirror) x 1
    only_second = cam.multiscale_cams(_constant_cams_fn, image, [1.0], False, (4, 6), (0, 0, 0), (1, 1, 1),
                                      channels=[1])
    assert only_second.shape == (1, 4, 6) and torch.allclose(only_second, torch.ones(1, 4, 6))


def test_multiscale_cams_mirror_lands_on_the_same_pixels():
    # A horizontal ramp: the mirrored image's map, flipped back, equals the plain one,
    # so (image + mirror) = 2 x (plain map), not a symmetric blur.
    ramp = np.tile(np.arange(0, 240, 40, dtype=np.uint8)[None, :, None], (2, 1, 3))  # 2 x 6
    total = cam.multiscale_cams(_constant_cams_fn, ramp, [1.0], True, (2, 6), (0, 0, 0), (1, 1, 1), channels=[0])
    expected = 2 * torch.from_numpy(ramp[:, :, 0].astype(np.float32) / 255)
    assert torch.allclose(total[0], expected, atol=1e-6)


def test_upsample_cams_grid_convention():
    grid = np.array([[[0.0, 1.0]]], dtype=np.float16)        # 1 x 1 x 2 grid, stride 4
    full = cam.upsample_cams(grid, (3, 7), 4)                  # covers 4 x 8, cropped to 3 x 7
    assert full.shape == (1, 3, 7) and full.dtype == np.float32
    # bilinear, align_corners=False, 2 -> 8 columns: source x = (x + 0.5) / 4 - 0.5, clamped
    # to [0, 1]: -.375, -.125, .125, .375, .625, .875, 1.125, (1.375 cropped)
    assert full[0, 0].tolist() == pytest.approx([0, 0, 0.125, 0.375, 0.625, 0.875, 1.0])
    assert np.allclose(full[0, 0], full[0, 2])
    assert cam.upsample_cams(np.zeros((0, 2, 2)), (8, 8), 4).shape == (0, 8, 8)


def test_label_channels_and_multi_hot():
    foreground = [1, 2, 3, 4, 5]                               # VOC-like: background 0
    assert cam.label_channels([4, 2, 4], foreground) == ([1, 3], [2, 4])
    assert cam.multi_hot([4, 2], foreground).tolist() == [0, 1, 0, 1, 0]
    assert cam.label_channels([0, 3], [0, 1, 2, 3])[0] == [0, 3]   # no background (CamVid): id = channel
    with pytest.raises(ValueError, match=r"\[0\]"):
        cam.multi_hot([0], foreground)


def test_background_threshold_labels_ties_go_to_background():
    cams = np.array([[[0.1, 0.5, 0.3, 0.7]],
                     [[0.2, 0.4, 0.3, 0.7]]], dtype=np.float32)   # classes 3 and 7
    labels = cam.background_threshold_labels(cams, [3, 7], 0.3, 0)
    # px0: max .2 < .3 -> bg; px1: .5 -> 3; px2: .3 ties the threshold -> bg; px3: 3/7 tie -> first (3)
    assert labels.tolist() == [[0, 3, 0, 3]]
    assert cam.background_threshold_labels(np.zeros((0, 1, 2)), [], 0.1, 0).tolist() == [[0, 0]]


def test_argmax_labels_without_background():
    cams = np.array([[[0.9, 0.1]], [[0.2, 0.3]]], dtype=np.float32)
    assert cam.argmax_labels(cams, [0, 4], void_index=255).tolist() == [[0, 4]]
    assert cam.argmax_labels(np.zeros((0, 1, 2)), [], void_index=255).tolist() == [[255, 255]]


def test_sweep_equals_padded_argmax_for_every_threshold():
    rng = np.random.default_rng(0)
    cams = np.round(rng.random((2, 9, 7)), 2).astype(np.float32)   # rounding makes exact ties
    gt = rng.integers(0, 4, (9, 7)).astype(np.uint8)
    gt[0, 0] = 255
    thresholds = [0.0, 0.05, 0.3, 0.5, 0.99, 1.0]
    sweep = cam.sweep_confusions(cams, [1, 3], gt, thresholds, 4, 0, 255)
    assert sweep.shape == (6, 4, 4)
    for t, threshold in enumerate(thresholds):
        pred = cam.background_threshold_labels(cams, [1, 3], threshold, 0)
        assert (sweep[t] == confusion_matrix(gt, pred, 4, 255)).all()
    assert sweep[-1][:, 1:].sum() == 0                            # threshold 1.0: all background
    empty = cam.sweep_confusions(np.zeros((0, 9, 7), np.float32), [], gt, [0.1], 4, 0, 255)
    assert empty[0][:, 1:].sum() == 0 and empty[0].sum() == (gt != 255).sum()


def test_confident_threshold_labels_hand_case():
    cams = np.array([[[0.5, 0.2, 0.04, 0.3, 0.05]]], dtype=np.float32)   # one class: 5
    out = cam.confident_threshold_labels(cams, [5], conf_fg=0.3, conf_bg=0.05, background_index=0, ignore_index=255)
    # .5 > .3 -> 5; .2 between -> ignore; .04 < .05 -> bg; .3 not above conf_fg -> ignore;
    # .05 ties conf_bg -> both maps say background -> bg
    assert out.dtype == np.uint8 and out.tolist() == [[5, 255, 0, 255, 0]]


def test_confident_threshold_labels_match_irns_combination():
    rng = np.random.default_rng(1)
    cams = rng.random((3, 10, 10)).astype(np.float32) * 0.6
    keys = [2, 5, 9]
    ours = cam.confident_threshold_labels(cams, keys, 0.3, 0.05, 0, 255)
    fg = cam.background_threshold_labels(cams, keys, 0.3, 0)
    bg = cam.background_threshold_labels(cams, keys, 0.05, 0)
    irn = fg.copy()                       # IRN cam_to_ir_label.py, without the CRF
    irn[fg == 0] = 255
    irn[bg + fg == 0] = 0
    assert (ours == irn).all()


def test_confident_no_background():
    cams = np.array([[[0.5, 0.2, 0.29]], [[0.1, 0.3, 0.1]]], dtype=np.float32)
    out = cam.confident_no_background(cams, [1, 2], conf_fg=0.3, ignore_index=255)
    assert out.tolist() == [[1, 2, 255]]                          # >= conf_fg is confident
    assert cam.confident_no_background(np.zeros((0, 1, 2)), [], 0.3, 255).tolist() == [[255, 255]]


def test_agree_or_ignore():
    a = np.array([[0, 1, 2]])
    b = np.array([[0, 2, 2]])
    assert cam.agree_or_ignore(a, b, 255).tolist() == [[0, 255, 2]]


def test_cam_file_round_trip_and_checks(tmp_path):
    cams = np.random.default_rng(0).random((2, 3, 2)).astype(np.float32)
    path = tmp_path / "a.npz"
    cam.write_cam_file(path, cams, [4, 7], (9, 8), 4)
    record = cam.read_cam_file(path, num_classes=21, background_index=0)
    assert record["keys"] == [4, 7] and record["size"] == (9, 8) and record["stride"] == 4
    assert np.allclose(record["cams"], cams, atol=1e-3)               # stored as float16
    with np.load(path) as raw:
        assert raw["cams"].dtype == np.float16
    with pytest.raises(ValueError, match="expected"):
        cam.write_cam_file(tmp_path / "b.npz", cams, [4], (9, 8), 4)
    with pytest.raises(PipelineError, match="not foreground class ids"):
        cam.read_cam_file(path, num_classes=5, background_index=0)   # key 7 >= 5 classes
    cam.write_cam_file(tmp_path / "bg.npz", cams, [0, 1], (9, 8), 4)
    with pytest.raises(PipelineError, match=r"keys \[0\]"):
        cam.read_cam_file(tmp_path / "bg.npz", num_classes=21, background_index=0)
    np.savez(tmp_path / "bad.npz", cams=np.zeros((1, 2, 2)), keys=np.array([1]), size=np.array([9, 8]),
             stride=np.array(4))
    with pytest.raises(PipelineError, match="expected"):
        cam.read_cam_file(tmp_path / "bad.npz")
    with pytest.raises(PipelineError, match="not found"):
        cam.read_cam_file(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(PipelineError, match="junk.npz"):
        cam.read_cam_file(tmp_path / "junk.npz")


def test_check_cam_files_exist_names_the_missing_file(tmp_path):
    cam.write_cam_file(tmp_path / "a.npz", np.zeros((0, 1, 1)), [], (4, 4), 4)
    cam.check_cam_files_exist(tmp_path, ["a"])
    with pytest.raises(PipelineError) as err:
        cam.check_cam_files_exist(tmp_path, ["a", "b", "c"])
    assert err.value.where.endswith("b.npz") and "2 of 3" in err.value.problem
    with pytest.raises(PipelineError, match="CAM directory not found"):
        cam.check_cam_files_exist(tmp_path / "nope", ["a"])


def test_crf_confident_labels_follow_the_image():
    pytest.importorskip("pydensecrf.densecrf")
    # Left half red, right half blue; the CAM of class 3 is strong on the left half and
    # weakly leaks into the right one: the CRF keeps class 3 on the red half only.
    image = np.zeros((16, 16, 3), np.uint8)
    image[:, :8] = (220, 20, 20)
    image[:, 8:] = (20, 20, 220)
    cams = np.zeros((1, 16, 16), np.float32)
    cams[0, :, :8] = 0.9
    cams[0, :, 8:] = 0.02
    out = cam.crf_confident_labels(image, cams, [3], alpha_fg=4, alpha_bg=32, background_index=0,
                                   ignore_index=255)
    assert out.dtype == np.uint8 and out.shape == (16, 16)
    assert (out[:, :6] == 3).all()
    assert (out[:, 10:] == 0).all()


def test_cams_function_runs_channels_last_on_cpu_with_the_same_cams():
    from pipeline.models import CAMNet

    torch.manual_seed(0)
    backbone = {"name": "efficientnet_lite0", "pretrained": False, "output_stride": 16, "frozen_blocks": 2}
    plain = CAMNet(backbone, num_classes=4).eval()
    fast = CAMNet(backbone, num_classes=4).eval()
    fast.load_state_dict(plain.state_dict())
    fn = cam.cams_function(fast, "cpu")
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
                and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    image = np.random.default_rng(0).integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    args = (image, [1.0, 0.5, 1.5], True, (18, 23), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), [0, 2])
    with torch.no_grad():
        reference = cam.normalize_cams(cam.multiscale_cams(plain.cams, *args))
        channels_last = cam.normalize_cams(cam.multiscale_cams(fn, *args))
    assert float((reference - channels_last).abs().max()) <= 1e-5
    assert float(reference.abs().max()) > 0.5  # real maps (max-normalised), not zeros
