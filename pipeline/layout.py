"""Where the DAG puts things, in one place: the rules (workflow/rules/*.smk) and the
report stages both read these tables, so a method is declared once.

Paths: work/<dataset>/<scope>/...  with scope ``shared`` for what does not depend on the
fold (the CAM network and its CAMs, the CAM-only affinity net, pure-WSSS and oracle
segmentation nets) and ``fold<k>`` for what does (everything that sees base samples'
pixel labels). Shared stages run once for all folds and methods.
"""
from __future__ import annotations

# RETAB table rows, by what supervises the segmentation network:
#   method: (pseudo-label source or None, supervision, fold-dependent)
SEG_METHODS = {
    "cam": ("cam", "pseudo", False),  # CAM + best background threshold, every train image
    "cam_rw": ("rw_cam", "pseudo", False),  # + PSA random walk, affinity from CAM labels only
    "cam_rw_seggt": ("rw_cam", "mixed", True),  # cam_rw pseudo labels for novel, GT for base
    "cam_rw_affgt_seggt": ("rw_gt", "mixed", True),  # + GT affinity pairs for base samples
    "retab": ("retab", "mixed", True),  # boundary-aware affinity + two-stage walk, GT for base
    "oracle": (None, "gt", False),  # ground truth everywhere (upper bound)
}
METHOD_TITLES = {
    "cam": "CAM",
    "cam_rw": "CAM+RW",
    "cam_rw_seggt": "CAM+RW(seggt)",
    "cam_rw_affgt_seggt": "CAM+RW(affgt+seggt)",
    "retab": "CAM+RETAB",
    "oracle": "Fully Oracle",
}
# pseudo-label source: (affinity variant or None, fold-dependent)
PSEUDO_SOURCES = {"cam": (None, False), "rw_cam": ("cam", False), "rw_gt": ("gt", True), "retab": ("retab", True)}
# affinity variant: fold-dependent
AFFINITY_VARIANTS = {"cam": False, "gt": True, "retab": True}


def scope_of(fold_dependent: bool, fold: int | str) -> str:
    return f"fold{fold}" if fold_dependent else "shared"


def fold_of_scope(scope: str) -> int | None:
    return int(scope[4:]) if scope.startswith("fold") else None


def seg_dir(dataset: str, method: str, fold: int | str) -> str:
    return f"work/{dataset}/{scope_of(SEG_METHODS[method][2], fold)}/seg/{method}"


def seg_pred_dir(dataset: str, method: str, fold: int | str) -> str:
    return f"{seg_dir(dataset, method, fold)}/pred_val"


def pseudo_dir(dataset: str, source: str, fold: int | str) -> str:
    return f"work/{dataset}/{scope_of(PSEUDO_SOURCES[source][1], fold)}/pseudo/{source}"


def eval_path(dataset: str, fold: int | str, method: str, kind: str) -> str:
    """kind: 'val' (segmentation on val) or 'pseudo' (pseudo labels on train novel samples)."""
    return f"work/{dataset}/fold{fold}/eval/{method}_{kind}.json"


def method_metric_files(dataset: str, method: str, fold: int | str) -> list[str]:
    files = [eval_path(dataset, fold, method, "val")]
    if SEG_METHODS[method][0]:
        files.append(eval_path(dataset, fold, method, "pseudo"))
    return files
