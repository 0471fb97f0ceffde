# The segmentation network every method trains (stages seg_features, train_seg,
# predict_seg) and the evaluate stage, written for RETAB's table rows
# (pipeline.method_table.RETAB: work/<dataset>/<scope>/seg/<row>). Other methods derive
# their rules from these with `use rule ... with:` and their own paths (lnet.smk).


rule seg_features:
    # segmentation.feature_cache: the frozen backbone's features of a split, computed once for
    # every segmentation net of the dataset (train_seg / predict_seg run only heads on them).
    input:
        root=dataset_root,
    output:
        "work/{dataset}/shared/seg/features/{split}.pt",
    wildcard_constraints:
        split="train|val",
    params:
        **STAGE_PARAMS,
        segmentation=lambda w: section(w.dataset, "segmentation"),
        backbone=lambda w: section(w.dataset, "backbone"),
    log:
        "logs/{dataset}/shared/seg_features_{split}.log",
    benchmark:
        "benchmarks/out/{dataset}/shared/seg_features_{split}.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.stages.seg_features", "--split {wildcards.split} --out {output} --threads {threads}")


rule train_seg:
    # DeepLab-style ASPP segmentation net; what supervises it is the row's (method_table).
    input:
        unpack(seg_inputs),
    output:
        model="work/{dataset}/{scope}/seg/{row}/model.pt",
        history="work/{dataset}/{scope}/seg/{row}/history.tsv",
    wildcard_constraints:
        scope=r"shared|fold\d+",
        row="|".join(RETAB.rows),
    params:
        **STAGE_PARAMS,
        supervision=lambda w: RETAB.rows[w.row].supervision,
        labels=seg_label_args,
        features=seg_features_arg,
        segmentation=lambda w: section(w.dataset, "segmentation"),
        backbone=lambda w: section(w.dataset, "backbone"),
    log:
        "logs/{dataset}/{scope}/train_seg_{row}.log",
    benchmark:
        "benchmarks/out/{dataset}/{scope}/train_seg_{row}.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=480,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.stages.train_seg",
                    "--supervision {params.supervision} {params.labels} {params.features} --labels {input.labels}"
                    " --out {output.model} --history {output.history} --threads {threads}")


rule predict_seg:
    input:
        unpack(seg_feature_inputs("val")),
        model="work/{dataset}/{scope}/seg/{row}/model.pt",
        root=dataset_root,
    output:
        directory("work/{dataset}/{scope}/seg/{row}/pred_val"),
    wildcard_constraints:
        scope=r"shared|fold\d+",
        row="|".join(RETAB.rows),
    params:
        **STAGE_PARAMS,
        features=seg_features_arg,
        segmentation=lambda w: section(w.dataset, "segmentation"),
    log:
        "logs/{dataset}/{scope}/predict_seg_{row}.log",
    benchmark:
        "benchmarks/out/{dataset}/{scope}/predict_seg_{row}.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.stages.predict_seg",
                    "--model {input.model} --split val {params.features} --out {output} --threads {threads}")


rule evaluate_seg:
    # Segmentation on val: all / base / novel mIoU against the fold's class split.
    input:
        pred=lambda w: seg_pred_dir(w.dataset, w.row, w.fold),
        fold=FOLD_FILE,
    output:
        "work/{dataset}/fold{fold}/eval/{row}_val.json",
    wildcard_constraints:
        row="|".join(RETAB.rows),
    params:
        **STAGE_PARAMS,
        split="--split val",
    log:
        "logs/{dataset}/fold{fold}/evaluate_{row}_val.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/evaluate_{row}_val.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.stages.evaluate", "{params.split} --pred {input.pred} --fold-file {input.fold} --out {output}")


use rule evaluate_seg as evaluate_pseudo with:
    # Pseudo-label quality on the fold's train novel samples (the labels the seg net sees).
    input:
        pred=lambda w: pseudo_dir(w.dataset, RETAB.rows[w.row].pseudo_source, w.fold),
        fold=FOLD_FILE,
    output:
        "work/{dataset}/fold{fold}/eval/{row}_pseudo.json",
    wildcard_constraints:
        row="|".join(RETAB.pseudo_rows()),
    params:
        # the train novel samples; a pseudo label may leave pixels unlabelled (a miss, reported as coverage)
        split="--split train --ids-from novel_samples --void-pred",
    log:
        "logs/{dataset}/fold{fold}/evaluate_{row}_pseudo.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/evaluate_{row}_pseudo.tsv"
