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


# ---- L-Net / P-Net branch (Xiao et al., AAAI 2018; workflow/rules/lnet.smk) ----
# Table rows: row -> (title, where its segmentation net comes from). Every row but the
# oracle trains a segmentation net under work/<ds>/fold<k>/lnet/<split>/seg/<row>:
#   cam_seggt  the shared CAM pseudo labels (pseudo_dir(ds, "cam", k)) for weak images,
#              ground truth for strong images (stage train_seg, supervision mixed)
#   lnet       the self-diffusion pseudo labels L_w for weak images, GT for strong
#   pnet       lnet's network fine-tuned with the P-Net (stage train_pnet)
#   oracle     the RETAB branch's fully supervised net (seg_pred_dir(ds, "oracle", k))
LNET_ROWS = {
    "cam_seggt": "CAM-only pseudo labels",
    "lnet": "L-Net (self-diffusion)",
    "pnet": "P-Net",
    "oracle": "Fully Oracle",
}
# results/<ds>/<method>_fold<k> of the branch: the rows each report shows.
LNET_METHODS = {"lnet": ("cam_seggt", "lnet", "oracle"), "pnet": ("cam_seggt", "lnet", "pnet", "oracle")}
# Pseudo-label sources scored on the weak train images (rows with pseudo labels).
LNET_PSEUDO_ROWS = ("cam_seggt", "lnet")
PASCAL5I_SPLIT = "pascal5i"


def lnet_split_file(dataset: str, split: str, fold: int | str) -> str:
    """Fold file of the branch: the dataset's fold (pascal5i) or a named split-set's fold."""
    if split == PASCAL5I_SPLIT:
        return f"work/{dataset}/folds/fold{fold}.json"
    return f"work/{dataset}/lnet_splits/{split}/fold{fold}.json"


def lnet_dir(dataset: str, split: str, fold: int | str) -> str:
    return f"work/{dataset}/fold{fold}/lnet/{split}"


def lnet_seg_pred_dir(dataset: str, split: str, fold: int | str, row: str) -> str:
    """Validation predictions of a table row (the oracle's are the RETAB branch's)."""
    if row == "oracle":
        return seg_pred_dir(dataset, "oracle", fold)
    return f"{lnet_dir(dataset, split, fold)}/seg/{row}/pred_val"


def lnet_pseudo_dir(dataset: str, split: str, fold: int | str, row: str) -> str:
    """Weak images' pseudo labels of a row: the shared CAM labels or the self-diffusion output."""
    if row == "cam_seggt":
        return pseudo_dir(dataset, "cam", fold)
    return f"{lnet_dir(dataset, split, fold)}/pseudo"


def lnet_eval_path(dataset: str, split: str, fold: int | str, row: str, kind: str) -> str:
    """kind: 'val' (segmentation on val) or 'pseudo' (pseudo labels on the weak train images).

    The oracle on a pascal5i split is scored against the same fold file by the RETAB
    branch already: its file is reused.
    """
    if row == "oracle" and split == PASCAL5I_SPLIT:
        return eval_path(dataset, fold, "oracle", kind)
    return f"{lnet_dir(dataset, split, fold)}/eval/{row}_{kind}.json"


def lnet_metric_files(dataset: str, split: str, fold: int | str, method: str) -> dict[str, str]:
    """{'<row>_<kind>': metrics path} a results/<ds>/<method>_fold<k> report reads."""
    files = {f"{row}_val": lnet_eval_path(dataset, split, fold, row, "val") for row in LNET_METHODS[method]}
    files.update({f"{row}_pseudo": lnet_eval_path(dataset, split, fold, row, "pseudo") for row in LNET_PSEUDO_ROWS})
    return files
