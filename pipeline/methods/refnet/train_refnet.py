"""Stage train_refnet: Ref-Net (RSM + BKTM) for one setting, variant, K and training seed.

    python -m pipeline.methods.refnet.train_refnet --params params.yaml --dataset D \\
        --features work/D/crnet/features/train.pt --labels work/D/image_labels.json \\
        (--fold-file work/D/folds/fold0.json | --target-class cow | --select-fold-file F) --variant full \\
        --shots 10 --train-seed 0 --out .../model.pt --history .../history.tsv

Targets: the fold's novel classes (``--fold-file``; O = the train images without any of
them, with their base-class masks) or one class (``--target-class``, the single-category
setting; O = every other object class's masks in the images without it) or, to choose a
critic setting on base-class data (``--select-fold-file``, scope ``select<k>``), a seeded
sample of ``refnet.select.classes`` of the fold's base classes as pseudo-targets, O = the
other base classes, every train image with a novel pixel removed
(:func:`pipeline.refnet_training.select_scope`); the variant is then a key of
``refnet.select.candidates`` (its ``adversarial_weight`` overrides ``refnet.train``'s). The references
are drawn with the global ``seed`` (the same for every training seed, variant and
critic setting, so those compare on the same data); ``--train-seed`` seeds the training.
``--shots``: K >= 0 or ``all``. Everything about the setting (references, K per class,
``short`` classes) is stored in the model file's meta for test_refnet and the reports.
History: one row per step (losses, each critic's loss and Wasserstein estimate).
"""
from __future__ import annotations

from pipeline.config import check_range, load_params, section
from pipeline.data.fewshot_features import FeatureStore
from pipeline.data.folds import fold_novel_classes, load_fold
from pipeline.data.labels import check_labels_match, read_image_labels_file
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.io import write_text
from pipeline.models.refnet import RefNet
from pipeline.refnet_training import (
    FULL, ImageBank, TrainConfig, draw_setting, effective_switches, parse_shots, select_scope,
    step_tsv, train_refnet)
from pipeline.runtime import seed_everything, stage_run
from pipeline.stage import stage_device, stage_parser
from pipeline.training import save_model


def scope_classes(args, dataset: VOCDataset, params: dict,
                  pixel_counts: dict) -> tuple[list[int], list[int], str, list[str]]:
    """(target classes, open-source classes, where to blame an empty O, train ids of the setting)."""
    objects = [c for c in range(dataset.num_classes) if c != dataset.background_index]
    ids = list(dataset.ids)
    if args.fold_file or args.select_fold_file:
        path = args.fold_file or args.select_fold_file
        fold = load_fold(path)
        novel = fold_novel_classes(fold, path, dataset.num_classes)
        if args.fold_file:
            return novel, [c for c in objects if c not in novel], path, ids
        targets, open_classes, kept = select_scope(
            pixel_counts, ids, [c for c in objects if c not in novel], novel,
            int(section(params, "refnet.select.classes")), int(params["seed"]), int(fold["fold"]))
        return targets, open_classes, path, kept
    if args.target_class not in dataset.class_names or args.target_class == dataset.class_names[
            dataset.background_index]:
        raise PipelineError("--target-class", f"'{args.target_class}' is not an object class of the dataset")
    target = dataset.class_names.index(args.target_class)
    return [target], [c for c in objects if c != target], f"--target-class {args.target_class}", ids


def variant_switches(params: dict, variant: str) -> dict:
    variants = section(params, "refnet.ablation.variants") or {}
    if variant != FULL and variant not in variants:
        raise PipelineError("params.yaml", f"refnet.ablation.variants has no variant '{variant}'")
    return {} if variant == FULL else dict(variants[variant])


def is_candidate(params: dict, name: str) -> bool:
    """A key of refnet.select.candidates that is neither full nor an ablation variant."""
    ablation = section(params, "refnet.ablation.variants") or {}
    return name != FULL and name not in ablation and name in (section(params, "refnet.select.candidates") or {})


def candidate(params: dict, name: str) -> tuple[dict, dict]:
    """(switches, refnet.train overrides: adversarial_weight and/or adversarial_balance) of a key of
    refnet.select.candidates."""
    candidates = section(params, "refnet.select.candidates") or {}
    if name not in candidates:
        raise PipelineError("params.yaml", f"refnet.select.candidates has no candidate '{name}' "
                            f"(known: {', '.join(sorted(candidates)) or 'none'})")
    switches = dict(candidates[name])
    overrides = {k: float(switches.pop(k)) for k in ("adversarial_weight", "adversarial_balance") if k in switches}
    for key, value in overrides.items():
        check_range(value, f"refnet.select.candidates.{name}.{key}", 0)
    return switches, overrides


def train_config(params: dict, grid: int, overrides: dict | None = None) -> TrainConfig:
    """refnet.train / refnet.critic as a TrainConfig; ``overrides`` (a candidate's) replace refnet.train keys."""
    train, critic = {**section(params, "refnet.train"), **(overrides or {})}, section(params, "refnet.critic")
    check_range(float(train["lr"]), "refnet.train.lr", 0, low_open=True)
    return TrainConfig(
        steps=int(train["steps"]), warmup_steps=int(train["warmup_steps"]), batch_size=int(train["batch_size"]), lr=float(train["lr"]),
        negative_prob=float(train["negative_prob"]), dice_tau=float(train["dice_tau"]),
        weights={"dice": float(train["dice_weight"]), "representation": float(train["representation_weight"]),
                 "self_supervision": float(train["self_supervision_weight"]),
                 "adversarial": float(train["adversarial_weight"])},
        boundary_radius=int(train["boundary_radius"]), affine=dict(train["affine"]), flip=bool(train["flip"]),
        n_critic=int(critic["n_critic"]), critic_lr=float(critic["lr"]), critic_betas=tuple(critic["betas"]),
        gp_weight=float(critic["gp_weight"]), critic_channels=int(critic["channels"]),
        pseudo_radius_fraction=float(critic["pseudo_radius_fraction"]), grid=grid,
        adversarial_balance=None if train.get("adversarial_balance") is None else float(train["adversarial_balance"]),
        critic_warmup=bool(critic["warmup"]), diagnostic_steps=int(critic["diagnostic_steps"]))


