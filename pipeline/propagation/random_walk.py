"""Random walks on the pixel-affinity graph: PSA's single-stage walk and RETAB's
boundary-aware two-stage walk, each in a fast sparse form and a dense reference form.

Direction convention (PSA ``infer_aff.py``, RETAB ``resnet38_aff_mask_new.py``):

* ``A[i, j] = aff_ij ** beta`` is an *edge from i into j*: the value at pixel ``j`` after a
  step is a weighted average over the pixels ``i`` with ``A[i, j] > 0``. Without an edge
  mask, ``A`` is symmetric and has self-loops ``A[i, i] = 1``.
* ``T = A / A.sum(axis=0)`` is column-normalised (every column sums to 1).
* CAMs are *row vectors*: ``cams`` is ``C x N`` (``N = H * W``, row-major pixels) and the
  walk is ``cams @ T ** (2 ** logt)``; PSA forms the power by ``logt`` squarings.

The sparse walk applies ``2 ** logt`` steps ``X <- T^T X`` with ``X = cams^T`` (``N x C``)
instead of squaring: squaring fills the matrix in (``T^(2^k)`` couples pixels
``2^k * radius`` apart, i.e. the whole image after a few squarings), whereas one step
costs ``nnz(T) * C`` multiply-adds. The steps run as a CSR x dense product in torch (int32
indices, on torch's configured threads: see :func:`random_walk_sparse`); scipy's CSR product
is kept as a second backend (3-9x slower in our measurements). At VOC scale (56x56 grid, 21
channels, radius 5, logt 8, float32) ``benchmarks/propagation_benchmark.py`` measured on the
idle 2-core machine, 2 threads: dense power 3.8-4.0 s and ~120 MiB peak, sparse walk
0.11-0.13 s and ~14 MiB (31-36x faster), max |difference| 1.4e-5. With int64 indices on
one thread, as before, the sparse walk took 0.27-0.30 s (10-14x).

A third form, :func:`random_walk_stencil`, takes the same steps as shifted multiply-adds over
dense per-offset weight planes (the graph is a fixed-radius stencil on a regular grid). Same
numbers (tests), but on the 2-core Intel Xeon it is 3-4x slower than the CSR product (one
``addcmul_`` per offset and step streams the whole grid through memory 69 times a step;
docs/operations.md "Throughput and memory"), so ``sparse`` stays the default.

Inputs may be numpy arrays or torch tensors (CPU); outputs are numpy arrays. Affinities
are the ``(M,)`` pair vectors of :func:`pipeline.propagation.affinity.pairwise_affinity`
for one image (a leading batch axis of size 1 is accepted).
"""
from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from pipeline.config import check_range, section
from pipeline.errors import PipelineError
from pipeline.propagation.affinity import check_radius, pair_index_arrays

Method = Literal["sparse", "dense", "stencil"]
METHODS = ("sparse", "dense", "stencil")


# ---------------------------------------------------------------------------- parameters

def check_beta(beta: float) -> float:
    """``propagation.beta`` (affinity exponent) must be a number > 0."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.integer, np.floating)):
        raise PipelineError("params.yaml", f"propagation.beta = {beta!r} must be a number > 0")
    check_range(float(beta), "propagation.beta", low=0, low_open=True)
    return float(beta)


# The papers' walk (PSA, RETAB on VOC): radius 5 and 2**8 steps on the ~56-cell grid of a
# 448 px crop at stride 8. A walk of n steps of radius r spreads ~ r * sqrt(n) cells, so its
# reach relative to the grid is 5 * sqrt(2**8) / 56 = 1.43 there.
VOC_REACH = 5 * 2 ** (8 / 2) / 56


def logt_for_reach(grid: tuple[int, int], radius: int, reach: float = VOC_REACH) -> int:
    """``logt`` whose walk reaches ``reach`` grid sides on an ``h x w`` grid (side sqrt(h w)):
    ``radius * sqrt(2**logt) / side = reach``, rounded (``propagation.logt: auto``). Needs
    no labels: the image size alone. VOC's 56-cell grid at radius 5 gives 8 (the papers'),
    the embedded 16-cell grid at radius 3 gives 6, MSRC's ~40x27 grid at radius 5 gives 6."""
    side = math.sqrt(grid[0] * grid[1])
    logt = 2 * math.log2(max(reach * side / radius, 1.0))
    return int(min(max(round(logt), 1), 20))


