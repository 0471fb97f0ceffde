# Paths and input functions of the folder rules (apply.smk).

from pipeline.layout import seg_dir  # noqa: E402

APPLY_NAME = r"[A-Za-z0-9][A-Za-z0-9_-]*"


def apply_settings(dataset):
    return P(dataset).get("apply", {})


def folder_inputs(folder, key):
    """The files a folder stage reads of ``folder`` (pipeline.data.image_folder.folder_files:
    non-hidden regular files, not sub-folders); a missing or empty folder stops the DAG with one
    line naming the key."""
    path = Path(folder)
    if not path.is_dir():
        raise WorkflowError(f"error: params.yaml: {key}: {folder}: folder not found")
    files = sorted(str(p) for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
    if not files:
        raise WorkflowError(f"error: params.yaml: {key}: {folder}: the folder holds no file")
    return files


def apply_folder(dataset, name):
    folders = apply_settings(dataset).get("folders") or {}
    if name not in folders:
        raise WorkflowError(f"error: params.yaml: apply.folders has no folder '{name}' "
                            f"(known: {', '.join(sorted(folders)) or 'none'})")
    return folders[name]


def apply_fewshot_set(dataset, name):
    sets = apply_settings(dataset).get("fewshot") or {}
    if name not in sets:
        raise WorkflowError(f"error: params.yaml: apply.fewshot has no set '{name}' "
                            f"(known: {', '.join(sorted(sets)) or 'none'})")
    return sets[name]


def seg_model_path(dataset, row, fold):
    """The model file of a table row's segmentation net (RETAB's rows, then L-Net's)."""
    if row in RETAB.rows:
        if RETAB.rows[row].supervision is None:
            raise WorkflowError(f"error: row '{row}' trains no segmentation net")
        return f"{seg_dir(dataset, row, fold)}/model.pt"
    if row in LNET.rows and row != "oracle":
        return f"{lnet_dir(dataset, lnet_split(dataset), fold)}/seg/{row}/model.pt"
    known = sorted({*(r for r, s in RETAB.rows.items() if s.supervision), *LNET.rows})
    raise WorkflowError(f"error: no segmentation net of row '{row}' (known: {', '.join(known)})")


def segment_folder_inputs(wildcards):
    num_folds(wildcards.dataset, wildcards.fold)
    folder = apply_folder(wildcards.dataset, wildcards.name)
    return {"model": seg_model_path(wildcards.dataset, wildcards.row, wildcards.fold),
            "images": folder_inputs(folder, f"apply.folders.{wildcards.name}")}


def fewshot_model_path(dataset):
    settings = apply_settings(dataset)
    method, fold = settings["fewshot_method"], settings["fewshot_fold"]
    if method == "prototype":
        return None
    num_folds(dataset, fold)
    if method == "crnet":
        return f"{CRNET_DIR}/model.pt".format(dataset=dataset, fold=fold, variant=CRNET_FULL)
    return f"{REFNET_DIR}/model.pt".format(dataset=dataset, scope=f"fold{fold}", variant=REFNET_FULL,
                                            shots=refnet_section(dataset, "shots"), train_seed=0)


def fewshot_folder_inputs(wildcards):
    entry = apply_fewshot_set(wildcards.dataset, wildcards.name)
    key = f"apply.fewshot.{wildcards.name}"
    inputs = {"support_images": folder_inputs(Path(entry["support"]) / "images", f"{key}.support (images/)"),
              "support_masks": folder_inputs(Path(entry["support"]) / "masks", f"{key}.support (masks/)"),
              "query": folder_inputs(entry["query"], f"{key}.query")}
    model = fewshot_model_path(wildcards.dataset)
    if model:
        inputs["model"] = model
    return inputs


def fewshot_folder_params(wildcards):
    """What stage fewshot_folder reads: the method (and the fold only where a model is used),
    the support-mask convention, the display settings, the encoder and the method's test keys."""
    settings = apply_settings(wildcards.dataset)
    method = settings["fewshot_method"]
    out = {"method": method, "object_indices": settings["object_indices"], "max_side": settings["max_side"],
           "overlay_alpha": settings["overlay_alpha"], "sheet": settings["sheet"],
           "encoder": section(wildcards.dataset, "crnet")["encoder"]}
    if method == "crnet":
        out["iterations"] = section(wildcards.dataset, "crnet")["test"]["iterations"]
    if method == "refnet":
        out["threshold"] = refnet_section(wildcards.dataset, "test")["threshold"]
    return out
