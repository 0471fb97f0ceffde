# Paths and input functions of the Ref-Net rules (refnet.smk).
from pathlib import Path as _RefnetPath

# One training job: a scope (fold<k>: the fold's novel classes are the targets;
# single_<class>: that class alone; select<k>: base classes of fold k as pseudo-targets, no novel
# image, to choose a critic setting), a variant (full or a key of refnet.ablation.variants; in a
# select scope a key of refnet.select.candidates),
# K references per target class (an integer or `all`) and a training seed.
REFNET_DIR = "work/{dataset}/{scope}/refnet/{variant}/{shots}shot_seed{train_seed}"
REFNET_FULL = "full"
REFNET_SCOPE = r"fold\d+|single_[a-z][a-z0-9_]*|select\d+"
REFNET_RETAB = "results/{dataset}/retab_fold{fold}/metrics.json"


def refnet_section(dataset, key):
    """refnet.<key> for a dataset, passed as a param so that an edit reruns what reads it."""
    return P(dataset)["refnet"][key]


def refnet_train_params(wildcards):
    """What train_refnet reads: the refnet sections but the tables' selections, the variant's
    switches, and the seed the references are drawn with."""
    settings = P(wildcards.dataset)["refnet"]
    keep = ("min_pixels", "zero_shot_references", "size", "grid", "hidden", "aspp_rates", "train", "critic")
    out = {**{k: settings[k] for k in keep}, "variant": refnet_variant(wildcards.dataset, wildcards.variant,
                                                                      wildcards.scope)}
    if wildcards.scope.startswith("select") or refnet_is_candidate(wildcards.dataset, wildcards.variant):
        # a candidate's weight overrides refnet.train's; other fold / single jobs' params stay as they were
        variant = dict(out["variant"])
        overrides = {k: variant.pop(k) for k in ("adversarial_weight", "adversarial_balance") if k in variant}
        out.update(train={**settings["train"], **overrides}, variant=variant,
                   select_classes=settings["select"]["classes"])
    return out


def refnet_is_candidate(dataset, variant):
    """A key of refnet.select.candidates that is neither full nor an ablation variant: in a
    fold scope it trains the candidate's setting on the fold's novel classes (critics check)."""
    settings = P(dataset)["refnet"]
    return (variant != REFNET_FULL and variant not in (settings["ablation"]["variants"] or {})
            and variant in (settings["select"]["candidates"] or {}))


def refnet_variant(dataset, variant, scope=""):
    """The switches of a variant (full, a key of refnet.ablation.variants) or, in a select<k>
    scope, of a key of refnet.select.candidates (adversarial_weight included)."""
    if scope.startswith("select") or refnet_is_candidate(dataset, variant):
        candidates = P(dataset)["refnet"]["select"]["candidates"] or {}
        if variant not in candidates:
            raise WorkflowError(f"error: params.yaml: refnet.select.candidates has no candidate '{variant}' "
                                f"(known: {', '.join(sorted(candidates)) or 'none'})")
        return candidates[variant]
    if variant == REFNET_FULL:
        return {}
    variants = P(dataset)["refnet"]["ablation"]["variants"] or {}
    if variant not in variants:
        raise WorkflowError(f"error: params.yaml: refnet.ablation.variants has no variant '{variant}' "
                            f"(known: {', '.join(sorted(variants)) or 'none'}; the full model is '{REFNET_FULL}')")
    return variants[variant]


def refnet_scope_inputs(wildcards):
    """{"fold": the fold file} for fold<k>; {} for single_<class> (checked against the classes)."""
    return refnet_scope_files(wildcards.dataset, wildcards.scope)


def refnet_scope_files(dataset, scope):
    """A fold or select scope's fold file (the fold checked), or nothing for a single-category
    scope whose class the dataset has (else one line at DAG construction)."""
    for prefix in ("fold", "select"):
        if scope.startswith(prefix) and scope[len(prefix):].isdigit():
            num_folds(dataset, scope[len(prefix):])
            return {"fold": FOLD_FILE.format(dataset=dataset, fold=scope[len(prefix):])}
    data = P(dataset)["data"]
    name = scope[len("single_"):]
    if name not in data["classes"] or name == data.get("background"):
        raise WorkflowError(f"error: results/{dataset}/refnet_{scope}: '{name}' is not an object class "
                            f"of dataset '{dataset}'")
    return {}


def refnet_scope_arg(wildcards, input):
    if wildcards.scope.startswith("select"):
        return f"--select-fold-file {input.fold}"
    return f"--fold-file {input.fold}" if "fold" in input.keys() else f"--target-class {wildcards.scope[7:]}"


