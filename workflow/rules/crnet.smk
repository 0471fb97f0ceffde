# CRNet few-shot segmentation (Liu et al., CVPR 2020) on the shared episodes. Paths and input
# functions: crnet_inputs.smk; stages: pipeline/methods/crnet/.
#
#   work/<ds>/crnet/features/{train,val}.pt        frozen encoder features, once per split
#   work/<ds>/fold<k>/crnet/<variant>/model.pt     CRNet on the fold's base classes (variant full
#                                                  or a key of crnet.ablation.variants)
#   work/<ds>/fold<k>/crnet/<variant>/eval/<s>shot_seed<e>.json            episodic scores
#   work/<ds>/fold<k>/crnet/<variant>/eval/finetune_<s>shot_seed<e>.json   fusion vs finetune
#   work/<ds>/fold<k>/crnet_prototype/eval/<s>shot_seed<e>.json            prototype floor
#
# Targets: results/<ds>/crnet_fold<k>, results/<ds>/crnet_all (every fold),
# results/<ds>/crnet_ablation (each variant its own training job, folds crnet.ablation.folds);
# results/<ds>/crnet_seeds (CRNet over the training seeds of crnet.training_seeds vs the floor);
# results/crnet_fold<k>, results/crnet_all, results/crnet_ablation, results/crnet_seeds for the
# default dataset.
# Cross-dataset (COCO->PASCAL protocol): results/<test>/crnet_from_<train>_fold<k>, the CRNet
# of <train> fold k on <test>'s val episodes of crnet.cross_dataset.<test>.classes:
#   work/<test>/episodes/cross_<s>shot_seed<e>.jsonl               episodes keyed by that class list
#   work/<test>/crnet_from_<train>_fold<k>/eval/<s>shot_seed<e>.json
#   work/<test>/crnet_prototype/cross/eval/<s>shot_seed<e>.json     the floor on the same episodes


rule crnet_features:
    input:
        root=dataset_root,
    output:
        CRNET_FEATURES,
    wildcard_constraints:
        split="train|val",
    params:
        **STAGE_PARAMS,
        encoder=lambda w: crnet_section(w.dataset, "encoder"),
        backbone=lambda w: section(w.dataset, "backbone"),
    log:
        "logs/{dataset}/crnet/features_{split}.log",
    benchmark:
        "benchmarks/out/{dataset}/crnet/features_{split}.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.crnet.crnet_features", "--split {wildcards.split} --out {output} --threads {threads}")


rule train_crnet:
    input:
        features=CRNET_FEATURES.replace("{split}", "train"),
        labels=IMAGE_LABELS,
        fold=FOLD_FILE,
    output:
        model=f"{CRNET_DIR}/model.pt",
        history=f"{CRNET_DIR}/history.tsv",
    wildcard_constraints:
        variant=r"[a-z][a-z0-9_]*",
    params:
        **STAGE_PARAMS,
        crnet=crnet_train_params,
        backbone=lambda w: section(w.dataset, "backbone"),
    log:
        "logs/{dataset}/fold{fold}/crnet/{variant}/train_crnet.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/crnet/{variant}/train_crnet.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=480,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.crnet.train_crnet",
                    "--features {input.features} --labels {input.labels} --fold-file {input.fold} "
                    "--variant {wildcards.variant} --out {output.model} --history {output.history} --threads {threads}")


rule test_crnet:
    input:
        model=f"{CRNET_DIR}/model.pt",
        features=CRNET_FEATURES.replace("{split}", "val"),
        fold=FOLD_FILE,
        episodes=EPISODES_FILE,
    output:
        CRNET_EVAL,
    wildcard_constraints:
        variant=r"[a-z][a-z0-9_]*",
        shots=r"\d+",
        seed=r"\d+",
    params:
        **STAGE_PARAMS,
        iterations=lambda w: crnet_section(w.dataset, "test")["iterations"],
        yardstick=yardstick_params,
        mode="",
    log:
        "logs/{dataset}/fold{fold}/crnet/{variant}/test_{shots}shot_seed{seed}.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/crnet/{variant}/test_{shots}shot_seed{seed}.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.crnet.test_crnet",
                    "--features {input.features} --fold-file {input.fold} --episodes {input.episodes} "
                    "--shots {wildcards.shots} --model {input.model} {params.mode} --out {output} --threads {threads}")


