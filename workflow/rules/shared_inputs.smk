# Input functions of the rules of the shared stages (cam.smk, segmentation.smk,
# evaluation.smk), which the methods' rules derive from.


def make_folds_inputs(wildcards):
    """The image labels, once the fold is checked: a fold the dataset does not have (or folds
    naming an unknown class) stop the workflow at DAG construction, before any job runs."""
    num_folds(wildcards.dataset, wildcards.fold)
    return {"labels": IMAGE_LABELS.format(dataset=wildcards.dataset)}


def pseudo_label_inputs(wildcards):
    inputs = {"labels": IMAGE_LABELS.format(dataset=wildcards.dataset)}
    if wildcards.source == "cam":
        inputs["scores"] = f"{CAM_DIR}/cams".format(dataset=wildcards.dataset)
        inputs["cam_eval"] = CAM_THRESHOLD.format(dataset=wildcards.dataset, fold=fold_of_scope(wildcards.scope))
    else:
        inputs["scores"] = f"work/{wildcards.dataset}/{wildcards.scope}/revised/{wildcards.source}"
    return inputs


def confident_label_inputs(wildcards):
    """CAMs and labels; with conf_fg / conf_bg `auto` also the fold's CAM threshold they follow."""
    inputs = {"cams": f"{CAM_DIR}/cams".format(dataset=wildcards.dataset),
              "labels": IMAGE_LABELS.format(dataset=wildcards.dataset)}
    confident = section(wildcards.dataset, "confident_labels")
    if "auto" in (confident.get("conf_fg"), confident.get("conf_bg")):
        inputs["cam_threshold"] = CAM_THRESHOLD.format(dataset=wildcards.dataset, fold=wildcards.fold)
    return inputs


def seg_feature_inputs(split):
    """Input function: {"features": cache file of ``split``} when segmentation.feature_cache is
    on for the dataset (stage seg_features), else nothing."""

    def inputs(wildcards):
        if section(wildcards.dataset, "segmentation").get("feature_cache"):
            return {"features": f"work/{wildcards.dataset}/shared/seg/features/{split}.pt"}
        return {}

    return inputs


def seg_features_arg(wildcards, input):
    return f"--features {input.features}" if "features" in input.keys() else ""


def seg_inputs(wildcards):
    """A RETAB row's training inputs: its pseudo labels and, for mixed supervision, the fold."""
    row = RETAB.rows[wildcards.row]
    inputs = {"labels": IMAGE_LABELS.format(dataset=wildcards.dataset), "root": dataset_root(wildcards),
              **seg_feature_inputs("train")(wildcards)}
    fold = fold_of_scope(wildcards.scope)
    if row.pseudo_source is not None:
        inputs["pseudo"] = pseudo_dir(wildcards.dataset, row.pseudo_source, fold if fold is not None else 0)
    if row.supervision == "mixed":
        inputs["fold"] = FOLD_FILE.format(dataset=wildcards.dataset, fold=fold)
    return inputs


def seg_label_args(wildcards, input):
    """--pseudo / --fold-file, for the inputs a row has."""
    return " ".join(f"--{flag} {input[key]}" for key, flag in (("pseudo", "pseudo"), ("fold", "fold-file"))
                    if key in input.keys())


# Which per-fold report directories it covers: params.yaml report.datasets / folds / methods
# (top-level section; overrides.<dataset>.report does not change the selection). Each entry
# of report.methods is a results target (retab, lnet, pnet); its method (method_table)
# names report_all's option.
def report_all_inputs(wildcards):
    """{"retab": [results/<d>/retab_fold<k>...], "lnet": [results/<d>/{lnet,pnet}_fold<k>...]}."""
    selection = config.get("report") or {}
    datasets = selection.get("datasets") or [DEFAULT_DATASET]
    targets = selection.get("methods") or ["retab"]
    inputs = {name: [] for name in METHODS}
    for dataset in datasets:
        if dataset not in DATASETS:
            raise WorkflowError(f"error: params.yaml: report.datasets: no dataset '{dataset}' under 'datasets' "
                                f"(known: {', '.join(DATASETS)})")
        available = range(num_folds(dataset))
        wanted = selection.get("folds")
        folds = [k for k in (available if wanted is None else wanted) if k in available]
        if not folds:
            raise WorkflowError(f"error: params.yaml: report.folds: dataset '{dataset}' has folds "
                                f"0..{len(available) - 1}, none of {wanted}")
        for target in targets:
            inputs[method_of_target(target).name] += [f"results/{dataset}/{target}_fold{k}" for k in folds]
    inputs["extra"] = list(selection.get("extras") or [])
    return inputs


def report_all_args(wildcards, input):
    """--retab DIR... --lnet DIR... (an option only when it has directories)."""
    return " ".join(f"--{name} " + " ".join(input[name]) for name in [*METHODS, "extra"] if input[name])
