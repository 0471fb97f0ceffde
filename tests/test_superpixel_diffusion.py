"""Self-diffusion of the L-Net branch (pipeline/propagation/superpixel_diffusion.py)."""
from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import yaml
from skimage.color import rgb2lab

from pipeline.config import REPO_ROOT, load_params, read_params_file, validate_params
from pipeline.errors import PipelineError
from pipeline.propagation import superpixel_diffusion as sd
from conftest import CAMVID_ROOT


@pytest.fixture(scope="module")
def cfg() -> dict:
    """The VOC-scale self_diffusion section, with fewer superpixels for tiny test images."""
    section = copy.deepcopy(load_params(REPO_ROOT / "params.yaml", "voc")["self_diffusion"])
    section["slic_n_segments"] = 60
    return section


def square_scene(height=60, width=80, top=15, left=25, size=30):
    """A red square on a green field, M = 1 on the square, and a CAM peaked at its centre."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[...] = (40, 160, 60)
    image[top:top + size, left:left + size] = (200, 30, 30)
    truth = np.zeros((height, width), dtype=bool)
    truth[top:top + size, left:left + size] = True
    agnostic = truth.astype(np.float64) * 0.9 + 0.05
    yy, xx = np.mgrid[:height, :width]
    cy, cx = top + size / 2, left + size / 2
    cam = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 4) ** 2))
    return image, agnostic, cam / cam.max(), truth


# --- harmonic solve: hand-computed cases -------------------------------------------------

def path_graph():
    """Path 0 -1- 1 -2- 2 -1- 3 (edge weights over the dashes)."""
    return (np.array([0, 1, 2]), np.array([1, 2, 3])), np.array([1.0, 2.0, 1.0])


def test_harmonic_path_graph_matches_resistor_network():
    # Seeds q0 = 1, q3 = 0. On a path the harmonic function drops linearly in resistance
    # r = 1/w: r01 = 1, r12 = 0.5, r23 = 1, total 2.5, so q1 = 1 - 1/2.5 = 0.6 and
    # q2 = 1 - 1.5/2.5 = 0.4. Check by the mean-value property: q1 = (1*1 + 2*0.4)/3 = 0.6,
    # q2 = (2*0.6 + 1*0)/3 = 0.4.
    edges, weights = path_graph()
    seeds = np.array([True, False, False, True])
    values = np.array([1.0, 0, 0, 0.0])
    q = sd.harmonic_solve(4, edges, weights, seeds, values)
    np.testing.assert_allclose(q, [1.0, 0.6, 0.4, 0.0], atol=1e-12)
    q_iter = sd.iterative_diffusion_reference(4, edges, weights, seeds, values, tol=1e-13)
    np.testing.assert_allclose(q_iter, [1.0, 0.6, 0.4, 0.0], atol=1e-10)


def test_seeds_stay_fixed_at_their_values():
    # Seed values 0.3 at node 0 and 0.9 at node 3: q1 = 0.3 + 0.6 * 0.4 = 0.54,
    # q2 = 0.3 + 0.6 * 0.6 = 0.66 (same linear drop as above, scaled to the gap 0.6).
    edges, weights = path_graph()
    seeds = np.array([True, False, False, True])
    q = sd.harmonic_solve(4, edges, weights, seeds, np.array([0.3, 0, 0, 0.9]))
    np.testing.assert_allclose(q, [0.3, 0.54, 0.66, 0.9], atol=1e-12)


def test_only_one_valued_seeds_give_the_constant():
    # Eq. 2 with only q = 1 seeds: the constant 1 has zero energy, so every node
    # connected to a seed gets 1. This is why background seeds (q = 0) are needed.
    edges, weights = path_graph()
    q = sd.harmonic_solve(4, edges, weights, np.array([False, True, False, False]))
    np.testing.assert_allclose(q, 1.0)


def test_disconnected_component_gets_zero_without_a_singular_solve():
    # 0 -1- 1 -1- 2 holds the seeds; 3 -1- 4 has none; 5 is isolated; 6 hangs on 2 by
    # an edge 1e-20 times the strongest, which counts as a cut.
    edges = (np.array([0, 1, 3, 2]), np.array([1, 2, 4, 6]))
    weights = np.array([1.0, 1.0, 1.0, 1e-20])
    seeds = np.array([True, False, True, False, False, False, False])
    values = np.array([1.0, 0, 0.0, 0, 0, 0, 0])
    q = sd.harmonic_solve(7, edges, weights, seeds, values)
    np.testing.assert_allclose(q, [1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0], atol=1e-12)
    q_iter = sd.iterative_diffusion_reference(7, edges, weights, seeds, values, tol=1e-13)
    np.testing.assert_allclose(q_iter, q, atol=1e-10)


def test_columns_are_independent_problems():
    # Column 0: seed 1 at node 0, 0 at node 3 (the path case). Column 1: seed 1 at node 3
    # only, node 0 floats: constant 1. Column 2: same seeds as column 0, other values
    # (shares the factorisation): 1 - q of column 0.
    edges, weights = path_graph()
    mask = np.array([[1, 0, 1], [0, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=bool)
    values = np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 1, 1]])
    q = sd.harmonic_solve(4, edges, weights, mask, values)
    np.testing.assert_allclose(q[:, 0], [1, 0.6, 0.4, 0], atol=1e-12)
    np.testing.assert_allclose(q[:, 1], [1, 1, 1, 1], atol=1e-12)
    np.testing.assert_allclose(q[:, 2], [0, 0.4, 0.6, 1], atol=1e-12)


def test_sparse_solve_equals_iterative_reference_on_random_graph():
    rng = np.random.default_rng(3)
    n = 80
    points = rng.random((n, 2))
    i, j = np.triu_indices(n, 1)
    close = np.linalg.norm(points[i] - points[j], axis=1) < 0.2
    edges = (i[close], j[close])
    weights = rng.uniform(0.05, 1.0, close.sum())
    mask = rng.random((n, 3)) < 0.08
    values = (rng.random((n, 3)) < 0.5).astype(float)
    q = sd.harmonic_solve(n, edges, weights, mask, values)
    q_iter = sd.iterative_diffusion_reference(n, edges, weights, mask, values, tol=1e-12)
    assert np.abs(q - q_iter).max() < 1e-4
    assert np.all(q[mask] == values[mask])
    assert q.min() >= -1e-12 and q.max() <= 1 + 1e-12  # maximum principle


def test_extreme_weights_stay_finite():
    # Weights spanning 300 orders of magnitude (a tiny sigma): cut edges, no scipy error.
    edges = (np.array([0, 1, 2]), np.array([1, 2, 3]))
    q = sd.harmonic_solve(4, edges, np.array([1.0, 1e-300, 1.0]), np.array([True, False, False, False]))
    np.testing.assert_allclose(q, [1, 1, 0, 0])


# --- graph and features ----------------------------------------------------------------

def test_superpixel_graph_uses_4_neighbour_adjacency():
    # 0 and 2 touch only diagonally, so they are not neighbours.
    labels = np.array([[0, 1], [1, 2]])
    i, j = sd.superpixel_graph(labels)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1), (1, 2)]
    labels = np.array([[0, 0, 1], [0, 2, 1], [3, 3, 3]])
    i, j = sd.superpixel_graph(labels)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_node_features_are_scaled_lab_and_mean_m():
    # Left half white (L=100, a=b=0) -> [1, 0, 0, .]; right half black -> [0, 0, 0, .].
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[:, :3] = 255
    labels = np.zeros((4, 6), dtype=np.int32)
    labels[:, 3:] = 1
    agnostic = np.zeros((4, 6))
    agnostic[:, :3] = 0.5
    agnostic[0, 3:] = 1.0  # 3 of the 12 right pixels -> mean 0.25
    features = sd.node_features(image, labels, agnostic)
    np.testing.assert_allclose(features, [[1, 0, 0, 0.5], [0, 0, 0, 0.25]], atol=1e-4)


def test_rgb_to_lab_matches_skimage():
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_allclose(sd.rgb_to_lab(image), rgb2lab(image), atol=2e-3)


def test_edge_weight_formula():
    # ||F_0 - F_1|| = 1 (3-4-5 triangle / 5), sigma = 1: exp(-1 / 2).
    features = np.array([[0, 0, 0, 0], [0.6, 0.8, 0, 0], [0.6, 0.8, 0, 0]])
    w = sd.edge_weights(features, (np.array([0, 1]), np.array([1, 2])), sigma=1.0)
    np.testing.assert_allclose(w, [np.exp(-0.5), 1.0])


def test_class_seeds_need_the_overlap_fraction():
    # Superpixel 0 (10 px) has 6 px with CAM >= 0.5, superpixel 1 (10 px) has 4 px.
    labels = np.repeat([[0] * 10 + [1] * 10], 1, axis=0)
    cam = np.zeros((1, 20))
    cam[0, :6] = 0.7
    cam[0, 10:14] = 0.9
    seeds, cam_means = sd.class_seed_masks(labels, {5: cam}, threshold=0.5, min_overlap=0.5)
    assert seeds[:, 0].tolist() == [True, False]
    np.testing.assert_allclose(cam_means[:, 0], [0.42, 0.36])


# --- labelling rule ----------------------------------------------------------------------

def test_background_rule_and_ties():
    q = np.array([[0.9, 0.2], [0.3, 0.4], [0.0, 0.0], [1.0, 1.0], [0.55, 0.1]])
    cam_means = np.array([[0.5, 0.1], [0.1, 0.2], [0, 0], [0.3, 0.6], [0.2, 0.0]])
    out = sd.label_superpixels(q, cam_means, [7, 12], 0.5, background_index=0)
    # max q 0.9 -> class 7; 0.4 < 0.5 -> background; no evidence -> background;
    # tie at 1 -> higher mean CAM (class 12); 0.55 >= 0.5 -> class 7.
    assert out.tolist() == [7, 0, 0, 12, 7]
    no_background = sd.label_superpixels(q, cam_means, [7, 12], 0.5, background_index=None)
    assert no_background.tolist() == [7, 255, 255, 12, 7]
    # Threshold 0 keeps everything with any evidence; q = 0 is still background.
    assert sd.label_superpixels(q, cam_means, [7, 12], 0.0, 0).tolist() == [7, 12, 0, 12, 7]
    assert sd.label_superpixels(np.zeros((3, 0)), np.zeros((3, 0)), [], 0.5, None).tolist() == [255] * 3


# --- diffuse_image -----------------------------------------------------------------------

def test_diffuse_image_recovers_the_object(cfg):
    image, agnostic, cam, truth = square_scene()
    label, info = sd.diffuse_image(image, agnostic, {3: cam}, cfg, background_index=0, source="sq")
    assert label.dtype == np.uint8 and label.shape == truth.shape
    assert set(np.unique(label).tolist()) <= {0, 3}
    iou = np.count_nonzero((label == 3) & truth) / np.count_nonzero((label == 3) | truth)
    assert iou > 0.9, iou
    assert info["absent_classes"] == [] and info["seed_superpixels"]["3"] > 0
    # Without a background class the unclaimed superpixels are ignore.
    label_camvid, _ = sd.diffuse_image(image, agnostic, {3: cam}, cfg, background_index=None)
    assert set(np.unique(label_camvid).tolist()) <= {3, 255}
    np.testing.assert_array_equal(label_camvid == 3, label == 3)
    # The per-class iterative solver gives the same pseudo label.
    label_iter, _ = sd.diffuse_image(image, agnostic, {3: cam}, cfg, background_index=0, solver="iterative")
    np.testing.assert_array_equal(label_iter, label)


def test_diffusion_spreads_beyond_the_cam_region(cfg):
    # The CAM covers only the square's centre; the diffusion fills the square.
    image, agnostic, cam, truth = square_scene()
    label, _ = sd.diffuse_image(image, agnostic, {3: cam}, cfg, background_index=0)
    cam_region = cam >= cfg["cam_region_threshold"]
    assert np.count_nonzero(label == 3) > 1.5 * np.count_nonzero(cam_region)


def test_no_weak_class_gives_all_background_or_ignore(cfg):
    image, agnostic, _, _ = square_scene()
    label, info = sd.diffuse_image(image, agnostic, {}, cfg, background_index=0)
    assert np.all(label == 0) and info["classes"] == []
    label, _ = sd.diffuse_image(image, agnostic, {}, cfg, background_index=None, ignore_index=255)
    assert np.all(label == 255)


def test_empty_cam_region_makes_the_class_absent(cfg, caplog):
    image, agnostic, cam, truth = square_scene()
    with caplog.at_level(logging.INFO, logger="pipeline.propagation.superpixel_diffusion"):
        label, info = sd.diffuse_image(image, agnostic, {3: cam, 9: cam * 0.1}, cfg, background_index=0,
                                       source="img_007")
    assert info["absent_classes"] == [9] and info["seed_superpixels"]["9"] == 0
    assert 9 not in np.unique(label) and np.count_nonzero(label == 3) > 0
    assert any("img_007" in r.getMessage() and "class 9" in r.getMessage() for r in caplog.records)


def test_slic_params_come_from_params_yaml(monkeypatch):
    section = load_params(REPO_ROOT / "params.yaml", "voc")["self_diffusion"]
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert section["slic_n_segments"] == raw["self_diffusion"]["slic_n_segments"]
    calls = []
    real_slic = sd.segmentation.slic

    def spy(image, **kwargs):
        calls.append(kwargs)
        return real_slic(image, **kwargs)

    monkeypatch.setattr(sd.segmentation, "slic", spy)
    image, agnostic, cam, _ = square_scene()
    _, info = sd.diffuse_image(image, agnostic, {3: cam}, section, background_index=0)
    assert len(calls) == 1
    assert calls[0]["n_segments"] == section["slic_n_segments"]
    assert calls[0]["compactness"] == section["slic_compactness"]
    assert calls[0]["sigma"] == section["slic_sigma"]
    assert calls[0]["max_num_iter"] == section["slic_max_iter"]
    # The embedded override changes the superpixel count for its 128x128 images.
    embedded = load_params(REPO_ROOT / "params.yaml", "embedded")["self_diffusion"]
    assert embedded["slic_n_segments"] == raw["overrides"]["embedded"]["self_diffusion"]["slic_n_segments"]


@pytest.mark.skipif(not (CAMVID_ROOT / "JPEGImages").is_dir(), reason="shared CamVid data not present")
def test_real_photo_superpixel_count_follows_params():
    from PIL import Image

    section = load_params(REPO_ROOT / "params.yaml", "voc")["self_diffusion"]
    path = sorted((CAMVID_ROOT / "JPEGImages").glob("*.jpg"))[0]
    image = np.asarray(Image.open(path).convert("RGB").resize((250, 188)))
    labels = sd.slic_superpixels(image, 150, section["slic_compactness"], section["slic_sigma"])
    n = int(labels.max()) + 1
    assert 75 <= n <= 225 and np.array_equal(np.unique(labels), np.arange(n))


# --- bad input -----------------------------------------------------------------------------

def test_wrong_size_lnet_map_names_the_source(cfg):
    image, _, cam, _ = square_scene()
    with pytest.raises(PipelineError) as err:
        sd.diffuse_image(image, np.zeros((30, 40)), {3: cam}, cfg, background_index=0,
                         source="results/lnet/img_1.npz")
    assert err.value.where == "results/lnet/img_1.npz"
    assert "L-Net map is 30x40 but the image is 60x80" in err.value.problem


@pytest.mark.parametrize("which", ["agnostic", "cam"])
def test_nan_in_maps_is_an_error(cfg, which):
    image, agnostic, cam, _ = square_scene()
    if which == "agnostic":
        agnostic = agnostic.copy()
        agnostic[3, 4] = np.nan
    else:
        cam = cam.copy()
        cam[5, 5] = np.inf
    with pytest.raises(PipelineError, match="NaN/inf") as err:
        sd.diffuse_image(image, agnostic, {3: cam}, cfg, background_index=0, source="m.npz")
    assert err.value.where == "m.npz"
    assert ("L-Net map" if which == "agnostic" else "CAM of class 3") in err.value.problem


def test_bad_cam_key_size_or_range_and_image(cfg):
    image, agnostic, cam, _ = square_scene()
    with pytest.raises(PipelineError, match="not a foreground class index"):
        sd.diffuse_image(image, agnostic, {0: cam}, cfg, background_index=0)
    with pytest.raises(PipelineError, match="CAM of class 3 is 10x10"):
        sd.diffuse_image(image, agnostic, {3: np.zeros((10, 10))}, cfg, background_index=0)
    with pytest.raises(PipelineError, match=r"expected \[0, 1\]"):
        sd.diffuse_image(image, agnostic, {3: cam * 5}, cfg, background_index=0)
    with pytest.raises(PipelineError, match="HxWx3 uint8"):
        sd.diffuse_image(image[..., 0], agnostic, {3: cam}, cfg, background_index=0)


def test_bad_params_name_the_key(cfg):
    image, agnostic, cam, _ = square_scene()
    broken = {k: v for k, v in cfg.items() if k != "sigma"}
    with pytest.raises(PipelineError, match="missing key self_diffusion.sigma"):
        sd.diffuse_image(image, agnostic, {3: cam}, broken, background_index=0)
    with pytest.raises(PipelineError, match="self_diffusion.sigma = 0"):
        sd.diffuse_image(image, agnostic, {3: cam}, dict(cfg, sigma=0), background_index=0)


def test_schema_rejects_out_of_range_values():
    raw = read_params_file(REPO_ROOT / "params.yaml")
    raw["self_diffusion"]["background_threshold"] = 1.5
    with pytest.raises(PipelineError, match="self_diffusion.background_threshold"):
        validate_params(raw)
    raw = read_params_file(REPO_ROOT / "params.yaml")
    raw["self_diffusion"]["slic_segments"] = 600
    with pytest.raises(PipelineError, match="self_diffusion.slic_segments: unknown key"):
        validate_params(raw)
