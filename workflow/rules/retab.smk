# RETAB weak-shot branch and its baselines (Zhou et al., BMVC 2022).
#
# Paths: work/<dataset>/<scope>/...  where scope is `shared` for what does not depend
# on the fold (the CAM network and its CAMs, the CAM-only affinity net, pure-WSSS and
# oracle segmentation nets) and `fold<k>` for what does (everything trained on base
# samples' pixel labels). Shared stages therefore run once for all folds and methods.
#
# Methods (rows of the paper's table), by what supervises the segmentation network:
#   cam                 CAM + background threshold pseudo labels for every train image
#   cam_rw              + PSA random walk, affinity net from CAM confident labels only
#   cam_rw_seggt        cam_rw pseudo labels for novel samples, ground truth for base samples
#   cam_rw_affgt_seggt  also ground-truth affinity labels for base samples (single-stage walk)
#   retab               boundary-aware mixed affinity + two-stage random walk, GT for base
#   oracle              ground truth for every train image (upper bound)

CAM_DIR = "work/{dataset}/shared/cam"


rule train_cam:
    input:
        root=dataset_root,
        labels="work/{dataset}/image_labels.json",
    output:
        model=f"{CAM_DIR}/model.pt",
        history=f"{CAM_DIR}/history.tsv",
    params:
        **STAGE_PARAMS,
        cam=lambda w: section(w.dataset, "cam"),
        backbone=lambda w: section(w.dataset, "backbone"),
    log:
        "logs/{dataset}/shared/train_cam.log",
    benchmark:
        "benchmarks/out/{dataset}/shared/train_cam.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.train_cam --params {params.params_file} --dataset {wildcards.dataset}"
        " --labels {input.labels} --out {output.model} --history {output.history} --threads {threads} 2> {log}"


rule infer_cam:
    input:
        model=f"{CAM_DIR}/model.pt",
        labels="work/{dataset}/image_labels.json",
    output:
        directory(f"{CAM_DIR}/cams"),
    params:
        **STAGE_PARAMS,
        cam=lambda w: section(w.dataset, "cam"),
    log:
        "logs/{dataset}/shared/infer_cam.log",
    benchmark:
        "benchmarks/out/{dataset}/shared/infer_cam.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.infer_cam --params {params.params_file} --dataset {wildcards.dataset}"
        " --model {input.model} --labels {input.labels} --split train --out {output} --threads {threads} 2> {log}"


rule eval_cam:
    # Background-threshold sweep (PSA/SEAM/RETAB CAM evaluation); the best threshold
    # makes the `cam` baseline's pseudo labels.
    input:
        cams=f"{CAM_DIR}/cams",
        labels="work/{dataset}/image_labels.json",
    output:
        f"{CAM_DIR}/eval.json",
    params:
        **STAGE_PARAMS,
        cam=lambda w: section(w.dataset, "cam"),
    log:
        "logs/{dataset}/shared/eval_cam.log",
    benchmark:
        "benchmarks/out/{dataset}/shared/eval_cam.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.eval_cam --params {params.params_file} --dataset {wildcards.dataset}"
        " --cams {input.cams} --labels {input.labels} --out {output} 2> {log}"


rule confident_labels:
    input:
        cams=f"{CAM_DIR}/cams",
        labels="work/{dataset}/image_labels.json",
    output:
        directory(f"{CAM_DIR}/confident"),
    params:
        **STAGE_PARAMS,
        confident=lambda w: section(w.dataset, "confident_labels"),
    log:
        "logs/{dataset}/shared/confident_labels.log",
    benchmark:
        "benchmarks/out/{dataset}/shared/confident_labels.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.confident_labels --params {params.params_file} --dataset {wildcards.dataset}"
        " --cams {input.cams} --labels {input.labels} --out {output} 2> {log}"


