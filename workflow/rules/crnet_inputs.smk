# Paths and input functions of the CRNet rules (crnet.smk).
import re

CRNET_FEATURES = "work/{dataset}/crnet/features/{split}.pt"
CRNET_DIR = "work/{dataset}/fold{fold}/crnet/{variant}"
CRNET_EVAL = f"{CRNET_DIR}/eval/{{shots}}shot_seed{{seed}}.json"
CRNET_FINETUNE = f"{CRNET_DIR}/eval/finetune_{{shots}}shot_seed{{seed}}.json"
PROTOTYPE_EVAL = "work/{dataset}/fold{fold}/crnet_prototype/eval/{shots}shot_seed{seed}.json"
CRNET_FULL = "full"
CROSS_EPISODES = "work/{dataset}/episodes/cross_{shots}shot_seed{seed}.jsonl"
CROSS_EVAL = "work/{dataset}/crnet_from_{train}_fold{fold}/eval/{shots}shot_seed{seed}.json"
CROSS_PROTOTYPE_EVAL = "work/{dataset}/crnet_prototype/cross/eval/{shots}shot_seed{seed}.json"
CROSS_METHOD = re.compile(r"crnet_from_(?P<train>[a-z][a-z0-9_]*)_fold(?P<fold>\d+)")


def crnet_section(dataset, key):
    """crnet.<key> for a dataset, passed as a param so that an edit reruns what reads it."""
    return P(dataset)["crnet"][key]


from pipeline.crnet_training import split_training_seed  # noqa: E402
from pipeline.data.episodes import class_ids_by_name  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402


def cross_settings(dataset):
    """crnet.cross_dataset.<dataset>: the test classes and the class map of a test dataset."""
    return (P(dataset)["crnet"].get("cross_dataset") or {}).get(dataset) or {}


def cross_classes_arg(wildcards):
    """--classes of the cross-dataset episodes; a name the test dataset lacks is one line."""
    names = cross_settings(wildcards.dataset).get("classes")
    data = P(wildcards.dataset)["data"]
    try:
        class_ids_by_name(names, data["classes"], data.get("background"),
                          f"params.yaml: crnet.cross_dataset.{wildcards.dataset}.classes")
    except PipelineError as err:
        raise WorkflowError(f"error: {err}") from None
    return "--classes " + (",".join(names) if names else "all")


def cross_test_inputs(wildcards):
    """{"model": <train>'s fold-k CRNet} for work/<test>/crnet_from_<train>_fold<k>; {} for the floor."""
    match = CROSS_METHOD.fullmatch(wildcards.method)
    if match is None:
        return {}
    train, fold = match["train"], match["fold"]
    num_folds(train, fold)
    return {"model": f"{CRNET_DIR}/model.pt".format(dataset=train, fold=fold, variant=CRNET_FULL)}


def crnet_cross_inputs(wildcards):
    """CRNet of <train> fold k and the floor on <test>'s cross episodes, every shot count and
    episode seed of <test>, and <train>'s fold file (its base classes are the seen ones)."""
    d, t, k = wildcards.dataset, wildcards.train, wildcards.fold
    cross_classes_arg(wildcards)
    num_folds(t, k)
    shots, seeds = crnet_shots_seeds(d)
    inputs = {f"crnet_{s}_{e}": CROSS_EVAL.format(dataset=d, train=t, fold=k, shots=s, seed=e)
              for s in shots for e in seeds}
    inputs.update({f"prototype_{s}_{e}": CROSS_PROTOTYPE_EVAL.format(dataset=d, shots=s, seed=e)
                   for s in shots for e in seeds})
    inputs["train_fold"] = FOLD_FILE.format(dataset=t, fold=k)
    return inputs


def crnet_train_params(wildcards):
    """What train_crnet reads: the crnet sections but test.finetune and the ablation list,
    plus the variant's own switches, for <variant>_seed<n> its training seed, and for a
    TPC + CRC variant crnet.tpc_crc.train (each absent otherwise, so that adding the keys
    reran no existing model)."""
    settings = P(wildcards.dataset)["crnet"]
    name, training_seed = split_training_seed(wildcards.variant)
    variant = {} if name == CRNET_FULL else crnet_variant(wildcards.dataset, name)
    out = {"encoder": settings["encoder"], "hidden": settings["hidden"], "train": settings["train"],
           "select": settings["select"], "iterations": settings["test"]["iterations"], "variant": variant}
    if training_seed is not None:
        out["training_seed"] = training_seed
    if variant.get("tpc") or variant.get("epoch_matched"):
        out["tpc_crc"] = settings["tpc_crc"]["train"]
    return out


