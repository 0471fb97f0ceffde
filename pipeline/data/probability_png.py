"""Probability maps in [0, 1] stored as 8-bit greyscale PNGs (boundary maps of RETAB's
boundary net, object maps of L-Net): one file ``<dir>/<id>.png`` per image, value
``round(p * 255)`` (:func:`pipeline.boundary.prob_to_uint8`)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.boundary import prob_to_uint8, uint8_to_prob
from pipeline.errors import PipelineError

MAP_SUFFIX = ".png"


def write_map(path, prob: np.ndarray) -> None:
    """One map as an 8-bit greyscale PNG (inside the stage's temporary directory)."""
    Image.fromarray(prob_to_uint8(prob), mode="L").save(path, format="PNG")


def map_path(map_dir: str | os.PathLike, image_id: str) -> Path:
    return Path(map_dir) / f"{image_id}{MAP_SUFFIX}"



def read_probability_map(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """float32 ``H x W`` in [0, 1] from an 8-bit 'L' PNG; with ``size`` = (H, W) it must match."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode != "L":
                raise PipelineError(path, f"object map has mode '{im.mode}'; expected 8-bit greyscale 'L' "
                                    "(stage infer_lnet)")
            values = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise PipelineError(path, "object map not found (rerun stage infer_lnet)") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise PipelineError(path, f"unreadable or corrupt object map ({err})") from None
    if size is not None and values.shape != tuple(size):
        raise PipelineError(path, f"object map is {values.shape[1]}x{values.shape[0]} but its image is "
                            f"{size[1]}x{size[0]} (made for another dataset or image?)")
    return uint8_to_prob(values)
