"""Stage test_crnet: score CRNet, or the training-free prototype floor, on one episodes file.

    python -m pipeline.methods.crnet.test_crnet --params params.yaml --dataset D \\
        --features work/D/crnet/features/val.pt --fold-file work/D/folds/fold0.json \\
        --episodes work/D/episodes/fold0_5shot_seed0.jsonl --shots 5 \\
        (--model work/D/fold0/crnet/full/model.pt [--finetune] | --prototype) --out EVAL.json

Episodes (:mod:`pipeline.data.episodes`): query and k supports of a novel class, val split.
Each query is scored at its label's own resolution with 255 ignored, through
:class:`pipeline.metrics.episodic.EpisodeIoUAccumulator` (per-class foreground IoU summed
over the class's episodes, mIoU over the fold's novel classes, HSNet's FB-IoU,
per-episode mean).

``--model``: CRNet with ``crnet.test.iterations`` refinement iterations; k shots are fused by
averaging the k foreground probabilities. The scores after each iteration 1..T are
written too (``by_iterations``: the refinement-iterations table; one pass gives all).
``--prototype``: the PANet prototype floor (:func:`pipeline.fewshot.prototype_probability`)
on the same cached encoder features; an all-zero support mask predicts background.

``--finetune`` (with ``--model``): only the first ``crnet.test.finetune.episodes`` episodes;
for each, a copy of the net is trained (everything but the frozen encoder) for
``crnet.test.finetune.steps`` steps on the k(k-1) ordered support pairs (i, j), i != j -- support
i as query, support j as support, both masks known; no self-pair, which would teach copying --
with the training loss and optimizer (lr ``crnet.test.finetune.lr``; ``batch_size`` pairs a
step, null = all pairs), then predicts
with fusion. The file holds ``fusion`` and
``finetune`` on the same subset.

``--classes a,b,c`` (``all``: every object class) instead of ``--fold-file``: the episodes'
classes by name -- the cross-dataset test, where ``--model`` was trained on another dataset
(its encoder features must match: same levels and channels).

``--stress identical`` (the TPC + CRC paper's Table 7): each episode's supports are the query
itself (support = query on purpose); ``--stress zero_mask``: every support mask is all zero
(background). ``--partial`` (the H-partition episode files of stage make_hpartitions): a
novel class without an episode, or a file without any, is allowed (mIoU over the classes
that have episodes; none: NaN, and the report says so).

The yardstick (issue 21), in the same pass and on the same episodes (``yardstick``):
the trivial rows ``all_foreground`` (the class on every pixel) and ``all_background``; with
``crnet.test.mismatched`` (not with --finetune, --stress or --partial) the ``mismatched``
row, the model (or floor) run on each query with the supports of another class of the same
fold and that class's masks (:func:`pipeline.data.episodes.mismatched_episodes`): a model
that follows its support scores low there. Each row is scored in two settings:
``standard`` (every episode) and ``labelled_background`` (only the episodes whose query has
>= ``episodes.min_labelled_background`` of its pixels labelled and not the class,
:func:`pipeline.data.episodes.labelled_background_share`): where the void hides the
background, painting the class everywhere loses nothing, so the standard setting cannot
tell a net from painting. A class without such a query has no IoU in that setting and is
left out of its mean (``episodes_per_class`` 0; the reports name it). With
``episodes.small_classes: leave_out`` a novel class without episodes (fewer than k + 1 val
images, stage make_episodes) is allowed and named in ``yardstick.left_out`` with its val
image count.

``--job NAME=EPISODES[,shots=K][,stress=TEST][,partial]`` (repeated; with ``--model`` or
``--prototype``, instead of ``--episodes``/``--shots``/``--stress``/``--partial``): one process
scores many episode files with one loaded model and feature cache, and ``--out`` is a
directory holding ``NAME`` (a relative path, e.g. ``hpart/L0.json``) per job -- each file
exactly what the single-file call writes for the same options (the TPC + CRC report's
partitions and stress tests: one job per (variant, fold), not one per cell). Every job's
episodes are checked before any is scored; the directory is complete or absent.

Bad input (one line, exit 2, nothing written): a mismatched-support request
(``crnet.test.mismatched``) on episodes of a single class; no query with labelled background
at all (no class left in that table); an episode naming an image that is not in
the val split (or whose file is missing); fewer supports than ``--shots``; an episode of a
class that is not novel in the fold; a novel class of the fold without any episode.
Output: ``summary``, ``episodes`` (per episode ``class``, ``inter`` and ``union`` [bg, fg]).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import load_params, section
from pipeline.crnet_training import load_crnet, make_optimizer, pair_batches, pair_loss
from pipeline.data.episodes import (class_ids_by_name, class_list_arg, labelled_background_share,
                                    mismatched_episodes, read_episodes)
from pipeline.data.fewshot_features import FeatureStore
from pipeline.data.folds import fold_novel_classes, load_fold
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.fewshot import binary_prediction, prototype_probability
from pipeline.io import atomic_dir, write_json
from pipeline.metrics.episodic import EpisodeIoUAccumulator
from pipeline.models.crnet import CRNet, episode_probabilities
from pipeline.runtime import progress, seed_everything, stage_run
from pipeline.stage import stage_device, stage_parser
from pipeline.tpc_crc import STRESS_TESTS, identical_input


SETTINGS = ("standard", "labelled_background")
TRIVIAL_ROWS = ("all_foreground", "all_background")


def check_episodes(episodes: list[dict], path, shots: int, novel: list[int], store: FeatureStore,
                   class_names: list[str], partial: bool = False, leave_out: bool = False) -> list[int]:
    """The bad-input checks of the module docstring, each one line naming the file; returns the
    novel classes without an episode (allowed with ``partial`` or ``leave_out``)."""
    for n, e in enumerate(episodes, 1):
        if e["class"] not in novel:
            raise PipelineError(path, f"line {n}: class {e['class']} is not a novel class of the fold {novel}")
        if len(e["supports"]) < shots:
            raise PipelineError(path, f"line {n}: {len(e['supports'])} supports, but --shots {shots} needs {shots}")
        store.check_ids([e["query"], *e["supports"][:shots]], path, f"line {n}: image")
    present = {e["class"] for e in episodes}
    missing = [c for c in novel if c not in present]
    if missing and not (partial or leave_out):
        c = missing[0]
        raise PipelineError(path, f"no episode of novel class '{class_names[c]}' (id {c}): it has no val image "
                            "in the fold")
    if len(missing) == len(novel) and not partial:
        raise PipelineError(path, "no episode of any class")
    return missing


def images_holding(store: FeatureStore, class_id: int, min_pixels: int) -> int:
    """How many images of ``store``'s split hold >= ``min_pixels`` px of the class."""
    return sum(int((store.class_mask(i) == class_id).sum()) >= min_pixels for i in store.dataset.ids)


