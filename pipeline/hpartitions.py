"""H-partitions of the few-shot test episodes (the TPC + CRC paper's H-PASCAL-5i) and CMPS.

Per test class c, over the val images holding c (the queries):

1. *easy / hard* by the supervised model's IoU of c on the query (the Fully Oracle
   segmentation net, stage predict_seg of the RETAB branch: it saw novel-class masks,
   allowed here because it only sorts test queries). ``std`` split: easy when the IoU is
   >= the class mean + 1 std, hard when <= mean - 1 std, the middle band left out;
   ``median`` split (small data): easy >= the class median, hard below it, nothing left out.
2. each of the two sets split the same way (same rule, within the set) by the relative
   bounding-box area of c in the query: large / small.
3. for each query of a cell, the supports are the k nearest (similar) or the k farthest
   (dissimilar) *other* images of the same cell, by L2 between pooled features of a fixed
   ImageNet backbone (the same for every method).

Partition index ``4 hard + 2 small + dissimilar``: L0-L3 easy, L4-L7 hard; L0, L1, L4, L5
large; even = similar (the paper's order). CMPS is the mean of the partitions' mIoU
(:func:`cmps`); a partition with no episodes is reported and left out of the mean, one with
fewer than ``min_episodes`` counts and is flagged (``cmps_min`` leaves it out too).
"""
from __future__ import annotations

import math
import statistics
from typing import Mapping, Sequence

import numpy as np

PARTITIONS = tuple(f"L{i}" for i in range(8))
SPLITS = ("std", "median")


def partition_index(hard: bool, small: bool, dissimilar: bool) -> int:
    return 4 * int(hard) + 2 * int(small) + int(dissimilar)


def describe(index: int) -> str:
    """``'easy, large, similar'`` for L0 ... ``'hard, small, dissimilar'`` for L7."""
    return ", ".join((("easy", "hard")[index >> 2], ("large", "small")[(index >> 1) & 1],
                      ("similar", "dissimilar")[index & 1]))


def class_iou(pred: np.ndarray, gt: np.ndarray, class_id: int, ignore_index: int | None = 255) -> float:
    """IoU of ``class_id`` between a class-index prediction and ground truth (ignore left out;
    NaN when neither holds the class)."""
    valid = np.ones(gt.shape, bool) if ignore_index is None else gt != ignore_index
    p, g = (pred == class_id) & valid, (gt == class_id) & valid
    union = int((p | g).sum())
    return float("nan") if union == 0 else int((p & g).sum()) / union


def bbox_fraction(gt: np.ndarray, class_id: int) -> float:
    """Area of the bounding box of ``class_id``'s pixels over the image area (0 if absent)."""
    rows, cols = np.nonzero(gt == class_id)
    if rows.size == 0:
        return 0.0
    return (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) / gt.size


def split_high_low(values: Mapping[str, float], split: str) -> tuple[list[str], list[str], dict]:
    """(ids of high values, ids of low values, the cuts) in the order of ``values``; see the
    module docstring (``std``: >= mean + std / <= mean - std, sample std, none for one
    value; ``median``: >= median / < median)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    ids = list(values)
    if not ids:
        return [], [], {}
    v = [float(values[i]) for i in ids]
    if split == "median":
        med = statistics.median(v)
        return ([i for i, x in zip(ids, v) if x >= med], [i for i, x in zip(ids, v) if x < med],
                {"median": med})
    mean = statistics.fmean(v)
    std = statistics.stdev(v) if len(v) > 1 else 0.0
    if std == 0.0:  # one value, or all equal: nothing stands out
        return [], [], {"mean": mean, "std": std}
    return ([i for i, x in zip(ids, v) if x >= mean + std], [i for i, x in zip(ids, v) if x <= mean - std],
            {"mean": mean, "std": std})


def class_cells(iou: Mapping[str, float], area: Mapping[str, float], split: str) -> dict[tuple[bool, bool], list[str]]:
    """``{(hard, small): [ids]}`` of one class from its queries' supervised IoU and bbox area."""
    scored = {i: v for i, v in iou.items() if not math.isnan(v)}
    easy, hard, _ = split_high_low(scored, split)
    cells = {}
    for is_hard, ids in ((False, easy), (True, hard)):
        large, small, _ = split_high_low({i: area[i] for i in ids}, split)
        cells[(is_hard, False)], cells[(is_hard, True)] = large, small
    return cells


def ranked_supports(query: str, candidates: Sequence[str], features: Mapping[str, np.ndarray], shots: int,
                    farthest: bool) -> list[str]:
    """The ``shots`` nearest (or farthest) of ``candidates`` other than ``query`` by L2 between
    pooled features (ties: the order of ``candidates``); fewer candidates: []."""
    others = [c for c in candidates if c != query]
    if len(others) < shots:
        return []
    q = np.asarray(features[query], np.float64)
    dist = [float(np.linalg.norm(np.asarray(features[c], np.float64) - q)) for c in others]
    order = sorted(range(len(others)), key=lambda k: (-dist[k] if farthest else dist[k], k))
    return [others[k] for k in order[:shots]]


def partition_episodes(cells: Mapping[int, Mapping[tuple[bool, bool], Sequence[str]]],
                       features: Mapping[str, np.ndarray], shots: int,
                       class_names: Sequence[str]) -> list[list[dict]]:
    """Eight episode lists L0..L7 (the episodes-file format of :mod:`pipeline.data.episodes`):
    every query of every cell, by class then cell order, once with its nearest and once with
    its farthest supports of the same cell."""
    out: list[list[dict]] = [[] for _ in PARTITIONS]
    for c in sorted(cells):
        for (hard, small), ids in cells[c].items():
            for dissimilar in (False, True):
                target = out[partition_index(hard, small, dissimilar)]
                for query in ids:
                    supports = ranked_supports(query, ids, features, shots, dissimilar)
                    if supports:
                        target.append({"episode": len(target), "class": int(c), "class_name": class_names[c],
                                       "query": query, "supports": supports})
    return out


def cmps(mious: Sequence[float | None], counts: Sequence[int], min_episodes: int) -> dict:
    """CMPS = mean mIoU over the partitions that have episodes (the paper's definition), and
    ``cmps_min`` = the same over those with >= ``min_episodes`` episodes only. Returns
    ``{"cmps", "cmps_min", "used": [i...], "small": [i...], "empty": [i...]}``: ``small``
    partitions (fewer than ``min_episodes``) count in ``cmps`` and are flagged, ``empty`` ones
    (no episode, or no defined mIoU) in neither; a mean over nothing is None (never a
    division by zero)."""
    used, small, empty = [], [], []
    for i, (m, n) in enumerate(zip(mious, counts)):
        if n == 0 or m is None or (isinstance(m, float) and math.isnan(m)):
            empty.append(i)
        elif n < min_episodes:
            small.append(i)
        else:
            used.append(i)
    every = sorted(used + small)
    return {"cmps": statistics.fmean(float(mious[i]) for i in every) if every else None,
            "cmps_min": statistics.fmean(float(mious[i]) for i in used) if used else None,
            "used": used, "small": small, "empty": empty}
