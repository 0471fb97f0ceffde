# Ref-Net reference segmentation (IJCAI 2021) on the few-shot branch's cached encoder
# features (stage crnet_features, reused). Paths and input functions: refnet_inputs.smk;
# stages: pipeline/methods/refnet/.
#
#   work/<ds>/<scope>/refnet/<variant>/<K>shot_seed<t>/model.pt, history.tsv   training (scope fold<k> or
#                                                            single_<class> or select<k>; K an integer or all;
#                                                            t training seed)
#   work/<ds>/<scope>/refnet/<variant>/<K>shot_seed<t>/eval.json, predictions.npz   the val scores (select<k>:
#                                                            the S images of the train split, base classes only)
#
# Targets: results/<ds>/refnet_fold<k> (full model, K = refnet.shots), results/<ds>/refnet_all
# (R(K) on every fold), results/<ds>/refnet_ablation (each variant its own job),
# results/<ds>/refnet_critics (full vs no critics over training seeds), results/<ds>/refnet_single_<class>
# ("One <- MixAll-", R(K) with K in refnet.single.shots, 0 included), results/<ds>/refnet_select (the
# critic setting of refnet.select.candidates chosen on base-class pseudo-targets, never val or novel data);
# results/refnet_fold<k>, results/refnet_{all,ablation,critics,select} for the default dataset.


rule train_refnet:
    input:
        unpack(refnet_scope_inputs),
        features=CRNET_FEATURES.replace("{split}", "train"),
        labels=IMAGE_LABELS,
    output:
        model=f"{REFNET_DIR}/model.pt",
        history=f"{REFNET_DIR}/history.tsv",
    wildcard_constraints:
        scope=REFNET_SCOPE,
        variant=r"[a-z][a-z0-9_]*",
        shots=r"\d+|all",
        train_seed=r"\d+",
    params:
        **STAGE_PARAMS,
        refnet=refnet_train_params,
        encoder=lambda w: P(w.dataset)["crnet"]["encoder"],
        scope=refnet_scope_arg,
    log:
        "logs/{dataset}/{scope}/refnet/{variant}/train_{shots}shot_seed{train_seed}.log",
    benchmark:
        "benchmarks/out/{dataset}/{scope}/refnet/{variant}/train_{shots}shot_seed{train_seed}.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=120,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.refnet.train_refnet",
                    "--features {input.features} --labels {input.labels} {params.scope} --variant {wildcards.variant} "
                    "--shots {wildcards.shots} --train-seed {wildcards.train_seed} --out {output.model} "
                    "--history {output.history} --threads {threads}")


rule test_refnet:
    input:
        model=f"{REFNET_DIR}/model.pt",
        train_features=CRNET_FEATURES.replace("{split}", "train"),
        val_features=CRNET_FEATURES.replace("{split}", "val"),
        labels=IMAGE_LABELS,
    output:
        scores=f"{REFNET_DIR}/eval.json",
        predictions=f"{REFNET_DIR}/predictions.npz",
    wildcard_constraints:
        scope=REFNET_SCOPE,
        variant=r"[a-z][a-z0-9_]*",
        shots=r"\d+|all",
        train_seed=r"\d+",
    params:
        **STAGE_PARAMS,
        test=lambda w: refnet_section(w.dataset, "test"),
        figure=lambda w: section(w.dataset, "report").get("figure_samples"),
    log:
        "logs/{dataset}/{scope}/refnet/{variant}/test_{shots}shot_seed{train_seed}.log",
    benchmark:
        "benchmarks/out/{dataset}/{scope}/refnet/{variant}/test_{shots}shot_seed{train_seed}.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.refnet.test_refnet",
                    "--model {input.model} --train-features {input.train_features} --val-features {input.val_features} "
                    "--labels {input.labels} --out {output.scores} --predictions {output.predictions} --threads {threads}")


rule refnet_result:
    # results/<dataset>/refnet_fold<k>: metrics.json, report.md, figure.png (target | reference |
    # prediction | ground truth), critics.tsv (the critics' Wasserstein estimates per step)
    input:
        unpack(refnet_result_inputs),
    output:
        directory("results/{dataset}/refnet_fold{fold}"),
    params:
        **STAGE_PARAMS,
        report=lambda w: fold_report_params(w.dataset),
        retab=refnet_retab_arg,
    log:
        "logs/{dataset}/fold{fold}/result_refnet.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/result_refnet.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.refnet.report",
                    "--scope fold{wildcards.fold} --eval {input.eval} --predictions {input.predictions} "
                    "--history {input.history} {params.retab} --out {output}")


rule refnet_table:
    # results/<dataset>/refnet_{all,ablation,critics,single_<class>,select}: the R(K), ablation and selection tables
    input:
        unpack(refnet_table_inputs),
    output:
        directory("results/{dataset}/refnet_{table}"),
    wildcard_constraints:
        table=r"all|ablation|critics|select|single_[a-z][a-z0-9_]*",
    params:
        **STAGE_PARAMS,
        evals=refnet_table_args,
    log:
        "logs/{dataset}/result_refnet_{table}.log",
    benchmark:
        "benchmarks/out/{dataset}/result_refnet_{table}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.refnet.tables", "{params.evals} --out {output}")


rule publish_refnet_default:
    # results/refnet_{all,ablation,critics,select} mirror the default dataset's.
    input:
        lambda w: f"results/{DEFAULT_DATASET}/refnet_{w.table}",
    output:
        directory("results/refnet_{table}"),
    wildcard_constraints:
        table="all|ablation|critics|select",
    params:
        **STAGE_PARAMS,
    log:
        "logs/publish_refnet_{table}.log",
    benchmark:
        "benchmarks/out/publish_refnet_{table}.tsv"
    localrule: True
    threads: 1
    resources:
        mem_mb=200,
        runtime=5,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.publish --src {input} --out {output} 2> {log}"
