"""Stage propagate: random walk of CAMs over the AffinityNet graph (PSA; RETAB two-stage).

    python -m pipeline.methods.retab.propagate --params params.yaml --dataset D --walk single|two_stage \\
        --cams work/D/shared/cam/cams --labels work/D/image_labels.json \\
        --affinity work/D/fold<k>/affinity/<variant>/model.pt [--boundary DIR] [--fold-file F] --out DIR

Per train image (PSA ``infer_aff.py``):

1. the CAMs of the image's labelled classes (npz of stage infer_cam at its stride) are
   upsampled bilinearly to image size and max-normalised per class (PSA's CAMs are
   full-resolution and max-normalised);
2. with a background class, the background score ``(1 - max_c CAM_c) ** alpha`` is
   computed *at full resolution*, as PSA does (computing it after pooling would turn a
   half-object cell into almost certain foreground: ``(1 - 0.5) ** 16``). With
   ``propagation.alpha: auto`` the fold's base samples (``--fold-file``) are walked first
   with one background channel per ``alpha_candidates`` value: the walk is linear, so each
   channel's result is what a walk with that alpha alone gives. Each candidate's pseudo
   labels (stage pseudo_labels' rule) are scored against the base samples' masks (novel
   pixels ignored) and the best mIoU's alpha is used for every image (``walk.json``);
3. every channel is average-pooled to the affinity grid (``stride`` 8 cells,
   ``ceil(H / 8)`` of them): PSA pools the zero-padded full-resolution CAM; we average
   over the in-image pixels of each cell only, so border cells are not diluted by padding;
4. pair affinities come from the trained AffinityNet (single scale; with
   ``propagation.flip`` also the mirrored image, affinities averaged), run on up to
   ``propagation.batch_size`` images of equal size at once;
5. ``single``: PSA's walk ``T = A ** beta`` column-normalised, ``2 ** logt`` steps;
   ``two_stage``: RETAB's boundary-aware walk (stage 1 among non-boundary cells, stage 2
   into boundary cells; both beta/logt). Boundary cells: the boundary map's boundary
   pixels (``~non_boundary_mask(prob, boundary.tau, boundary.erosion)``) reduced to the
   grid: a cell is boundary when at least ``propagation.boundary_cell_fraction`` of its
   pixels are (a thin boundary line covers only a few of a cell's 64 pixels; PSA-style
   nearest sampling would miss most of it and leave gaps for the walk to leak through).

Output ``DIR/<id>.npz``: ``scores`` float16 ``(C, h, w)`` (revised scores on the affinity
grid), ``keys`` int (class of each channel, background first when the dataset has one),
``size`` (H, W), ``stride`` (pixels per grid cell). The directory appears complete or not
at all. Sparse walks (``propagation.method``) never form the dense N x N matrix power.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.boundary import boundary_config
from pipeline.cam import check_cam_files_exist, read_cam_file
from pipeline.config import check_range, load_params, section
from pipeline.data.label_png import read_sized_png
from pipeline.data.folds import load_base_samples
from pipeline.data.labels import check_labels_cover, load_image_labels
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir, check_files_exist, save_npz, write_json
from pipeline.layout import WALK_INFO
from pipeline.propagation.random_walk import ALPHA_CANDIDATES, check_alpha, choose_alpha, logt_for_reach
from pipeline.runtime import progress, stage_run
from pipeline.stage import stage_device, stage_parser

WALKS = ("single", "two_stage")


# --------------------------------------------------------------------------- params

def propagation_config(params: dict, walk: str) -> dict:
    """Random-walk params checked (errors name the key), plus flip and boundary settings."""
    from pipeline.propagation.random_walk import validate_propagation_params

    cfg = validate_propagation_params(params)
    prop = section(params, "propagation")
    cfg["flip"] = bool(prop.get("flip", False))
    cfg["batch_size"] = int(prop.get("batch_size", 1))
    check_range(cfg["batch_size"], "propagation.batch_size", low=1)
    cfg["boundary_cell_fraction"] = float(prop.get("boundary_cell_fraction", 0.25))
    if cfg["alpha"] == "auto":
        candidates = prop.get("alpha_candidates") or list(ALPHA_CANDIDATES)
        for value in candidates:
            check_alpha(value)
        cfg["alpha_candidates"] = sorted({float(a) for a in candidates})
    check_range(cfg["boundary_cell_fraction"], "propagation.boundary_cell_fraction", low=0, high=1, low_open=True)
    if walk == "two_stage":

        cfg["tau"], cfg["erosion"] = boundary_config(params)
    return cfg


# --------------------------------------------------------------------------- CAM inputs

def select_label_cams(cams: np.ndarray, keys: list[int], image_labels: list[int],
                      path: Path) -> tuple[np.ndarray, list[int]]:
    """The channels of the image's labelled classes, in label order (error if one is absent)."""
    index = {k: c for c, k in enumerate(keys)}
    absent = [c for c in image_labels if c not in index]
    if absent:
        raise PipelineError(path, f"no CAM channel for labelled class {absent[0]} (keys {keys})")
    chosen = [index[c] for c in image_labels]
    return cams[chosen], [int(c) for c in image_labels]


