"""Superpixel self-diffusion of the L-Net branch (Xiao et al., "Transferable
Semi-supervised Semantic Segmentation", AAAI 2018, Eq. 2).

For an image of the weak categories the L-Net gives a class-agnostic foreground map M
and the classification net gives one CAM per image-level class. Self-diffusion turns
them into a pixel pseudo label L_w:

1. SLIC oversegments the image (:func:`slic_superpixels`).
2. A graph links superpixels that touch (4-neighbour pixel adjacency,
   :func:`superpixel_graph`).
3. Each superpixel gets the 4-d feature F = [mean L/100, mean a/128, mean b/128,
   mean M] (:func:`node_features`): CIELAB (D65) is scaled so every entry lies in about
   [-1, 1] (L in [0, 100], a and b in about [-128, 127]) and M is a probability in
   [0, 1], so colour and objectness weigh alike in the distance.
4. Edges weigh z_ij = exp(-||F_i - F_j|| / (2 sigma^2)) (:func:`edge_weights`).
5. For each class c, q_c minimises 1/2 sum_ij z_ij (q_i - q_j)^2 with the seeds fixed
   (:func:`harmonic_solve`): the harmonic function, L_uu q_u = -L_us q_s.
6. Each superpixel takes the class with the largest q; low q means background (or
   ignore) (:func:`label_superpixels`); pixels inherit their superpixel's label.

Seeds, and why there are zero-valued ones
-----------------------------------------
*Class seeds* (q_c = 1): the localised CAM region A_c is {pixels with CAM_c >=
``cam_region_threshold``} (CAMs max-normalised to [0, 1]); a superpixel is inside A_c
when at least ``cam_region_min_overlap`` of its pixels are. With only these seeds the
minimiser of Eq. 2 is degenerate: q_c = 1 on every superpixel connected to A_c (a
constant has zero energy). The paper's intent is that the L-Net's M separates object
from background, so *background seeds* are the superpixels whose mean M is below
``background_seed_threshold``; they are fixed to q = 0 for every class. A superpixel that
is both (a CAM region on low M) stays a class seed: the CAM is positive evidence for
the class, low M only the absence of objectness. Everything else floats, including the
other classes' regions, as in the paper: each class is its own Dirichlet problem.

Batching classes (why one solve per class)
------------------------------------------
Fixing the union of all seeds at once (class c's seeds at 1 in column c and at 0 in the
other columns) is Grady's multi-label random walker: other classes' regions become
sinks for q_c, which is a different solution from the paper's problem (there they
float). So the unknown set differs per class and each class needs its own
factorisation; :func:`harmonic_solve` shares one factorisation between columns whose
seed sets are identical. At the paper's scale (several hundred superpixels) one sparse LU
costs about a millisecond, so per-class solves are cheap.

Defined behaviour on degenerate input
-------------------------------------
* Superpixels with no path (over edges of usable weight) to any fixed node have q = 0
  for that class: the solve runs only on components that contain a seed, so the system
  is never singular. Edges weaker than ``MIN_RELATIVE_WEIGHT`` x the strongest edge are
  treated as cuts (a link of weight eps makes the system's condition number ~1/eps).
* A class whose CAM region covers no superpixel has no seeds: q_c = 0 everywhere, the
  class is absent from the output, and this is logged and reported in ``info``.
* No image-level class at all: every superpixel is background (or ignore).

Labelling rule
--------------
A superpixel takes argmax_c q_c (ties, e.g. a superpixel seeded for two classes, go to
the class with the higher mean CAM). It is background when max_c q_c <
``background_threshold`` or when max_c q_c = 0 (no evidence at all): low diffused
evidence for every class means the object regions did not reach it. Superpixels with low
M are background seeds (q = 0), so the L-Net's object/background split enters through
the seeds and the same q threshold serves both. Datasets without a background class
(CamVid) label such superpixels ``ignore_index`` (255) instead: there the pixel belongs to
some class we have no evidence for, and training must not learn a guess.
"""
from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import splu
from skimage import segmentation

from pipeline.errors import PipelineError

log = logging.getLogger("pipeline.propagation.superpixel_diffusion")

#: Edges weaker than this fraction of the strongest edge are cuts (see module docstring).
MIN_RELATIVE_WEIGHT = 1e-10