def check_logt(logt: int | str) -> int | str:
    """``propagation.logt`` (the walk takes 2**logt steps) must be an integer >= 0, or
    ``auto`` (:func:`logt_for_reach` per image)."""
    if logt == "auto":
        return logt
    if isinstance(logt, bool) or not isinstance(logt, (int, np.integer)):
        raise PipelineError("params.yaml", f"propagation.logt = {logt!r} must be an integer >= 0 or auto")
    check_range(int(logt), "propagation.logt", low=0)
    # 2**31 steps would never finish; 20 (a million steps) is far past convergence.
    check_range(int(logt), "propagation.logt", high=20)
    return int(logt)


def check_alpha(alpha: float | str) -> float | str:
    """``propagation.alpha`` (background exponent) must be a number > 0, or ``auto`` (chosen
    per fold on the fold's base samples: stage propagate, :func:`choose_alpha`)."""
    if alpha == "auto":
        return alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise PipelineError("params.yaml", f"propagation.alpha = {alpha!r} must be a number > 0 or auto")
    check_range(float(alpha), "propagation.alpha", low=0, low_open=True)
    return float(alpha)


# `alpha: auto` tries these (PSA's 16 and 32 included: VOC-like CAMs; 1-2 for CAMs whose best
# threshold is ~0.5, as the embedded set's). Doubling steps: the walked labels change little
# between neighbours (embedded fold 0 novel mIoU 0.48/0.52/0.51/0.48/0.44 for 1..16).
ALPHA_CANDIDATES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def alpha_for_threshold(threshold: float) -> float:
    """The background exponent at which a pixel whose top CAM is ``threshold`` is on the
    foreground/background edge: ``(1 - t) ** alpha = t``, so ``alpha = ln t / ln(1 - t)``.
    PSA's alpha 16 <-> t = 0.13; t = 0.5 <-> 1."""
    t = float(threshold)
    if not 0.0 < t < 1.0:
        raise ValueError(f"threshold {t} must lie in (0, 1)")
    return math.log(t) / math.log1p(-t)


def threshold_for_alpha(alpha: float) -> float:
    """Inverse of :func:`alpha_for_threshold`: the ``t`` in (0, 1) with ``(1 - t) ** alpha = t``.
    ``alpha * ln(1 - t) - ln t`` falls strictly from +inf to -inf on (0, 1): bisection."""
    alpha = float(alpha)
    if not alpha > 0:
        raise ValueError(f"alpha {alpha} must be > 0")
    low, high = 0.0, 1.0
    for _ in range(100):
        mid = 0.5 * (low + high)
        if alpha * math.log1p(-mid) - math.log(mid) > 0:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def choose_alpha(base_miou: dict[float, float]) -> float:
    """``alpha: auto``: the candidate whose walked pseudo labels score the best mIoU on the
    fold's base samples (base-class ground truth, which weak-shot allows); ties go to the
    smaller alpha. NaN scores never win; all NaN -> the smallest candidate."""
    if not base_miou:
        raise ValueError("no alpha candidate scored")
    ordered = sorted(base_miou)
    finite = [a for a in ordered if math.isfinite(base_miou[a])]
    if not finite:
        return ordered[0]
    return max(finite, key=lambda a: (base_miou[a], -a))


def check_method(method: str) -> str:
    if method not in METHODS:
        raise PipelineError("params.yaml", f"propagation.method = {method!r} must be one of {', '.join(METHODS)}")
    return method


def validate_propagation_params(params: dict) -> dict:
    """Check ``propagation.{beta,logt,alpha,method}`` and ``affinity.radius``.

    Returns a flat dict ``{beta, logt, alpha, method, radius}`` ready for
    :func:`psa_random_walk` / :func:`two_stage_random_walk`; raises PipelineError naming
    the key otherwise (the schema checks the same ranges when params.yaml is loaded; this
    guards params built in code).
    """
    prop = section(params, "propagation")
    radius = section(params, "affinity.radius")
    for key in ("beta", "logt", "alpha", "method"):
        if key not in prop:
            raise PipelineError("params.yaml", f"missing key 'propagation.{key}'")
    return {
        "beta": check_beta(prop["beta"]),
        "logt": check_logt(prop["logt"]),
        "alpha": check_alpha(prop["alpha"]),
        "method": check_method(prop["method"]),
        "radius": check_radius(radius),
    }