use rule test_crnet as finetune_crnet with:
    # k-shot finetune vs fusion on the first crnet.test.finetune.episodes episodes
    output:
        CRNET_FINETUNE,
    params:
        **STAGE_PARAMS,
        test=lambda w: crnet_section(w.dataset, "test"),
        train=lambda w: crnet_section(w.dataset, "train"),
        yardstick=yardstick_params,
        mode="--finetune",
    log:
        "logs/{dataset}/fold{fold}/crnet/{variant}/finetune_{shots}shot_seed{seed}.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/crnet/{variant}/finetune_{shots}shot_seed{seed}.tsv"


rule test_prototype:
    # The training-free floor (PANet prototypes without alignment) on the same features.
    input:
        features=CRNET_FEATURES.replace("{split}", "val"),
        fold=FOLD_FILE,
        episodes=EPISODES_FILE,
    output:
        PROTOTYPE_EVAL,
    wildcard_constraints:
        shots=r"\d+",
        seed=r"\d+",
    params:
        **STAGE_PARAMS,
        yardstick=yardstick_params,
    log:
        "logs/{dataset}/fold{fold}/crnet_prototype/test_{shots}shot_seed{seed}.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/crnet_prototype/test_{shots}shot_seed{seed}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.crnet.test_crnet",
                    "--features {input.features} --fold-file {input.fold} --episodes {input.episodes} "
                    "--shots {wildcards.shots} --prototype --out {output}")


rule crnet_result:
    # results/<dataset>/crnet_fold<k>: metrics.json, report.md (1-/5-shot mIoU and FB-IoU over
    # the episode seeds beside the prototype floor, fusion vs finetune, refinement iterations)
    # and figure.png (support | query | prediction | ground truth).
    input:
        unpack(crnet_result_inputs),
    output:
        directory("results/{dataset}/crnet_fold{fold}"),
    params:
        **STAGE_PARAMS,
        evals=crnet_eval_args,
        report=lambda w: fold_report_params(w.dataset),
    log:
        "logs/{dataset}/fold{fold}/result_crnet.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/result_crnet.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.crnet.report",
                    "--fold {wildcards.fold} {params.evals} --finetune {input.finetune} --history {input.history} "
                    "--model {input.model} --features {input.features} --fold-file {input.fold} "
                    "--episodes {input.episodes} --out {output}")


rule crnet_all:
    input:
        crnet_all_inputs,
    output:
        directory("results/{dataset}/crnet_all"),
    params:
        **STAGE_PARAMS,
    log:
        "logs/{dataset}/result_crnet_all.log",
    benchmark:
        "benchmarks/out/{dataset}/result_crnet_all.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.crnet.report", "--aggregate {input} --out {output}")


rule crnet_ablation:
    input:
        unpack(crnet_ablation_inputs),
    output:
        directory("results/{dataset}/crnet_ablation"),
    params:
        **STAGE_PARAMS,
        evals=crnet_ablation_args,
        ablation=lambda w: crnet_section(w.dataset, "ablation"),
    log:
        "logs/{dataset}/result_crnet_ablation.log",
    benchmark:
        "benchmarks/out/{dataset}/result_crnet_ablation.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.crnet.report", "--ablation {params.evals} --out {output}")


rule crnet_seeds:
    # results/<dataset>/crnet_seeds: CRNet trained with each seed of crnet.training_seeds (each its
    # own job: variant full_seed<n>) against the prototype floor -- what a "beats the floor"
    # claim rests on; the episode seeds measure the test sample's noise, these the training's
    input:
        unpack(crnet_seeds_inputs),
    output:
        directory("results/{dataset}/crnet_seeds"),
    params:
        **STAGE_PARAMS,
        evals=crnet_seeds_args,
    log:
        "logs/{dataset}/result_crnet_seeds.log",
    benchmark:
        "benchmarks/out/{dataset}/result_crnet_seeds.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.crnet.report", "--training-seeds {params.evals} --out {output}")


rule publish_crnet_default:
    # results/crnet_all, results/crnet_ablation, results/crnet_seeds and results/crnet_tpc_crc_{all,components}
    # mirror the default dataset's.
    input:
        lambda w: f"results/{DEFAULT_DATASET}/crnet_{w.kind}",
    output:
        directory("results/crnet_{kind}"),
    wildcard_constraints:
        kind="all|ablation|seeds|tpc_crc_all|tpc_crc_components",
    params:
        **STAGE_PARAMS,
    log:
        "logs/publish_crnet_{kind}.log",
    benchmark:
        "benchmarks/out/publish_crnet_{kind}.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=200,
        runtime=5,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.publish --src {input} --out {output} 2> {log}"


