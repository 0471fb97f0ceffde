"""Transition matrices, PSA's random walk and RETAB's two-stage walk (sparse and stencil vs dense)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import load_params
from pipeline.errors import PipelineError
from pipeline.propagation.affinity import num_pairs, pairwise_affinity
from pipeline.propagation.random_walk import (
    affinity_matrix,
    background_channel,
    dense_affinity_matrix,
    psa_random_walk,
    random_walk_dense,
    random_walk_sparse,
    random_walk_stencil,
    stencil_offsets,
    stencil_transition,
    transition_from_affinity,
    two_stage_edge_masks,
    two_stage_random_walk,
    validate_propagation_params,
)

REPO = Path(__file__).resolve().parent.parent


def _random_case(h=12, w=12, channels=4, radius=5, seed=0):
    """Structured affinities (two regions) and CAMs in [0, 1] on an h x w grid."""
    gen = torch.Generator().manual_seed(seed)
    feats = torch.rand(1, 8, h, w, generator=gen) * 0.3
    feats[:, :, :, w // 2:] += 1.0  # two regions: low affinity across the middle
    aff = pairwise_affinity(feats, radius)[0].numpy().astype(np.float64)
    cams = np.random.default_rng(seed).random((channels, h, w))
    return aff, cams


# ---------------------------------------------------------------- hand-worked 1 x 3 grid
#   pairs (0,1) aff 0.5 and (1,2) aff 0.25, beta 1, self-loops:
#   A = [[1, .5, 0], [.5, 1, .25], [0, .25, 1]], column sums 1.5, 1.75, 1.25
#   T = [[2/3, 2/7, 0], [1/3, 4/7, 1/5], [0, 1/7, 4/5]]
T_1X3 = np.array([[2 / 3, 2 / 7, 0], [1 / 3, 4 / 7, 1 / 5], [0, 1 / 7, 4 / 5]])
AFF_1X3 = np.array([0.5, 0.25])


def test_transition_1x3_by_hand():
    t = transition_from_affinity(AFF_1X3, 1, 3, 2, beta=1.0)
    np.testing.assert_allclose(t.toarray(), T_1X3, atol=1e-12)
    # beta squares the affinities: A01 = .25, A12 = .0625.
    a = affinity_matrix(AFF_1X3, 1, 3, 2, beta=2.0).toarray()
    np.testing.assert_allclose(a, [[1, .25, 0], [.25, 1, .0625], [0, .0625, 1]])
    np.testing.assert_allclose(dense_affinity_matrix(AFF_1X3, 1, 3, 2, beta=2.0), a)


@pytest.mark.parametrize("walk", ["sparse", "dense"])
def test_walk_1x3_by_hand(walk):
    cams = np.array([[1.0, 0.0, 0.0]])
    a = dense_affinity_matrix(AFF_1X3, 1, 3, 2, beta=1.0)
    t = transition_from_affinity(AFF_1X3, 1, 3, 2, beta=1.0)

    def run(logt):
        return random_walk_sparse(cams, t, logt) if walk == "sparse" else random_walk_dense(cams, a, logt)

    # logt 0: one step = row 0 of T.
    np.testing.assert_allclose(run(0), [[2 / 3, 2 / 7, 0]], atol=1e-12)
    # logt 1: two steps, x2_j = sum_i x1_i T_ij = (34/63, 52/147, 2/35).
    np.testing.assert_allclose(run(1), [[34 / 63, 52 / 147, 2 / 35]], atol=1e-12)


def test_transition_column_sums_symmetry_and_nonnegativity():
    aff, _ = _random_case()
    a = affinity_matrix(aff, 12, 12, 5, beta=8.0)
    assert abs(a - a.T).max() == 0  # symmetric without an edge mask
    np.testing.assert_array_equal(a.diagonal(), np.ones(144))
    t = transition_from_affinity(aff, 12, 12, 5, beta=8.0)
    np.testing.assert_allclose(np.asarray(t.sum(axis=0)).ravel(), np.ones(144), atol=1e-12)
    assert t.min() >= 0
    # Each pixel has at most the full disc of neighbours plus itself.
    assert t.nnz == 2 * num_pairs(12, 12, 5) + 144


def test_constant_cam_stays_constant():
    # Column-stochastic T: ones @ T = column sums = ones, for any number of steps.
    aff, _ = _random_case()
    t = transition_from_affinity(aff, 12, 12, 5, beta=8.0)
    out = random_walk_sparse(np.full((1, 12, 12), 0.3), t, 6)
    np.testing.assert_allclose(out, 0.3, atol=1e-12)


@pytest.mark.parametrize("logt", [4, 6, 8])
def test_sparse_equals_dense_random_12x12(logt):
    aff, cams = _random_case(seed=logt)
    a = dense_affinity_matrix(aff, 12, 12, 5, beta=8.0)
    dense = random_walk_dense(cams, a, logt)
    t = transition_from_affinity(aff, 12, 12, 5, beta=8.0)
    for backend in ("torch", "scipy"):
        sparse = random_walk_sparse(cams, t, logt, backend=backend)
        assert sparse.shape == cams.shape and sparse.dtype == np.float64
        np.testing.assert_allclose(sparse, dense, atol=1e-10)
    # float32 (PSA's precision) stays within 1e-4 of the float64 reference.
    sparse32 = random_walk_sparse(cams.astype(np.float32), t, logt)
    assert sparse32.dtype == np.float32
    assert np.abs(sparse32 - dense).max() <= 1e-4


def test_walk_accepts_torch_inputs_and_flat_cams():
    aff, cams = _random_case()
    t = transition_from_affinity(torch.from_numpy(aff)[None], 12, 12, 5, beta=8.0)
    out = random_walk_sparse(torch.from_numpy(cams).reshape(4, -1), t, 4)
    assert isinstance(out, np.ndarray) and out.shape == (4, 144)
    np.testing.assert_allclose(out.reshape(4, 12, 12), random_walk_sparse(cams, t, 4))


def test_early_stop_tolerance():
    aff, cams = _random_case()
    t = transition_from_affinity(aff, 12, 12, 5, beta=2.0)
    full = random_walk_sparse(cams, t, 12)
    early = random_walk_sparse(cams, t, 12, tol=1e-10)
    assert np.abs(full - early).max() < 1e-6


def test_psa_random_walk_adds_background_and_matches_manual():
    aff, cams = _random_case(channels=3)
    fg = cams / cams.max(axis=(1, 2), keepdims=True)
    out = psa_random_walk(fg, aff, beta=8, logt=5, alpha=16, radius=5)
    assert out.shape == (4, 12, 12)
    manual = np.concatenate([background_channel(fg, 16)[None], fg])
    t = transition_from_affinity(aff, 12, 12, 5, beta=8)
    np.testing.assert_allclose(out, random_walk_sparse(manual, t, 5), atol=1e-12)
    dense = psa_random_walk(fg, aff, beta=8, logt=5, alpha=16, radius=5, method="dense")
    np.testing.assert_allclose(out, dense, atol=1e-10)
    # No background class (CamVid): the channels are walked as given.
    plain = psa_random_walk(fg, aff, beta=8, logt=5, alpha=None, radius=5, with_background=False)
    assert plain.shape == (3, 12, 12)
    np.testing.assert_allclose(plain, out[1:], atol=1e-12)


def test_background_channel_by_hand():
    fg = np.array([[[0.5, 1.0, 1.2]], [[0.2, 0.0, 0.0]]])
    np.testing.assert_allclose(background_channel(fg, 2), [[0.25, 0.0, 0.0]])
    np.testing.assert_allclose(background_channel(np.zeros((0, 2, 2)), 16), np.ones((2, 2)))


# ---------------------------------------------------------------- RETAB two-stage walk

def test_two_stage_edges_2x2_by_hand():
    # Grid 0 1 / 2 3, pixel 3 is boundary. Pairs: (0,1) (2,3) (1,2) (0,2) (1,3) (0,3).
    boundary = np.array([[False, False], [False, True]])
    stage1, stage2 = two_stage_edge_masks(boundary, 2)
    # Stage 1: both directions among the non-boundary pixels 0, 1, 2 only.
    np.testing.assert_array_equal(stage1, [[1, 0, 1, 1, 0, 0], [1, 0, 1, 1, 0, 0]])
    # Stage 2: only edges into pixel 3 (all pairs with pixel 3 are (x, 3): row 0).
    np.testing.assert_array_equal(stage2, [[0, 1, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]])
    a2 = affinity_matrix(np.ones(6), 2, 2, 2, beta=1, edge_mask=stage2).toarray()
    np.testing.assert_array_equal(a2, [[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1]])


@pytest.mark.parametrize("method", ["sparse", "dense", "stencil"])
def test_two_stage_walk_2x2_by_hand(method):
    boundary = np.array([[False, False], [False, True]])
    cams = np.array([[[1.0, 0.0], [0.0, 5.0]]])
    final, stage1 = two_stage_random_walk(cams, np.ones(6), boundary, beta=1, logt=0, radius=2,
                                          method=method, return_intermediate=True)
    # Stage 1 (one step): pixels 0-2 average each other (1/3 each); pixel 3 only has its self-loop.
    np.testing.assert_allclose(stage1, [[[1 / 3, 1 / 3], [1 / 3, 5.0]]], atol=1e-12)
    # Stage 2: pixel 3's column holds pixels 0-3 with weight 1/4 each -> (3 * 1/3 + 5) / 4.
    np.testing.assert_allclose(final, [[[1 / 3, 1 / 3], [1 / 3, 1.5]]], atol=1e-12)


def _boundary_band(h=12, w=12):
    mask = np.zeros((h, w), dtype=bool)
    mask[:, w // 2 - 1:w // 2 + 1] = True  # a vertical boundary band between the regions
    mask[2, 2] = True                       # and an isolated boundary pixel
    return mask


@pytest.mark.parametrize("method", ["sparse", "dense", "stencil"])
def test_two_stage_freezing_properties(method):
    aff, cams = _random_case(channels=4)
    boundary = _boundary_band()
    final, stage1 = two_stage_random_walk(cams, aff, boundary, beta=8, logt=6, radius=5,
                                          method=method, return_intermediate=True)
    # Stage 1 leaves boundary pixels exactly as they were ...
    np.testing.assert_array_equal(stage1[:, boundary], cams[:, boundary])
    # ... and does change the interior.
    assert np.abs(stage1[:, ~boundary] - cams[:, ~boundary]).max() > 1e-3
    # Stage 2 freezes the non-boundary (confident) pixels exactly ...
    np.testing.assert_array_equal(final[:, ~boundary], stage1[:, ~boundary])
    # ... and fills the boundary pixels from their neighbours.
    assert np.abs(final[:, boundary] - stage1[:, boundary]).max() > 1e-3


def test_two_stage_sparse_equals_dense():
    aff, cams = _random_case(channels=4, seed=3)
    boundary = _boundary_band()
    for logt in (4, 8):
        sparse = two_stage_random_walk(cams, aff, boundary, beta=8, logt=logt, radius=5)
        dense = two_stage_random_walk(cams, aff, boundary, beta=8, logt=logt, radius=5, method="dense")
        np.testing.assert_allclose(sparse, dense, atol=1e-10)
        sparse32 = two_stage_random_walk(cams.astype(np.float32), aff, boundary, beta=8, logt=logt, radius=5)
        assert np.abs(sparse32 - dense).max() <= 1e-4


# ---------------------------------------------------------------- stencil form

def test_stencil_planes_1x3_by_hand():
    # plane k holds T[target + offset k, target] (see T_1X3); offsets leaving the row hold 0
    offsets, planes = stencil_transition(AFF_1X3, 1, 3, 2, beta=1.0)
    assert offsets[0] == (0, 0) and planes.shape == (len(offsets), 1, 3)
    by_offset = {o: plane[0] for o, plane in zip(offsets, planes)}
    np.testing.assert_allclose(by_offset[(0, 0)], [2 / 3, 4 / 7, 4 / 5], atol=1e-12)
    np.testing.assert_allclose(by_offset[(0, 1)], [1 / 3, 1 / 7, 0], atol=1e-12)
    np.testing.assert_allclose(by_offset[(0, -1)], [0, 2 / 7, 1 / 5], atol=1e-12)
    assert all(not plane.any() for o, plane in by_offset.items() if o[0] != 0)
    cams = np.array([[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(random_walk_stencil(cams, offsets, planes, 1), cams @ T_1X3 @ T_1X3, atol=1e-12)


def test_stencil_offsets_are_the_full_disc():
    for radius in (1, 2, 5):
        offsets = stencil_offsets(radius)
        disc = {(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
                if dy * dy + dx * dx < radius * radius}
        assert offsets[0] == (0, 0) and len(offsets) == len(set(offsets)) and set(offsets) == disc


def test_stencil_planes_equal_the_csr_transition():
    h, w, radius = 7, 9, 5
    aff, _ = _random_case(h, w, radius=radius, seed=2)
    t = transition_from_affinity(aff, h, w, radius, beta=8.0).toarray()
    offsets, planes = stencil_transition(aff, h, w, radius, beta=8.0)
    rebuilt = np.zeros_like(t)
    for (dy, dx), plane in zip(offsets, planes):
        for y in range(h):
            for x in range(w):
                sy, sx = y + dy, x + dx
                if 0 <= sy < h and 0 <= sx < w:
                    rebuilt[sy * w + sx, y * w + x] = plane[y, x]
                else:
                    assert plane[y, x] == 0  # no weight from outside the image
    np.testing.assert_allclose(rebuilt, t, atol=1e-15)


@pytest.mark.parametrize("h,w,radius", [(12, 12, 5), (7, 19, 5), (19, 7, 5), (3, 4, 5), (1, 9, 3), (9, 1, 2),
                                        (16, 11, 3)])
@pytest.mark.parametrize("logt", [0, 3, 6])
def test_stencil_equals_dense_and_csr_on_random_cases(h, w, radius, logt):
    aff, cams = _random_case(h, w, channels=3, radius=radius, seed=h * 31 + w)
    dense = psa_random_walk(cams[1:], aff, beta=8, logt=logt, alpha=16, radius=radius, method="dense")
    stencil = psa_random_walk(cams[1:], aff, beta=8, logt=logt, alpha=16, radius=radius, method="stencil")
    assert stencil.shape == dense.shape and stencil.dtype == np.float64
    np.testing.assert_allclose(stencil, dense, atol=1e-10)
    sparse32 = psa_random_walk(cams[1:].astype(np.float32), aff, beta=8, logt=logt, alpha=16, radius=radius)
    stencil32 = psa_random_walk(cams[1:].astype(np.float32), aff, beta=8, logt=logt, alpha=16, radius=radius,
                                method="stencil")
    assert stencil32.dtype == np.float32
    assert np.abs(stencil32 - sparse32).max() <= 1e-5
    assert np.abs(stencil32 - dense).max() <= 1e-5
    boundary = np.random.default_rng(h + w).random((h, w)) > 0.7
    two_dense = two_stage_random_walk(cams, aff, boundary, beta=8, logt=logt, radius=radius, method="dense")
    two_stencil = two_stage_random_walk(cams, aff, boundary, beta=8, logt=logt, radius=radius, method="stencil")
    np.testing.assert_allclose(two_stencil, two_dense, atol=1e-10)
    two_sparse32 = two_stage_random_walk(cams.astype(np.float32), aff, boundary, beta=8, logt=logt, radius=radius)
    two_stencil32 = two_stage_random_walk(cams.astype(np.float32), aff, boundary, beta=8, logt=logt, radius=radius,
                                          method="stencil")
    assert np.abs(two_stencil32 - two_sparse32).max() <= 1e-5


def test_stencil_carries_mass_from_edge_and_corner_pixels():
    # all mass on the four corners and one edge pixel: the padding must neither leak nor inject
    h, w, radius = 10, 13, 5
    aff, _ = _random_case(h, w, radius=radius, seed=5)
    cams = np.zeros((2, h, w))
    cams[0, 0, 0] = cams[0, 0, w - 1] = cams[0, h - 1, 0] = cams[0, h - 1, w - 1] = 1.0
    cams[1, h // 2, 0] = 1.0
    t = transition_from_affinity(aff, h, w, radius, beta=8.0)
    offsets, planes = stencil_transition(aff, h, w, radius, beta=8.0)
    for logt in (1, 4, 8):
        stencil = random_walk_stencil(cams, offsets, planes, logt)
        np.testing.assert_allclose(stencil, random_walk_sparse(cams, t, logt), atol=1e-12)


def test_stencil_early_stop_and_torch_inputs():
    aff, cams = _random_case(seed=4)
    offsets, planes = stencil_transition(aff, 12, 12, 5, beta=8.0)
    full = random_walk_stencil(torch.from_numpy(cams).reshape(4, -1), offsets, planes, 12)
    assert full.shape == (4, 144)
    early = random_walk_stencil(cams, offsets, planes, 12, tol=1e-10)
    np.testing.assert_allclose(early.reshape(4, -1), full, atol=1e-8)
    with pytest.raises(ValueError):
        random_walk_stencil(cams[:, :11], offsets, planes, 2)


def test_no_boundary_two_stage_is_single_stage():
    aff, cams = _random_case()
    none = np.zeros((12, 12), dtype=bool)
    two = two_stage_random_walk(cams, aff, none, beta=8, logt=5, radius=5)
    one = psa_random_walk(cams, aff, beta=8, logt=5, alpha=None, radius=5, with_background=False)
    np.testing.assert_allclose(two, one, atol=1e-12)


def test_stage2_transition_direction():
    # Column of a non-boundary pixel is a unit vector; a boundary column collects neighbours.
    aff, _ = _random_case()
    boundary = _boundary_band()
    _, stage2 = two_stage_edge_masks(boundary, 5)
    t = transition_from_affinity(aff, 12, 12, 5, beta=8, edge_mask=stage2).toarray()
    inner = np.flatnonzero(~boundary.ravel())
    np.testing.assert_array_equal(t[:, inner], np.eye(144)[:, inner])
    edge = np.flatnonzero(boundary.ravel())
    assert ((t[:, edge] > 0).sum(axis=0) > 1).all()


# ---------------------------------------------------------------- parameters and shapes

@pytest.mark.parametrize("kwargs,key", [
    ({"beta": 0}, "propagation.beta"), ({"beta": -1.0}, "propagation.beta"),
    ({"logt": -1}, "propagation.logt"), ({"logt": 2.5}, "propagation.logt"),
    ({"alpha": 0}, "propagation.alpha"), ({"radius": 0}, "affinity.radius"),
    ({"method": "power"}, "propagation.method"),
])
def test_walk_parameter_validation(kwargs, key):
    aff, cams = _random_case(channels=2)
    args = {"beta": 8, "logt": 2, "alpha": 16, "radius": 5, "method": "sparse"}
    args.update(kwargs)
    with pytest.raises(PipelineError, match=key.replace(".", r"\.")):
        psa_random_walk(cams, aff, **args)


def test_shape_mismatch_is_value_error():
    aff, cams = _random_case()
    with pytest.raises(ValueError, match="pairs"):
        transition_from_affinity(aff[:-1], 12, 12, 5, beta=8)
    t = transition_from_affinity(aff, 12, 12, 5, beta=8)
    with pytest.raises(ValueError):
        random_walk_sparse(cams[:, :11], t, 2)
    with pytest.raises(ValueError):
        two_stage_random_walk(cams, aff, np.zeros((11, 12), bool), beta=8, logt=2, radius=5)


def test_params_yaml_defaults_and_validation():
    params = load_params(REPO / "params.yaml", "voc")  # the paper's values (embedded overrides them)
    checked = validate_propagation_params(params)
    assert checked == {"beta": 8.0, "logt": 8, "alpha": 16.0, "method": "sparse", "radius": 5}
    bad = {"propagation": dict(params["propagation"], logt=-2), "affinity": {"radius": 5}}
    with pytest.raises(PipelineError, match=r"propagation\.logt"):
        validate_propagation_params(bad)
    bad = {"propagation": dict(params["propagation"]), "affinity": {"radius": 0}}
    with pytest.raises(PipelineError, match=r"affinity\.radius"):
        validate_propagation_params(bad)
    with pytest.raises(PipelineError, match=r"propagation\.beta"):
        validate_propagation_params({"propagation": {k: v for k, v in params["propagation"].items() if k != "beta"},
                                     "affinity": {"radius": 5}})


def test_schema_rejects_out_of_range(tmp_path):
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, key, value in (("propagation", "beta", 0), ("propagation", "logt", -1),
                                ("propagation", "method", "power"), ("affinity", "radius", 0)):
        broken = {**raw, section: {**raw[section], key: value}}
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(broken))
        with pytest.raises(PipelineError, match=f"{section}.{key}"):
            load_params(path)


def test_benchmark_runs_at_tiny_scale(tmp_path, capsys):
    # Smoke test of benchmarks/propagation_benchmark.py (each variant in its own subprocess).
    import importlib.util

    spec = importlib.util.spec_from_file_location("propagation_benchmark",
                                                  REPO / "benchmarks" / "propagation_benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out_json = tmp_path / "bench.json"
    summary = bench.main(["--height", "10", "--width", "10", "--channels", "3", "--logt", "3", "--features", "8",
                          "--threads", "1", "--repeats", "1", "--variants", "dense", "sparse-torch", "stencil",
                          "--json", str(out_json)])
    printed = capsys.readouterr().out
    assert "sparse-torch" in printed and "speedup" in printed and "x floor" in printed
    for variant in ("sparse-torch", "stencil"):
        assert summary["variants"][variant]["max_abs_diff_vs_dense"] <= 1e-4
        assert summary["variants"][variant]["walk_over_floor"] > 0
    assert summary["floor_s"] > 0 and summary["walk_macs"] > 0
    assert out_json.exists()


def test_nan_or_negative_affinity_is_rejected():
    aff, _ = _random_case()
    for bad in (np.nan, -0.5):
        broken = aff.copy()
        broken[3] = bad
        with pytest.raises(ValueError, match="finite"):
            transition_from_affinity(broken, 12, 12, 5, beta=8)


def test_logt_for_reach_keeps_the_papers_reach():
    """radius * sqrt(2**logt) / grid side = 5 * 16 / 56 (PSA/RETAB on VOC), rounded."""
    from pipeline.propagation.random_walk import VOC_REACH, logt_for_reach

    assert VOC_REACH == pytest.approx(80 / 56)
    assert logt_for_reach((56, 56), 5) == 8      # VOC: 2 * log2(1.4286 * 56 / 5) = 2 * log2(16) = 8
    assert logt_for_reach((16, 16), 3) == 6      # embedded: 2 * log2(1.4286 * 16 / 3) = 5.86
    assert logt_for_reach((27, 40), 5) == 6      # MSRC 320x213: side 32.9 -> 2 * log2(9.39) = 6.46
    assert logt_for_reach((30, 40), 5) == 7      # MSRC 320x240: side 34.6 -> 2 * log2(9.90) = 6.61
    assert logt_for_reach((2, 2), 5) == 1        # a tiny grid still walks (reach below one cell)
    assert logt_for_reach((4000, 4000), 1) == 20  # capped at the schema's maximum


def test_logt_auto_passes_the_check_and_other_strings_do_not():
    from pipeline.errors import PipelineError
    from pipeline.propagation.random_walk import check_logt

    assert check_logt("auto") == "auto" and check_logt(6) == 6
    with pytest.raises(PipelineError, match="propagation.logt"):
        check_logt("six")


# --------------------------------------------------------------------------- alpha: auto

def test_alpha_and_threshold_by_hand():
    from pipeline.propagation.random_walk import alpha_for_threshold, threshold_for_alpha

    assert alpha_for_threshold(0.5) == pytest.approx(1.0)           # (1 - 0.5)^1 = 0.5
    assert alpha_for_threshold(0.2) == pytest.approx(np.log(0.2) / np.log(0.8))
    assert threshold_for_alpha(1.0) == pytest.approx(0.5)
    assert threshold_for_alpha(2.0) == pytest.approx((3 - np.sqrt(5)) / 2)  # (1-x)^2 = x
    for t in (0.05, 0.13, 0.4, 0.9):
        assert threshold_for_alpha(alpha_for_threshold(t)) == pytest.approx(t, abs=1e-9)
    with pytest.raises(ValueError):
        alpha_for_threshold(0.0)


def test_confident_thresholds_follow_psa_band():
    from pipeline.cam import confident_thresholds_for
    from pipeline.propagation.random_walk import threshold_for_alpha

    # t = PSA's own cut at alpha 16 -> exactly PSA's alphas 4 and 32
    band = confident_thresholds_for(threshold_for_alpha(16))
    assert band["conf_fg"] == pytest.approx(threshold_for_alpha(4)) and band["conf_bg"] == pytest.approx(threshold_for_alpha(32))
    assert 0.27 < band["conf_fg"] < 0.28 and 0.07 < band["conf_bg"] < 0.08
    wide = confident_thresholds_for(0.5)                            # alpha 1 -> 0.25 and 2
    assert wide["conf_bg"] < 0.5 < wide["conf_fg"]
    assert wide["conf_bg"] == pytest.approx((3 - np.sqrt(5)) / 2)


def test_choose_alpha_best_then_smaller_nan_never():
    from pipeline.propagation.random_walk import choose_alpha

    assert choose_alpha({1.0: 0.4, 2.0: 0.5, 4.0: 0.45}) == 2.0
    assert choose_alpha({1.0: 0.5, 8.0: 0.5}) == 1.0                # tie -> smaller alpha
    assert choose_alpha({1.0: float("nan"), 4.0: 0.1}) == 4.0
    assert choose_alpha({2.0: float("nan"), 1.0: float("nan")}) == 1.0
    with pytest.raises(ValueError):
        choose_alpha({})