def trivial_predictions(shape) -> dict[str, np.ndarray]:
    """The trivial rows' predictions: the class on every pixel, and on none."""
    return {"all_foreground": np.ones(shape, np.uint8), "all_background": np.zeros(shape, np.uint8)}


def finetune_pairs(class_id: int, supports: list[str]) -> list[dict]:
    """The k(k-1) ordered pairs (i, j), i != j, of an episode's supports: support i as query,
    support j as support. Never a self-pair (i, i): with support = query the loss is lowest for
    copying the support's mask, which teaches the net to ignore the query (CRNet finetunes on
    the supports "as query and support of each other")."""
    return [{"class": class_id, "query": a, "support": b, "positive": True, "flip_query": False,
             "flip_support": False} for i, a in enumerate(supports) for j, b in enumerate(supports) if i != j]


def finetuned(model: CRNet, store: FeatureStore, e: dict, shots: int, params: dict, device) -> CRNet:
    """A copy of ``model`` trained on the episode's k(k-1) support pairs (:func:`finetune_pairs`):
    each step takes ``crnet.test.finetune.batch_size`` pairs (null: all) in a seeded cyclic
    order. One support has no pair: the model is returned unchanged (finetune = fusion)."""
    train_cfg = section(params, "crnet.train")
    ft = section(params, "crnet.test.finetune")
    pairs = finetune_pairs(e["class"], e["supports"][:shots])
    if not pairs:
        return model
    size = len(pairs) if ft.get("batch_size") is None else min(int(ft["batch_size"]), len(pairs))
    order = np.random.default_rng([int(params["seed"]), int(e["episode"])]).permutation(len(pairs)).tolist()
    net = copy.deepcopy(model).to(device).train()
    optimizer = make_optimizer(net, train_cfg, float(ft["lr"]))
    for step in range(int(ft["steps"])):
        chosen = [pairs[order[(step * size + i) % len(pairs)]] for i in range(size)]
        groups = [{k: v.to(device) for k, v in g.items()}
                  for g in pair_batches(chosen, store, size, flip=False)[0]["groups"]]
        loss = sum(pair_loss(net, g, int(train_cfg["iterations"]), float(train_cfg["support_weight"]),
                             float(train_cfg["cooccurrence_weight"]), store.dataset.ignore_index)[0]
                   * g["query"].shape[0] / size for g in groups)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return net.eval()


