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
   (dissimilar) *other* images of the same cell, by L2 between per-image descriptors (the
   same for every method): ``pixels`` (:func:`color_layout_descriptor`, no network, so not
   the prototype floor's own feature space) or ``encoder`` (pooled features of the frozen
   ImageNet encoder: the space the floor and CRNet match in).

Small sets (``fallback``): a cell with at most k other images cannot tell its nearest from
its farthest supports (the same k images are both), and a query alone in its cell gets no
episode. ``fallback: none`` is the paper's rule everywhere; ``size`` widens the search of such
a query (only) to its class's size partition across easy and hard (large or small), ``class``
to every query of its class; cells with more than k other images keep the paper's rule.
:func:`partition_episodes` counts, per partition, the episodes whose nearest and farthest
supports coincide and those searched in a widened pool, and the queries left without an
episode (:func:`episode_counts`).

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
FALLBACKS = ("none", "size", "class")
SIMILARITIES = ("pixels", "encoder")


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


def color_layout_descriptor(image: np.ndarray, bins: int = 8, grid: int = 2) -> np.ndarray:
    """A network-free descriptor of an ``H x W x 3`` uint8 image: per cell of a ``grid`` x
    ``grid`` layout, the ``bins``-bin histogram of each RGB channel, each normalised to sum 1,
    square-rooted (L2 between them is then the Hellinger distance, robust to a few dominant
    bins). Length ``grid^2 x 3 x bins``."""
    h, w = image.shape[:2]
    parts = []
    for r in range(grid):
        for c in range(grid):
            cell = image[r * h // grid:(r + 1) * h // grid, c * w // grid:(c + 1) * w // grid]
            for ch in range(3):
                hist = np.bincount((cell[..., ch].astype(np.int64).ravel() * bins) // 256, minlength=bins).astype(np.float64)
                parts.append(np.sqrt(hist / max(hist.sum(), 1.0)))
    return np.concatenate(parts)


def search_pools(cells: Mapping[tuple[bool, bool], Sequence[str]], queries: Sequence[str],
                 fallback: str) -> dict[tuple[bool, bool], list[str]]:
    """Per cell ``(hard, small)`` of one class, where a query with too few others in its cell
    searches instead: ``none``: nowhere (its cell); ``size``: its size partition across easy
    and hard; ``class``: every query of the class (``queries``, the middle band included)."""
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, not {fallback!r}")
    pools = {}
    for hard, small in cells:
        if fallback == "none":
            pools[(hard, small)] = list(cells[(hard, small)])
        elif fallback == "size":
            pools[(hard, small)] = [i for h in (False, True) for i in cells.get((h, small), [])]
        else:
            pools[(hard, small)] = list(queries)
    return pools


def partition_episodes(cells: Mapping[int, Mapping[tuple[bool, bool], Sequence[str]]],
                       features: Mapping[str, np.ndarray], shots: int,
                       class_names: Sequence[str], pools: Mapping[int, Mapping[tuple[bool, bool], Sequence[str]]]
                       | None = None) -> list[list[dict]]:
    """Eight episode lists L0..L7 (the episodes-file format of :mod:`pipeline.data.episodes`):
    every query of every cell, by class then cell order, once with its nearest and once with
    its farthest supports of the same cell. A query with at most ``shots`` others in its cell
    searches ``pools[c][cell]`` instead when given (:func:`search_pools`); such an episode
    carries ``"widened": true``, and one whose nearest and farthest supports are the same
    images ``"coincide": true`` (both partitions then hold the same episode)."""
    out: list[list[dict]] = [[] for _ in PARTITIONS]
    for c in sorted(cells):
        for (hard, small), ids in cells[c].items():
            for query in ids:
                candidates, widened = ids, False
                if pools is not None and sum(i != query for i in ids) <= shots:
                    pool = pools[c][(hard, small)]
                    candidates, widened = (pool, True) if set(pool) != set(ids) else (ids, False)
                found = {far: ranked_supports(query, candidates, features, shots, far) for far in (False, True)}
                coincide = bool(found[False]) and set(found[False]) == set(found[True])
                for dissimilar in (False, True):
                    target = out[partition_index(hard, small, dissimilar)]
                    if found[dissimilar]:
                        episode = {"episode": len(target), "class": int(c), "class_name": class_names[c],
                                   "query": query, "supports": found[dissimilar]}
                        if widened:
                            episode["widened"] = True
                        if coincide:
                            episode["coincide"] = True
                        target.append(episode)
    return out


def episode_counts(episodes: Sequence[Sequence[dict]], queries: Mapping[int, Sequence[str]],
                   class_names: Sequence[str]) -> dict:
    """What :func:`partition_episodes` made: per partition its ``episodes``, how many have
    nearest == farthest supports (``coincide``) and how many searched a widened pool
    (``widened``); per class the queries that got no episode in any partition (``queries``:
    every query of each class)."""
    per_partition = {name: {"episodes": len(eps), "coincide": sum(bool(e.get("coincide")) for e in eps),
                            "widened": sum(bool(e.get("widened")) for e in eps)}
                     for name, eps in zip(PARTITIONS, episodes)}
    served = {(e["class"], e["query"]) for eps in episodes for e in eps}
    no_episode = {class_names[c]: sum((c, q) not in served for q in ids) for c, ids in sorted(queries.items())}
    return {"per_partition": per_partition, "no_episode": no_episode,
            "queries": {class_names[c]: len(ids) for c, ids in sorted(queries.items())}}


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
