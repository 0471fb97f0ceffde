# Weak-shot / few-shot segmentation DAG. Thin on purpose: the rules live in
# workflow/rules/*.smk (one file per method + common + data + the shared cam and
# segmentation stages + evaluation),
# the science parameters in params.yaml, the code in the `pipeline` package.
#
#   snakemake results/retab_fold0 --cores 2                # default dataset (params.yaml)
#   snakemake results/camvid/retab_fold0 --cores 2         # any dataset by name
#   snakemake results/retab_fold0 --cores 8 --resources gpu=2   (target BEFORE --resources)

configfile: "params.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    dataset="|".join(DATASETS),
    fold=r"\d+",
    target=r"[a-z][a-z0-9_]*",


include: "workflow/rules/shared_inputs.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/episodes_inputs.smk"
include: "workflow/rules/episodes.smk"
include: "workflow/rules/cam.smk"
include: "workflow/rules/segmentation.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/retab_inputs.smk"
include: "workflow/rules/retab.smk"
include: "workflow/rules/lnet_inputs.smk"
include: "workflow/rules/lnet.smk"
include: "workflow/rules/crnet_inputs.smk"
include: "workflow/rules/crnet.smk"
include: "workflow/rules/refnet_inputs.smk"
include: "workflow/rules/refnet.smk"
include: "workflow/rules/apply_inputs.smk"
include: "workflow/rules/apply.smk"


rule all:
    input:
        f"results/retab_fold{DEFAULT_FOLD}",
    default_target: True
