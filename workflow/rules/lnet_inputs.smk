# Paths and input functions of the L-Net / P-Net rules (lnet.smk).

LNET_DIR = "work/{dataset}/fold{fold}/lnet/{split}"


PASCAL5I_SPLIT = "pascal5i"


def lnet_split_file(dataset, split, fold):
    """Fold file of the branch: the dataset's fold (pascal5i) or a named split-set's fold."""
    if split == PASCAL5I_SPLIT:
        return FOLD_FILE.format(dataset=dataset, fold=fold)
    return f"work/{dataset}/lnet_splits/{split}/fold{fold}.json"


def lnet_dir(dataset, split, fold):
    return LNET_DIR.format(dataset=dataset, split=split, fold=fold)


def lnet_seg_pred_dir(dataset, split, fold, row):
    """Validation predictions of a row (the oracle's are the shared fully supervised net's)."""
    if row == "oracle":
        return seg_pred_dir(dataset, "oracle", fold)
    return f"{lnet_dir(dataset, split, fold)}/seg/{row}/pred_val"


def lnet_pseudo_dir(dataset, split, fold, row):
    """Weak images' pseudo labels of a row: the shared CAM labels or the self-diffusion output."""
    if LNET.rows[row].pseudo_source == "cam":
        return pseudo_dir(dataset, "cam", fold)
    return f"{lnet_dir(dataset, split, fold)}/pseudo"


def lnet_eval_path(dataset, split, fold, row, kind):
    """kind: 'val' or 'pseudo'. The oracle on a pascal5i split is scored against the same fold
    file by the shared evaluation already: its file is reused."""
    if row == "oracle" and split == PASCAL5I_SPLIT:
        return eval_path(dataset, fold, "oracle", kind)
    return f"{lnet_dir(dataset, split, fold)}/eval/{row}_{kind}.json"


def lnet_metric_files(dataset, split, fold, target):
    """{'<row>_<kind>': metrics path} a results/<ds>/<target>_fold<k> report reads."""
    files = {f"{row}_val": lnet_eval_path(dataset, split, fold, row, "val") for row in LNET.targets[target]}
    files.update({f"{row}_pseudo": lnet_eval_path(dataset, split, fold, row, "pseudo") for row in LNET.pseudo_rows()})
    return files


def lnet_split(dataset):
    """The branch's split for a dataset (`lnet.split`), checked against `lnet.split_sets`."""
    lnet = P(dataset)["lnet"]
    split = lnet["split"]
    if split != PASCAL5I_SPLIT and split not in lnet["split_sets"]:
        known = ", ".join([PASCAL5I_SPLIT, *sorted(lnet["split_sets"])])
        raise WorkflowError(f"error: params.yaml: lnet.split = {split!r} is neither pascal5i nor a key of "
                            f"lnet.split_sets (known: {known})")
    return split


def lnet_split_weak_classes(wildcards):
    """Comma-separated weak classes of fold k of a named split-set (make_folds --novel-classes)."""
    sets = P(wildcards.dataset)["lnet"]["split_sets"]
    if wildcards.split not in sets:
        raise WorkflowError(f"error: params.yaml: lnet.split_sets has no split '{wildcards.split}'")
    folds = sets[wildcards.split]
    fold = int(wildcards.fold)
    if not 0 <= fold < len(folds):
        raise WorkflowError(f"error: params.yaml: lnet.split_sets.{wildcards.split} has folds "
                            f"0..{len(folds) - 1}, not {fold}")
    return ",".join(folds[fold])


def lnet_fold_file(wildcards):
    return lnet_split_file(wildcards.dataset, wildcards.split, wildcards.fold)


def lnet_seg_inputs(wildcards):
    return {
        "labels": IMAGE_LABELS.format(dataset=wildcards.dataset),
        "root": dataset_root(wildcards),
        "fold": lnet_fold_file(wildcards),
        "pseudo": lnet_pseudo_dir(wildcards.dataset, wildcards.split, wildcards.fold, wildcards.row),
        **seg_feature_inputs("train")(wildcards),
    }


def lnet_result_inputs(wildcards):
    split = lnet_split(wildcards.dataset)
    base = lnet_dir(wildcards.dataset, split, wildcards.fold)
    inputs = dict(lnet_metric_files(wildcards.dataset, split, wildcards.fold, wildcards.target))
    inputs.update({
        "fold": lnet_split_file(wildcards.dataset, split, wildcards.fold),
        "labels": IMAGE_LABELS.format(dataset=wildcards.dataset),
        "cams": f"{CAM_DIR}/cams".format(dataset=wildcards.dataset),
        "maps": f"{base}/lnet/maps",
        "pseudo": f"{base}/pseudo",
    })
    return inputs


def lnet_report_metric_args(wildcards, input):
    split = lnet_split(wildcards.dataset)
    names = lnet_metric_files(wildcards.dataset, split, wildcards.fold, wildcards.target)
    return " ".join(f"--metrics {name}={input[name]}" for name in names)
