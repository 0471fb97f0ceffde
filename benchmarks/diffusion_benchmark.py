"""Benchmark of the L-Net self-diffusion (pipeline/propagation/superpixel_diffusion.py).

At VOC size (a real CamVid photo resized to 500x375) with a synthetic L-Net map M and
synthetic CAMs for three classes built from the photo's ground truth (M: blurred union
of the object masks plus noise; CAM: a peaked blur of each class mask, i.e. the most
discriminative part, as CAMs are), on ONE core, it times:

* SLIC alone;
* graph construction, node features + edge weights, seeds, and the sparse harmonic solve;
* the whole of ``diffuse_image`` (SLIC + diffusion + labelling);
* the per-class Jacobi label propagation (``iterative_diffusion_reference``) on the same
  graph and seeds, and the whole pipeline with it, as the baseline;

and prints a table with the ratios and the agreement of both solvers.
Run: ``python benchmarks/diffusion_benchmark.py [--repeats 7] [--image NAME]``
(< 2 minutes; the machine's other load shows in the timings).
"""
from __future__ import annotations

import os

# One core: set before numpy/scipy/torch are imported, or their thread pools start wide.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.config import load_params  # noqa: E402
from pipeline.propagation import superpixel_diffusion as sd  # noqa: E402

CAMVID = REPO.parent / "shared" / "data" / "camvid"
VOC_SIZE = (500, 375)  # width, height of a typical VOC image
CLASSES = {8: "car", 9: "pedestrian", 6: "sign_symbol"}


