# CAM stages and pseudo labels: shared by every method that starts from image-level
# labels (RETAB and its baselines, L-Net / P-Net). The CAM net and its CAMs run once per
# dataset (scope `shared`); what reads a per-fold value (the fold's CAM threshold, its
# confident labels, the walks) runs per fold.


rule train_cam:
    input:
        root=dataset_root,
        labels=IMAGE_LABELS,
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
        stage_shell("pipeline.stages.train_cam",
                    "--labels {input.labels} --out {output.model} --history {output.history} --threads {threads}")


rule infer_cam:
    input:
        model=f"{CAM_DIR}/model.pt",
        labels=IMAGE_LABELS,
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
        stage_shell("pipeline.stages.infer_cam",
                    "--model {input.model} --labels {input.labels} --split train --out {output} --threads {threads}")


rule eval_cam:
    # Background-threshold sweep (PSA/SEAM/RETAB CAM evaluation) over every train image: the
    # CAMs' quality on train, a diagnostic (it reads novel-class masks, so no row uses it).
    input:
        cams=f"{CAM_DIR}/cams",
        labels=IMAGE_LABELS,
    output:
        f"{CAM_DIR}/eval.json",
    params:
        **STAGE_PARAMS,
        cam=lambda w: section(w.dataset, "cam"),
        fold="",
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
        stage_shell("pipeline.stages.eval_cam", "--cams {input.cams} --labels {input.labels} {params.fold} --out {output}")


use rule eval_cam as cam_threshold with:
    # The same sweep on the fold's base samples only (novel pixels ignored): its best threshold
    # is the `cam` row's, chosen without novel-class ground truth, per fold.
    input:
        cams=f"{CAM_DIR}/cams",
        labels=IMAGE_LABELS,
        fold=FOLD_FILE,
    output:
        CAM_THRESHOLD,
    params:
        fold=lambda w, input: f"--fold-file {input.fold}",
    log:
        "logs/{dataset}/fold{fold}/cam_threshold.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/cam_threshold.tsv"


rule confident_labels:
    # Per fold: conf_fg / conf_bg `auto` follow the fold's CAM threshold (cam_threshold).
    input:
        unpack(confident_label_inputs),
    output:
        directory(CONFIDENT_DIR),
    params:
        **STAGE_PARAMS,
        confident=lambda w: section(w.dataset, "confident_labels"),
        cam_threshold=lambda w, input: f"--cam-threshold {input.cam_threshold}" if "cam_threshold" in input.keys() else "",
    log:
        "logs/{dataset}/fold{fold}/confident_labels.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/confident_labels.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.stages.confident_labels",
                    "--cams {input.cams} --labels {input.labels} {params.cam_threshold} --out {output}")


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
        stage_shell("pipeline.stages.pseudo_labels",
                    "--scores {input.scores} --labels {input.labels} {params.cam_eval} --out {output}")