def refnet_eval(dataset, scope, variant, shots, train_seed):
    return f"{REFNET_DIR}/eval.json".format(dataset=dataset, scope=scope, variant=variant, shots=shots,
                                             train_seed=train_seed)


def refnet_result_inputs(wildcards):
    """results/<d>/refnet_fold<k>: the full model at refnet.shots, training seed 0; the RETAB
    report of the fold when it already exists (read for its novel mIoU; never built for this)."""
    d, k = wildcards.dataset, wildcards.fold
    num_folds(d, k)
    run = REFNET_DIR.format(dataset=d, scope=f"fold{k}", variant=REFNET_FULL, shots=refnet_section(d, "shots"),
                            train_seed=0)
    inputs = {"eval": f"{run}/eval.json", "predictions": f"{run}/predictions.npz", "history": f"{run}/history.tsv"}
    retab = REFNET_RETAB.format(dataset=d, fold=k)
    if _RefnetPath(retab).is_file():
        inputs["retab"] = retab
    return inputs


def refnet_retab_arg(wildcards, input):
    return f"--retab {input.retab}" if "retab" in input.keys() else ""


def refnet_table_inputs(wildcards):
    """{"<row>:<scope>:<seed>": eval.json} of a table target: refnet_all (R(K) over every fold),
    refnet_ablation / refnet_critics (variants x folds x training seeds), refnet_single_<class>;
    refnet_select (candidates x select<k> scopes x training seeds) also {"history:<row>:<scope>:<seed>":
    history.tsv}."""
    d, table = wildcards.dataset, wildcards.table
    settings = P(d)["refnet"]
    if table == "select":
        select = settings["select"]
        for fold in select["folds"]:
            num_folds(d, fold)
        jobs = {f"{c}:select{k}:{t}": REFNET_DIR.format(dataset=d, scope=f"select{k}", variant=c, shots=select["shots"],
                                                         train_seed=t)
                for c in sorted(select["candidates"] or {}) for k in select["folds"] for t in select["training_seeds"]}
        if not jobs:
            raise WorkflowError("error: params.yaml: refnet.select.candidates is empty (nothing to choose from)")
        return {**{key: f"{run}/eval.json" for key, run in jobs.items()},
                **{f"history:{key}": f"{run}/history.tsv" for key, run in jobs.items()}}
    if table == "all":
        scopes = [f"fold{k}" for k in range(num_folds(d))]
        return {f"{s}:{scope}:0": refnet_eval(d, scope, REFNET_FULL, s, 0)
                for s in settings["rk"]["shots"] for scope in scopes}
    if table.startswith("single_"):
        refnet_scope_files(d, table)
        return {f"{s}:{table}:0": refnet_eval(d, table, REFNET_FULL, s, 0) for s in settings["single"]["shots"]}
    selection = settings["ablation"] if table == "ablation" else settings["critics_check"]
    variants = ([REFNET_FULL, *sorted(settings["ablation"]["variants"] or {})] if table == "ablation"
                else [REFNET_FULL, "no_critics", *(settings["critics_check"].get("candidates") or [])])
    for variant in variants:
        if table != "ablation" and variant not in (REFNET_FULL, "no_critics") and not refnet_is_candidate(d, variant):
            raise WorkflowError(f"error: params.yaml: refnet.critics_check.candidates: '{variant}' is not a key of "
                                "refnet.select.candidates (or it is an ablation variant)")
        refnet_variant(d, variant)
    for fold in selection["folds"]:
        num_folds(d, fold)
    evals = {f"{v}:fold{k}:{t}": refnet_eval(d, f"fold{k}", v, selection["shots"], t)
             for v in variants for k in selection["folds"] for t in selection["training_seeds"]}
    # the training histories beside (the tables' health columns: gradient ratio, foreground shares, W)
    return {**evals, **{f"history:{key}": str(_RefnetPath(path).parent / "history.tsv") for key, path in evals.items()}}


def refnet_table_args(wildcards, input):
    kind = "rk" if wildcards.table == "all" or wildcards.table.startswith("single_") else "ablation"
    if wildcards.table in ("select", "ablation", "critics"):
        return f"--kind {'select' if wildcards.table == 'select' else 'ablation'} " + " ".join(
            f"--history {name[len('history:'):]}={input[name]}" if name.startswith("history:")
            else f"--eval {name}={input[name]}" for name in input.keys())
    return f"--kind {kind} " + " ".join(f"--eval {name}={input[name]}" for name in input.keys())