def load_scene(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The photo and its ground truth, resized to VOC size."""
    image = Image.open(CAMVID / "JPEGImages" / f"{name}.jpg").convert("RGB").resize(VOC_SIZE, Image.BILINEAR)
    mask = Image.open(CAMVID / "SegmentationClass" / f"{name}.png").resize(VOC_SIZE, Image.NEAREST)
    return np.asarray(image), np.asarray(mask)


def synthetic_maps(mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """L-Net-like M (soft, noisy object map) and CAM-like peaked maps per class."""
    objects = np.isin(mask, list(CLASSES)).astype(np.float64)
    agnostic = np.clip(0.05 + 0.85 * gaussian_filter(objects, 3) + rng.normal(0, 0.05, mask.shape), 0, 1)
    cams = {}
    for class_id in CLASSES:
        blob = gaussian_filter((mask == class_id).astype(np.float64), 6)
        cams[class_id] = (blob / blob.max()) ** 2  # peaked: CAMs fire on the discriminative part
    return agnostic, cams


def median_time(fn, repeats: int):
    """Median wall and CPU (process) time of ``fn()`` over ``repeats`` runs, and its last result.

    With one thread the CPU time is what the step costs even when other jobs share the
    machine; the wall time is what a user waits for on this machine now.
    """
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return (statistics.median(walls), statistics.median(cpus)), result


def iou(pred: np.ndarray, truth: np.ndarray, class_id: int) -> float:
    a, b = pred == class_id, truth == class_id
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else float("nan")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--dataset", default="voc", help="params view (voc: the paper's VOC-scale values)")
    parser.add_argument("--image", default="0001TP_007740", help="CamVid image with car, pedestrian, sign")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tol", type=float, default=1e-7, help="Jacobi stopping change")
    args = parser.parse_args(argv)

    cfg = load_params(args.params, args.dataset)["self_diffusion"]
    image, truth = load_scene(args.image)
    agnostic, cams = synthetic_maps(truth, np.random.default_rng(0))
    r = args.repeats

    t_slic, labels = median_time(lambda: sd.slic_superpixels(
        image, cfg["slic_n_segments"], cfg["slic_compactness"], cfg["slic_sigma"], cfg["slic_max_iter"]), r)
    # skimage's default 10 k-means iterations, for the slic_max_iter choice: time, superpixel
    # count and how many pixels keep the same superpixel (best-overlap match)
    t_slic10, labels10 = median_time(lambda: sd.slic_superpixels(
        image, cfg["slic_n_segments"], cfg["slic_compactness"], cfg["slic_sigma"], 10), r)
    n = int(labels.max()) + 1
    t_graph, edges = median_time(lambda: sd.superpixel_graph(labels), r)
    t_feat, weights = median_time(lambda: sd.edge_weights(sd.node_features(image, labels, agnostic), edges,
                                                          cfg["sigma"]), r)
    features = sd.node_features(image, labels, agnostic)
    t_seed, (class_seeds, cam_means) = median_time(lambda: sd.class_seed_masks(
        labels, cams, cfg["cam_region_threshold"], cfg["cam_region_min_overlap"]), r)
    background = (features[:, 3] < cfg["background_seed_threshold"]) & ~class_seeds.any(axis=1)
    seed_mask = class_seeds | background[:, None]
    values = class_seeds.astype(np.float64)
    t_solve, q_direct = median_time(lambda: sd.harmonic_solve(n, edges, weights, seed_mask, values), r)
    t_iter, q_iter = median_time(lambda: sd.iterative_diffusion_reference(n, edges, weights, seed_mask, values,
                                                                          tol=args.tol), r)
    # The two whole pipelines run interleaved, so drifting load from other jobs hits both alike.
    full_runs = {"direct": [], "iterative": []}
    for _ in range(r):
        for solver, runs in full_runs.items():
            runs.append(median_time(lambda: sd.diffuse_image(
                image, agnostic, cams, cfg, background_index=None, source=args.image, solver=solver), 1))
    t_full, t_full_iter = ((statistics.median(run[0][0] for run in runs), statistics.median(run[0][1] for run in runs))
                           for runs in full_runs.values())
    pseudo, info = full_runs["direct"][-1][1]
    pseudo_iter, _ = full_runs["iterative"][-1][1]

    # A harder case for the iterative solver: background seeds only on the 5% of
    # superpixels with the lowest M (many free nodes, long propagation paths).
    sparse_background = (features[:, 3] <= np.quantile(features[:, 3], 0.05)) & ~class_seeds.any(axis=1)
    sparse_mask = class_seeds | sparse_background[:, None]
    t_solve_b, q_direct_b = median_time(lambda: sd.harmonic_solve(n, edges, weights, sparse_mask, values), r)
    t_iter_b, q_iter_b = median_time(lambda: sd.iterative_diffusion_reference(
        n, edges, weights, sparse_mask, values, tol=args.tol), r)

    diffusion = tuple(sum(parts) for parts in zip(t_graph, t_feat, t_seed, t_solve))
    print(f"self-diffusion benchmark: CamVid {args.image} resized to {VOC_SIZE[0]}x{VOC_SIZE[1]}, one thread, "
          f"median of {r} runs")
    print(f"superpixels {n}, edges {edges[0].size}, classes {len(cams)} "
          f"(seed superpixels {info['seed_superpixels']}, background seeds {info['background_seed_superpixels']}; "
          f"sparse-background case: {int(sparse_background.sum())})")
    print(f"params ({args.dataset}): " + ", ".join(f"{k}={v}" for k, v in cfg.items()))
    print()
    rows = [
        (f"SLIC ({cfg['slic_max_iter']} iterations: params)", t_slic, "brief: ~0.12 s on its reference core"),
        ("SLIC (10 iterations: skimage default)", t_slic10, f"{int(labels10.max()) + 1} superpixels; "
         f"{same_superpixel_share(labels, labels10) * 100:.1f}% of pixels in the matching one"),
        ("graph construction", t_graph, ""),
        ("node features + edge weights", t_feat, ""),
        ("class seeds (CAM regions)", t_seed, ""),
        (f"harmonic solve, sparse LU ({len(cams)} classes)", t_solve, ""),
        ("graph + features + seeds + solve", diffusion, "target < 0.05 s"),
        ("diffuse_image (SLIC + diffusion + labels)", t_full, "target < 0.25 s"),
        (f"per-class Jacobi solve (tol {args.tol:g})", t_iter, "baseline"),
        ("diffuse_image with Jacobi", t_full_iter, "baseline"),
        ("sparse-background case: LU solve", t_solve_b, ""),
        ("sparse-background case: Jacobi solve", t_iter_b, "baseline"),
    ]
    width = max(len(name) for name, _, _ in rows)
    print(f"{'step':<{width}}  {'wall s':>8}  {'CPU s':>8}  note")
    for name, (wall, cpu), note in rows:
        print(f"{name:<{width}}  {wall:8.4f}  {cpu:8.4f}  {note}")
    print()
    print("ratios (CPU time; Jacobi / LU):")
    print(f"  solve, per-class Jacobi vs sparse LU:            {t_iter[1] / t_solve[1]:8.1f}x")
    print(f"  diffusion without SLIC:                          "
          f"{(t_graph[1] + t_feat[1] + t_seed[1] + t_iter[1]) / diffusion[1]:8.1f}x")
    print(f"  whole diffuse_image:                             {t_full_iter[1] / t_full[1]:8.1f}x")
    print(f"  solve, sparse-background case:                   {t_iter_b[1] / t_solve_b[1]:8.1f}x")
    print(f"  SLIC share of diffuse_image:                     {t_slic[1] / t_full[1] * 100:7.0f}%")
    print(f"max |q_LU - q_Jacobi|: {np.abs(q_direct - q_iter).max():.2e} "
          f"(sparse-background case {np.abs(q_direct_b - q_iter_b).max():.2e}); "
          f"pseudo labels equal on {np.mean(pseudo == pseudo_iter) * 100:.2f}% of pixels")
    print("IoU of the pseudo label vs ground truth (synthetic M and CAMs, a sanity check only): "
          + ", ".join(f"{name} {iou(pseudo, truth, c):.2f}" for c, name in CLASSES.items()))

def same_superpixel_share(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels whose superpixel in ``a`` has its largest overlap with their superpixel in ``b``."""
    n_b = int(b.max()) + 1
    counts = np.bincount((a.astype(np.int64) * n_b + b).ravel())
    pairs = np.nonzero(counts)[0]
    best = np.zeros(int(a.max()) + 1, np.int64)
    np.maximum.at(best, pairs // n_b, counts[pairs])
    return float(best.sum() / a.size)


if __name__ == "__main__":
    main()
