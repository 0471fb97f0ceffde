# L-Net / P-Net: transferable semi-supervised segmentation (Xiao et al., AAAI 2018). Its
# paths and input functions: lnet_inputs.smk.
#
# Strong categories have pixel labels, weak categories only image-level labels. With
# `lnet.split: pascal5i` (default) strong = the fold's base classes, weak = its novel
# classes, and the fold files of the RETAB branch are reused; `lnet.split: <name>` uses the
# weak-class lists `lnet.split_sets.<name>` instead (fold files written by make_folds
# --novel-classes under work/<ds>/lnet_splits/<name>/).
#
# The table rows are pipeline.method_table.LNET; the stages are pipeline/methods/lnet/.
# Paths: work/<dataset>/fold<k>/lnet/<split>/...
#   lnet/model.pt        class-agnostic L-Net (DeepLabASPP, 1 output) on strong samples
#   lnet/maps/           its object map M of every weak image (uint8 PNG, M * 255)
#   pseudo/              self-diffusion pseudo labels L_w of the weak images (+ info.json)
#   seg/<row>/           segmentation nets of the rows: cam_seggt and lnet by the shared
#                        train_seg stage (mixed supervision: GT for strong, pseudo labels for
#                        weak), pnet by train_pnet
#   eval/<row>_{val,pseudo}.json
# Reused from the shared stages at no cost: the CAMs (work/<ds>/shared/cam/cams), the CAM
# pseudo labels (work/<ds>/fold<k>/pseudo/cam), the oracle segmentation net and, on a
# pascal5i split, its evaluation.
#
# Targets: results/<dataset>/lnet_fold<k> (rows CAM-only, L-Net, oracle) and
# results/<dataset>/pnet_fold<k> (all four rows); results/{lnet,pnet}_fold<k> for the
# default dataset (rule publish_default_dataset).


rule lnet_split_fold:
    # Fold file of a named split-set: make_folds with the split's weak classes as novel.
    input:
        labels=IMAGE_LABELS,
    output:
        "work/{dataset}/lnet_splits/{split}/fold{fold}.json",
    wildcard_constraints:
        split=r"[A-Za-z0-9_]+",
    params:
        **STAGE_PARAMS,
        weak=lnet_split_weak_classes,
    log:
        "logs/{dataset}/lnet_splits/{split}/make_folds_fold{fold}.log",
    benchmark:
        "benchmarks/out/{dataset}/lnet_splits/{split}/make_folds_fold{fold}.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.stages.make_folds",
                    "--labels {input.labels} --fold {wildcards.fold} --novel-classes {params.weak:q} --out {output}")


rule train_lnet:
    input:
        root=dataset_root,
        fold=lnet_fold_file,
    output:
        model=f"{LNET_DIR}/lnet/model.pt",
        history=f"{LNET_DIR}/lnet/history.tsv",
    wildcard_constraints:
        split=r"[A-Za-z0-9_]+",
    params:
        **STAGE_PARAMS,
        lnet=lambda w: section(w.dataset, "lnet"),
        backbone=lambda w: section(w.dataset, "backbone"),
    log:
        "logs/{dataset}/fold{fold}/lnet/{split}/train_lnet.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/lnet/{split}/train_lnet.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.lnet.train_lnet",
                    "--fold-file {input.fold} --out {output.model} --history {output.history} --threads {threads}")


rule infer_lnet:
    input:
        model=f"{LNET_DIR}/lnet/model.pt",
        fold=lnet_fold_file,
    output:
        directory(f"{LNET_DIR}/lnet/maps"),
    wildcard_constraints:
        split=r"[A-Za-z0-9_]+",
    params:
        **STAGE_PARAMS,
        infer=lambda w: section(w.dataset, "lnet")["infer"],
    log:
        "logs/{dataset}/fold{fold}/lnet/{split}/infer_lnet.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/lnet/{split}/infer_lnet.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.lnet.infer_lnet",
                    "--model {input.model} --fold-file {input.fold} --out {output} --threads {threads}")


rule self_diffusion:
    # Eq. 2: SLIC superpixels, CAM seeds, L-Net background seeds, harmonic diffusion -> L_w.
    input:
        cams=f"{CAM_DIR}/cams",
        maps=f"{LNET_DIR}/lnet/maps",
        labels=IMAGE_LABELS,
        fold=lnet_fold_file,
    output:
        directory(f"{LNET_DIR}/pseudo"),
    wildcard_constraints:
        split=r"[A-Za-z0-9_]+",
    params:
        **STAGE_PARAMS,
        diffusion=lambda w: section(w.dataset, "self_diffusion"),
    log:
        "logs/{dataset}/fold{fold}/lnet/{split}/self_diffusion.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/lnet/{split}/self_diffusion.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.lnet.self_diffusion",
                    "--cams {input.cams} --maps {input.maps} --labels {input.labels} --fold-file {input.fold}"
                    " --out {output}")


