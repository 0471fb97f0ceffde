"""Result reports: metric summaries, markdown tables, colours and figure composition.

Pure functions (numpy + PIL only; matplotlib is not a dependency): the report stages read
files and call these. Scores are fractions in [0, 1] everywhere in JSON; tables show
percentages with one decimal, as the papers do, and an en dash where a score is undefined
(``None``: a class absent from ground truth and predictions, a method without pseudo
labels).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.data.label_png import voc_palette
from pipeline.data.voc import VOCDataset
from pipeline.metrics.semantic import NOVEL_ERROR_KEYS
from pipeline.runtime import progress

# Columns of the novel-error table (pipeline.metrics.novel_error_breakdown): where ground-truth
# novel pixels go, then how clean the novel predictions are and where the false ones come from.
NOVEL_ERROR_COLUMNS = (("recall", "novel_recall"), ("to bg", "novel_to_background"), ("to base", "novel_to_base"),
                       ("to other novel", "novel_to_other_novel"), ("precision", "novel_precision"),
                       ("false from bg", "false_novel_from_background"), ("false from base", "false_novel_from_base"))
# Scalar scores of an evaluate metrics file that reports carry (see pipeline/stages/evaluate.py).
SUMMARY_KEYS = ("miou", "miou_base", "miou_novel", "miou_harmonic", "pixel_accuracy", "mean_pixel_accuracy",
                "fwiou", "fb_iou", *NOVEL_ERROR_KEYS)
# Columns of the paper's tables: mIoU over all classes, the base classes, the novel classes.
MIOU_COLUMNS = (("all", "miou"), ("base", "miou_base"), ("novel", "miou_novel"))
MISSING = "–"
_PALETTE = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)


# --------------------------------------------------------------------------- numbers

def summarize_eval(document: dict) -> dict:
    """The scores a report keeps from an evaluate metrics file (scalars + per-class IoU by name)."""
    out = {key: document.get(key) for key in SUMMARY_KEYS if key in document}
    out["per_class_iou"] = dict(document.get("per_class_iou") or {})
    out["num_images"] = document.get("num_images")
    return out


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """Mean of the defined values; None if none is defined."""
    defined = [float(v) for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def mean_summaries(summaries: Sequence[dict | None], keys: Sequence[str] = SUMMARY_KEYS) -> dict | None:
    """Per-key mean of several :func:`summarize_eval` results (folds): scalars and per-class IoU.

    Undefined values (None) are left out of each mean; a key defined in no summary stays
    None. ``num_folds`` counts the summaries averaged; None when there are none. ``keys``:
    the scalars averaged (few-shot reports name their own, e.g. ``miou_1shot``).
    """
    present = [s for s in summaries if s is not None]
    if not present:
        return None
    out = {key: mean_or_none(s.get(key) for s in present) for key in keys if any(key in s for s in present)}
    classes = list(dict.fromkeys(name for s in present for name in s.get("per_class_iou", {})))
    out["per_class_iou"] = {name: mean_or_none(s.get("per_class_iou", {}).get(name) for s in present)
                            for name in classes}
    out["num_folds"] = len(present)
    return out


def per_class_csv(methods: dict, kind: str = "val", novel: Sequence[str] = ()) -> str:
    """Wide CSV of per-class IoU: ``class,novel,<method>...`` (one row per class, fractions).

    ``methods`` maps a method to its report entry (``{kind: summarize_eval result or
    None}``); a method without that kind is left out, an undefined IoU is an empty cell.
    dvc.yaml plots one method's column as bars over the classes.
    """
    names = [m for m, entry in methods.items() if entry and entry.get(kind)]
    classes = list(dict.fromkeys(c for m in names for c in methods[m][kind].get("per_class_iou", {})))
    lines = [",".join(["class", "novel", *names])]
    for name in classes:
        cells = [methods[m][kind]["per_class_iou"].get(name) for m in names]
        lines.append(",".join([name, "1" if name in novel else "0",
                               *("" if v is None else f"{v:.6f}" for v in cells)]))
    return "\n".join(lines) + "\n"


def format_percent(value: float | None) -> str:
    """0.4567 -> '45.7'; None -> an en dash."""
    return MISSING if value is None else f"{100.0 * value:.1f}"


# --------------------------------------------------------------------------- markdown

def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align``: one of 'l'/'r' per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def miou_table(rows: Sequence[tuple[str, dict | None]], first_column: str = "Method",
               columns: Sequence[tuple[str, str]] = MIOU_COLUMNS) -> str:
    """The paper's table: one row per (title, summary), columns mIoU all / base / novel (%).

    ``columns``: (header, summary key) pairs, e.g. all / strong / weak for the L-Net paper.
    """
    header = [first_column] + [name for name, _ in columns]
    body = [[title] + [format_percent(None if summary is None else summary.get(key)) for _, key in columns]
            for title, summary in rows]
    return markdown_table(header, body)


def fold_table(rows: Sequence[tuple[str, Sequence[dict | None]]], folds: Sequence[int | str], key: str,
               first_column: str = "Method") -> str:
    """One score across folds (%): a row per (title, one summary per fold), columns ``fold<k>``...
    and ``mean``. The mean is :func:`mean_or_none` of the row's values (the folds in which the
    score is defined), as :func:`mean_summaries` computes it; a missing summary is None.
    """
    header = [first_column, *(f"fold{k}" for k in folds), "mean"]
    body = []
    for title, summaries in rows:
        if len(summaries) != len(folds):
            raise ValueError(f"row {title!r} has {len(summaries)} summaries for {len(folds)} folds")
        values = [None if summary is None else summary.get(key) for summary in summaries]
        body.append([title, *map(format_percent, values), format_percent(mean_or_none(values))])
    return markdown_table(header, body)


def per_class_table(columns: Sequence[tuple[str, dict | None]], class_names: Sequence[str],
                    novel_names: Iterable[str] = ()) -> str:
    """Per-class IoU (%): one row per class (novel ones marked *), one column per (title, summary)."""
    novel = set(novel_names)
    header = ["Class"] + [title for title, _ in columns]
    body = []
    for name in class_names:
        label = f"{name} *" if name in novel else name
        body.append([label] + [format_percent(None if s is None else s.get("per_class_iou", {}).get(name))
                               for _, s in columns])
    return markdown_table(header, body)


# --------------------------------------------------------------------------- colours

def colorize_labels(labels: np.ndarray) -> np.ndarray:
    """HxW class indices -> HxWx3 uint8 RGB in the VOC colour map (255 = void: cream)."""
    return _PALETTE[np.asarray(labels, dtype=np.uint8)]


def heat_colors(values: np.ndarray) -> np.ndarray:
    """HxW values in [0, 1] -> HxWx3 uint8 'jet' colours (blue = 0, red = 1), as CAM figures use."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    # Piecewise-linear jet: red, green and blue are clipped tents centred at 3/4, 1/2 and 1/4.
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return np.round(np.stack([r, g, b], axis=-1) * 255.0).astype(np.uint8)