rule train_boundary:
    input:
        root=dataset_root,
        fold="work/{dataset}/folds/fold{fold}.json",
    output:
        model="work/{dataset}/fold{fold}/boundary/model.pt",
        history="work/{dataset}/fold{fold}/boundary/history.tsv",
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
        "{params.py} -m pipeline.stages.train_boundary --params {params.params_file} --dataset {wildcards.dataset}"
        " --fold-file {input.fold} --out {output.model} --history {output.history} --threads {threads} 2> {log}"


rule infer_boundary:
    input:
        model="work/{dataset}/fold{fold}/boundary/model.pt",
        labels="work/{dataset}/image_labels.json",
    output:
        directory("work/{dataset}/fold{fold}/boundary/maps"),
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
        "{params.py} -m pipeline.stages.infer_boundary --params {params.params_file} --dataset {wildcards.dataset}"
        " --model {input.model} --labels {input.labels} --split train --out {output} --threads {threads} 2> {log}"


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
        variant="cam|gt|retab",
    params:
        **STAGE_PARAMS,
        args=affinity_args,
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
        "{params.py} -m pipeline.stages.train_affinity --params {params.params_file} --dataset {wildcards.dataset}"
        " {params.args} --confident {input.confident} --labels {input.labels}"
        " --out {output.model} --history {output.history} --threads {threads} 2> {log}"


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
        boundary=lambda w, input: f"--boundary {input.boundary}" if "boundary" in input.keys() else "",
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
        "{params.py} -m pipeline.stages.propagate --params {params.params_file} --dataset {wildcards.dataset}"
        " --walk {params.walk} --cams {input.cams} --labels {input.labels} --affinity {input.affinity}"
        " {params.boundary} --out {output} --threads {threads} 2> {log}"


rule pseudo_labels:
    # Bilinear upsampling of (revised) CAMs, argmax restricted to the image's labels
    # plus background; `cam` thresholds raw CAMs at the best eval_cam threshold.
    input:
        unpack(pseudo_label_inputs),
    output:
        directory("work/{dataset}/{scope}/pseudo/{source}"),
    wildcard_constraints:
        scope=r"shared|fold\d+",
        source="cam|rw_cam|rw_gt|retab",
    params:
        **STAGE_PARAMS,
        cam_eval=lambda w, input: f"--cam-eval {input.cam_eval}" if "cam_eval" in input.keys() else "",
        pseudo=lambda w: section(w.dataset, "pseudo_labels"),
    log:
        "logs/{dataset}/{scope}/pseudo_labels_{source}.log",
    benchmark:
        "benchmarks/out/{dataset}/{scope}/pseudo_labels_{source}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.pseudo_labels --params {params.params_file} --dataset {wildcards.dataset}"
        " --scores {input.scores} --labels {input.labels} {params.cam_eval} --out {output} 2> {log}"


rule train_seg:
    # DeepLab-style ASPP segmentation net; supervision per method (see SEG_METHODS).
    input:
        unpack(seg_inputs),
    output:
        model="work/{dataset}/{scope}/seg/{method}/model.pt",
        history="work/{dataset}/{scope}/seg/{method}/history.tsv",
    wildcard_constraints:
        scope=r"shared|fold\d+",
        method="|".join(SEG_METHODS),
    params:
        **STAGE_PARAMS,
        args=seg_args,
        features=seg_features_arg,
        segmentation=lambda w: section(w.dataset, "segmentation"),
        backbone=lambda w: section(w.dataset, "backbone"),
    log:
        "logs/{dataset}/{scope}/train_seg_{method}.log",
    benchmark:
        "benchmarks/out/{dataset}/{scope}/train_seg_{method}.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=480,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.train_seg --params {params.params_file} --dataset {wildcards.dataset}"
        " {params.args} {params.features} --labels {input.labels} --out {output.model}"
        " --history {output.history} --threads {threads} 2> {log}"


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
        "{params.py} -m pipeline.stages.seg_features --params {params.params_file} --dataset {wildcards.dataset}"
        " --split {wildcards.split} --out {output} --threads {threads} 2> {log}"