use rule train_seg as lnet_train_seg with:
    # The shared segmentation stage, mixed supervision: GT for strong (base) samples, the
    # row's pseudo labels for weak (novel) samples.
    input:
        unpack(lnet_seg_inputs),
    output:
        model=f"{LNET_DIR}/seg/{{row}}/model.pt",
        history=f"{LNET_DIR}/seg/{{row}}/history.tsv",
    wildcard_constraints:
        split=r"[A-Za-z0-9_]+",
        row="cam_seggt|lnet",
    params:
        supervision="mixed",
    log:
        "logs/{dataset}/fold{fold}/lnet/{split}/train_seg_{row}.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/lnet/{split}/train_seg_{row}.tsv"


rule train_pnet:
    # Eqs. 3-5: P-Net pre-trained on strong categories (unless pnet.pretrain: false), then
    # the L-Net row's segmentation net and the P-Net fine-tuned together on every image.
    input:
        seg=f"{LNET_DIR}/seg/lnet/model.pt",
        pseudo=f"{LNET_DIR}/pseudo",
        fold=lnet_fold_file,
        labels=IMAGE_LABELS,
        root=dataset_root,
    output:
        model=f"{LNET_DIR}/seg/pnet/model.pt",
        discriminator=f"{LNET_DIR}/seg/pnet/discriminator.pt",
        history=f"{LNET_DIR}/seg/pnet/history.tsv",
    wildcard_constraints:
        split=r"[A-Za-z0-9_]+",
    params:
        **STAGE_PARAMS,
        pnet=lambda w: section(w.dataset, "pnet"),
        segmentation=lambda w: section(w.dataset, "segmentation"),
        backbone=lambda w: section(w.dataset, "backbone"),
    log:
        "logs/{dataset}/fold{fold}/lnet/{split}/train_pnet.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/lnet/{split}/train_pnet.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=480,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.methods.lnet.train_pnet",
                    "--seg-model {input.seg} --pseudo {input.pseudo} --fold-file {input.fold} --labels {input.labels}"
                    " --out {output.model} --out-discriminator {output.discriminator} --history {output.history}"
                    " --threads {threads}")


use rule predict_seg as lnet_predict_seg with:
    input:
        unpack(seg_feature_inputs("val")),
        model=f"{LNET_DIR}/seg/{{row}}/model.pt",
        root=dataset_root,
    output:
        directory(f"{LNET_DIR}/seg/{{row}}/pred_val"),
    wildcard_constraints:
        split=r"[A-Za-z0-9_]+",
        row="cam_seggt|lnet|pnet",
    log:
        "logs/{dataset}/fold{fold}/lnet/{split}/predict_seg_{row}.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/lnet/{split}/predict_seg_{row}.tsv"


use rule evaluate_seg as lnet_evaluate_val with:
    # all / strong / weak mIoU on val = miou / miou_base / miou_novel of the split's fold file.
    input:
        pred=lambda w: lnet_seg_pred_dir(w.dataset, w.split, w.fold, w.row),
        fold=lnet_fold_file,
    output:
        f"{LNET_DIR}/eval/{{row}}_val.json",
    wildcard_constraints:
        split=r"[A-Za-z0-9_]+",
        row="|".join(LNET.rows),
    log:
        "logs/{dataset}/fold{fold}/lnet/{split}/evaluate_{row}_val.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/lnet/{split}/evaluate_{row}_val.tsv"


use rule evaluate_pseudo as lnet_evaluate_pseudo with:
    # Pseudo-label quality on the weak train images (what the segmentation net is fed).
    input:
        pred=lambda w: lnet_pseudo_dir(w.dataset, w.split, w.fold, w.row),
        fold=lnet_fold_file,
    output:
        f"{LNET_DIR}/eval/{{row}}_pseudo.json",
    wildcard_constraints:
        split=r"[A-Za-z0-9_]+",
        row="|".join(LNET.pseudo_rows()),
    log:
        "logs/{dataset}/fold{fold}/lnet/{split}/evaluate_{row}_pseudo.log",
    benchmark:
        "benchmarks/out/{dataset}/fold{fold}/lnet/{split}/evaluate_{row}_pseudo.tsv"


rule lnet_result:
    # results/<dataset>/{lnet,pnet}_fold<k>: metrics.json, report.md (paper-form table) and
    # the Fig. 3-style figure (image, M, CAM seeds, superpixels, L_w, GT of weak images).
    input:
        unpack(lnet_result_inputs),
    output:
        directory("results/{dataset}/{target}_fold{fold}"),
    wildcard_constraints:
        target="|".join(LNET.targets),
    params:
        **STAGE_PARAMS,
        metrics=lnet_report_metric_args,
        split=lambda w: lnet_split(w.dataset),
        lnet=lambda w: section(w.dataset, "lnet"),
        diffusion=lambda w: section(w.dataset, "self_diffusion"),
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
        stage_shell(LNET.report_stage,
                    "--method {wildcards.target} --fold {wildcards.fold} --split {params.split} {params.metrics}"
                    " --fold-file {input.fold} --labels {input.labels} --cams {input.cams} --maps {input.maps}"
                    " --pseudo {input.pseudo} --out {output}")
