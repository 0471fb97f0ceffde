# Evaluation and publishing of results/<dataset>/<target>_fold<k> directories.
# `results/<target>_fold<k>` is the same directory for the default dataset (params.yaml
# `dataset`), so the short targets of the README work without naming the dataset.


# ---- results/report (rule report_all) ----
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
    return inputs


def report_all_args(wildcards, input):
    """--retab DIR... --lnet DIR... (an option only when it has directories)."""
    return " ".join(f"--{name} " + " ".join(input[name]) for name in METHODS if input[name])


rule predict_background:
    # The trivial all-background prediction: exercises data -> folds -> evaluate end to end
    # and is the floor every method must beat.
    input:
        root=dataset_root,
    output:
        directory("work/{dataset}/baseline/pred_val"),
    params:
        **STAGE_PARAMS,
    log:
        "logs/{dataset}/predict_background.log",
    benchmark:
        "benchmarks/out/{dataset}/predict_background.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.stages.predict_constant", "--split val --out {output}")


rule evaluate_baseline:
    input:
        pred="work/{dataset}/baseline/pred_val",
        fold=FOLD_FILE,
    output:
        "work/{dataset}/fold{fold}/eval/baseline_val.json",
    params:
        **STAGE_PARAMS,
    log:
        "logs/{dataset}/evaluate_baseline_fold{fold}.log",
    benchmark:
        "benchmarks/out/{dataset}/evaluate_baseline_fold{fold}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.stages.evaluate", "--split val --pred {input.pred} --fold-file {input.fold} --out {output}")


rule result_baseline:
    input:
        metrics="work/{dataset}/fold{fold}/eval/baseline_val.json",
    output:
        directory("results/{dataset}/baseline_fold{fold}"),
    params:
        **STAGE_PARAMS,
    log:
        "logs/{dataset}/result_baseline_fold{fold}.log",
    benchmark:
        "benchmarks/out/{dataset}/result_baseline_fold{fold}.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=200,
        runtime=5,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.publish --file metrics.json={input.metrics} --out {output} 2> {log}"


rule publish_default_dataset:
    # results/<target>_fold<k> mirrors results/<default dataset>/<target>_fold<k>.
    input:
        lambda w: f"results/{DEFAULT_DATASET}/{w.target}_fold{w.fold}",
    output:
        directory("results/{target}_fold{fold}"),
    params:
        **STAGE_PARAMS,
    log:
        "logs/publish_{target}_fold{fold}.log",
    benchmark:
        "benchmarks/out/publish_{target}_fold{fold}.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=200,
        runtime=5,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.publish --src {input} --out {output} 2> {log}"


rule report_all:
    # results/report: one Markdown report (report.md + figures/) across the datasets, folds and
    # methods of params.yaml report.datasets / folds / methods, from their per-fold reports.
    input:
        unpack(report_all_inputs),
    output:
        directory("results/report"),
    params:
        **STAGE_PARAMS,
        reports=report_all_args,
    log:
        "logs/report_all.log",
    benchmark:
        "benchmarks/out/report_all.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.report_all {params.reports} --out {output} 2> {log}"
