"""Where the DAG puts the artifacts of the shared stages, in one place: the rules
(workflow/rules/*.smk), the report stages and the scripts read these paths.

Paths: work/<dataset>/<scope>/...  with scope ``shared`` for what does not depend on the
fold (the CAM network and its CAMs, the oracle segmentation net) and ``fold<k>`` for what does (everything that sees base samples'
pixel labels). Shared stages run once for all folds and methods. Which rows train which
net is :mod:`pipeline.method_table`.
"""
from __future__ import annotations

from pipeline.method_table import RETAB

IMAGE_LABELS = "work/{dataset}/image_labels.json"
FOLD_FILE = "work/{dataset}/folds/fold{fold}.json"
# Few-shot test episodes (stage make_episodes; pipeline/data/episodes.py)
EPISODES_FILE = "work/{dataset}/episodes/fold{fold}_{shots}shot_seed{seed}.jsonl"
CAM_DIR = "work/{dataset}/shared/cam"
# The `cam` row's background threshold, swept on the fold's base samples (stage eval_cam --fold-file)
CAM_THRESHOLD = "work/{dataset}/fold{fold}/cam/threshold.json"
# Confident labels of the affinity nets: per fold, since `confident_labels.conf_fg/conf_bg: auto`
# follow the fold's CAM threshold; the values used are in CONFIDENT_INFO inside the directory
CONFIDENT_DIR = "work/{dataset}/fold{fold}/cam/confident"
CONFIDENT_INFO = "confident.json"
# In each revised-score directory (stage propagate): the walk as run (logt per image, radius)
WALK_INFO = "walk.json"

# pseudo-label source -> (affinity variant that revises the CAMs, or None; fold-dependent)
# (`cam` thresholds raw CAMs at a threshold chosen on the fold's base samples: per fold)
# (every walk is per fold: `propagation.alpha: auto` is chosen on the fold's base samples, and the
# CAM-only affinity net learns from the fold's confident labels)
PSEUDO_SOURCES = {"cam": (None, True), "rw_cam": ("cam", True), "rw_gt": ("gt", True), "retab": ("retab", True)}
# affinity variant -> fold-dependent (cam: CAM confident labels only, per fold through their
# auto thresholds; gt / retab: base samples' ground truth)
AFFINITY_VARIANTS = {"cam": True, "gt": True, "retab": True}


def scope_of(fold_dependent: bool, fold: int | str) -> str:
    return f"fold{fold}" if fold_dependent else "shared"


def fold_of_scope(scope: str) -> int | None:
    return int(scope[4:]) if scope.startswith("fold") else None


def seg_dir(dataset: str, row: str, fold: int | str) -> str:
    """The segmentation net of a RETAB table row (the oracle's is shared with L-Net's table)."""
    return f"work/{dataset}/{scope_of(RETAB.rows[row].fold_dependent, fold)}/seg/{row}"


def seg_pred_dir(dataset: str, row: str, fold: int | str) -> str:
    return f"{seg_dir(dataset, row, fold)}/pred_val"


def pseudo_dir(dataset: str, source: str, fold: int | str) -> str:
    return f"work/{dataset}/{scope_of(PSEUDO_SOURCES[source][1], fold)}/pseudo/{source}"


def eval_path(dataset: str, fold: int | str, row: str, kind: str) -> str:
    """kind: 'val' (segmentation on val) or 'pseudo' (pseudo labels on train novel samples)."""
    return f"work/{dataset}/fold{fold}/eval/{row}_{kind}.json"


def row_metric_files(dataset: str, row: str, fold: int | str) -> list[str]:
    """The evaluate outputs of a RETAB row: val, plus pseudo labels where the row has some."""
    files = [eval_path(dataset, fold, row, "val")]
    if RETAB.rows[row].pseudo_source:
        files.append(eval_path(dataset, fold, row, "pseudo"))
    return files