def probabilities(model: CRNet | None, store: FeatureStore, e: dict, shots: int, iterations: int, device,
                  zero_mask: bool = False):
    """Fused foreground probability after each iteration (the floor: one entry);
    ``zero_mask``: every support mask all zero (the stress test)."""
    c, supports = e["class"], e["supports"][:shots]
    query = store.features(e["query"]).to(device)
    feats = [store.features(s).to(device) for s in supports]
    support_class = e.get("support_class", c)  # another class's supports: the mismatched row
    masks = [torch.zeros_like(m) if zero_mask else m for m in (store.mask(s, support_class) for s in supports)]
    if model is None:
        return [prototype_probability(query[0], [f[0] for f in feats], masks, ignore_index=store.dataset.ignore_index)]
    return episode_probabilities(model, query, feats, masks, iterations)


JOB_OPTIONS = ("shots", "stress", "partial")


def parse_job(text: str) -> dict:
    """``NAME=EPISODES[,shots=K][,stress=TEST][,partial]`` -> ``{name, episodes, shots, stress,
    partial}`` (shots 1, no stress, not partial unless given); a malformed one: one line."""
    name, sep, rest = text.partition("=")
    fields = rest.split(",")
    if not sep or not name or not fields[0] or Path(name).is_absolute() or ".." in Path(name).parts:
        raise PipelineError("--job", f"'{text}': expected NAME=EPISODES[,shots=K][,stress=TEST][,partial] "
                            "with NAME a relative path")
    job = {"name": name, "episodes": fields[0], "shots": 1, "stress": None, "partial": False}
    for field in fields[1:]:
        key, _, value = field.partition("=")
        if key == "partial" and not value:
            job["partial"] = True
        elif key == "shots" and value.isdigit():
            job["shots"] = int(value)
        elif key == "stress" and value in STRESS_TESTS:
            job["stress"] = value
        else:
            raise PipelineError("--job", f"'{text}': unknown option '{field}' (known: shots=K, "
                                f"stress={'|'.join(STRESS_TESTS)}, partial)")
    return job


def prepare_file(job: dict, episodes: list[dict], novel: list[int], store: FeatureStore, params: dict,
                 finetune: bool) -> dict:
    """The checks of one episodes file and what its scoring needs, before any file is scored:
    ``episodes`` (identical-input / finetune subset applied), the queries' labelled-background
    ``shares``, the ``mismatched`` episodes (or None) and the ``left_out`` small classes."""
    dataset, shots, path = store.dataset, job["shots"], job["episodes"]
    leave_out = section(params, "episodes.small_classes") == "leave_out"
    missing = check_episodes(episodes, path, shots, novel, store, dataset.class_names, job["partial"], leave_out)
    if job["stress"] == "identical":
        episodes = identical_input(episodes, shots)
    if finetune:
        episodes = episodes[:int(section(params, "crnet.test.finetune.episodes"))]
    threshold = float(section(params, "episodes.min_labelled_background"))
    shares = [labelled_background_share(store.mask(e["query"], e["class"]).numpy()) for e in episodes]
    if not job["partial"] and not any(v >= threshold for v in shares):
        raise PipelineError(path, f"no query has >= {threshold} labelled background "
                            "(episodes.min_labelled_background): the labelled-background table has no class left")
    mismatched = None
    if section(params, "crnet.test.mismatched") and not (finetune or job["stress"] or job["partial"]):
        try:
            mismatched = mismatched_episodes(episodes, shots)
        except ValueError as err:
            raise PipelineError(path, f"mismatched supports (crnet.test.mismatched): {err}; "
                                "a single-class test set needs crnet.test.mismatched: false") from None
    min_pixels = int(section(params, "episodes.min_pixels"))
    left_out = {dataset.class_names[c]: images_holding(store, c, min_pixels) for c in missing} if leave_out else {}
    return {"episodes": episodes, "shares": shares, "threshold": threshold, "mismatched": mismatched,
            "left_out": left_out}