# The cross-dataset rules are written out, not `use rule` of the per-fold ones: those name
# --fold-file in their commands, and changing them would rerun every existing episode file and score.


rule make_cross_episodes:
    # the test bed of the cross-dataset target: episodes of a class list, not of a fold
    input:
        labels=IMAGE_LABELS,
    output:
        CROSS_EPISODES,
    wildcard_constraints:
        shots=r"[1-9]\d*",
        seed=r"\d+",
    params:
        py=PY,
        params_file=PARAMS_FILE,
        episodes=episode_params,
        classes=cross_classes_arg,
    log:
        "logs/{dataset}/episodes/cross_{shots}shot_seed{seed}.log",
    benchmark:
        "benchmarks/out/{dataset}/episodes/cross_{shots}shot_seed{seed}.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.stages.make_episodes", "--labels {input.labels} {params.classes} "
                    "--shots {wildcards.shots} --seed {wildcards.seed} --out {output}")


rule test_crnet_cross:
    # CRNet of <train> fold k (model) or, without a model, the prototype floor on <test>'s cross episodes
    input:
        unpack(cross_test_inputs),
        features=CRNET_FEATURES.replace("{split}", "val"),
        episodes=CROSS_EPISODES,
    output:
        "work/{dataset}/{method}/eval/{shots}shot_seed{seed}.json",
    wildcard_constraints:
        method=r"crnet_from_(" + "|".join(DATASETS) + r")_fold\d+|crnet_prototype/cross",
        shots=r"\d+",
        seed=r"\d+",
    params:
        **STAGE_PARAMS,
        iterations=lambda w: crnet_section(w.dataset, "test")["iterations"],
        yardstick=yardstick_params,
        classes=cross_classes_arg,
        which=lambda w, input: f"--model {input.model}" if "model" in input.keys() else "--prototype",
    log:
        "logs/{dataset}/{method}/cross_test_{shots}shot_seed{seed}.log",
    benchmark:
        "benchmarks/out/{dataset}/{method}/cross_test_{shots}shot_seed{seed}.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.crnet.test_crnet",
                    "--features {input.features} {params.classes} --episodes {input.episodes} "
                    "--shots {wildcards.shots} {params.which} --out {output} --threads {threads}")


rule crnet_cross_result:
    # results/<test>/crnet_from_<train>_fold<k>: metrics.json and report.md, mIoU over the seen,
    # unseen and all test classes (pipeline/methods/crnet/cross_dataset.py)
    input:
        unpack(crnet_cross_inputs),
    output:
        directory("results/{dataset}/crnet_from_{train}_fold{fold}"),
    wildcard_constraints:
        train="|".join(DATASETS),
    params:
        **STAGE_PARAMS,
        evals=crnet_eval_args,
        cross=lambda w: cross_settings(w.dataset),
    log:
        "logs/{dataset}/crnet_from_{train}_fold{fold}/result.log",
    benchmark:
        "benchmarks/out/{dataset}/crnet_from_{train}_fold{fold}/result.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.crnet.cross_dataset",
                    "--train-dataset {wildcards.train} --train-fold-file {input.train_fold} {params.evals} "
                    "--out {output}")


rule crnet_cross_all:
    # results/crnet_cross: the cross-dataset reports of crnet.cross_dataset.pairs, one after another
    input:
        cross_pair_results,
    output:
        directory("results/crnet_cross"),
    params:
        **STAGE_PARAMS,
    log:
        "logs/result_crnet_cross.log",
    benchmark:
        "benchmarks/out/result_crnet_cross.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.methods.crnet.cross_dataset --aggregate {input} --out {output} 2> {log}"


