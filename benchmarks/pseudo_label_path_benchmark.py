"""The whole pseudo-label path per image at VOC size, stage by stage, on a fixed thread count.

    python benchmarks/pseudo_label_path_benchmark.py [--threads 2] [--schedule voc cpu] [--json out.json]

For one ``--height x --width`` image (VOC: 500 x 375) with ``--labels`` image-level classes,
the library functions the stages call, on randomly initialised networks of the configured
architectures (speed does not depend on the weights; no download):

* ``cam``        ``pipeline.cam.multiscale_cams`` + ``normalize_cams`` (stage infer_cam):
  ``cam.infer.scales`` x (image + mirror) at ``cam.output_stride``, the label channels;
* ``boundary``   ``boundary_probability`` (stage infer_boundary) and the boundary cells of the
  walk grid (stage propagate);
* ``affinity``   ``predict_affinities`` (stage propagate): the AffinityNet's pair affinities;
* ``walk``       ``cams_on_grid`` + ``revise`` (stage propagate): the two-stage walk with
  ``propagation.method``;
* ``pseudo``     ``pseudo_label_map`` (stage pseudo_labels);
* ``seg``        ``predict_label_map`` (stage predict_seg) at ``segmentation.predict``.

Schedules: ``voc`` = params.yaml's defaults (the papers' VOC settings, no dataset
overrides); ``cpu`` = the 2-core CPU schedule of ``datasets/msrc.yaml`` (its params).
Anchors, in the same run: the walk in PSA's dense form (``propagation.method: dense``) and
an IRN-style CAM inference (``step/make_cam.py``: every class's CAMs at each scale and
mirror, both the stride-4 map and the full-resolution map, label channels selected after).
Each stage: best of ``--repeats`` after one warm-up run. Prints seconds per image, each
stage's share, the ratio to the anchor and the extrapolation to ``--dataset-images``
(VOC + SBD train_aug: 10,582).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SCHEDULES = ("voc", "cpu")
STAGES = ("cam", "boundary", "affinity", "walk", "pseudo", "seg")


def schedule_params(schedule: str, params_path: Path) -> dict:
    """voc: params.yaml's defaults without any dataset's overrides; cpu: msrc's CPU schedule."""
    from pipeline.config import load_params, read_params_file, resolve_params, validate_params, with_dataset_files

    if schedule == "cpu":
        return load_params(params_path, "msrc")
    raw = with_dataset_files(read_params_file(params_path), params_path.parent / "datasets")
    validate_params(raw, params_path)
    raw = {**raw, "overrides": {}}
    return resolve_params(raw, "msrc", params_path)


