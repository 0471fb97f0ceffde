"""A folder of the user's own images (and, for few-shot, their masks), read for inference.

Stages segment_folder and fewshot_folder read folders that are not a VOC dataset: any file
names, any sizes, JPEG / PNG / anything PIL decodes, grey-scale or with alpha.

* :func:`folder_files`: the files of a folder that count, in name order: every regular file
  whose name does not start with a dot (hidden files such as ``.DS_Store`` are skipped,
  sub-folders are not read). A file that is not a readable image is an error, not skipped:
  the user learns which file was left out of the results.
* :func:`read_rgb`: HxWx3 uint8 as viewers show the image (an EXIF orientation is applied, so
  a phone photo's mask is upright with it). Grey-scale images are repeated to three channels;
  an alpha channel is dropped (the colours under it are kept: a transparent area is segmented
  as whatever colour it stores).
* :func:`check_images`: every image decoded once before any output is written, so a corrupt
  file stops the run with one line naming it and nothing partial appears (the "nothing done"
  choice of the folder stages: a result folder is complete or absent, as every artifact of
  the pipeline).
* Support pairs (few-shot): ``<support>/images/<stem>.<ext>`` and ``<support>/masks/<stem>.png``,
  paired by stem. :func:`read_object_mask` reads a mask as an episode mask (1 = object,
  0 = background, 255 = ignored); which stored values mean the object is its docstring.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.data.voc import decoding
from pipeline.errors import PipelineError

BROKEN = "unreadable or corrupt {what} ({err})"  # a file that PIL recognises but cannot decode
SUPPORT_IMAGES, SUPPORT_MASKS = "images", "masks"
IGNORE = 255  # ignored pixels of an episode mask (VOC's void index; pipeline.data.episodes keeps it)
# A grey-scale (mode 'L' / '1') support mask is the object where its value is at or above this:
# 0/255 masks split exactly, and so do masks whose edges a drawing tool anti-aliased.
GREY_OBJECT_THRESHOLD = 128


def folder_files(folder: str | os.PathLike, what: str = "image folder") -> list[Path]:
    """The non-hidden regular files of ``folder`` in name order; a missing folder or one without
    any such file is one error naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(folder, f"{what} not found (or not a folder)")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    if not files:
        raise PipelineError(folder, f"{what} holds no file")
    return files


def check_unique_stems(files: list[Path]) -> None:
    """Outputs are named by stem: two inputs with one stem (``a.jpg``, ``a.png``) are an error."""
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise PipelineError(path, f"has the same name as {seen[path.stem].name} up to the extension; the "
                                "outputs are named <name>.png / <name>.jpg: rename one")
        seen[path.stem] = path


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """HxWx3 uint8 RGB of any image PIL decodes (grey repeated, alpha dropped); errors name the file."""
    path = Path(path)
    with decoding(path, "image", BROKEN), Image.open(path) as im:
        im.load()
        # camera photos store their orientation in EXIF: segment the image as viewers show it
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8).copy()


def check_images(files: list[Path]) -> list[tuple[int, int]]:
    """(height, width) of every file, each decoded in full: the first unreadable one is one
    error naming it (and how many others are unreadable), before anything is written."""
    sizes, bad = [], []
    for path in files:
        try:
            sizes.append(read_rgb(path).shape[:2])
        except PipelineError as err:
            bad.append(err)
    if bad:
        more = f" ({len(bad) - 1} more unreadable file(s): {', '.join(Path(e.where).name for e in bad[1:4])}" \
               f"{', ...' if len(bad) > 4 else ''})" if len(bad) > 1 else ""
        raise PipelineError(bad[0].where, f"{bad[0].problem}{more}; nothing was written: remove or fix it")
    return sizes


def support_pairs(support: str | os.PathLike) -> list[tuple[Path, Path]]:
    """``[(image, mask), ...]`` of a support folder (``images/`` and ``masks/<stem>.png``), in
    name order; an image without a mask or a mask without an image is one error naming it."""
    support = Path(support)
    images = folder_files(support / SUPPORT_IMAGES, "support image folder")
    check_unique_stems(images)
    masks = {p.stem: p for p in folder_files(support / SUPPORT_MASKS, "support mask folder")}
    pairs = []
    for image in images:
        mask = masks.pop(image.stem, None)
        if mask is None:
            raise PipelineError(image, f"support image without a mask (expected {support / SUPPORT_MASKS}/"
                                f"{image.stem}.png)")
        pairs.append((image, mask))
    if masks:
        extra = sorted(masks.values())[0]
        raise PipelineError(extra, f"support mask without an image of the same name in {support / SUPPORT_IMAGES}")
    return pairs


def fit_scale(size: tuple[int, int], max_side: int | None) -> float:
    """The factor that brings an image of ``size`` (H, W) to at most ``max_side`` px on its
    longer side (1.0 when it is smaller or ``max_side`` is None): the network's input only,
    masks are written at the image's own size."""
    longest = max(size)
    return 1.0 if max_side is None or longest <= max_side else max_side / longest


def read_object_mask(path: str | os.PathLike, size: tuple[int, int],
                     object_indices: list[int] | None = None) -> np.ndarray:
    """The episode mask ``H x W`` uint8 of a support mask: 1 = object, 0 = background, 255 = ignored.

    Which stored values mean the object, by the PNG's mode:

    * palette ('P', VOC ``SegmentationClass`` style: the values are class indices): 0 is
      background, 255 is ignored (VOC's void), every other index is the object; with
      ``object_indices`` only those indices are the object (the rest but 255 background),
      e.g. ``[1]`` for the cows of an MSRC mask that also shows a sheep.
    * grey-scale ('L', '1', 'LA'; the 0/255 masks of FSS-1000 and most tools): values >= 128
      are the object, the rest background (no ignored pixels). ``object_indices`` is not
      used: a grey value is not a class.
    * anything else (RGB colour masks): an error, as the colours' meaning is unknown.

    ``size`` is the support image's (height, width): the mask must match it. A mask without
    any object pixel is one error naming it (there is nothing to segment from it).
    """
    path = Path(path)
    with decoding(path, "mask", BROKEN), Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode == "P":
            values = np.asarray(im, dtype=np.uint8)
        elif mode in ("L", "1", "LA", "I", "I;16"):
            values = np.asarray(im.convert("L") if mode != "L" else im, dtype=np.uint8)
        else:
            raise PipelineError(path, f"support mask of mode '{mode}': give a palette PNG of class indices or a "
                                "grey-scale 0/255 PNG")
    if values.shape != tuple(size):
        raise PipelineError(path, f"mask is {values.shape[1]}x{values.shape[0]} but its image is {size[1]}x{size[0]}")
    if mode == "P":
        ignored = values == IGNORE
        obj = np.isin(values, object_indices) if object_indices else (values != 0)
        out = np.where(obj & ~ignored, 1, 0).astype(np.uint8)
        out[ignored] = IGNORE
    else:
        out = (values >= GREY_OBJECT_THRESHOLD).astype(np.uint8)
    if not (out == 1).any():
        which = f"palette indices {object_indices}" if mode == "P" and object_indices else \
            "palette index other than 0 and 255" if mode == "P" else f"grey value >= {GREY_OBJECT_THRESHOLD}"
        raise PipelineError(path, f"support mask without any object pixel (no {which}): each support must "
                            "show the object")
    return out