def crnet_variant(dataset, variant):
    """The switches of an ablation variant or of a TPC + CRC variant (crnet.tpc_crc.variants)."""
    variants = P(dataset)["crnet"]["ablation"]["variants"] or {}
    schemes = P(dataset)["crnet"]["tpc_crc"]["variants"] or {}
    if variant not in variants and variant not in schemes:
        raise WorkflowError(f"error: params.yaml: crnet.ablation.variants has no variant '{variant}' "
                            f"(known: {', '.join(sorted(variants)) or 'none'}; TPC + CRC: crnet.tpc_crc.variants "
                            f"{', '.join(sorted(schemes)) or 'none'}; the full model is '{CRNET_FULL}')")
    return variants[variant] if variant in variants else schemes[variant]


def crnet_shots_seeds(dataset):
    episodes = P(dataset)["episodes"]
    return [int(k) for k in episodes["shots"]], [int(s) for s in episodes["seeds"]]


def crnet_finetune_file(dataset, fold, variant=CRNET_FULL):
    ft = P(dataset)["crnet"]["test"]["finetune"]
    return CRNET_FINETUNE.format(dataset=dataset, fold=fold, variant=variant, shots=ft["shots"], seed=ft["episode_seed"])


def crnet_result_inputs(wildcards):
    """Everything results/<dataset>/crnet_fold<k> reads: CRNet and the floor on every shot
    count and episode seed, the finetune comparison, the model (figure) and its history."""
    d, k = wildcards.dataset, wildcards.fold
    num_folds(d, k)
    shots, seeds = crnet_shots_seeds(d)
    inputs = {f"crnet_{s}_{e}": CRNET_EVAL.format(dataset=d, fold=k, variant=CRNET_FULL, shots=s, seed=e)
              for s in shots for e in seeds}
    inputs.update({f"prototype_{s}_{e}": PROTOTYPE_EVAL.format(dataset=d, fold=k, shots=s, seed=e)
                   for s in shots for e in seeds})
    inputs.update({
        "finetune": crnet_finetune_file(d, k),
        "model": f"{CRNET_DIR}/model.pt".format(dataset=d, fold=k, variant=CRNET_FULL),
        "history": f"{CRNET_DIR}/history.tsv".format(dataset=d, fold=k, variant=CRNET_FULL),
        "features": CRNET_FEATURES.format(dataset=d, split="val"),
        "fold": FOLD_FILE.format(dataset=d, fold=k),
        "episodes": EPISODES_FILE.format(dataset=d, fold=k, shots=min(shots), seed=min(seeds)),
    })
    return inputs


def crnet_eval_args(wildcards, input):
    """--eval crnet:<shots>:<seed>=PATH ... for the report stage."""
    names = [name for name in input.keys() if name.startswith(("crnet_", "prototype_"))]
    return " ".join(f"--eval {name.replace('_', ':')}={input[name]}" for name in names)


def crnet_all_inputs(wildcards):
    return [f"results/{wildcards.dataset}/crnet_fold{k}" for k in range(num_folds(wildcards.dataset))]


def crnet_ablation_inputs(wildcards):
    """1-shot evaluations of the full model and every variant of crnet.ablation on its folds
    and every episode seed: {"<variant>_<fold>_<seed>": path}."""
    d = wildcards.dataset
    ablation = P(d)["crnet"]["ablation"]
    shots, seeds = crnet_shots_seeds(d)
    inputs = {}
    for fold in ablation["folds"]:
        num_folds(d, fold)
        for variant in [CRNET_FULL, *sorted(ablation["variants"] or {})]:
            for seed in seeds:
                inputs[f"{variant}_{fold}_{seed}"] = CRNET_EVAL.format(dataset=d, fold=fold, variant=variant,
                                                                        shots=min(shots), seed=seed)
    return inputs


def crnet_ablation_args(wildcards, input):
    """--eval <variant>:<fold>:<seed>=PATH (variant names may hold '_': split from the right)."""
    out = []
    for name in input.keys():
        variant, fold, seed = name.rsplit("_", 2)
        out.append(f"--eval {variant}:{fold}:{seed}={input[name]}")
    return " ".join(out)


