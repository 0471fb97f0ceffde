# Paths and input functions of the RETAB rules (retab.smk).

BOUNDARY_DIR = "work/{dataset}/fold{fold}/boundary"


def non_boundary_params(dataset):
    """boundary.tau / erosion: how stages train_affinity (retab) and propagate (retab) turn the
    stored boundary probabilities into a mask; a change reruns them, not the boundary net."""
    boundary = section(dataset, "boundary")
    return {key: boundary.get(key) for key in ("tau", "erosion")}


def scope_inputs(wildcards, boundary):
    """The fold file (fold-dependent scopes) and, when ``boundary``, the fold's boundary maps."""
    fold = fold_of_scope(wildcards.scope)
    inputs = {} if fold is None else {"fold": FOLD_FILE.format(dataset=wildcards.dataset, fold=fold)}
    if boundary:
        inputs["boundary"] = f"work/{wildcards.dataset}/{wildcards.scope}/boundary/maps"
    return inputs


def affinity_inputs(wildcards):
    inputs = {"confident": CONFIDENT_DIR.format(dataset=wildcards.dataset, fold=fold_of_scope(wildcards.scope)),
              "labels": IMAGE_LABELS.format(dataset=wildcards.dataset)}
    if wildcards.variant != "cam":
        inputs.update(scope_inputs(wildcards, boundary=wildcards.variant == "retab"))
    return inputs


def optional_args(wildcards, input):
    """--fold-file / --boundary, for the inputs a job has."""
    return " ".join(f"--{flag} {input[key]}" for key, flag in (("fold", "fold-file"), ("boundary", "boundary"))
                    if key in input.keys())


def propagate_inputs(wildcards):
    variant, _ = PSEUDO_SOURCES[wildcards.source]
    inputs = {"cams": f"{CAM_DIR}/cams".format(dataset=wildcards.dataset),
              "labels": IMAGE_LABELS.format(dataset=wildcards.dataset),
              "affinity": f"work/{wildcards.dataset}/{wildcards.scope}/affinity/{variant}/model.pt"}
    if section(wildcards.dataset, "propagation")["alpha"] == "auto":  # chosen on the fold's base samples
        inputs["fold"] = FOLD_FILE.format(dataset=wildcards.dataset, fold=fold_of_scope(wildcards.scope))
    if wildcards.source == "retab":
        inputs["boundary"] = f"work/{wildcards.dataset}/{wildcards.scope}/boundary/maps"
    return inputs


def retab_result_inputs(wildcards):
    """The evaluate outputs of the target's rows; for the comparison also the figure's inputs."""
    inputs = {"metrics": [f for row in RETAB.targets[wildcards.target]
                          for f in row_metric_files(wildcards.dataset, row, wildcards.fold)]}
    if wildcards.target == "retab":
        d, k = wildcards.dataset, wildcards.fold
        inputs["figure"] = [f"{CAM_DIR}/cams".format(dataset=d), f"{BOUNDARY_DIR}/maps".format(dataset=d, fold=k),
                            pseudo_dir(d, "rw_cam", k), pseudo_dir(d, "retab", k), FOLD_FILE.format(dataset=d, fold=k)]
    return inputs