def score_file(job: dict, prepared: dict, model: CRNet | None, store: FeatureStore, novel: list[int], fold: dict,
               params: dict, iterations: int, finetune: bool, device, log) -> dict:
    """The evaluation document of one episodes file (module docstring: Output), the yardstick's
    rows scored on the same episodes in the same pass."""
    dataset, shots = store.dataset, job["shots"]
    episodes, shares, threshold = prepared["episodes"], prepared["shares"], prepared["threshold"]
    mismatched = prepared["mismatched"]
    kinds = ("fusion", "finetune") if finetune else ("crnet",) if model is not None else ("prototype",)
    accs = {kind: [EpisodeIoUAccumulator(novel, dataset.ignore_index)
                   for _ in range(iterations if kind != "prototype" else 1)] for kind in kinds}
    rows = [*kinds, *(["mismatched"] if mismatched else []), *TRIVIAL_ROWS]
    yard = {setting: {row: EpisodeIoUAccumulator(novel, dataset.ignore_index) for row in rows} for setting in SETTINGS}
    started = time.perf_counter()
    for n, e in enumerate(progress(episodes, desc="episodes", total=len(episodes))):
        gt = store.mask(e["query"], e["class"])
        preds = trivial_predictions(gt.shape)
        for kind in kinds:
            net = finetuned(model, store, e, shots, params, device) if kind == "finetune" else model
            for acc, p in zip(accs[kind], probabilities(net, store, e, shots, iterations, device,
                                                        job["stress"] == "zero_mask")):
                preds[kind] = binary_prediction(p.cpu(), gt.shape).numpy()
                acc.update(preds[kind], gt.numpy(), e["class"])
        if mismatched:
            p = probabilities(model, store, mismatched[n], shots, iterations, device)[-1]
            preds["mismatched"] = binary_prediction(p.cpu(), gt.shape).numpy()
        for setting in SETTINGS if shares[n] >= threshold else SETTINGS[:1]:
            for row in rows:
                yard[setting][row].update(preds[row], gt.numpy(), e["class"])
    rate = len(episodes) / max(time.perf_counter() - started, 1e-9)
    log.info("%s: %.1f episodes per second (%s, %d-shot)", job["episodes"], rate, "+".join(rows), shots)
    document = {"method": "prototype" if model is None else "crnet", "episodes_file": job["episodes"],
                "stress": job["stress"],
                "shots": shots, "fold": fold.get("fold"), "class_names": {str(c): dataset.class_names[c]
                                                                          for c in novel},
                "yardstick": {"min_labelled_background": threshold, "left_out": prepared["left_out"],
                              "mismatched": mismatched is not None,
                              "rows": {setting: {row: acc.summary() for row, acc in yard[setting].items()}
                                       for setting in SETTINGS}}}
    if finetune:
        document.update(subset=len(episodes), steps=int(section(params, "crnet.test.finetune.steps")),
                        fusion=accs["fusion"][-1].summary(), finetune=accs["finetune"][-1].summary())
        log.info("%d episodes: fusion mIoU %.4f, finetune mIoU %.4f", len(episodes), document["fusion"]["miou"],
                 document["finetune"]["miou"])
    else:
        final = accs[kinds[0]][-1]
        document.update(iterations=len(accs[kinds[0]]), summary=final.summary(), episodes=final.episode_counts)
        if model is not None:
            document["by_iterations"] = {str(t + 1): acc.summary() for t, acc in enumerate(accs["crnet"])}
        log.info("%d episodes: mIoU %.4f FB-IoU %.4f; mismatched %s, all foreground %.4f, all background %.4f; "
                 "labelled-background queries %d", len(episodes), document["summary"]["miou"],
                 document["summary"]["fb_iou"],
                 f"{yard['standard']['mismatched'].miou():.4f}" if mismatched else "–",
                 yard["standard"]["all_foreground"].miou(), yard["standard"]["all_background"].miou(),
                 int(yard["labelled_background"][kinds[0]].episodes.sum()))
    return document