rule predict_seg:
    input:
        unpack(seg_feature_inputs("val")),
        model="work/{dataset}/{scope}/seg/{method}/model.pt",
        root=dataset_root,
    output:
        directory("work/{dataset}/{scope}/seg/{method}/pred_val"),
    wildcard_constraints:
        scope=r"shared|fold\d+",
        method="|".join(SEG_METHODS),
    params:
        **STAGE_PARAMS,
        features=seg_features_arg,
        segmentation=lambda w: section(w.dataset, "segmentation"),
    log:
        "logs/{dataset}/{scope}/predict_seg_{method}.log",
    benchmark:
        "benchmarks/out/{dataset}/{scope}/predict_seg_{method}.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.predict_seg --params {params.params_file} --dataset {wildcards.dataset}"
        " --model {input.model} --split val {params.features} --out {output} --threads {threads} 2> {log}"


rule evaluate_seg:
    input:
        pred=lambda w: seg_pred_dir(w.dataset, w.method, w.fold),
        fold="work/{dataset}/folds/fold{fold}.json",
    output:
        "work/{dataset}/fold{fold}/eval/{method}_val.json",
    wildcard_constraints:
        method="|".join(SEG_METHODS),
    params:
        **STAGE_PARAMS,
    log:
        "logs/{dataset}/fold{fold}/evaluate_{method}_val.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/evaluate_{method}_val.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.evaluate --params {params.params_file} --dataset {wildcards.dataset}"
        " --split val --pred {input.pred} --fold-file {input.fold} --out {output} 2> {log}"


rule evaluate_pseudo:
    # Pseudo-label quality on the fold's train novel samples (the labels the seg net sees).
    input:
        pred=lambda w: pseudo_dir(w.dataset, SEG_METHODS[w.method][0], w.fold),
        fold="work/{dataset}/folds/fold{fold}.json",
    output:
        "work/{dataset}/fold{fold}/eval/{method}_pseudo.json",
    wildcard_constraints:
        method="|".join(m for m, (source, _, _) in SEG_METHODS.items() if source),
    params:
        **STAGE_PARAMS,
    log:
        "logs/{dataset}/fold{fold}/evaluate_{method}_pseudo.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/evaluate_{method}_pseudo.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.evaluate --params {params.params_file} --dataset {wildcards.dataset}"
        " --split train --ids-from novel_samples --void-pred --pred {input.pred} --fold-file {input.fold} --out {output} 2> {log}"


rule result_method:
    # results/<dataset>/<method>_fold<k>: metrics.json + report.md; for `retab` also the
    # comparison table over every method and the Fig. 3-style figure.
    input:
        metrics=lambda w: [f for m in (RETAB_METHODS if w.method == "retab" else [w.method])
                           for f in method_metric_files(w.dataset, m, w.fold)],
        figure=lambda w: ([f"work/{w.dataset}/shared/cam/cams", f"work/{w.dataset}/fold{w.fold}/boundary/maps",
                           pseudo_dir(w.dataset, "rw_cam", w.fold), pseudo_dir(w.dataset, "retab", w.fold),
                           f"work/{w.dataset}/folds/fold{w.fold}.json"] if w.method == "retab" else []),
    output:
        directory("results/{dataset}/{method}_fold{fold}"),
    wildcard_constraints:
        method="|".join(SEG_METHODS),
    params:
        **STAGE_PARAMS,
        report=lambda w: fold_report_params(w.dataset),
    log:
        "logs/{dataset}/fold{fold}/result_{method}.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/result_{method}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        "{params.py} -m pipeline.stages.report_retab --params {params.params_file} --dataset {wildcards.dataset}"
        " --fold {wildcards.fold} --method {wildcards.method} --work work/{wildcards.dataset} --out {output} 2> {log}"


rule result_retab_all:
    # Mean over the dataset's folds (PASCAL-5i: 4) of every method's metrics.
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
        "{params.py} -m pipeline.stages.report_retab --params {params.params_file} --dataset {wildcards.dataset}"
        " --aggregate {input} --out {output} 2> {log}"


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