def cross_pair_results(wildcards):
    """results/<test>/crnet_from_<train>_fold<k> of every pair of crnet.cross_dataset.pairs."""
    pairs = P(DEFAULT_DATASET)["crnet"].get("cross_dataset", {}).get("pairs") or []
    for pair in pairs:
        for key in ("train", "test"):
            if pair[key] not in DATASETS:
                raise WorkflowError(f"error: params.yaml: crnet.cross_dataset.pairs: unknown dataset '{pair[key]}' "
                                    f"(known: {', '.join(DATASETS)})")
    if not pairs:
        raise WorkflowError("error: params.yaml: crnet.cross_dataset.pairs is empty")
    return [f"results/{p['test']}/crnet_from_{p['train']}_fold{p['fold']}" for p in pairs]


def seed_variant(variant, training_seed):
    """The variant directory of a training seed: the variant itself for the global ``seed``
    (the run every other target uses), ``<variant>_seed<n>`` for the others."""
    return variant if int(training_seed) == int(config.get("seed", 0)) else f"{variant}_seed{training_seed}"


def crnet_seeds_inputs(wildcards):
    """results/<dataset>/crnet_seeds: CRNet of every training seed of crnet.training_seeds on
    its folds, and the floor, every shot count and episode seed:
    {"crnet_<tseed>_<fold>_<shots>_<eseed>": path, "prototype_0_<fold>_<shots>_<eseed>": path}."""
    d = wildcards.dataset
    spec = P(d)["crnet"]["training_seeds"]
    shots, seeds = crnet_shots_seeds(d)
    inputs = {}
    for fold in spec["folds"]:
        num_folds(d, fold)
        for s in shots:
            for e in seeds:
                for t in spec["seeds"]:
                    inputs[f"crnet_{t}_{fold}_{s}_{e}"] = CRNET_EVAL.format(
                        dataset=d, fold=fold, variant=seed_variant(CRNET_FULL, t), shots=s, seed=e)
                inputs[f"prototype_0_{fold}_{s}_{e}"] = PROTOTYPE_EVAL.format(dataset=d, fold=fold, shots=s, seed=e)
    return inputs


def crnet_seeds_args(wildcards, input):
    """--eval KIND:TSEED:FOLD:SHOTS:ESEED=PATH for the report stage."""
    return " ".join(f"--eval {name.replace('_', ':')}={input[name]}" for name in input.keys())


# TPC + CRC (pipeline/tpc_crc.py) and the H-partitions (pipeline/hpartitions.py).
HPART_DIR = "work/{dataset}/fold{fold}/hpartitions"
TPC_CRC_SUITE = f"{CRNET_DIR}/tpc_crc"  # one job per (variant, fold): the files below, test_crnet --job
HPART_EVAL = "hpart/{part}.json"  # inside TPC_CRC_SUITE
HPART_STRESS_EVAL = "hpart/{stress}/{part}.json"
STRESS_EVAL = "stress/{stress}_seed{seed}.json"
ORACLE_PREDICTIONS = "work/{dataset}/shared/seg/oracle/pred_val"  # the RETAB branch's Fully Oracle net
TPC_CRC_METHODS = {"crnet": CRNET_FULL, "crnet_tpc_crc": "tpc_crc"}  # report row -> training variant
STRESS_TESTS = ("identical", "zero_mask")


def tpc_crc_suite_episodes(wildcards):
    """The standard 1-shot episode files of every episode seed (the stress tests on them)."""
    _, seeds = crnet_shots_seeds(wildcards.dataset)
    return [EPISODES_FILE.format(dataset=wildcards.dataset, fold=wildcards.fold, shots=1, seed=e) for e in seeds]


def tpc_crc_suite_files(dataset):
    """[(name inside TPC_CRC_SUITE, episodes name, shots, stress or None, partial)] of one (variant, fold):
    L0-L7, both stress tests on L0-L7, both stress tests on the 1-shot episodes of every seed."""
    _, seeds = crnet_shots_seeds(dataset)
    shots = int(P(dataset)["crnet"]["tpc_crc"]["partitions"]["shots"])
    files = []
    for i in range(8):
        files.append((HPART_EVAL.format(part=f"L{i}"), f"L{i}", shots, None, True))
        for test in STRESS_TESTS:
            files.append((HPART_STRESS_EVAL.format(stress=test, part=f"L{i}"), f"L{i}", shots, test, True))
    for test in STRESS_TESTS:
        for e in seeds:
            files.append((STRESS_EVAL.format(stress=test, seed=e), e, 1, test, False))
    return files