# ---------------------------------------------------------------------------- conversions

def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def _float_dtype(x: np.ndarray) -> np.dtype:
    """float64 stays float64; everything else is walked in float32 (as PSA does)."""
    return np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(np.float32)


def _pair_affinities(aff_pairs, h: int, w: int, radius: int) -> np.ndarray:
    aff = _to_numpy(aff_pairs, "aff_pairs")
    if aff.ndim == 2 and aff.shape[0] == 1:
        aff = aff[0]
    m = pair_index_arrays(h, w, radius)[0].shape[0]
    if aff.shape != (m,):
        raise ValueError(f"aff_pairs must hold the {m} pairs of a {h}x{w} grid with radius {radius}, "
                         f"got shape {aff.shape}")
    if not np.isfinite(aff).all() or (aff < 0).any():
        # aff ** beta of a negative or NaN affinity would poison the whole walk with NaN.
        raise ValueError("aff_pairs must be finite and >= 0 (affinities exp(-distance) lie in (0, 1])")
    return aff


def _cams_matrix(cams) -> tuple[np.ndarray, tuple[int, ...]]:
    """``C x H x W`` or ``C x N`` -> (``C x N`` array, original shape)."""
    arr = _to_numpy(cams, "cams")
    if arr.ndim == 3:
        return arr.reshape(arr.shape[0], -1), arr.shape
    if arr.ndim == 2:
        return arr, arr.shape
    raise ValueError(f"cams must be C x H x W or C x N, got shape {arr.shape}")


# ---------------------------------------------------------------------------- graph

