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

Bad input (one line, exit 2, nothing written): an episode naming an image that is not in
the val split (or whose file is missing); fewer supports than ``--shots``; an episode of a
class that is not novel in the fold; a novel class of the fold without any episode.
Output: ``summary``, ``episodes`` (per episode ``class``, ``inter`` and ``union`` [bg, fg]).
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch

from pipeline.config import load_params, section
from pipeline.crnet_training import load_crnet, make_optimizer, pair_batches, pair_loss
from pipeline.data.episodes import class_ids_by_name, class_list_arg, read_episodes
from pipeline.data.fewshot_features import FeatureStore
from pipeline.data.folds import fold_novel_classes, load_fold
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.fewshot import binary_prediction, prototype_probability
from pipeline.io import write_json
from pipeline.metrics.episodic import EpisodeIoUAccumulator
from pipeline.models.crnet import CRNet, episode_probabilities
from pipeline.runtime import progress, seed_everything, stage_run
from pipeline.stage import stage_device, stage_parser
from pipeline.tpc_crc import STRESS_TESTS, identical_input


def check_episodes(episodes: list[dict], path, shots: int, novel: list[int], store: FeatureStore,
                   class_names: list[str], partial: bool = False) -> None:
    """The bad-input checks of the module docstring, each one line naming the file."""
    for n, e in enumerate(episodes, 1):
        if e["class"] not in novel:
            raise PipelineError(path, f"line {n}: class {e['class']} is not a novel class of the fold {novel}")
        if len(e["supports"]) < shots:
            raise PipelineError(path, f"line {n}: {len(e['supports'])} supports, but --shots {shots} needs {shots}")
        store.check_ids([e["query"], *e["supports"][:shots]], path, f"line {n}: image")
    present = {e["class"] for e in episodes}
    for c in [] if partial else novel:
        if c not in present:
            raise PipelineError(path, f"no episode of novel class '{class_names[c]}' (id {c}): it has no val image "
                                "in the fold")


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
    masks = [torch.zeros_like(m) if zero_mask else m for m in (store.mask(s, c) for s in supports)]
    if model is None:
        return [prototype_probability(query[0], [f[0] for f in feats], masks, ignore_index=store.dataset.ignore_index)]
    return episode_probabilities(model, query, feats, masks, iterations)


def main(argv=None):
    ap = stage_parser(__doc__, threads=True)
    ap.add_argument("--features", required=True, help="val-split feature cache (stage crnet_features)")
    classes = ap.add_mutually_exclusive_group(required=True)
    classes.add_argument("--fold-file", help="fold JSON: its novel classes are the episodes' classes")
    classes.add_argument("--classes", help="comma-separated class names or 'all' (cross-dataset episodes)")
    ap.add_argument("--episodes", required=True, help="episodes JSONL (stage make_episodes)")
    ap.add_argument("--shots", required=True, type=int, help="supports per episode used (k)")
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="CRNet model file (stage train_crnet)")
    which.add_argument("--prototype", action="store_true", help="the training-free prototype floor")
    ap.add_argument("--finetune", action="store_true", help="k-shot finetune vs fusion on the first episodes")
    ap.add_argument("--stress", choices=STRESS_TESTS, help="identical: support = query; zero_mask: all-zero "
                    "support masks (TPC + CRC paper, Table 7)")
    ap.add_argument("--partial", action="store_true", help="novel classes without episodes allowed (H-partitions)")
    ap.add_argument("--out", required=True, help="evaluation JSON to write")
    args = ap.parse_args(argv)

    params = load_params(args.params, args.dataset)
    if args.shots < 1:
        raise PipelineError("--shots", f"{args.shots} must be >= 1")
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
    episodes = read_episodes(args.episodes)
    store = FeatureStore(args.features, params, dataset)
    check_episodes(episodes, args.episodes, args.shots, novel, store, dataset.class_names, args.partial)
    if args.stress == "identical":
        episodes = identical_input(episodes, args.shots)
    device = stage_device(args, params)
    seed_everything(int(params["seed"]))
    iterations = int(section(params, "crnet.test.iterations"))
    model = load_crnet(args.model, store).to(device) if args.model else None
    if args.finetune:
        episodes = episodes[:int(section(params, "crnet.test.finetune.episodes"))]
    kinds = ("fusion", "finetune") if args.finetune else ("crnet",) if model is not None else ("prototype",)
    inputs = {"episodes": args.episodes, "shots": args.shots, "model": args.model, "kinds": kinds,
              "count": len(episodes), "stress": args.stress, "partial": args.partial}
    used = {"crnet.test": section(params, "crnet.test"), "seed": params["seed"]}
    with stage_run("test_crnet", inputs, used, device) as log:
        accs = {kind: [EpisodeIoUAccumulator(novel, dataset.ignore_index)
                       for _ in range(iterations if kind != "prototype" else 1)] for kind in kinds}
        started = time.perf_counter()
        for e in progress(episodes, desc="episodes", total=len(episodes)):
            gt = store.mask(e["query"], e["class"])
            for kind in kinds:
                net = finetuned(model, store, e, args.shots, params, device) if kind == "finetune" else model
                for acc, p in zip(accs[kind], probabilities(net, store, e, args.shots, iterations, device,
                                                            args.stress == "zero_mask")):
                    acc.update(binary_prediction(p.cpu(), gt.shape).numpy(), gt.numpy(), e["class"])
        rate = len(episodes) / max(time.perf_counter() - started, 1e-9)
        log.info("%.1f episodes per second (%s, %d-shot)", rate, "+".join(kinds), args.shots)
        document = {"method": "prototype" if model is None else "crnet", "episodes_file": args.episodes,
                    "stress": args.stress,
                    "shots": args.shots, "fold": fold.get("fold"), "class_names": {str(c): dataset.class_names[c]
                                                                                   for c in novel}}
        if args.finetune:
            document.update(subset=len(episodes), steps=int(section(params, "crnet.test.finetune.steps")),
                            fusion=accs["fusion"][-1].summary(), finetune=accs["finetune"][-1].summary())
            log.info("%d episodes: fusion mIoU %.4f, finetune mIoU %.4f", len(episodes), document["fusion"]["miou"],
                     document["finetune"]["miou"])
        else:
            final = accs[kinds[0]][-1]
            document.update(iterations=len(accs[kinds[0]]), summary=final.summary(), episodes=final.episode_counts)
            if model is not None:
                document["by_iterations"] = {str(t + 1): acc.summary() for t, acc in enumerate(accs["crnet"])}
            log.info("%d episodes: mIoU %.4f FB-IoU %.4f", len(episodes), document["summary"]["miou"],
                     document["summary"]["fb_iou"])
        write_json(args.out, document)


if __name__ == "__main__":
    run_stage(main)