def tpc_crc_suite_jobs(wildcards, input):
    """--job NAME=EPISODES,shots=K[,stress=TEST][,partial] for each file of tpc_crc_suite_files."""
    _, seeds = crnet_shots_seeds(wildcards.dataset)
    by_seed = dict(zip(seeds, input.episodes))
    out = []
    for name, source, shots, stress, partial in tpc_crc_suite_files(wildcards.dataset):
        episodes = f"{input.partitions}/{source}.jsonl" if partial else by_seed[source]
        out.append(f"--job {name}={episodes},shots={shots}" + (f",stress={stress}" if stress else "")
                   + (",partial" if partial else ""))
    return " ".join(out)


def tpc_crc_result_inputs(wildcards):
    """results/<dataset>/crnet_tpc_crc_fold<k>: CRNet (full) and CRNet + TPC + CRC (tpc_crc) on
    every shot count and episode seed, the floor, and each model's TPC + CRC suite (both stress
    tests, 1-shot, every episode seed, and on L0-L7; L0-L7 of the fold's H-partitions).
    Keys: <what>__<field>__... (split by the args)."""
    d, k = wildcards.dataset, wildcards.fold
    num_folds(d, k)
    shots, seeds = crnet_shots_seeds(d)
    inputs = {}
    for method, variant in TPC_CRC_METHODS.items():
        for s in shots:
            for e in seeds:
                inputs[f"eval__{method}__{s}__{e}"] = CRNET_EVAL.format(dataset=d, fold=k, variant=variant,
                                                                       shots=s, seed=e)
        inputs[f"suite__{method}"] = TPC_CRC_SUITE.format(dataset=d, fold=k, variant=variant)
    for s in shots:
        for e in seeds:
            inputs[f"eval__prototype__{s}__{e}"] = PROTOTYPE_EVAL.format(dataset=d, fold=k, shots=s, seed=e)
    inputs["partitions"] = HPART_DIR.format(dataset=d, fold=k)
    return inputs


def tpc_crc_result_args(wildcards, input):
    """--eval KIND:SHOTS:SEED=P, --stress TEST/METHOD:SEED=P, --partition METHOD:INDEX=P,
    --stress-partition TEST/METHOD:INDEX=P (the last three inside each method's suite), --partitions."""
    _, seeds = crnet_shots_seeds(wildcards.dataset)
    out = []
    for name in input.keys():
        what, *fields = name.split("__")
        if what == "eval":
            out.append(f"--eval {fields[0]}:{fields[1]}:{fields[2]}={input[name]}")
        elif what == "suite":
            method, suite = fields[0], input[name]
            for test in STRESS_TESTS:
                for e in seeds:
                    out.append(f"--stress {test}/{method}:{e}={suite}/{STRESS_EVAL.format(stress=test, seed=e)}")
            for i in range(8):
                out.append(f"--partition {method}:{i}={suite}/{HPART_EVAL.format(part=f'L{i}')}")
                for test in STRESS_TESTS:
                    out.append(f"--stress-partition {test}/{method}:{i}="
                               f"{suite}/{HPART_STRESS_EVAL.format(stress=test, part=f'L{i}')}")
    out.append(f"--partitions {input.partitions}/partitions.json")
    return " ".join(out)


def tpc_crc_all_inputs(wildcards):
    return [f"results/{wildcards.dataset}/crnet_tpc_crc_fold{k}" for k in range(num_folds(wildcards.dataset))]


def tpc_crc_components_inputs(wildcards):
    """results/<dataset>/crnet_tpc_crc_components: full and every variant of crnet.tpc_crc.variants,
    each training seed of crnet.tpc_crc.components on its folds, 1-shot, every episode seed, and
    the floor: {"<variant>__<tseed>__<fold>__<eseed>": path}."""
    d = wildcards.dataset
    spec = P(d)["crnet"]["tpc_crc"]
    shots, seeds = crnet_shots_seeds(d)
    inputs = {}
    for fold in spec["components"]["folds"]:
        num_folds(d, fold)
        for variant in [CRNET_FULL, *sorted(spec["variants"])]:
            for t in spec["components"]["seeds"]:
                for e in seeds:
                    inputs[f"{variant}__{t}__{fold}__{e}"] = CRNET_EVAL.format(
                        dataset=d, fold=fold, variant=seed_variant(variant, t), shots=1, seed=e)
        for e in seeds:
            inputs[f"prototype__0__{fold}__{e}"] = PROTOTYPE_EVAL.format(dataset=d, fold=fold, shots=1, seed=e)
    return inputs


def tpc_crc_components_args(wildcards, input):
    return " ".join(f"--eval {name.replace('__', ':')}={input[name]}" for name in input.keys())