def pool_to_grid(maps: np.ndarray, grid: tuple[int, int], cell: int) -> np.ndarray:
    """``C x H x W`` -> ``C x h x w``: mean over the in-image pixels of each ``cell x cell`` cell.

    The image is the top-left ``H x W`` of a ``h*cell x w*cell`` canvas (PSA pads at the
    bottom/right); cells partly outside average only their in-image pixels, cells wholly
    outside are 0.
    """
    maps = np.asarray(maps, dtype=np.float32)
    channels, height, width = maps.shape
    h, w = grid
    if h * cell < height or w * cell < width:
        raise ValueError(f"grid {grid} x {cell} does not cover a {height}x{width} image")
    canvas = torch.zeros((channels + 1, h * cell, w * cell), dtype=torch.float32)
    canvas[:channels, :height, :width] = torch.from_numpy(maps)
    canvas[channels, :height, :width] = 1.0  # in-image indicator
    sums = F.avg_pool2d(canvas[None], cell, cell)[0]
    inside = sums[channels]
    pooled = torch.where(inside > 0, sums[:channels] / inside.clamp_min(1e-12), torch.zeros_like(sums[:channels]))
    return pooled.numpy()


def cams_on_grid(cams: np.ndarray, stride: int, size: tuple[int, int], grid: tuple[int, int], cell: int,
                 alphas: Sequence[float], with_background: bool) -> np.ndarray:
    """Foreground CAMs at ``stride`` -> (background +) foreground scores on the affinity grid.

    Upsampled to image size and max-normalised; the background channel
    ``(1 - max fg) ** alpha`` is computed there (PSA), then everything is pooled to ``grid``.
    One background channel per alpha, first (``alpha: auto`` walks several at once: the walk
    is linear, so each channel's result is what a walk with that alpha alone gives).
    """
    from pipeline.cam import normalize_cams, upsample_cams
    from pipeline.propagation.random_walk import background_channel

    full = normalize_cams(upsample_cams(cams, size, stride))
    if with_background:
        full = np.concatenate([background_channel(full, a)[None] for a in alphas] + [full], axis=0)
    return pool_to_grid(full, grid, cell)


def with_alpha(revised: np.ndarray, index: int, n_alphas: int) -> np.ndarray:
    """``[bg_alpha_1 .. bg_alpha_n, fg ...]`` -> ``[bg_alpha_index, fg ...]``."""
    return np.concatenate([revised[index:index + 1], revised[n_alphas:]], axis=0)


def boundary_on_grid(boundary: np.ndarray, grid: tuple[int, int], cell: int, min_fraction: float) -> np.ndarray:
    """``H x W`` boolean boundary pixels -> ``h x w`` boundary cells.

    A cell is boundary when at least ``min_fraction`` of its in-image pixels are boundary
    pixels (a small fraction: any boundary line through the cell; 0.5: majority).
    """
    fraction = pool_to_grid(np.asarray(boundary, dtype=np.float32)[None], grid, cell)[0]
    return fraction >= min_fraction - 1e-6


