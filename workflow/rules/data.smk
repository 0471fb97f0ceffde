# Data: the embedded default dataset, image-level labels, folds (pascal5i, {k: K} or lists).


rule make_embedded:
    output:
        directory(EMBEDDED_ROOT),
    params:
        **STAGE_PARAMS,
        embedded=config.get("embedded_data", {}),
    log:
        "logs/data/make_embedded.log",
    benchmark:
        "benchmarks/out/make_embedded.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.make_embedded --params {params.params_file} --out {output} 2> {log}"


rule image_labels:
    input:
        root=dataset_root,
    output:
        IMAGE_LABELS,
    params:
        **STAGE_PARAMS,
        labels=lambda w: section(w.dataset, "image_labels"),
        # only the entry's keys that decide what the labels say: fold lists and novel_min_pixels
        # do not, so editing them reruns make_folds and what follows, never the CAM network
        data=lambda w: image_data_keys(w.dataset),
    log:
        "logs/{dataset}/image_labels.log",
    benchmark:
        "benchmarks/out/{dataset}/image_labels.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.stages.image_labels", "--out {output}")


rule make_folds:
    # Every fold-dependent target reads a fold file: its input function checks the fold.
    input:
        unpack(make_folds_inputs),
    output:
        FOLD_FILE,
    params:
        **STAGE_PARAMS,
        data=lambda w: P(w.dataset)["data"],
    log:
        "logs/{dataset}/make_folds_fold{fold}.log",
    benchmark:
        "benchmarks/out/{dataset}/make_folds_fold{fold}.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.stages.make_folds", "--labels {input.labels} --fold {wildcards.fold} --out {output}")