def directed_edges(aff_pairs, h: int, w: int, radius: int, edge_mask=None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(src, dst, aff)`` of the directed edges kept by ``edge_mask`` (value flows src -> dst).

    ``edge_mask``: ``None`` keeps both directions of every pair; a boolean ``(M,)`` keeps
    both directions of the selected pairs; a boolean ``(2, M)`` selects directions:
    row 0 the edges ``from_idx -> to_idx`` (entries ``A[from, to]``), row 1 the edges
    ``to_idx -> from_idx`` (entries ``A[to, from]``).
    """
    aff = _pair_affinities(aff_pairs, h, w, radius)
    from_idx, to_idx = pair_index_arrays(h, w, radius)
    m = from_idx.shape[0]
    if edge_mask is None:
        forward = backward = np.ones(m, dtype=bool)
    else:
        mask = np.asarray(_to_numpy(edge_mask, "edge_mask"), dtype=bool)
        if mask.shape == (m,):
            forward = backward = mask
        elif mask.shape == (2, m):
            forward, backward = mask[0], mask[1]
        else:
            raise ValueError(f"edge_mask must have shape ({m},) or (2, {m}), got {mask.shape}")
    src = np.concatenate([from_idx[forward], to_idx[backward]])
    dst = np.concatenate([to_idx[forward], from_idx[backward]])
    return src, dst, np.concatenate([aff[forward], aff[backward]])


def affinity_matrix(aff_pairs, h: int, w: int, radius: int, beta: float, edge_mask=None,
                    self_loops: bool = True) -> sp.csr_matrix:
    """Sparse ``N x N`` affinity ``A[src, dst] = aff ** beta`` (+ identity self-loops)."""
    beta = check_beta(beta)
    src, dst, aff = directed_edges(aff_pairs, h, w, radius, edge_mask)
    n = h * w
    values = np.power(aff.astype(np.float64), beta)
    if self_loops:
        diag = np.arange(n, dtype=np.int64)
        src, dst = np.concatenate([src, diag]), np.concatenate([dst, diag])
        values = np.concatenate([values, np.ones(n)])
    a = sp.csr_matrix((values, (src, dst)), shape=(n, n))
    a.eliminate_zeros()
    return a


def transition_from_affinity(aff_pairs, h: int, w: int, radius: int, beta: float, edge_mask=None,
                             self_loops: bool = True) -> sp.csr_matrix:
    """Column-normalised transition ``T = A / A.sum(axis=0)`` (float64 CSR, ``N x N``).

    ``A`` is :func:`affinity_matrix`; one walk step is ``cams @ T`` (cams as ``C x N`` row
    vectors). A column with no weight at all (only possible with ``self_loops=False``)
    becomes an identity column, so that pixel keeps its value instead of turning NaN.
    """
    a = affinity_matrix(aff_pairs, h, w, radius, beta, edge_mask, self_loops).tocsc()
    col_sum = np.asarray(a.sum(axis=0)).ravel()
    empty = col_sum <= 0
    if empty.any():
        idx = np.flatnonzero(empty)
        a = (a + sp.csc_matrix((np.ones(idx.size), (idx, idx)), shape=a.shape)).tocsc()
        col_sum[empty] = 1.0
    t = a @ sp.diags(1.0 / col_sum)
    return sp.csr_matrix(t)


def dense_affinity_matrix(aff_pairs, h: int, w: int, radius: int, beta: float, edge_mask=None,
                          self_loops: bool = True, dtype=np.float64) -> np.ndarray:
    """Dense ``N x N`` affinity, built directly with numpy (reference for tests and the benchmark).

    Same matrix as :func:`affinity_matrix`, the way PSA's ``to_dense`` builds it.
    """
    beta = check_beta(beta)
    src, dst, aff = directed_edges(aff_pairs, h, w, radius, edge_mask)
    n = h * w
    a = np.zeros((n, n), dtype=dtype)
    a[src, dst] = np.power(aff.astype(np.float64), beta)
    if self_loops:
        a[np.arange(n), np.arange(n)] = 1.0
    return a


# ---------------------------------------------------------------------------- walks

def random_walk_dense(cams, a_dense, logt: int) -> np.ndarray:
    """PSA's walk, verbatim in numpy: ``T = A / A.sum(0)``; ``T = T @ T`` logt times; ``cams @ T``.

    ``cams``: ``C x H x W`` or ``C x N``; ``a_dense``: ``N x N`` affinity (not normalised).
    Memory ``O(N^2)`` and time ``O(logt * N^3)``: a reference, not for production use.
    Columns without weight are made identity columns (as in :func:`transition_from_affinity`).
    """
    logt = check_logt(logt)
    cam_mat, shape = _cams_matrix(cams)
    a = _to_numpy(a_dense, "a_dense")
    n = cam_mat.shape[1]
    if a.shape != (n, n):
        raise ValueError(f"a_dense must be {n} x {n} for cams of shape {shape}, got {a.shape}")
    dtype = _float_dtype(cam_mat)
    a = a.astype(dtype, copy=True)
    col_sum = a.sum(axis=0, keepdims=True)
    empty = np.flatnonzero(col_sum[0] <= 0)
    a[empty, empty] = 1.0
    col_sum[0, empty] = 1.0
    trans = a / col_sum
    del a
    for _ in range(logt):
        trans = trans @ trans
    return (cam_mat.astype(dtype) @ trans).reshape(shape)


def _torch_csr(matrix: sp.csr_matrix, dtype: np.dtype) -> torch.Tensor:
    # int32 indices where they fit: torch's CSR x dense product is ~1.4x faster with them
    # than with int64 (0.19 vs 0.26 s for the 256 steps of the VOC-scale benchmark, 1 thread).
    index_dtype = np.int32 if max(matrix.nnz, matrix.shape[0]) < 2 ** 31 else np.int64
    with warnings.catch_warnings():
        # torch flags CSR as beta and notes that invariant checks are off; both are fine here:
        # the arrays come straight from a canonical scipy CSR matrix.
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(index_dtype)),
            torch.from_numpy(matrix.indices.astype(index_dtype)),
            torch.from_numpy(matrix.data.astype(dtype)),
            size=matrix.shape)


def random_walk_sparse(cams, t_sparse, logt: int, tol: float | None = None,
                       backend: Literal["torch", "scipy"] = "torch") -> np.ndarray:
    """``cams @ T ** (2 ** logt)`` by ``2 ** logt`` sparse steps (never forms the matrix power).

    ``t_sparse``: column-normalised ``N x N`` transition (:func:`transition_from_affinity`).
    ``tol``: stop early once a step changes no value by more than ``tol`` (None: always take
    all ``2 ** logt`` steps, so the result equals :func:`random_walk_dense`).
    ``backend``: ``torch`` (CSR x dense, the fast one) or ``scipy``.

    The torch backend runs on torch's configured threads (stages set them from ``--threads``,
    which snakemake reserves for the job): two threads make the VOC-scale walk ~2x faster on
    an idle 2-core machine. Do not give it more threads than cores that are really free:
    256 successive small parallel products pay an OpenMP barrier each, and oversubscribed
    cores (several multi-threaded processes on them) made it up to 15x slower in the past.
    Stages run with ``OMP_WAIT_POLICY=PASSIVE`` (set by ``pipeline/__init__.py``): idle
    OpenMP threads sleep instead of spinning, which keeps the walk fast beside other busy
    processes (``benchmarks/propagation_benchmark.py --load 2 --wait-policy both``).
    """
    logt = check_logt(logt)
    cam_mat, shape = _cams_matrix(cams)
    n = cam_mat.shape[1]
    if not sp.issparse(t_sparse) or t_sparse.shape != (n, n):
        raise ValueError(f"t_sparse must be a scipy sparse {n} x {n} matrix for cams of shape {shape}")
    dtype = _float_dtype(cam_mat)
    # Row vectors times T == T^T times column vectors; T^T in CSR has one row per target
    # pixel holding its sources, which is the layout a CSR x dense product wants.
    step_matrix = sp.csr_matrix(t_sparse.T, dtype=dtype)
    x = np.ascontiguousarray(cam_mat.T, dtype=dtype)
    steps = 2 ** logt
    if backend == "torch":
        mat = _torch_csr(step_matrix, dtype)
        xt = torch.from_numpy(x)
        for _ in range(steps):
            nxt = torch.sparse.mm(mat, xt)
            if tol is not None and float((nxt - xt).abs().max()) <= tol:
                xt = nxt
                break
            xt = nxt
        x = xt.numpy()
    elif backend == "scipy":
        for _ in range(steps):
            nxt = step_matrix @ x
            if tol is not None and float(np.abs(nxt - x).max()) <= tol:
                x = nxt
                break
            x = nxt
    else:
        raise ValueError(f"backend must be 'torch' or 'scipy', got {backend!r}")
    return np.ascontiguousarray(x.T).reshape(shape)



# ---------------------------------------------------------------------------- stencil form
#
# The graph is a fixed-radius stencil on a regular grid: pixel j receives from the pixels
# j + o for the offsets o of a full disc (the half disc of `pair_offsets`, its mirror and
# (0, 0) for the self-loop). One step ``X <- T^T X`` is then ``sum_o W_o * shift_o(X)``
# with dense per-offset weight planes ``W_o[j] = T[j + o, j]``: no index arrays at all, every
# operation a contiguous multiply-add over the whole (padded) grid.

def stencil_offsets(radius: int) -> list[tuple[int, int]]:
    """Source offsets ``(dy, dx)`` of the full disc: ``(0, 0)`` first (the self-loop), then the
    half disc of :func:`pipeline.propagation.affinity.pair_offsets`, then its mirror."""
    from pipeline.propagation.affinity import pair_offsets

    half = pair_offsets(radius)
    return [(0, 0), *half, *[(-dy, -dx) for dy, dx in half]]


def stencil_transition(aff_pairs, h: int, w: int, radius: int, beta: float, edge_mask=None,
                       self_loops: bool = True) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The transition of :func:`transition_from_affinity` as per-offset weight planes.

    Returns ``(offsets, planes)``: ``planes[k, y, x] = T[src, dst]`` for the target pixel
    ``dst = (y, x)`` and the source ``src = (y, x) + offsets[k]`` (0 where that source is
    outside the image or the edge is not kept), float64, ``K x h x w``. Same edges
    (:func:`directed_edges`), same ``aff ** beta``, same column normalisation and the same
    identity column for a pixel without weight as the CSR form.
    """
    beta = check_beta(beta)
    offsets = stencil_offsets(radius)
    index = {o: k for k, o in enumerate(offsets)}
    src, dst, aff = directed_edges(aff_pairs, h, w, radius, edge_mask)
    planes = np.zeros((len(offsets), h * w), dtype=np.float64)
    if src.size:
        dy, dx = src // w - dst // w, src % w - dst % w
        lookup = np.zeros((2 * radius - 1, 2 * radius - 1), dtype=np.int64)
        for (oy, ox), k in index.items():
            lookup[oy + radius - 1, ox + radius - 1] = k
        planes[lookup[dy + radius - 1, dx + radius - 1], dst] = np.power(aff.astype(np.float64), beta)
    if self_loops:
        planes[0] = 1.0
    col_sum = planes.sum(axis=0)
    empty = col_sum <= 0
    planes[0, empty] = 1.0
    col_sum[empty] = 1.0
    planes /= col_sum
    return offsets, planes.reshape(len(offsets), h, w)