def best_time(fn, repeats: int):
    """(best seconds of ``repeats`` runs after a warm-up, last result)."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def best_times_interleaved(fns: list, repeats: int) -> list:
    """[(best seconds, last result)] of each of ``fns``, run in turn ``repeats`` times after a
    warm-up of each: on a shared machine the load then drifts over both alike."""
    outs = [fn() for fn in fns]
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            outs[k] = fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return list(zip(best, outs))


def irn_style_cams(model, image, scales, flip, stride, channels, mean, std):
    """IRN ``make_cam.py``: all classes per scale (image + mirror), strided and full-size maps summed."""
    import torch
    import torch.nn.functional as F

    from pipeline.cam import normalize_cams, resize_maps, scaled_size, strided_size
    from pipeline.data.batches import normalize_batch
    from pipeline.data.augment import resize_image

    size = image.shape[:2]
    strided, high = None, None
    for scale in scales:
        batch = normalize_batch(resize_image(image, scaled_size(size, scale))[None], mean, std)
        if flip:
            batch = torch.cat([batch, batch.flip(-1)])
        with torch.no_grad():
            cams = model.cams(batch)
        merged = cams[0] + cams[1].flip(-1) if flip else cams[0]
        s = resize_maps(merged, strided_size(size, stride))
        h = F.interpolate(merged[None], size=size, mode="bilinear", align_corners=False)[0]
        strided = s if strided is None else strided + s
        high = h if high is None else high + h
    return normalize_cams(strided[list(channels)]), normalize_cams(high[list(channels)])


def run_schedule(schedule: str, args) -> dict:
    import numpy as np
    import torch

    from pipeline.boundary import boundary_net_backbone_cfg, non_boundary_mask, prob_to_uint8
    from pipeline.cam import cam_backbone_cfg, cams_function, multiscale_cams, normalize_cams, strided_size
    from pipeline.data.batches import normalize_batch
    from pipeline.methods.retab.infer_boundary import boundary_probability
    from pipeline.methods.retab.propagate import boundary_on_grid, cams_on_grid, predict_affinities, \
        propagation_config, revise
    from pipeline.models import AffinityNet, BoundaryNet, CAMNet, backbone_normalization
    from pipeline.propagation.random_walk import logt_for_reach
    from pipeline.pseudo_labels import pseudo_label_map
    from pipeline.segmentation import build_seg_model
    from pipeline.stages.predict_seg import predict_config, predict_label_map

    params = schedule_params(schedule, Path(args.params))
    params["backbone"] = {**params["backbone"], "pretrained": False}
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    image = rng.integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8)
    size = image.shape[:2]
    n_fg = 20
    labels = sorted(rng.choice(np.arange(1, n_fg + 1), size=args.labels, replace=False).tolist())
    channels = [c - 1 for c in labels]
    mean, std = backbone_normalization(params["backbone"])

    cam_cfg = params["cam"]
    scales, flip = [float(s) for s in cam_cfg["infer"]["scales"]], bool(cam_cfg["infer"]["flip"])
    store = int(cam_cfg["store_stride"])
    cam_model = CAMNet(cam_backbone_cfg(params), num_classes=n_fg).eval()
    anchor_cam_model = CAMNet(cam_backbone_cfg(params), num_classes=n_fg).eval()
    anchor_cam_model.load_state_dict(cam_model.state_dict())  # IRN's form: the default layout
    cams_fn = cams_function(cam_model, "cpu")  # what stage infer_cam runs
    boundary_model = BoundaryNet(boundary_net_backbone_cfg(params, pretrained=False)).eval()
    aff_model = AffinityNet(params["backbone"], feat_dim=int(params["affinity"].get("feat_dim", 448))).eval()
    # predict_seg runs the seg net channels_last on the CPU
    seg_model = build_seg_model(params, n_fg + 1).eval().to(memory_format=torch.channels_last)
    pcfg = propagation_config(params, "two_stage")
    alphas = pcfg["alpha_candidates"] if pcfg["alpha"] == "auto" else [pcfg["alpha"]]
    seg_pred = predict_config(params)
    times, anchors, notes = {}, {}, {}
    state = {}

    def cam_stage():
        cams = multiscale_cams(cams_fn, image, scales, flip, strided_size(size, store), mean, std, channels)
        return normalize_cams(cams).numpy()

    batch = normalize_batch(image[None], mean, std)

    def boundary_stage():
        with torch.no_grad():
            prob = boundary_probability(boundary_model, batch, bool(params["boundary"]["infer"]["flip"]))[0].numpy()
        prob_uint8 = prob_to_uint8(prob)
        return ~np.asarray(non_boundary_mask(prob_uint8, pcfg["tau"], pcfg["erosion"]), dtype=bool)

    def affinity_stage():
        return predict_affinities(aff_model, batch, pcfg["radius"], pcfg["flip"])

    def cam_default_layout():
        return normalize_cams(multiscale_cams(anchor_cam_model.cams, image, scales, flip, strided_size(size, store),
                                              mean, std, channels)).numpy()

    with torch.no_grad():
        if args.anchors:  # channels_last (the stage's) and the default layout, interleaved
            (times["cam"], state["cams"]), (notes["cam_default_layout_s"], default) = best_times_interleaved(
                [cam_stage, cam_default_layout], args.repeats)
            notes["cam_max_abs_diff_vs_default_layout"] = float(np.abs(default - state["cams"]).max())
        else:
            times["cam"], state["cams"] = best_time(cam_stage, args.repeats)
        times["boundary"], _ = best_time(boundary_stage, args.repeats)
        times["affinity"], (affs, grid) = best_time(affinity_stage, args.repeats)
    cell = int(aff_model.out_stride)
    cfg = dict(pcfg)
    if cfg["logt"] == "auto":
        cfg["logt"] = logt_for_reach(grid, cfg["radius"])
    # a random net's boundary map is not boundary-like: the walk gets a cross-shaped band instead
    # (its cost does not depend on where the boundary is; the cell share is printed)
    boundary = np.zeros(size, dtype=bool)
    boundary[:, size[1] // 2 - 2:size[1] // 2 + 2] = True
    boundary[size[0] // 2 - 2:size[0] // 2 + 2] = True
    cells = boundary_on_grid(boundary, grid, cell, cfg["boundary_cell_fraction"])

    def walk_stage(method):
        scores = cams_on_grid(state["cams"], store, size, grid, cell, alphas, True)
        return revise(scores, affs[0], {**cfg, "method": method}, "two_stage", cells)

    times["walk"], revised = best_time(lambda: walk_stage(cfg["method"]), args.repeats)
    keys = [0] * len(alphas) + labels
    keys_walk = [0] + labels
    revised_one = np.concatenate([revised[:1], revised[len(alphas):]])
    times["pseudo"], _ = best_time(lambda: pseudo_label_map(revised_one, keys_walk, size, cell, labels, 0),
                                   args.repeats)
    with torch.no_grad():
        times["seg"], _ = best_time(lambda: predict_label_map(seg_model, image, seg_pred["scales"], seg_pred["flip"],
                                                              mean, std, "cpu", torch.channels_last), args.repeats)
    if args.anchors:
        anchors["walk"], dense = best_time(lambda: walk_stage("dense"), 1 if args.repeats else 0)
        notes["walk_max_abs_diff_vs_dense"] = float(np.abs(dense - revised).max())
        with torch.no_grad():
            anchors["cam"], _ = best_time(lambda: irn_style_cams(anchor_cam_model, image, scales, flip, store, channels,
                                                                 mean, std), args.repeats)
    return {"schedule": schedule, "times": times, "anchors": anchors, "notes": notes, "grid": list(grid),
            "logt": cfg["logt"], "walk_channels": len(keys), "method": cfg["method"],
            "boundary_cell_share": float(cells.mean()),
            "settings": {"cam_scales": scales, "cam_flip": flip, "cam_output_stride": cam_model.out_stride,
                         "boundary_flip": bool(params["boundary"]["infer"]["flip"]),
                         "seg_scales": seg_pred["scales"], "seg_flip": seg_pred["flip"],
                         "backbone_output_stride": params["backbone"]["output_stride"],
                         "seg_input_scale": float(params["segmentation"].get("input_scale", 1.0))}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--labels", type=int, default=2, help="image-level classes of the image (VOC: 1.5 mean)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per stage after one warm-up (best kept)")
    parser.add_argument("--schedule", nargs="+", default=list(SCHEDULES), choices=SCHEDULES)
    parser.add_argument("--no-anchors", dest="anchors", action="store_false",
                        help="skip the dense walk and the IRN-style CAM inference")
    parser.add_argument("--dataset-images", type=int, default=10582, help="images to extrapolate to (train_aug)")
    parser.add_argument("--params", default=str(REPO_ROOT / "params.yaml"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import pipeline  # noqa: F401  (OpenMP wait policy before torch loads)
    import torch

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results = [run_schedule(schedule, args) for schedule in args.schedule]
    load_after = os.getloadavg()
    print(f"\npseudo-label path per image, {args.width} x {args.height} px, {args.labels} image labels, "
          f"{args.threads} thread(s), best of {args.repeats} after a warm-up, random-init nets")
    for res in results:
        total = sum(res["times"].values())
        s = res["settings"]
        print(f"\nschedule {res['schedule']}: CAM scales {s['cam_scales']} flip {s['cam_flip']} at stride "
              f"{s['cam_output_stride']}; boundary flip {s['boundary_flip']}; backbone stride "
              f"{s['backbone_output_stride']}; walk {res['method']} on a {res['grid'][0]}x{res['grid'][1]} grid, "
              f"logt {res['logt']}, {res['walk_channels']} channels, two stages; seg scales {s['seg_scales']} "
              f"flip {s['seg_flip']} input scale {s['seg_input_scale']:g}")
        header = f"{'stage':<10} {'s/image':>9} {'share':>7} {'anchor s':>9} {'anchor/ours':>12}"
        print(header)
        print("-" * len(header))
        for stage in STAGES:
            t = res["times"][stage]
            anchor = res["anchors"].get(stage)
            cells = (f"{anchor:>9.3f} {anchor / t:>11.1f}x" if anchor is not None else f"{'':>9} {'':>12}")
            print(f"{stage:<10} {t:>9.3f} {100 * t / total:>6.1f}% {cells}")
        print(f"{'total':<10} {total:>9.3f} {100.0:>6.1f}%")
        hours = total * args.dataset_images / 3600
        res["total_s"] = total
        res["extrapolated_hours"] = hours
        print(f"{args.dataset_images} images: {hours:.1f} h on {args.threads} thread(s) (total x images; "
              f"the training stages are not in it)")
        if res["notes"]:
            print("anchors: walk = PSA's dense form of the same two-stage walk (max |diff| "
                  f"{res['notes']['walk_max_abs_diff_vs_dense']:.1e}); cam = IRN-style make_cam (all classes, "
                  "stride-4 and full-size maps)")
            print(f"cam stage in the default (contiguous) layout, timed in turn with it: "
                  f"{res['notes']['cam_default_layout_s']:.3f} s, "
                  f"{res['notes']['cam_default_layout_s'] / res['times']['cam']:.2f}x the channels_last one "
                  f"(max |diff| of the CAMs {res['notes']['cam_max_abs_diff_vs_default_layout']:.1e})")
    print(f"\nload average (1/5/15 min) before {' '.join(f'{x:.2f}' for x in load_before)}, after "
          f"{' '.join(f'{x:.2f}' for x in load_after)} on {os.cpu_count()} cores: timings of a busy machine are noisy")
    summary = {"config": {k: getattr(args, k) for k in ("height", "width", "labels", "threads", "repeats",
                                                        "dataset_images")},
               "load_before": load_before, "load_after": load_after, "schedules": results}
    if args.json:
        from pipeline.io import write_json

        write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
