"""What the folder stages (segment_folder, fewshot_folder) write for each image, and the contact sheet.

An output folder holds ``masks/<stem>.png`` (palette PNG of class indices at the image's own
size: 0 = background, VOC colours), ``overlays/<stem>.jpg`` (the image with every
non-background pixel tinted by its class colour) and ``sheet.jpg`` (every overlay, in name
order, in a grid of captioned cells; a folder too large for one JPEG shows its first images). The folder is written by :func:`pipeline.io.atomic_dir`
in the stages: complete or absent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.data.label_png import label_image
from pipeline.report import BACKGROUND, TEXT_COLOUR, blend, colorize_labels, fit_into_cell, title_band_height

MASKS, OVERLAYS, SHEET = "masks", "overlays", "sheet.jpg"
JPEG_QUALITY = 90


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    """HxWx3 uint8: ``image`` with each pixel of class > 0 blended with its class colour at
    ``alpha``; background pixels (0) stay as they are, so the photo shows through."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"labels {labels.shape} do not match the image {image.shape[:2]}")
    out = image.copy()
    tinted = labels != 0
    out[tinted] = blend(image[tinted][None], colorize_labels(labels[tinted])[None], alpha)[0]
    return out


def write_image_outputs(out_dir: Path, stem: str, image: np.ndarray, labels: np.ndarray, alpha: float) -> np.ndarray:
    """``masks/<stem>.png`` and ``overlays/<stem>.jpg`` under ``out_dir`` (a temporary folder of
    the stage); returns the overlay (for the contact sheet)."""
    (out_dir / MASKS).mkdir(parents=True, exist_ok=True)
    (out_dir / OVERLAYS).mkdir(parents=True, exist_ok=True)
    label_image(labels).save(out_dir / MASKS / f"{stem}.png", format="PNG")
    tinted = overlay(image, labels, alpha)
    Image.fromarray(tinted).save(out_dir / OVERLAYS / f"{stem}.jpg", format="JPEG", quality=JPEG_QUALITY)
    return tinted


def thumbnail(panel: np.ndarray, cell: int) -> Image.Image:
    """A panel fitted into a ``cell`` square (memory: the sheet keeps thumbnails, not images)."""
    return fit_into_cell(panel, cell)


def contact_sheet(cells: Sequence[tuple[str, Image.Image]], cell: int, columns: int, pad: int = 4) -> Image.Image:
    """A grid of ``cell`` x ``cell`` thumbnails (row-major, ``columns`` a row), each with its
    caption (the file name, cut to the cell's width) in a band under it."""
    if not cells:
        raise ValueError("a contact sheet needs at least one image")
    font = ImageFont.load_default()
    band = title_band_height(font, 2)
    columns = max(1, min(columns, len(cells)))
    rows = -(-len(cells) // columns)
    sheet = Image.new("RGB", (columns * cell + (columns + 1) * pad, rows * (cell + band) + (rows + 1) * pad),
                      BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for k, (caption, thumb) in enumerate(cells):
        x0 = pad + (k % columns) * (cell + pad)
        y0 = pad + (k // columns) * (cell + band + pad)
        sheet.paste(thumb, (x0, y0))
        text = caption
        while len(text) > 1 and draw.textlength(text, font=font) > cell:
            text = text[:-2] + "~"
        draw.text((x0, y0 + cell + 2), text, fill=TEXT_COLOUR, font=font)
    return sheet


MAX_SHEET_SIDE = 60000  # px: JPEG's limit is 65535 a side; a larger folder's sheet shows its first images


def sheet_capacity(cell: int, columns: int, pad: int = 4) -> int:
    """How many thumbnails fit in a sheet no taller than :data:`MAX_SHEET_SIDE`."""
    band = title_band_height(ImageFont.load_default(), 2)
    return max(1, columns * ((MAX_SHEET_SIDE - pad) // (cell + band + pad)))


def save_sheet(out_dir: Path, cells: Sequence[tuple[str, Image.Image]], cell: int, columns: int) -> int:
    """Write ``sheet.jpg`` of the first :func:`sheet_capacity` cells; returns how many it shows."""
    shown = list(cells)[:sheet_capacity(cell, columns)]
    contact_sheet(shown, cell, columns).save(out_dir / SHEET, format="JPEG", quality=JPEG_QUALITY)
    return len(shown)