def random_walk_stencil(cams, offsets, planes, logt: int, tol: float | None = None) -> np.ndarray:
    """``cams @ T ** (2 ** logt)`` by ``2 ** logt`` stencil steps (the same steps as
    :func:`random_walk_sparse`, the same result to float rounding).

    ``offsets``, ``planes``: :func:`stencil_transition`. The CAMs live in a zero-padded
    flat buffer (pad ``p`` = the largest offset on every side), so the shift by ``(dy, dx)``
    is the flat slice starting ``dy * (w + 2p) + dx`` further: one ``addcmul_`` over all
    channels and all rows per offset (the padding columns get weight 0 and stay 0).
    Planes that are zero everywhere (offsets longer than the grid, edges the mask drops)
    are skipped. Runs on torch's configured threads, like :func:`random_walk_sparse`.
    """
    logt = check_logt(logt)
    cam_mat, shape = _cams_matrix(cams)
    planes = _to_numpy(planes, "planes")
    k, h, w = planes.shape
    if len(offsets) != k or cam_mat.shape[1] != h * w:
        raise ValueError(f"planes {planes.shape} / {len(offsets)} offsets do not fit cams of shape {shape}")
    dtype = _float_dtype(cam_mat)
    channels = cam_mat.shape[0]
    pad = max((max(abs(dy), abs(dx)) for dy, dx in offsets), default=0)
    wp = w + 2 * pad
    length = h * wp  # the h grid rows, padding columns included
    base = pad + pad * wp  # flat position of (row 0, padded column 0) in the buffer
    keep = [i for i in range(k) if i == 0 or planes[i].any()]
    weights = np.zeros((len(keep), h, wp), dtype=dtype)
    weights[:, :, pad:pad + w] = planes[keep]
    weights = torch.from_numpy(weights.reshape(len(keep), length))
    shifts = [base + offsets[i][0] * wp + offsets[i][1] for i in keep]
    buf = torch.zeros((channels, pad + (h + 2 * pad + 1) * wp), dtype=torch.float64 if dtype == np.float64 else torch.float32)
    grid = buf[:, pad:pad + (h + 2 * pad) * wp].view(channels, h + 2 * pad, wp)
    grid[:, pad:pad + h, pad:pad + w] = torch.from_numpy(np.ascontiguousarray(cam_mat, dtype=dtype)).view(channels, h, w)
    acc = torch.empty((channels, length), dtype=buf.dtype)
    for _ in range(2 ** logt):
        torch.mul(weights[0], buf[:, shifts[0]:shifts[0] + length], out=acc)
        for plane, start in zip(weights[1:], shifts[1:]):
            acc.addcmul_(plane, buf[:, start:start + length])
        current = buf[:, base:base + length]
        if tol is not None and float((acc - current).abs().max()) <= tol:
            current.copy_(acc)
            break
        current.copy_(acc)
    out = grid[:, pad:pad + h, pad:pad + w].reshape(channels, h * w).numpy()
    return np.ascontiguousarray(out).reshape(shape)