# TPC + CRC (pipeline/tpc_crc.py): variants tpc, crc, tpc_crc of crnet.tpc_crc.variants train with
# train_crnet above (work/<ds>/fold<k>/crnet/<variant>/model.pt, each its own job). Here: the
# H-partitions and the tests only they need, and the reports.
#   work/<ds>/fold<k>/hpartitions/{L0..L7.jsonl,partitions.json}      H-partition episodes
#   work/<ds>/fold<k>/crnet/<variant>/tpc_crc/                         one job per (variant, fold):
#       hpart/L<i>.json, hpart/<test>/L<i>.json                         a model on partition L<i>, plain and stressed
#       stress/<test>_seed<e>.json                                      identical input | zero mask, 1-shot episodes
# Targets: results/<ds>/crnet_tpc_crc_fold<k> (CRNet vs + TPC + CRC: tables, stress tests,
# L0-L7 + CMPS), results/<ds>/crnet_tpc_crc_all (every fold), results/<ds>/crnet_tpc_crc_components
# (full, +TPC, +CRC, +TPC+CRC over crnet.tpc_crc.components' training seeds); the default
# dataset's as results/crnet_tpc_crc_fold<k>, _all, _components.


rule make_hpartitions:
    input:
        oracle=ORACLE_PREDICTIONS,
        features=CRNET_FEATURES.replace("{split}", "val"),
        labels=IMAGE_LABELS,
        fold=FOLD_FILE,
    output:
        directory(HPART_DIR),
    params:
        **STAGE_PARAMS,
        partitions=lambda w: crnet_section(w.dataset, "tpc_crc")["partitions"],
    log:
        "logs/{dataset}/fold{fold}/hpartitions.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/hpartitions.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.crnet.make_hpartitions",
                    "--oracle {input.oracle} --features {input.features} --labels {input.labels} "
                    "--fold-file {input.fold} --out {output}")


rule test_crnet_tpc_crc_suite:
    # one job per (variant, fold): L0-L7, both stress tests on L0-L7 (CMPS) and both stress tests on
    # the standard 1-shot episodes of every episode seed, with one loaded model (test_crnet --job);
    # the same files, one per cell, as separate calls would write them (tests/test_tpc_crc_stages.py)
    input:
        model=f"{CRNET_DIR}/model.pt",
        features=CRNET_FEATURES.replace("{split}", "val"),
        fold=FOLD_FILE,
        partitions=HPART_DIR,
        episodes=tpc_crc_suite_episodes,
    output:
        directory(TPC_CRC_SUITE),
    wildcard_constraints:
        variant=r"[a-z][a-z0-9_]*",
    params:
        **STAGE_PARAMS,
        iterations=lambda w: crnet_section(w.dataset, "test")["iterations"],
        yardstick=yardstick_params,
        shots=lambda w: crnet_section(w.dataset, "tpc_crc")["partitions"]["shots"],
        jobs=tpc_crc_suite_jobs,
    log:
        "logs/{dataset}/fold{fold}/crnet/{variant}/tpc_crc_suite.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/crnet/{variant}/tpc_crc_suite.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=240,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.crnet.test_crnet",
                    "--features {input.features} --fold-file {input.fold} {params.jobs} "
                    "--model {input.model} --out {output} --threads {threads}")


rule crnet_tpc_crc_result:
    input:
        unpack(tpc_crc_result_inputs),
    output:
        directory("results/{dataset}/crnet_tpc_crc_fold{fold}"),
    params:
        **STAGE_PARAMS,
        evals=tpc_crc_result_args,
    log:
        "logs/{dataset}/fold{fold}/result_crnet_tpc_crc.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/result_crnet_tpc_crc.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.crnet.report_tpc_crc", "--fold {wildcards.fold} {params.evals} --out {output}")


rule crnet_tpc_crc_all:
    input:
        tpc_crc_all_inputs,
    output:
        directory("results/{dataset}/crnet_tpc_crc_all"),
    params:
        **STAGE_PARAMS,
    log:
        "logs/{dataset}/result_crnet_tpc_crc_all.log",
    benchmark:
        "benchmarks/out/{dataset}/result_crnet_tpc_crc_all.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.crnet.report_tpc_crc", "--aggregate {input} --out {output}")


rule crnet_tpc_crc_components:
    # the component table: full, +TPC, +CRC, +TPC+CRC, each variant and training seed its own job
    input:
        unpack(tpc_crc_components_inputs),
    output:
        directory("results/{dataset}/crnet_tpc_crc_components"),
    params:
        **STAGE_PARAMS,
        evals=tpc_crc_components_args,
    log:
        "logs/{dataset}/result_crnet_tpc_crc_components.log",
    benchmark:
        "benchmarks/out/{dataset}/result_crnet_tpc_crc_components.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.crnet.report_tpc_crc", "--components {params.evals} --out {output}")