def main(argv=None):
    ap = stage_parser(__doc__, threads=True)
    ap.add_argument("--features", required=True, help="val-split feature cache (stage crnet_features)")
    classes = ap.add_mutually_exclusive_group(required=True)
    classes.add_argument("--fold-file", help="fold JSON: its novel classes are the episodes' classes")
    classes.add_argument("--classes", help="comma-separated class names or 'all' (cross-dataset episodes)")
    ap.add_argument("--episodes", help="episodes JSONL (stage make_episodes)")
    ap.add_argument("--shots", type=int, help="supports per episode used (k)")
    ap.add_argument("--job", action="append", default=[],
                    help="NAME=EPISODES[,shots=K][,stress=TEST][,partial] (repeated): many files, --out a directory")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="CRNet model file (stage train_crnet)")
    which.add_argument("--prototype", action="store_true", help="the training-free prototype floor")
    ap.add_argument("--finetune", action="store_true", help="k-shot finetune vs fusion on the first episodes")
    ap.add_argument("--stress", choices=STRESS_TESTS, help="identical: support = query; zero_mask: all-zero "
                    "support masks (TPC + CRC paper, Table 7)")
    ap.add_argument("--partial", action="store_true", help="novel classes without episodes allowed (H-partitions)")
    ap.add_argument("--out", required=True, help="evaluation JSON to write (with --job: a directory)")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    if args.job:
        single = [flag for flag, value in (("--episodes", args.episodes), ("--shots", args.shots),
                                           ("--stress", args.stress), ("--partial", args.partial),
                                           ("--finetune", args.finetune)) if value]
        if single:
            raise PipelineError(single[0], "is a single-file option: with --job give it inside each job")
        jobs = [parse_job(text) for text in args.job]
        names = [job["name"] for job in jobs]
        if len(set(names)) != len(names):
            raise PipelineError("--job", f"two jobs write '{next(n for n in names if names.count(n) > 1)}'")
    else:
        if args.episodes is None or args.shots is None:
            raise PipelineError("--episodes" if args.episodes is None else "--shots", "is required (or --job)")
        jobs = [{"name": None, "episodes": args.episodes, "shots": args.shots, "stress": args.stress,
                 "partial": args.partial}]
    for job in jobs:
        if job["shots"] < 1:
            raise PipelineError("--shots", f"{job['shots']} must be >= 1")
    if args.finetune and not args.model:
        raise PipelineError("--finetune", "needs --model")
    if args.finetune and args.stress:
        raise PipelineError("--stress", "is not a finetune option")
    dataset = VOCDataset(params["data"], "val")
    if args.classes is not None:
        novel = class_ids_by_name(class_list_arg(args.classes), dataset.class_names, params["data"].get("background"),
                                  "--classes")
        fold = {"fold": "cross"}
    else:
        fold = load_fold(args.fold_file)
        novel = fold_novel_classes(fold, args.fold_file, dataset.num_classes)
    store = FeatureStore(args.features, params, dataset)
    # every file checked before any is scored
    prepared = [prepare_file(job, read_episodes(job["episodes"]), novel, store, params, args.finetune) for job in jobs]
    device = stage_device(args, params)
    seed_everything(int(params["seed"]))
    iterations = int(section(params, "crnet.test.iterations"))
    model = load_crnet(args.model, store).to(device) if args.model else None
    if args.job:
        inputs = {"jobs": jobs, "model": args.model, "count": sum(len(p["episodes"]) for p in prepared)}
    else:
        kinds = ("fusion", "finetune") if args.finetune else ("crnet",) if model is not None else ("prototype",)
        inputs = {"episodes": args.episodes, "shots": args.shots, "model": args.model, "kinds": kinds,
                  "count": len(prepared[0]["episodes"]), "stress": args.stress, "partial": args.partial}
    used = {"crnet.test": section(params, "crnet.test"), "seed": params["seed"],
            "episodes": {k: section(params, "episodes")[k] for k in ("min_labelled_background", "small_classes")}}
    with stage_run("test_crnet", inputs, used, device) as log:
        if not args.job:
            write_json(args.out, score_file(jobs[0], prepared[0], model, store, novel, fold, params, iterations,
                                            args.finetune, device, log))
            return
        with atomic_dir(args.out) as tmp:
            for job, prep in zip(jobs, prepared):
                seed_everything(int(params["seed"]))  # each file as its own call would score it
                target = tmp / job["name"]
                target.parent.mkdir(parents=True, exist_ok=True)
                write_json(target, score_file(job, prep, model, store, novel, fold, params, iterations, False,
                                              device, log))


if __name__ == "__main__":
    run_stage(main)