def read_boundary_cells(directory: Path, image_id: str, size: tuple[int, int], grid: tuple[int, int],
                        cell: int, cfg: dict) -> np.ndarray:
    """Boundary cells of one image from its boundary map (uint8 probability * 255)."""
    from pipeline.boundary import non_boundary_mask

    prob = read_sized_png(directory / f"{image_id}.png", *size, "boundary map")
    boundary = ~np.asarray(non_boundary_mask(prob, cfg["tau"], cfg["erosion"]), dtype=bool)
    return boundary_on_grid(boundary, grid, cell, cfg["boundary_cell_fraction"])


# --------------------------------------------------------------------------- affinities

def predict_affinities(model, images: torch.Tensor, radius: int, flip: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """Pair affinities ``B x M`` of normalised ``B x 3 x H x W`` images (one size), and the grid size."""
    from pipeline.propagation.affinity import pairwise_affinity

    with torch.no_grad():
        features = model(images)
        aff = pairwise_affinity(features, radius)
        if flip:
            mirrored = model(images.flip(-1)).flip(-1)
            aff = (aff + pairwise_affinity(mirrored, radius)) / 2
    return aff.cpu().numpy().astype(np.float32), tuple(features.shape[-2:])


def equal_size_runs(images: list[np.ndarray], batch_size: int) -> list[list[int]]:
    """Indices of ``images`` in consecutive runs of equal size, at most ``batch_size`` long.

    One forward pass per run: the network sees a batch only of images it would also see
    alone at that size (no padding), so batching changes the speed, not the inputs.
    """
    runs: list[list[int]] = []
    for index, image in enumerate(images):
        if runs and len(runs[-1]) < batch_size and images[runs[-1][0]].shape == image.shape:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def revise(scores: np.ndarray, aff: np.ndarray, cfg: dict, walk: str, boundary_cells: np.ndarray | None) -> np.ndarray:
    """Random walk of ``C x h x w`` scores: PSA single-stage or RETAB two-stage."""
    from pipeline.propagation.random_walk import psa_random_walk, two_stage_random_walk

    if scores.shape[0] == 0:
        return scores
    if walk == "single":
        # The background channel is already in `scores` (computed at full resolution).
        return psa_random_walk(scores, aff, cfg["beta"], cfg["logt"], None, cfg["radius"],
                               method=cfg["method"], with_background=False)
    return two_stage_random_walk(scores, aff, boundary_cells, cfg["beta"], cfg["logt"], cfg["radius"],
                                 method=cfg["method"])


# --------------------------------------------------------------------------- main


def load_affinity_model(path: str, params: dict, device: str):
    """The trained AffinityNet (no ImageNet download/load: the file holds every weight)."""
    from pipeline.models import AffinityNet
    from pipeline.training import load_model

    backbone_cfg = {**params["backbone"], "pretrained": False}
    model = AffinityNet(backbone_cfg, feat_dim=int(params["affinity"].get("feat_dim", 448)))
    expected = {k: v for k, v in model.meta.items()}
    meta = load_model(path, model, expected_meta=expected)
    return model.to(device).eval(), meta


def walk_image(image_id: str, size: tuple[int, int], aff: np.ndarray, grid: tuple[int, int], cell: int, cfg: dict,
               walk: str, cam_dir: Path, boundary_dir: Path | None, labels: list[int], dataset: VOCDataset,
               alphas: Sequence[float]) -> tuple[np.ndarray, list[int], float | None]:
    """Walk one image's CAMs over its affinities.

    Returns ``(revised, keys, boundary share)``: the revised scores with one background channel
    per alpha first (datasets with a background class), the class of each channel after those
    (background first), and the share of boundary cells (two-stage walk) for the log.
    """
    cam_path = cam_dir / f"{image_id}.npz"
    cam = read_cam_file(cam_path, dataset.num_classes, dataset.background_index)
    if tuple(cam["size"]) != tuple(size):
        raise PipelineError(cam_path, f"CAM size {cam['size']} differs from the image's {tuple(size)}")
    fg, fg_keys = select_label_cams(cam["cams"], cam["keys"], labels, cam_path)
    with_background = dataset.background_index is not None
    scores = cams_on_grid(fg, cam["stride"], size, grid, cell, alphas, with_background)
    boundary_cells = None
    if walk == "two_stage":
        boundary_cells = read_boundary_cells(boundary_dir, image_id, size, grid, cell, cfg)
    if cfg["logt"] == "auto":  # the reach relative to the grid of the papers' VOC walk
        cfg = {**cfg, "logt": logt_for_reach(grid, cfg["radius"])}
    revised = revise(scores, aff, cfg, walk, boundary_cells)
    keys = ([dataset.background_index] if with_background else []) + fg_keys
    return revised, keys, None if boundary_cells is None else float(boundary_cells.mean())


def write_revised(out_dir: Path, image_id: str, revised: np.ndarray, keys: list[int], size: tuple[int, int],
                  cell: int) -> None:
    save_npz(out_dir / f"{image_id}.npz", scores=revised.astype(np.float16), keys=np.asarray(keys, dtype=np.int64),
             size=np.asarray(size, dtype=np.int64), stride=np.asarray(cell, dtype=np.int64))


def alpha_confusions(revised: np.ndarray, keys: list[int], n_alphas: int, size: tuple[int, int], cell: int,
                     labels: list[int], gt: np.ndarray, dataset: VOCDataset) -> list[np.ndarray]:
    """Per alpha, the confusion matrix of the pseudo label the walk gives (stage pseudo_labels'
    rule: upsampled, argmax over the image's labels + background) against a base sample's GT."""
    from pipeline.metrics.semantic import confusion_matrix
    from pipeline.pseudo_labels import pseudo_label_map

    out = []
    for k in range(n_alphas):
        label = pseudo_label_map(with_alpha(revised, k, n_alphas), keys, size, cell, labels,
                                 dataset.background_index, void_index=dataset.ignore_index)
        out.append(confusion_matrix(gt, label, dataset.num_classes, ignore_index=dataset.ignore_index))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    ap = stage_parser(__doc__, threads=True, inputs=("cams", "labels"))
    ap.add_argument("--walk", required=True, choices=WALKS)
    ap.add_argument("--affinity", required=True, help="AffinityNet model file (stage train_affinity)")
    ap.add_argument("--boundary", default=None, help="boundary maps <id>.png (walk two_stage)")
    ap.add_argument("--fold-file", default=None,
                    help="fold file (stage make_folds): propagation.alpha auto is chosen on its base samples")
    ap.add_argument("--out", required=True, help="output directory of <id>.npz revised scores")
    args = ap.parse_args(argv)
    if args.walk == "two_stage" and not args.boundary:
        ap.error("--walk two_stage needs --boundary")
    return args


def main(argv=None):
    args = parse_args(argv)
    params = load_params(args.params, args.dataset)
    cfg = propagation_config(params, args.walk)
    device = stage_device(args, params)

    dataset = VOCDataset(params["data"], "train")
    ids = list(dataset.ids)
    image_labels = load_image_labels(args.labels)
    check_labels_cover(image_labels, ids, args.labels, "train")
    cam_dir = Path(args.cams)
    check_cam_files_exist(cam_dir, ids)
    boundary_dir = Path(args.boundary) if args.boundary else None
    if args.walk == "two_stage":
        check_files_exist(boundary_dir, ids, ".png", "boundary map", listed="train images")
    # alpha: auto chooses among candidates on the fold's base samples (without a background
    # class there is no background score, and alpha is unused).
    alpha_auto = cfg["alpha"] == "auto" and dataset.background_index is not None
    base, novel = [], []
    if alpha_auto:
        if not args.fold_file:
            raise PipelineError("propagation.alpha", "auto chooses alpha on a fold's base samples: "
                                "give the stage --fold-file (the rules do)")
        _, base, novel = load_base_samples(args.fold_file, dataset, params["dataset"])

    from pipeline.models import backbone_normalization
    from pipeline.data.batches import normalize_batch
    from pipeline.data.folds import mask_novel_pixels
    from pipeline.metrics.semantic import mean_iou

    inputs = {"walk": args.walk, "cams": args.cams, "affinity": args.affinity, "boundary": args.boundary,
              "fold_file": args.fold_file, "images": len(ids)}
    stage_params = {"propagation": params["propagation"], "affinity": params["affinity"],
                    "boundary": params.get("boundary"), "walk": args.walk}
    with stage_run("propagate", inputs, stage_params, device) as log, atomic_dir(args.out) as tmp:
        model, meta = load_affinity_model(args.affinity, params, device)
        cell = int(model.out_stride)
        mean, std = backbone_normalization(params["backbone"])
        boundary_share, logts = [], Counter()

        def walk_all(chosen_ids: list[str], alphas: Sequence[float], desc: str, on_result) -> None:
            batch_size = cfg["batch_size"]
            for start in progress(range(0, len(chosen_ids), batch_size), desc=desc,
                                  total=-(-len(chosen_ids) // batch_size)):
                chunk = chosen_ids[start:start + batch_size]
                images = [dataset.load_image(image_id) for image_id in chunk]
                for run in equal_size_runs(images, batch_size):
                    batch = normalize_batch(np.stack([images[k] for k in run]), mean, std).to(device)
                    affs, grid = predict_affinities(model, batch, cfg["radius"], cfg["flip"])
                    for aff, k in zip(affs, run):
                        logts[logt_for_reach(grid, cfg["radius"]) if cfg["logt"] == "auto" else cfg["logt"]] += 1
                        size = images[k].shape[:2]
                        revised, keys, share = walk_image(chunk[k], size, aff, grid, cell, cfg, args.walk, cam_dir,
                                                          boundary_dir, image_labels[chunk[k]], dataset, alphas)
                        if share is not None:
                            boundary_share.append(share)
                        on_result(chunk[k], size, revised, keys)

        alpha_info = {}
        if alpha_auto:
            candidates = cfg["alpha_candidates"]
            held, confusions = {}, [0] * len(candidates)

            def score(image_id, size, revised, keys):
                gt = mask_novel_pixels(dataset.load_mask(image_id), novel, dataset.ignore_index)
                for k, cm in enumerate(alpha_confusions(revised, keys, len(candidates), size, cell,
                                                        image_labels[image_id], gt, dataset)):
                    confusions[k] = confusions[k] + cm
                held[image_id] = (size, revised.astype(np.float16), keys)

            walk_all(base, candidates, f"propagate {args.walk} (base samples, {len(candidates)} alphas)", score)
            base_miou = {a: mean_iou(cm) for a, cm in zip(candidates, confusions)} if base else {}
            alpha = choose_alpha(base_miou) if base_miou else candidates[0]
            index = candidates.index(alpha)
            log.info("alpha auto: %s on %d base samples (base mIoU per alpha: %s)", alpha, len(base),
                     ", ".join(f"{a:g}: {m:.4f}" for a, m in base_miou.items()))
            for image_id, (size, revised, keys) in held.items():
                write_revised(tmp, image_id, with_alpha(revised, index, len(candidates)), keys, size, cell)
            alpha_info = {"alpha": alpha, "alpha_chosen_on": f"{len(base)} base samples of {args.fold_file}",
                          "base_miou_per_alpha": {f"{a:g}": m for a, m in base_miou.items()}}
        else:
            alpha = cfg["alpha"]
            if dataset.background_index is not None:
                alpha_info = {"alpha": alpha}
        done = set(base) if alpha_auto else set()
        walk_all([i for i in ids if i not in done], [alpha], f"propagate {args.walk}",
                 lambda image_id, size, revised, keys: write_revised(tmp, image_id, revised, keys, size, cell))
        if boundary_share:
            log.info("boundary cells: %.1f%% of grid cells on average", 100 * float(np.mean(boundary_share)))
        log.info("%d images revised (%s walk, grid stride %d, affinity net variant %s)",
                 len(ids), args.walk, cell, meta.get("variant"))
        # The walk's length as used (propagation.logt: auto chooses it per image from its grid).
        log.info("logt %s: images per value %s", cfg["logt"], dict(sorted(logts.items())))
        write_json(tmp / WALK_INFO, {"logt": cfg["logt"], "images_per_logt": {str(k): v for k, v in sorted(logts.items())},
                                     "radius": cfg["radius"], "walk": args.walk, **alpha_info})


if __name__ == "__main__":
    run_stage(main)