def background_channel(fg_cams, alpha: float) -> np.ndarray:
    """PSA/RETAB background score ``(1 - max_c fg_c) ** alpha`` from max-normalised CAMs.

    ``fg_cams``: ``C x H x W`` (or ``C x N``) foreground CAMs in [0, 1]; returns ``H x W``
    (or ``N``). Values above 1 are clipped so the base never goes negative.
    """
    alpha = check_alpha(alpha)
    fg = _to_numpy(fg_cams, "fg_cams")
    if fg.ndim not in (2, 3):
        raise ValueError(f"fg_cams must be C x H x W or C x N, got shape {fg.shape}")
    dtype = _float_dtype(fg)
    if fg.shape[0] == 0:
        return np.ones(fg.shape[1:], dtype=dtype)
    top = np.clip(fg.max(axis=0), 0.0, 1.0).astype(dtype)
    return np.power(1.0 - top, alpha).astype(dtype)


def _walk(cams, aff_pairs, h: int, w: int, radius: int, beta: float, logt: int, edge_mask,
          method: str, tol: float | None) -> np.ndarray:
    """One walk with the given edges (+ self-loops), by the chosen method."""
    check_method(method)
    if method == "dense":
        a = dense_affinity_matrix(aff_pairs, h, w, radius, beta, edge_mask)
        return random_walk_dense(cams, a, logt)
    if method == "stencil":
        offsets, planes = stencil_transition(aff_pairs, h, w, radius, beta, edge_mask)
        return random_walk_stencil(cams, offsets, planes, logt, tol=tol)
    t = transition_from_affinity(aff_pairs, h, w, radius, beta, edge_mask)
    return random_walk_sparse(cams, t, logt, tol=tol)


