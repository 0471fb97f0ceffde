# RETAB weak-shot segmentation and its baselines (Zhou et al., BMVC 2022). Its paths and
# input functions: retab_inputs.smk.
#
# The table rows are pipeline.method_table.RETAB; the stages are pipeline/methods/retab/
# (boundary net, affinity net, propagation, report) on the shared CAM, pseudo-label and
# segmentation stages (cam.smk, segmentation.smk). Paths: work/<dataset>/<scope>/... where
# scope is `shared` for what does not depend on the fold (the CAM network and its CAMs, the
# CAM-only affinity net, pure-WSSS and oracle segmentation nets) and `fold<k>` for what does
# (everything trained on base samples' pixel labels).
#
#   CAM (shared) -> confident labels -> affinity net (cam | gt | retab)
#   fold's base samples -> boundary net -> boundary maps ---------^   \
#   CAMs + affinity (+ boundary) -> random walk (single | two-stage) -> pseudo labels
#   pseudo labels (+ base-sample GT) -> segmentation net -> evaluate -> report


rule train_boundary:
    # The boundary network on the fold's base samples (their novel pixels are ignore).
    input:
        root=dataset_root,
        fold=FOLD_FILE,
    output:
        model=f"{BOUNDARY_DIR}/model.pt",
        history=f"{BOUNDARY_DIR}/history.tsv",
    params:
        **STAGE_PARAMS,
        boundary=lambda w: section(w.dataset, "boundary"),
        backbone=lambda w: section(w.dataset, "backbone"),
    log:
        "logs/{dataset}/fold{fold}/train_boundary.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/train_boundary.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.retab.train_boundary",
                    "--fold-file {input.fold} --out {output.model} --history {output.history} --threads {threads}")


rule infer_boundary:
    input:
        model=f"{BOUNDARY_DIR}/model.pt",
        labels=IMAGE_LABELS,
    output:
        directory(f"{BOUNDARY_DIR}/maps"),
    params:
        **STAGE_PARAMS,
        boundary=lambda w: section(w.dataset, "boundary"),
    log:
        "logs/{dataset}/fold{fold}/infer_boundary.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/infer_boundary.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.retab.infer_boundary",
                    "--model {input.model} --labels {input.labels} --split train --out {output} --threads {threads}")


rule train_affinity:
    # variant cam: CAM confident labels only (PSA); gt: ground-truth pairs for base samples
    # (mixed supervision); retab: gt + novel pairs only where neither pixel is boundary.
    input:
        unpack(affinity_inputs),
    output:
        model="work/{dataset}/{scope}/affinity/{variant}/model.pt",
        history="work/{dataset}/{scope}/affinity/{variant}/history.tsv",
    wildcard_constraints:
        scope=r"shared|fold\d+",
        variant="|".join(AFFINITY_VARIANTS),
    params:
        **STAGE_PARAMS,
        optional=optional_args,
        affinity=lambda w: section(w.dataset, "affinity"),
        non_boundary=lambda w: non_boundary_params(w.dataset) if w.variant == "retab" else {},
        backbone=lambda w: section(w.dataset, "backbone"),
    log:
        "logs/{dataset}/{scope}/train_affinity_{variant}.log",
    benchmark:
        "benchmarks/out/{dataset}/{scope}/train_affinity_{variant}.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.retab.train_affinity",
                    "--variant {wildcards.variant} {params.optional} --confident {input.confident}"
                    " --labels {input.labels} --out {output.model} --history {output.history} --threads {threads}")


rule propagate:
    # rw_cam / rw_gt: PSA single-stage random walk; retab: boundary-aware two-stage walk.
    input:
        unpack(propagate_inputs),
    output:
        directory("work/{dataset}/{scope}/revised/{source}"),
    wildcard_constraints:
        scope=r"shared|fold\d+",
        source="rw_cam|rw_gt|retab",
    params:
        **STAGE_PARAMS,
        walk=lambda w: "two_stage" if w.source == "retab" else "single",
        optional=optional_args,
        propagation=lambda w: section(w.dataset, "propagation"),
        non_boundary=lambda w: non_boundary_params(w.dataset) if w.source == "retab" else {},
    log:
        "logs/{dataset}/{scope}/propagate_{source}.log",
    benchmark:
        "benchmarks/out/{dataset}/{scope}/propagate_{source}.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.retab.propagate",
                    "--walk {params.walk} --cams {input.cams} --labels {input.labels} --affinity {input.affinity}"
                    " {params.optional} --out {output} --threads {threads}")


rule retab_result:
    # results/<dataset>/<target>_fold<k>: metrics.json + report.md; for `retab` also the
    # comparison table over every row and the Fig. 3-style figure.
    input:
        unpack(retab_result_inputs),
    output:
        directory("results/{dataset}/{target}_fold{fold}"),
    wildcard_constraints:
        target="|".join(RETAB.targets),
    params:
        **STAGE_PARAMS,
        report=lambda w: fold_report_params(w.dataset),
    log:
        "logs/{dataset}/fold{fold}/result_{target}.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/result_{target}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        stage_shell(RETAB.report_stage,
                    "--fold {wildcards.fold} --method {wildcards.target} --work work/{wildcards.dataset} --out {output}")


rule retab_all:
    # Mean over the dataset's folds (PASCAL-5i: 4) of every row's metrics.
    input:
        lambda w: [f"results/{w.dataset}/retab_fold{k}" for k in range(num_folds(w.dataset))],
    output:
        directory("results/{dataset}/retab_all"),
    params:
        **STAGE_PARAMS,
    log:
        "logs/{dataset}/result_retab_all.log",
    benchmark:
        "benchmarks/out/{dataset}/result_retab_all.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        stage_shell(RETAB.report_stage, "--aggregate {input} --out {output}")


rule publish_retab_all:
    input:
        lambda w: f"results/{DEFAULT_DATASET}/retab_all",
    output:
        directory("results/retab_all"),
    params:
        **STAGE_PARAMS,
    log:
        "logs/publish_retab_all.log",
    benchmark:
        "benchmarks/out/publish_retab_all.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=200,
        runtime=5,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.publish --src {input} --out {output} 2> {log}"
