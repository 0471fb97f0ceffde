# Evaluation and publishing of results/<dataset>/<target>_fold<k> directories.
# `results/<target>_fold<k>` is the same directory for the default dataset (params.yaml
# `dataset`), so the short targets of the README work without naming the dataset.


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


rule publish_results_page:
    # docs/results.md: results/report under a header naming the commit, date and processor it
    # ran on, figures beside it, so the docs link to measured numbers instead of retyping them.
    input:
        "results/report",
    output:
        page="docs/results.md",
        figures=directory("docs/results_figures"),
    params:
        **STAGE_PARAMS,
    log:
        "logs/publish_results_page.log",
    localrule: True
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.publish_results_page --report {input} --out {output.page} 2> {log} "
        "&& mkdir -p {output.figures}"