def main(argv=None):
    ap = stage_parser(__doc__, training=True, inputs=("labels",))
    ap.add_argument("--features", required=True, help="train-split feature cache (stage crnet_features)")
    scope = ap.add_mutually_exclusive_group(required=True)
    scope.add_argument("--fold-file", help="fold JSON: its novel classes are the targets")
    scope.add_argument("--target-class", help="single-category setting: this class is the target")
    scope.add_argument("--select-fold-file", help="fold JSON: base classes of it as pseudo-targets, no novel image "
                       "(choosing a critic setting, scope select<k>)")
    ap.add_argument("--variant", default=FULL, help="full or a key of refnet.ablation.variants (with "
                    "--select-fold-file: a key of refnet.select.candidates)")
    ap.add_argument("--shots", required=True, help="K references per target class (an integer >= 0, or all)")
    ap.add_argument("--train-seed", type=int, default=0, help="seed of the training (not of the references)")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    cfg = section(params, "refnet")
    size, grid = int(cfg["size"]), int(cfg["grid"])
    try:
        shots = parse_shots(args.shots)
    except ValueError as err:
        raise PipelineError("--shots", str(err)) from None
    dataset = VOCDataset(params["data"], "train")
    if dataset.background_index is None:
        raise PipelineError("params.yaml", f"dataset '{params['dataset']}' has no background class; Ref-Net "
                            "segments objects against background")
    document = read_image_labels_file(args.labels)
    check_labels_match(document, params["data"], params["dataset"], args.labels)
    if document.get("pixel_counts") is None:
        raise PipelineError(args.labels, "has no 'pixel_counts' (rerun stage image_labels)")
    targets, open_classes, where, ids = scope_classes(args, dataset, params, document["pixel_counts"])
    setting = draw_setting(document["pixel_counts"], ids, targets, open_classes, shots,
                           int(params["seed"]), int(cfg["min_pixels"]), int(cfg["zero_shot_references"]), where)
    select = bool(args.select_fold_file)
    # a select job's variant is a candidate; so is a fold job's variant that names a candidate
    # and no ablation variant (refnet.critics_check.candidates: the chosen setting on the test fold)
    as_candidate = select or is_candidate(params, args.variant)
    variant, overrides = candidate(params, args.variant) if as_candidate else (variant_switches(params, args.variant), {})
    switches = effective_switches(variant, setting.zero_shot,
                                  "refnet.select.candidates" if as_candidate else "refnet.ablation.variants")
    train_cfg = train_config(params, grid, overrides)
    # what the job read: a fold / single job's record leaves refnet.select out (unchanged by it)
    read = cfg if as_candidate else {k: v for k, v in cfg.items() if k != "select"}
    device = stage_device(args, params)
    seed_everything(args.train_seed)
    store = FeatureStore(args.features, params, dataset)
    names = dataset.class_names
    inputs = {"features": args.features, "scope": where, "variant": args.variant, "shots": args.shots,
              "train_seed": args.train_seed}
    with stage_run("train_refnet", inputs, {"refnet": read, "seed": params["seed"]}, device) as log:
        for c in setting.targets:
            log.info("target %s: %d references of %d train images%s", names[c], len(setting.references[c]),
                     setting.available[c], " (K > available: all used)" if c in setting.short else "")
        log.info("S: %d images with image-level labels; O: %d (image, class) pairs with masks; switches %s",
                 len(setting.unlabelled), len(setting.open_source), switches)
        ids = set(setting.unlabelled) | {i for i, _ in setting.open_source}
        ids |= {i for refs in setting.references.values() for i, _ in refs}
        bank = ImageBank(store, dataset, sorted(ids), grid, size)
        model = RefNet(sum(store.level_channels), int(cfg["hidden"]), tuple(cfg["aspp_rates"]), switches["condition"])
        history, states = train_refnet(model, setting, bank, document["labels"], train_cfg, switches,
                                       args.train_seed, device, log)
        meta = {**model.meta, "task": "refnet", "dataset": params["dataset"], "variant": args.variant,
                "train_seed": args.train_seed, "switches": switches, "setting": setting.to_json(),
                "grid": grid, "size": size, "class_names": names,
                "adversarial_weight": train_cfg.weights["adversarial"],
                "adversarial_balance": train_cfg.adversarial_balance}
        if "diagnostic" in states:  # fresh critics: W with predictions vs with the targets' own GT as fake
            meta["critic_diagnostic"] = states["diagnostic"]
        if select:  # test_refnet scores these S images of the train split (base-class masks only)
            meta["select"] = {"fold_file": args.select_fold_file, "unlabelled": setting.unlabelled,
                              "adversarial_weight": train_cfg.weights["adversarial"]}
        write_text(args.history, step_tsv(history))
        save_model(args.out, model.cpu(), meta)


if __name__ == "__main__":
    run_stage(main)
