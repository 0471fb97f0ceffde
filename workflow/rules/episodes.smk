# Few-shot test episodes: the shared test bed of the few-shot branches (HSNet/PFENet protocol:
# query and supports from the fold's novel classes on the val split), one cached file per
# dataset, fold, shot count and episode seed (pipeline/data/episodes.py).
#   snakemake work/embedded/episodes/fold0_1shot_seed0.jsonl


rule make_episodes:
    input:
        labels=IMAGE_LABELS,
        fold=FOLD_FILE,
    output:
        EPISODES_FILE,
    wildcard_constraints:
        shots=r"[1-9]\d*",
        seed=r"\d+",
    params:
        # not STAGE_PARAMS' global seed: the episode seed is the file's own wildcard
        py=PY,
        params_file=PARAMS_FILE,
        episodes=episode_params,
    log:
        "logs/{dataset}/episodes/fold{fold}_{shots}shot_seed{seed}.log",
    benchmark:
        "benchmarks/out/{dataset}/episodes/fold{fold}_{shots}shot_seed{seed}.tsv"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    conda:
        CONDA_ENV
    shell:
        stage_shell("pipeline.stages.make_episodes", "--labels {input.labels} --fold-file {input.fold} "
                    "--shots {wildcards.shots} --seed {wildcards.seed} --out {output}")