#: Keys of the ``self_diffusion`` params section that :func:`diffuse_image` reads.
PARAM_KEYS = ("slic_n_segments", "slic_compactness", "slic_sigma", "slic_max_iter", "sigma",
              "cam_region_threshold", "cam_region_min_overlap",
              "background_seed_threshold", "background_threshold")

# sRGB (D65) -> linear RGB -> XYZ, the same constants as skimage.color.rgb2lab.
_SRGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
_D65_WHITE = np.array([0.95047, 1.0, 1.08883])


def _srgb_linear_table() -> np.ndarray:
    """Linear-light value of each uint8 sRGB code (the gamma curve as a 256-entry table)."""
    c = np.arange(256, dtype=np.float64) / 255.0
    return np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92).astype(np.float32)


_SRGB_LINEAR = _srgb_linear_table()


def rgb_to_lab(image_rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65, 2 degree observer) of a uint8 RGB image, float32 HxWx3.

    Agrees with ``skimage.color.rgb2lab`` to about 1e-4 and is ~3x faster on uint8
    input: the gamma curve is a lookup table and the arithmetic runs in float32, which
    matters because this runs once per image on ~190k pixels at VOC size.
    """
    rgb = _SRGB_LINEAR[image_rgb.reshape(-1, 3)]
    xyz = rgb @ (_SRGB_TO_XYZ / _D65_WHITE[:, None]).T.astype(np.float32)
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    lab = np.empty_like(xyz)
    lab[:, 0] = 116.0 * f[:, 1] - 16.0
    lab[:, 1] = 500.0 * (f[:, 0] - f[:, 1])
    lab[:, 2] = 200.0 * (f[:, 1] - f[:, 2])
    return lab.reshape(image_rgb.shape)


def slic_superpixels(image_rgb: np.ndarray, n_segments: int, compactness: float,
                     sigma: float, max_iter: int = 10) -> np.ndarray:
    """SLIC superpixels of an RGB image: int32 HxW labels 0..N-1, every label used.

    ``n_segments`` is approximate (SLIC places a grid and merges small fragments);
    ``compactness`` trades colour similarity for regular shape (in Lab units, skimage's
    convention); ``sigma`` is the Gaussian pre-smoothing width in pixels; ``max_iter``
    the k-means iterations (skimage's default 10; SLIC's assignments barely move after
    the first few, and each costs ~1/10 of the time).
    """
    labels = segmentation.slic(image_rgb, n_segments=int(n_segments), compactness=float(compactness),
                               sigma=float(sigma), start_label=0, channel_axis=-1,
                               convert2lab=True, enforce_connectivity=True, max_num_iter=int(max_iter))
    labels = np.asarray(labels)
    used = np.bincount(labels.ravel()) > 0
    if not used.all():
        # Keep labels contiguous: node ids index arrays of length N downstream.
        remap = np.cumsum(used) - 1
        labels = remap[labels]
    return labels.astype(np.int32, copy=False)


def superpixel_graph(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges between superpixels that share a 4-neighbour pixel border.

    Returns ``(i, j)`` int64 arrays with i < j, each pair once, sorted by (i, j).
    Vectorised: compare every pixel with its right and lower neighbour, encode each
    differing pair as i * N + j and deduplicate.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = int(labels.max()) + 1 if labels.size else 0
    keys = []
    for left, right in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        differ = left != right
        a, b = left[differ], right[differ]
        keys.append(np.minimum(a, b) * n + np.maximum(a, b))
    keys = np.concatenate(keys)
    if n * n <= 1 << 24:
        # A presence histogram over all pairs beats sorting for a few hundred superpixels.
        keys = np.flatnonzero(np.bincount(keys, minlength=n * n))
    else:
        keys = np.unique(keys)
    return keys // n, keys % n


def node_features(image_rgb: np.ndarray, labels: np.ndarray, agnostic_map: np.ndarray) -> np.ndarray:
    """(N, 4) features per superpixel: [mean L/100, mean a/128, mean b/128, mean M]."""
    flat = labels.ravel()
    n = int(flat.max()) + 1
    counts = np.bincount(flat, minlength=n).astype(np.float64)
    lab = rgb_to_lab(image_rgb).reshape(-1, 3)
    features = np.empty((n, 4), dtype=np.float64)
    for channel, scale in enumerate((100.0, 128.0, 128.0)):
        features[:, channel] = np.bincount(flat, weights=lab[:, channel], minlength=n) / counts / scale
    features[:, 3] = np.bincount(flat, weights=agnostic_map.ravel(), minlength=n) / counts
    return features


def edge_weights(features: np.ndarray, edges: tuple[np.ndarray, np.ndarray], sigma: float) -> np.ndarray:
    """z_ij = exp(-||F_i - F_j|| / (2 sigma^2)) for each edge (the paper's Eq. 2 weight)."""
    i, j = edges
    distance = np.linalg.norm(features[i] - features[j], axis=1)
    return np.exp(-distance / (2.0 * float(sigma) ** 2))


def _usable_edges(edges, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Edges with weight above MIN_RELATIVE_WEIGHT x the strongest; the rest are cuts."""
    i, j = (np.asarray(e, dtype=np.int64) for e in edges)
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0:
        return i, j, w
    keep = w > MIN_RELATIVE_WEIGHT * w.max()
    return i[keep], j[keep], w[keep]


def _adjacency(n_nodes: int, i: np.ndarray, j: np.ndarray, w: np.ndarray) -> sp.csr_matrix:
    """Symmetric weighted adjacency matrix W (duplicate edges add up)."""
    return sp.csr_matrix((np.concatenate([w, w]), (np.concatenate([i, j]), np.concatenate([j, i]))),
                         shape=(n_nodes, n_nodes))


def _as_columns(n_nodes: int, seed_mask, seed_values) -> tuple[np.ndarray, np.ndarray, bool]:
    """Seed mask and values as (N, K) arrays; says whether the input was one column."""
    mask = np.asarray(seed_mask, dtype=bool)
    single = mask.ndim == 1
    if single:
        mask = mask[:, None]
    if mask.ndim != 2 or mask.shape[0] != n_nodes:
        raise ValueError(f"seed_mask must be ({n_nodes},) or ({n_nodes}, K), got {np.shape(seed_mask)}")
    if seed_values is None:
        values = np.ones(mask.shape, dtype=np.float64)
    else:
        values = np.asarray(seed_values, dtype=np.float64)
        values = np.broadcast_to(values[:, None] if values.ndim == 1 else values, mask.shape)
    return mask, values, single


def harmonic_solve(n_nodes: int, edges: tuple[np.ndarray, np.ndarray], weights: np.ndarray,
                   seed_mask: np.ndarray, seed_values: np.ndarray | None = None) -> np.ndarray:
    """Harmonic function on a weighted graph with Dirichlet seeds (sparse direct solve).

    Minimises 1/2 sum_ij z_ij (q_i - q_j)^2 over the free nodes with q fixed to
    ``seed_values`` (default 1) where ``seed_mask``: L_uu q_u = -L_us q_s = W_us q_s.

    ``seed_mask`` is (N,) for one problem or (N, K) for K independent problems (one per
    column: the paper's per-class problems); ``seed_values`` broadcasts to the same shape.
    Free nodes with no path to a seed of their column get q = 0; only components that
    hold a seed enter the solve, so the system is never singular. Columns with the same
    seed set share one sparse LU factorisation. Returns (N,) or (N, K) float64.
    """
    mask, values, single = _as_columns(n_nodes, seed_mask, seed_values)
    i, j, w = _usable_edges(edges, weights)
    degree = np.bincount(i, weights=w, minlength=n_nodes) + np.bincount(j, weights=w, minlength=n_nodes)
    _, component = connected_components(_adjacency(n_nodes, i, j, w), directed=False)
    q = np.where(mask, values, 0.0)

    groups: dict[bytes, list[int]] = {}
    for k in range(mask.shape[1]):
        groups.setdefault(np.packbits(mask[:, k]).tobytes(), []).append(k)
    for columns in groups.values():
        seeds = mask[:, columns[0]]
        anchored = np.zeros(component.max() + 1 if n_nodes else 0, dtype=bool)
        anchored[component[seeds]] = True
        free = np.flatnonzero(~seeds & anchored[component])
        if free.size == 0 or not np.any(values[seeds][:, columns]):
            continue  # nothing free, or every seed is 0 (a class without seeds): q = 0 off the seeds
        q[np.ix_(free, columns)] = _solve_free_nodes(n_nodes, i, j, w, degree, free, seeds,
                                                     values[:, columns])
    return q[:, 0] if single else q


def _solve_free_nodes(n_nodes, i, j, w, degree, free, seeds, values) -> np.ndarray:
    """Solve L_uu q_u = W_us q_s for the free nodes ``free`` (all in seeded components)."""
    position = np.full(n_nodes, -1, dtype=np.int64)
    position[free] = np.arange(free.size)
    pi, pj = position[i], position[j]
    both = (pi >= 0) & (pj >= 0)
    n_free = free.size
    rows = np.concatenate([pi[both], pj[both], np.arange(n_free)])
    cols = np.concatenate([pj[both], pi[both], np.arange(n_free)])
    vals = np.concatenate([-w[both], -w[both], degree[free]])
    l_uu = sp.csc_matrix((vals, (rows, cols)), shape=(n_free, n_free))

    # Right-hand side: flow from seed neighbours, W_us q_s (edges free-seed, both ways).
    rhs = np.zeros((n_free, values.shape[1]))
    i_to_seed = (pi >= 0) & seeds[j]
    j_to_seed = (pj >= 0) & seeds[i]
    for k in range(values.shape[1]):
        rhs[:, k] = (np.bincount(pi[i_to_seed], weights=w[i_to_seed] * values[j[i_to_seed], k], minlength=n_free)
                     + np.bincount(pj[j_to_seed], weights=w[j_to_seed] * values[i[j_to_seed], k], minlength=n_free))
    try:
        solution = splu(l_uu).solve(rhs)
    except RuntimeError as err:  # SuperLU: "Factor is exactly singular"
        raise FloatingPointError(f"harmonic system is singular ({err})") from None
    if not np.all(np.isfinite(solution)):
        raise FloatingPointError("harmonic system gave non-finite values (edge weights too extreme)")
    return solution


def iterative_diffusion_reference(n_nodes: int, edges: tuple[np.ndarray, np.ndarray], weights: np.ndarray,
                                  seed_mask: np.ndarray, seed_values: np.ndarray | None = None,
                                  tol: float = 1e-8, max_iter: int = 200_000) -> np.ndarray:
    """The same harmonic function by Jacobi label propagation (reference and baseline).

    q <- D^-1 W q with the seeds clamped after every step, from q = 0 off the seeds,
    until the largest change is below ``tol``. Solves each column (class) of an (N, K)
    ``seed_mask`` separately, as a per-class propagation would. Nodes without a path to
    a seed never receive mass and stay 0, which matches :func:`harmonic_solve`. Uses
    the same edge cut (:data:`MIN_RELATIVE_WEIGHT`) so both answer the same problem.
    """
    mask, values, single = _as_columns(n_nodes, seed_mask, seed_values)
    i, j, w = _usable_edges(edges, weights)
    adjacency = _adjacency(n_nodes, i, j, w)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inverse_degree = np.divide(1.0, degree, out=np.zeros_like(degree), where=degree > 0)
    q = np.where(mask, values, 0.0)
    for k in range(mask.shape[1]):
        seeds, fixed = mask[:, k], values[mask[:, k], k]
        column = q[:, k].copy()
        for step in range(max_iter):
            updated = (adjacency @ column) * inverse_degree
            updated[seeds] = fixed
            change = np.abs(updated - column).max(initial=0.0)
            column = updated
            if change < tol:
                break
        else:
            log.warning("iterative diffusion: column %d did not reach tol %g in %d steps (last change %g)",
                        k, tol, max_iter, change)
        q[:, k] = column
    return q[:, 0] if single else q


def class_seed_masks(labels: np.ndarray, cams: Mapping[int, np.ndarray], threshold: float,
                     min_overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """Class seeds and mean CAMs per superpixel, one column per entry of ``cams``.

    A superpixel is a seed of class c when at least ``min_overlap`` of its pixels have
    CAM_c >= ``threshold`` (it lies inside the localised region A_c). Returns
    ``(seeds (N, K) bool, cam_means (N, K) float)``.
    """
    flat = labels.ravel()
    n = int(flat.max()) + 1
    counts = np.bincount(flat, minlength=n).astype(np.float64)
    seeds = np.zeros((n, len(cams)), dtype=bool)
    cam_means = np.zeros((n, len(cams)))
    for k, cam in enumerate(cams.values()):
        cam = np.asarray(cam, dtype=np.float64).ravel()
        inside = np.bincount(flat, weights=(cam >= threshold).astype(np.float64), minlength=n) / counts
        seeds[:, k] = (inside >= min_overlap) & (inside > 0)
        cam_means[:, k] = np.bincount(flat, weights=cam, minlength=n) / counts
    return seeds, cam_means


def label_superpixels(q: np.ndarray, cam_means: np.ndarray, class_ids: list[int], background_threshold: float,
                      background_index: int | None, ignore_index: int = 255) -> np.ndarray:
    """Label per superpixel from the diffused scores q (N, K) (see module docstring).

    argmax_c q_c, ties to the higher mean CAM; ``background_index`` (or
    ``ignore_index`` when the dataset has no background class) where max_c q_c <
    ``background_threshold`` or max_c q_c = 0. Returns (N,) int64.
    """
    n = q.shape[0]
    fill = ignore_index if background_index is None else background_index
    if q.shape[1] == 0:
        return np.full(n, fill, dtype=np.int64)
    best_q = q.max(axis=1)
    # Among classes within rounding of the best q, the higher mean CAM wins.
    tied = q >= best_q[:, None] - 1e-9
    best = np.argmax(np.where(tied, cam_means, -np.inf), axis=1)
    out = np.asarray(class_ids, dtype=np.int64)[best]
    out[(best_q < background_threshold) | (best_q <= 0)] = fill
    return out


def _check_map(array, shape, what: str, source: str) -> np.ndarray:
    """A finite float map of the image's size with values in [0, 1], or PipelineError."""
    array = np.asarray(array)
    if array.ndim != 2 or array.shape != tuple(shape):
        got = "x".join(map(str, array.shape)) or "a scalar"
        raise PipelineError(source, f"{what} is {got} but the image is {shape[0]}x{shape[1]}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise PipelineError(source, f"{what} has dtype {array.dtype}, expected real numbers")
    array = array.astype(np.float64, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise PipelineError(source, f"{what} has {bad} NaN/inf values")
    low, high = float(array.min()), float(array.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise PipelineError(source, f"{what} has values in [{low:.4g}, {high:.4g}], expected [0, 1]")
    return array


def _read_params(params: Mapping) -> dict:
    """The self_diffusion keys, each present, with one-line errors naming the key."""
    if not isinstance(params, Mapping):
        raise PipelineError("params.yaml", "self_diffusion must be a mapping")
    missing = [key for key in PARAM_KEYS if key not in params]
    if missing:
        raise PipelineError("params.yaml", f"missing key self_diffusion.{missing[0]}")
    checks = {"slic_n_segments": (1, None), "slic_compactness": (0, None), "slic_sigma": (0, None),
              "slic_max_iter": (1, None),
              "sigma": (0, None), "cam_region_threshold": (0, 1), "cam_region_min_overlap": (0, 1),
              "background_seed_threshold": (0, 1), "background_threshold": (0, 1)}
    for key, (low, high) in checks.items():
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise PipelineError("params.yaml", f"self_diffusion.{key} = {value!r} is not a number")
        strictly_positive = key in ("slic_compactness", "sigma", "cam_region_min_overlap")
        if value < low or (strictly_positive and value <= low) or (high is not None and value > high):
            raise PipelineError("params.yaml", f"self_diffusion.{key} = {value} is out of range")
    return {key: params[key] for key in PARAM_KEYS}


def _check_inputs(image, agnostic_map, cams, background_index, ignore_index, source):
    """Validate the image, the L-Net map and the CAMs; return them as arrays."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.shape[0] < 2 or image.shape[1] < 2:
        raise PipelineError(source, f"image must be an HxWx3 uint8 RGB array (H, W >= 2), "
                            f"got shape {image.shape} dtype {image.dtype}")
    shape = image.shape[:2]
    agnostic_map = _check_map(agnostic_map, shape, "L-Net map", source)
    if not isinstance(cams, Mapping):
        raise PipelineError(source, "cams must map class index -> CAM")
    checked: dict[int, np.ndarray] = {}
    for class_id, cam in cams.items():
        if isinstance(class_id, (bool, np.bool_)) or not isinstance(class_id, (int, np.integer)) \
                or not 0 <= int(class_id) <= 254 or int(class_id) in (background_index, ignore_index):
            raise PipelineError(source, f"CAM key {class_id!r} is not a foreground class index "
                                f"(0..254, not background {background_index} or ignore {ignore_index})")
        checked[int(class_id)] = _check_map(cam, shape, f"CAM of class {int(class_id)}", source)
    return image, agnostic_map, checked


def diffuse_image(image: np.ndarray, agnostic_map: np.ndarray, cams: Mapping[int, np.ndarray],
                  params: Mapping, *, background_index: int | None, ignore_index: int = 255,
                  source: str = "<image>", solver: str = "direct") -> tuple[np.ndarray, dict]:
    """Pixel pseudo label L_w of one weak-category image by superpixel self-diffusion.

    ``image``: uint8 HxWx3 RGB. ``agnostic_map``: the L-Net's class-agnostic foreground
    probability M, HxW in [0, 1]. ``cams``: {class index: HxW CAM max-normalised to
    [0, 1]} for the image-level classes. ``params``: the ``self_diffusion`` section.
    ``background_index``: the dataset's background class, or None (CamVid) to label
    unclaimed superpixels ``ignore_index``. ``source`` names the inputs in error messages
    (the stage passes the file paths). ``solver``: "direct" (sparse LU) or "iterative"
    (:func:`iterative_diffusion_reference`, for tests and the benchmark).

    Returns ``(pseudo_label uint8 HxW, info)``; ``info`` is JSON-ready (counts, the
    classes with no seeds under "absent_classes"). Bad input raises PipelineError.
    """
    cfg = _read_params(params)
    if solver not in ("direct", "iterative"):
        raise ValueError(f"solver must be 'direct' or 'iterative', not {solver!r}")
    image, agnostic_map, cams = _check_inputs(image, agnostic_map, cams, background_index, ignore_index, source)

    labels = slic_superpixels(image, cfg["slic_n_segments"], cfg["slic_compactness"], cfg["slic_sigma"],
                              cfg["slic_max_iter"])
    n_nodes = int(labels.max()) + 1
    edges = superpixel_graph(labels)
    features = node_features(image, labels, agnostic_map)
    weights = edge_weights(features, edges, cfg["sigma"])

    class_ids = list(cams)
    class_seeds, cam_means = class_seed_masks(labels, cams, cfg["cam_region_threshold"],
                                              cfg["cam_region_min_overlap"])
    background_seeds = (features[:, 3] < cfg["background_seed_threshold"]) & ~class_seeds.any(axis=1)
    seed_mask = class_seeds | background_seeds[:, None]
    solve = harmonic_solve if solver == "direct" else iterative_diffusion_reference
    try:
        q = solve(n_nodes, edges, weights, seed_mask, class_seeds.astype(np.float64))
    except FloatingPointError as err:
        raise PipelineError("params.yaml", f"self_diffusion.sigma = {cfg['sigma']}: {err} "
                            f"(while diffusing {source})") from None

    absent = [c for k, c in enumerate(class_ids) if not class_seeds[:, k].any()]
    for class_id in absent:
        log.info("%s: CAM region of class %d covers no superpixel; the class is absent from the "
                 "pseudo label", source, class_id)
    superpixel_label = label_superpixels(q, cam_means, class_ids, cfg["background_threshold"],
                                         background_index, ignore_index)
    pseudo_label = superpixel_label.astype(np.uint8)[labels]

    values, counts = np.unique(pseudo_label, return_counts=True)
    info = {
        "source": source,
        "n_superpixels": n_nodes,
        "n_edges": int(edges[0].size),
        "classes": class_ids,
        "seed_superpixels": {str(c): int(class_seeds[:, k].sum()) for k, c in enumerate(class_ids)},
        "absent_classes": absent,
        "background_seed_superpixels": int(background_seeds.sum()),
        "pixels_per_label": {str(int(v)): int(n) for v, n in zip(values, counts)},
    }
    return pseudo_label, info
