"""Per-dataset state at scale: what each stage keeps per image, measured, and its size for N images.

    python benchmarks/dataset_state_benchmark.py [--images 10582] [--schedule voc cpu] [--json out.json]

For one ``--height x --width`` image (VOC: 500 x 375) this measures, with the library
functions the stages use and randomly initialised networks of the configured
architectures (shapes do not depend on the weights):

* in memory, whole split at once (grows with the image count):
  ``seg_features``  the segmentation backbone's float16 features (``split_features``; only
  with ``segmentation.feature_cache``): the stage holds the per-batch chunks and their
  concatenation at the end (peak ~2x the cache), train_seg / predict_seg load the whole file;
  ``crnet_features`` the frozen CRNet encoder's float16 features (``Encoder``), same layout
  and the same 2x while the file is built; every few-shot stage loads the whole file;
  ``propagate`` with ``alpha: auto``: the base samples' revised scores (float16, one
  background channel per alpha candidate) until the alpha is chosen;
* on disk, one file per image (memory per image only): CAM files (``write_cam_file``),
  revised scores (float16 npz), boundary maps and pseudo labels (PNG; sizes of random
  content, the worst case for compression).

Prints bytes per image, the total for ``--images`` and the peak memory of the stage that
builds or loads the state, and flags anything over ``--limit-gib`` (24 GiB: the CPU machine).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

GIB = 2 ** 30


def measure(schedule: str, args) -> list[dict]:
    import numpy as np
    import torch

    from pseudo_label_path_benchmark import schedule_params
    from pipeline.boundary import prob_to_uint8
    from pipeline.cam import strided_size, write_cam_file
    from pipeline.data.batches import normalize_batch
    from pipeline.data.fewshot_features import Encoder
    from pipeline.data.label_png import write_label_png
    from pipeline.io import save_npz
    from pipeline.methods.retab.propagate import propagation_config
    from pipeline.segmentation import build_seg_model, feature_cache_enabled

    params = schedule_params(schedule, Path(args.params))
    params["backbone"] = {**params["backbone"], "pretrained": False}
    rng = np.random.default_rng(0)
    size = (args.height, args.width)
    image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    x = normalize_batch(image[None])
    rows = []
    with torch.no_grad():
        seg = build_seg_model(params, 21).eval()
        feats = seg.features(x)
        rows.append({"state": "seg_features cache", "kind": "memory (whole split)",
                     "used": feature_cache_enabled(params), "shape": list(feats.shape[1:]),
                     "bytes_per_image": feats[0].numel() * 2, "peak_factor": 2.0,
                     "where": "stage seg_features builds it (chunks + concatenation); train_seg/predict_seg load it"})
        enc = Encoder(params).eval()
        efeats = enc(x)
        rows.append({"state": "crnet_features cache", "kind": "memory (whole split)", "used": True,
                     "shape": list(efeats.shape[1:]), "bytes_per_image": efeats[0].numel() * 2, "peak_factor": 2.0,
                     "where": "stage crnet_features builds it; every few-shot stage loads the split's file"})
    pcfg = propagation_config(params, "two_stage")
    n_alphas = len(pcfg["alpha_candidates"]) if pcfg["alpha"] == "auto" else 1
    grid = (-(-size[0] // 8), -(-size[1] // 8))  # the affinity net's stride-8 grid
    held = (n_alphas + args.labels) * grid[0] * grid[1] * 2
    rows.append({"state": "propagate alpha-auto held scores", "kind": "memory (base samples)",
                 "used": pcfg["alpha"] == "auto", "shape": [n_alphas + args.labels, *grid], "bytes_per_image": held,
                 "peak_factor": 1.0, "where": "stage propagate (alpha: auto), base samples only"})
    store = int(params["cam"]["store_stride"])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cam_grid = strided_size(size, store)
        cams = rng.random((args.labels, *cam_grid)).astype(np.float32)
        write_cam_file(tmp / "cam.npz", cams, list(range(1, args.labels + 1)), size, store)
        save_npz(tmp / "rev.npz", scores=rng.random((1 + args.labels, *grid)).astype(np.float16),
                 keys=np.arange(1 + args.labels), size=np.asarray(size), stride=np.asarray(8))
        from PIL import Image

        Image.fromarray(prob_to_uint8(rng.random(size).astype(np.float32))).save(tmp / "boundary.png")
        write_label_png(tmp / "pseudo.png", rng.integers(0, 3, size=size).astype(np.uint8))
        for name, path in (("CAM files (infer_cam)", "cam.npz"), ("revised scores (propagate)", "rev.npz"),
                           ("boundary maps (infer_boundary)", "boundary.png"),
                           ("pseudo labels (pseudo_labels)", "pseudo.png")):
            rows.append({"state": name, "kind": "disk (one file per image)", "used": True, "shape": None,
                         "bytes_per_image": (tmp / path).stat().st_size, "peak_factor": None,
                         "where": "read one image at a time"})
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--labels", type=int, default=2)
    parser.add_argument("--images", type=int, default=10582, help="images of the split (VOC + SBD train_aug)")
    parser.add_argument("--limit-gib", type=float, default=24.0)
    parser.add_argument("--schedule", nargs="+", default=["voc", "cpu"], choices=["voc", "cpu"])
    parser.add_argument("--params", default=str(REPO_ROOT / "params.yaml"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import pipeline  # noqa: F401
    import torch

    torch.set_num_threads(1)
    summary = {"config": {"height": args.height, "width": args.width, "images": args.images,
                          "limit_gib": args.limit_gib}, "schedules": {}}
    for schedule in args.schedule:
        rows = measure(schedule, args)
        print(f"\nschedule {schedule}: per-dataset state at {args.width} x {args.height} px, {args.images} images")
        header = f"{'state':<36} {'used':>5} {'shape':>16} {'KiB/image':>10} {'GiB total':>10} {'peak GiB':>9}"
        print(header)
        print("-" * len(header))
        for row in rows:
            row["total_gib"] = row["bytes_per_image"] * args.images / GIB
            row["peak_gib"] = row["total_gib"] * row["peak_factor"] if row["peak_factor"] else None
            shape = "x".join(str(s) for s in row["shape"]) if row["shape"] else "-"
            peak = f"{row['peak_gib']:>9.1f}" if row["peak_gib"] is not None else f"{'-':>9}"
            print(f"{row['state']:<36} {('yes' if row['used'] else 'no'):>5} {shape:>16} "
                  f"{row['bytes_per_image'] / 1024:>10.1f} {row['total_gib']:>10.2f} {peak}")
            if row["used"] and row["peak_gib"] is not None and row["peak_gib"] > args.limit_gib:
                print(f"  OVER {args.limit_gib:g} GiB: {row['state']} needs ~{row['peak_gib']:.0f} GiB at peak "
                      f"({row['where']})")
        summary["schedules"][schedule] = rows
    if args.json:
        from pipeline.io import write_json

        write_json(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