def psa_random_walk(cams_fg, aff_pairs, beta: float, logt: int, alpha: float | None, radius: int,
                    method: Method = "sparse", with_background: bool = True,
                    tol: float | None = None) -> np.ndarray:
    """PSA's single-stage walk of ``C_fg x H x W`` foreground CAMs over the affinity graph.

    With ``with_background`` (default) the background channel
    :func:`background_channel` ``(alpha)`` is prepended, giving ``(C_fg + 1) x H x W``
    (channel 0 = background, as PSA). Datasets without a background class (CamVid) pass
    ``with_background=False``; ``alpha`` is then unused. ``method='dense'`` is the
    reference (PSA's matrix power).
    """
    fg = _to_numpy(cams_fg, "cams_fg")
    if fg.ndim != 3:
        raise ValueError(f"cams_fg must be C x H x W, got shape {fg.shape}")
    _, h, w = fg.shape
    check_radius(radius)
    if with_background:
        cams = np.concatenate([background_channel(fg, alpha)[None], fg.astype(_float_dtype(fg))], axis=0)
    else:
        cams = fg
    return _walk(cams, aff_pairs, h, w, radius, beta, logt, None, method, tol)


def two_stage_edge_masks(boundary_mask, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Directed ``(2, M)`` edge masks of RETAB's two stages (rows as in :func:`directed_edges`).

    ``boundary_mask``: ``H x W`` boolean, True at (predicted) boundary pixels.

    * stage 1: both directions of non-boundary <-> non-boundary pairs only; boundary
      pixels get no edge at all (only their self-loop), so they keep their values and
      feed nothing into the interior;
    * stage 2: only edges *into* boundary pixels (boundary -> boundary and
      non-boundary -> boundary); a non-boundary pixel's column is then just its self-loop,
      so confident pixels are frozen while boundary pixels collect from their neighbours.
    """
    bmask = np.asarray(_to_numpy(boundary_mask, "boundary_mask"), dtype=bool)
    if bmask.ndim != 2:
        raise ValueError(f"boundary_mask must be H x W, got shape {bmask.shape}")
    h, w = bmask.shape
    from_idx, to_idx = pair_index_arrays(h, w, radius)
    inner = ~bmask.ravel()
    inner_from, inner_to = inner[from_idx], inner[to_idx]
    both_inner = inner_from & inner_to
    stage1 = np.stack([both_inner, both_inner])
    # Row 0 is from -> to (flows into `to`), row 1 is to -> from (flows into `from`).
    stage2 = np.stack([~inner_to, ~inner_from])
    return stage1, stage2


def two_stage_random_walk(cams, aff_pairs, boundary_mask, beta: float, logt: int, radius: int,
                          method: Method = "sparse", tol: float | None = None,
                          return_intermediate: bool = False):
    """RETAB's boundary-aware two-stage walk of full ``C x H x W`` CAMs (background included).

    Stage 1 propagates among non-boundary pixels only; stage 2 starts from the stage-1
    output and propagates into boundary pixels only (see :func:`two_stage_edge_masks`).
    Both stages use the same ``beta`` and ``logt`` (RETAB: 8 and 8). Returns the stage-2
    CAMs, or ``(stage2, stage1)`` with ``return_intermediate``.
    """
    arr = _to_numpy(cams, "cams")
    if arr.ndim != 3:
        raise ValueError(f"cams must be C x H x W, got shape {arr.shape}")
    _, h, w = arr.shape
    bmask = np.asarray(_to_numpy(boundary_mask, "boundary_mask"), dtype=bool)
    if bmask.shape != (h, w):
        raise ValueError(f"boundary_mask shape {bmask.shape} != cams grid {(h, w)}")
    stage1_edges, stage2_edges = two_stage_edge_masks(bmask, radius)
    stage1 = _walk(arr, aff_pairs, h, w, radius, beta, logt, stage1_edges, method, tol)
    stage2 = _walk(stage1, aff_pairs, h, w, radius, beta, logt, stage2_edges, method, tol)
    return (stage2, stage1) if return_intermediate else stage2
