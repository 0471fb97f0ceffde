"""Few-shot test episodes (PASCAL-5i protocol of OSLSM/PFENet/HSNet): the shared test bed
of the few-shot branches, drawn once per (dataset, fold, shots, episode seed) and cached.

An episode of class ``c`` (a novel class of the fold) is a *query* val image containing
``c`` and ``k`` *support* val images containing ``c``, never the query itself (HSNet's
``FSS`` datasets and PFENet's test lists draw both from the val split). "Containing" means
at least ``episodes.min_pixels`` pixels of ``c`` (image-labels ``pixel_counts``; default 1).
Classes cycle evenly over the episodes as in HSNet: episode ``i`` is of class
``novel[i % len(novel)]``.

Drawing (:func:`draw_episodes`), from one ``numpy.random.default_rng(seed)`` stream, per
episode: the query uniformly among the class's val images, then a random permutation of the
class's *other* images; the supports are its first ``k``. The stream consumed does not
depend on ``k``, so with the same seed the k-shot supports are a prefix of the K-shot ones
for every k < K (the 1-shot file's supports are ``supports[:1]`` of the 5-shot file's): the
k_max supports are drawn once and each shot count takes its prefix.

File (stage ``make_episodes``; ``work/<dataset>/episodes/fold<k>_<shots>shot_seed<s>.jsonl``),
one JSON object per line, in episode order::

    {"episode": i, "class": 3, "class_name": "bus", "query": "v7", "supports": ["v2", ...]}

``EPISODES_FORMAT`` is the version of this format and of the drawing; the rule declares it,
so changing either redraws every episode file.

Masks of an episode are binary (:func:`episode_mask`): 1 = the class, 0 = everything else
(background and every other class), the ignore index kept -- also for datasets without a
background class. Metrics: :mod:`pipeline.metrics.episodic`.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import atomic_path

EPISODES_FORMAT = 1
EPISODE_KEYS = ("episode", "class", "class_name", "query", "supports")


def episode_mask(mask: np.ndarray, class_id: int, ignore_index: int | None = 255) -> np.ndarray:
    """The episode's binary uint8 mask of ``class_id``: 1 where the mask is the class, 0 for
    every other class (background or not), ``ignore_index`` kept as it is."""
    mask = np.asarray(mask)
    if ignore_index is not None and int(class_id) == int(ignore_index):
        raise ValueError(f"class id {class_id} is the ignore index")
    out = (mask == class_id).astype(np.uint8)
    if ignore_index is not None:
        out[mask == ignore_index] = ignore_index
    return out


def class_ids_by_name(names: Sequence[str] | None, class_names: Sequence[str], background: str | None,
                      where: str | os.PathLike) -> list[int]:
    """Ids of the named classes (episodes keyed by a class list, e.g. the cross-dataset test
    classes); ``None``: every object class (all but ``background``). A name the dataset lacks,
    or the background, is one line naming ``where``."""
    if names is None:
        return [i for i, n in enumerate(class_names) if n != background]
    ids = []
    for name in names:
        if name not in class_names or name == background:
            raise PipelineError(where, f"'{name}' is not an object class of the dataset "
                                f"(classes: {', '.join(n for n in class_names if n != background)})")
        ids.append(list(class_names).index(name))
    if not ids:
        raise PipelineError(where, "the class list is empty")
    return ids


def class_list_arg(text: str) -> list[str] | None:
    """A stage's ``--classes`` value: ``all`` -> None (every object class), else comma-separated names."""
    return None if text == "all" else [n for n in text.split(",") if n]


def images_with_class(pixel_counts: Mapping[str, Sequence[int]], ids: Sequence[str], classes: Sequence[int],
                      min_pixels: int = 1) -> dict[int, list[str]]:
    """``{class: [ids with >= min_pixels pixels of it]}``, ids in the order of ``ids``."""
    return {int(c): [i for i in ids if pixel_counts[i][c] >= min_pixels] for c in classes}


