# Your own images (docs/segment_your_images.md): a trained net or a few annotated examples
# applied to a folder. Folders are named in params.yaml's `apply` section (or a --configfile):
#
#   apply.folders.<name>: <folder>            results/<dataset>/segment/<name>/<row>_fold<k>
#       every image of the folder segmented by the segmentation net of table row <row>
#       (RETAB's rows: retab, cam_rw_seggt, ..., oracle; L-Net's: cam_seggt, lnet, pnet) trained
#       on <dataset> fold <k> (stage segment_folder; the net is trained first if it is not there).
#   apply.fewshot.<name>: {support: <folder>, query: <folder>}    results/<dataset>/fewshot/<name>
#       the object of the supports (images/ + masks/) segmented in every query image by
#       apply.fewshot_method (prototype | crnet | refnet; the last two: the model of fold
#       apply.fewshot_fold, trained first if needed) on <dataset>'s encoder (stage fewshot_folder).
#
# Paths and input functions: apply_inputs.smk.
#
# Snakemake sees a folder as one path with one mtime, which a changed file inside does not move:
# the inputs are the folder's files themselves (listed when the DAG is built), so an edited image
# reruns the job (a newer mtime with a changed checksum: snakemake skips a mere touch) and an added
# or removed one by the changed input set (snakemake's `input` rerun trigger); the folder path
# and the params read are params.


rule segment_folder:
    input:
        unpack(segment_folder_inputs),
    output:
        directory("results/{dataset}/segment/{name}/{row}_fold{fold}"),
    wildcard_constraints:
        name=APPLY_NAME,
        row=r"[a-z][a-z0-9_]*",
    params:
        **STAGE_PARAMS,
        folder=lambda w: apply_folder(w.dataset, w.name),
        apply=lambda w: {k: apply_settings(w.dataset)[k] for k in ("max_side", "overlay_alpha", "sheet")},
        segmentation=lambda w: section(w.dataset, "segmentation"),
        backbone=lambda w: section(w.dataset, "backbone"),
    log:
        "logs/{dataset}/segment/{name}/{row}_fold{fold}.log",
    benchmark:
        "benchmarks/out/{dataset}/segment/{name}/{row}_fold{fold}.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.stages.segment_folder",
                    "--model {input.model} --images {params.folder:q} --out {output} --threads {threads}")


rule fewshot_folder:
    input:
        unpack(fewshot_folder_inputs),
    output:
        directory("results/{dataset}/fewshot/{name}"),
    wildcard_constraints:
        name=APPLY_NAME,
    params:
        **STAGE_PARAMS,
        support=lambda w: apply_fewshot_set(w.dataset, w.name)["support"],
        query=lambda w: apply_fewshot_set(w.dataset, w.name)["query"],
        settings=fewshot_folder_params,
        model_arg=lambda w, input: f"--model {input.model}" if "model" in input.keys() else "",
        backbone=lambda w: section(w.dataset, "backbone"),
    log:
        "logs/{dataset}/fewshot/{name}.log",
    benchmark:
        "benchmarks/out/{dataset}/fewshot/{name}.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=30,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.stages.fewshot_folder",
                    "--support {params.support:q} --query {params.query:q} --method {params.settings[method]}"
                    " {params.model_arg} --out {output} --threads {threads}")
