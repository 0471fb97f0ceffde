"""The demo folders of docs/segment_your_images.md, made from the MSRC photos, and the cow IoU
of a few-shot result against MSRC's masks.

    .venv/bin/python scripts/msrc_demo_folders.py make --out work/demo
    .venv/bin/python scripts/msrc_demo_folders.py iou results/msrc/fewshot/cows

``make`` writes ``<out>/msrc20`` (20 val JPEGs: every 6th line of val.txt), ``<out>/cows/support``
(images/ and masks/: the first 5 train photos with a cow and their palette masks; cow = index 1)
and ``<out>/cows/photos`` (the val photos with a cow, then photos without one up to 20), and
``<out>/apply.yaml`` naming them (``--configfile`` of the folder targets).
``iou`` prints the foreground IoU of ``<result>/masks/*.png`` (1 = object) against the cow pixels
of the MSRC masks of the same names (255 ignored; intersections and unions summed over images):
over all images, over the photos with a cow, and the share of pixels marked on those without.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

MSRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "msrc"
COW, IGNORE = 1, 255


def ids(split: str) -> list[str]:
    return (MSRC / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def mask(image_id: str) -> np.ndarray:
    with Image.open(MSRC / "SegmentationClass" / f"{image_id}.png") as im:
        return np.asarray(im)


def make(out: Path, count: int = 20, shots: int = 5) -> None:
    if out.exists():
        shutil.rmtree(out)
    val = ids("val")
    (out / "msrc20").mkdir(parents=True)
    for i in val[::6][:count]:
        shutil.copy(MSRC / "JPEGImages" / f"{i}.jpg", out / "msrc20")
    cows = [i for i in val if (mask(i) == COW).any()]
    others = [i for i in val if not (mask(i) == COW).any()][:count - len(cows)]
    (out / "cows" / "photos").mkdir(parents=True)
    for i in cows + others:
        shutil.copy(MSRC / "JPEGImages" / f"{i}.jpg", out / "cows" / "photos")
    support = out / "cows" / "support"
    (support / "images").mkdir(parents=True)
    (support / "masks").mkdir()
    for i in [i for i in ids("train") if (mask(i) == COW).any()][:shots]:
        shutil.copy(MSRC / "JPEGImages" / f"{i}.jpg", support / "images")
        shutil.copy(MSRC / "SegmentationClass" / f"{i}.png", support / "masks")
    (out / "apply.yaml").write_text(
        "apply:\n"
        f"  folders: {{msrc20: {out / 'msrc20'}}}\n"
        f"  fewshot: {{cows: {{support: {support}, query: {out / 'cows' / 'photos'}}}}}\n"
        f"  object_indices: [{COW}]        # MSRC palette masks: 1 = cow\n")
    print(f"{out}: msrc20 ({count}), cows/photos ({len(cows)} with a cow, {len(others)} without), "
          f"cows/support ({shots}), apply.yaml")


def iou(result: Path) -> None:
    inter = union = cow_inter = cow_union = 0
    marked = []
    for path in sorted((result / "masks").glob("*.png")):
        with Image.open(path) as im:
            pred = np.asarray(im) == 1
        gt = mask(path.stem)
        valid, cow = gt != IGNORE, gt == COW
        i, u = int((pred & cow & valid).sum()), int(((pred | cow) & valid).sum())
        inter, union = inter + i, union + u
        if cow.any():
            cow_inter, cow_union = cow_inter + i, cow_union + u
        else:
            marked.append(float(pred.mean()))
    print(f"{result}: foreground IoU {inter / max(union, 1):.3f} over all images, "
          f"{cow_inter / max(cow_union, 1):.3f} over the photos with a cow; photos without: "
          f"{min(marked, default=0):.3f}-{max(marked, default=0):.3f} of the pixels marked")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("make").add_argument("--out", type=Path, default=Path("work/demo"))
    sub.add_parser("iou").add_argument("result", type=Path)
    args = ap.parse_args()
    make(args.out) if args.command == "make" else iou(args.result)


if __name__ == "__main__":
    main()