def check_enough_images(images: Mapping[int, Sequence[str]], shots: int, class_names: Sequence[str],
                        where: str | os.PathLike, what: str = "val images") -> None:
    """Each class needs a query and ``shots`` other images: else one line naming the class."""
    for c, ids in images.items():
        if len(ids) < shots + 1:
            raise PipelineError(where, f"novel class '{class_names[c]}' (id {c}) is in {len(ids)} {what}; "
                                f"{shots}-shot episodes need {shots + 1} (a query and {shots} supports)")


def small_classes(images: Mapping[int, Sequence[str]], shots: int) -> dict[int, int]:
    """``{class: its image count}`` of the classes in fewer than ``shots + 1`` images (a
    k-shot episode needs a query and k other images): what ``episodes.small_classes:
    leave_out`` leaves out of the episodes (and every report names)."""
    return {int(c): len(ids) for c, ids in images.items() if len(ids) < shots + 1}


def labelled_background_share(mask: np.ndarray) -> float:
    """Share of the image's pixels that are labelled and not the class, in an episode mask
    (:func:`episode_mask`: 0 = labelled non-class, 1 = class, else ignored): the query's
    labelled background. On a query without any, predicting the class everywhere loses
    nothing (MSRC's book: 8 of 9 val images)."""
    mask = np.asarray(mask)
    return float((mask == 0).sum()) / mask.size if mask.size else 0.0


def mismatched_episodes(episodes: Sequence[dict], shots: int) -> list[dict]:
    """The mismatched-support episodes: each episode keeps its query and class, and takes the
    first ``shots`` supports of the next episode (cyclic, in file order) of *another* class
    whose supports do not hold the query, with that class as ``support_class`` (the support
    masks are of it). A model that follows its support must score low on them. Episodes of
    a single class: :class:`ValueError` (there is no other class to take supports from)."""
    if len({e["class"] for e in episodes}) < 2:
        raise ValueError("mismatched supports need episodes of at least 2 classes")
    out = []
    n = len(episodes)
    for i, e in enumerate(episodes):
        for step in range(1, n):
            other = episodes[(i + step) % n]
            supports = list(other["supports"][:shots])
            if other["class"] != e["class"] and e["query"] not in supports:
                out.append({**e, "supports": supports, "support_class": other["class"]})
                break
        else:
            raise ValueError(f"episode {e['episode']}: no episode of another class without its query as support")
    return out


def draw_episodes(images: Mapping[int, Sequence[str]], classes: Sequence[int], num_episodes: int, shots: int,
                  seed: int, class_names: Sequence[str]) -> list[dict]:
    """``num_episodes`` episodes cycling over ``classes`` (see the module docstring); every
    class of ``classes`` needs ``shots + 1`` images in ``images`` (:func:`check_enough_images`)."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, not {shots}")
    if not classes:
        raise ValueError("no classes to draw episodes of")
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(num_episodes):
        c = int(classes[i % len(classes)])
        candidates = list(images[c])
        if len(candidates) < shots + 1:
            raise ValueError(f"class {c} has {len(candidates)} images, {shots}-shot episodes need {shots + 1}")
        q = int(rng.integers(len(candidates)))
        others = candidates[:q] + candidates[q + 1:]
        order = rng.permutation(len(others))  # all of them: the stream does not depend on shots
        episodes.append({"episode": i, "class": c, "class_name": class_names[c], "query": candidates[q],
                         "supports": [others[j] for j in order[:shots]]})
    return episodes


def write_episodes(path: str | os.PathLike, episodes: Sequence[dict]) -> None:
    """The JSONL file, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps({k: e[k] for k in EPISODE_KEYS}) + "\n" for e in episodes))


def read_episodes(path: str | os.PathLike) -> list[dict]:
    """An episodes file, each row structure-checked (errors name the file and the line)."""
    try:
        lines = open(path).read().splitlines()
    except FileNotFoundError:
        raise PipelineError(path, "episodes file not found") from None
    episodes = []
    for n, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PipelineError(path, f"line {n}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict) or any(k not in row for k in EPISODE_KEYS):
            raise PipelineError(path, f"line {n}: an episode needs the keys {', '.join(EPISODE_KEYS)}")
        if not row["supports"] or row["query"] in row["supports"]:
            raise PipelineError(path, f"line {n}: supports must be non-empty and must not hold the query")
        episodes.append(row)
    return episodes