def blend(base: np.ndarray, overlay: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha) * base + alpha * overlay`` of two HxWx3 uint8 images."""
    mixed = (1.0 - alpha) * base.astype(np.float32) + alpha * overlay.astype(np.float32)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """HxW uint8 -> HxWx3 uint8."""
    return np.repeat(np.asarray(gray, dtype=np.uint8)[..., None], 3, axis=-1)


# --------------------------------------------------------------------------- figures

BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)


def fit_into_cell(panel: np.ndarray, cell: int, nearest: bool = False) -> Image.Image:
    """An HxWx3 panel scaled to fit a ``cell`` x ``cell`` square (aspect kept), centred on white.

    ``nearest``: nearest-neighbour resampling (label maps keep their exact colours).
    """
    height, width = panel.shape[:2]
    scale = cell / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.NEAREST if nearest else Image.BILINEAR
    resized = Image.fromarray(np.ascontiguousarray(panel, dtype=np.uint8)).resize(size, resample)
    canvas = Image.new("RGB", (cell, cell), BACKGROUND)
    canvas.paste(resized, ((cell - size[0]) // 2, (cell - size[1]) // 2))
    return canvas


def title_band_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, pad: int) -> int:
    """Height of the column-title band: the font's line height plus ``pad`` above and below."""
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "Ag", font=font)
    return (bottom - min(top, 0)) + 2 * pad


def figure_size(n_rows: int, n_cols: int, cell: int, pad: int, title_height: int) -> tuple[int, int]:
    """(width, height) of :func:`compose_figure`'s output."""
    return n_cols * cell + (n_cols + 1) * pad, title_height + n_rows * cell + (n_rows + 1) * pad


def compose_figure(rows: Sequence[Sequence[Image.Image]], titles: Sequence[str], cell: int,
                   pad: int = 4) -> Image.Image:
    """Grid of ``cell`` x ``cell`` panels (one list per row) under a band of column titles."""
    if not rows or any(len(row) != len(titles) for row in rows):
        raise ValueError(f"every row needs {len(titles)} panels (one per title)")
    font = ImageFont.load_default()
    band = title_band_height(font, pad)
    figure = Image.new("RGB", figure_size(len(rows), len(titles), cell, pad, band), BACKGROUND)
    draw = ImageDraw.Draw(figure)
    for col, title in enumerate(titles):
        x0 = pad + col * (cell + pad)
        left, _, right, _ = draw.textbbox((0, 0), title, font=font)
        draw.text((x0 + max(0, (cell - (right - left)) // 2), pad), title, fill=TEXT_COLOUR, font=font)
    for r, row in enumerate(rows):
        y0 = band + pad + r * (cell + pad)
        for col, panel in enumerate(row):
            if panel.size != (cell, cell):
                raise ValueError(f"panel ({r}, {col}) is {panel.size}, expected {(cell, cell)}")
            figure.paste(panel, (pad + col * (cell + pad), y0))
    return figure


def pick_largest(areas: dict[str, int], count: int) -> list[str]:
    """The ``count`` ids with the largest area (ties: smaller id first); deterministic."""
    ranked = sorted(areas.items(), key=lambda item: (-item[1], item[0]))
    return [image_id for image_id, _ in ranked[:count]]


def novel_areas(dataset: VOCDataset, ids: list[str], novel_classes: list[int]) -> dict[str, int]:
    """Novel-class pixels in each image's ground truth."""
    return {i: int(np.isin(dataset.load_mask(i), novel_classes).sum())
            for i in progress(ids, desc="novel areas")}
