"""Stage report (CRNet): results/<dataset>/crnet_fold<k>, crnet_all and crnet_ablation.

    python -m pipeline.methods.crnet.report --fold 0 --eval crnet:1:0=E.json ... \\
        --eval prototype:1:0=P.json ... --finetune F.json --history H.tsv --model M.pt \\
        --features VAL.pt --fold-file FOLD.json --episodes EPISODES.jsonl --out DIR
    python -m pipeline.methods.crnet.report --aggregate results/D/crnet_fold0 ... --out DIR
    python -m pipeline.methods.crnet.report --ablation --eval <variant>:<fold>:<seed>=E.json ... --out DIR
    python -m pipeline.methods.crnet.report --training-seeds --eval crnet:<tseed>:<fold>:<shots>:<eseed>=E.json \
        --eval prototype:0:<fold>:<shots>:<eseed>=P.json ... --out DIR

Per fold (the papers' table forms): 1-shot and 5-shot mIoU and FB-IoU as mean ± std over
the episode seeds (:func:`pipeline.metrics.episodic.summaries_over_seeds`, never the best
seed) with the prototype floor beside them; fusion vs finetune on the finetune subset; the
refinement-iterations table (mIoU after 1..T iterations, mean ± std over seeds); the
checkpoint the selection episodes (base classes held out of training) chose; the yardstick
(:func:`pipeline.methods.crnet.results.yardstick_tables`: per setting -- standard and
labelled-background episodes -- CRNet, the floor, their mismatched-support rows and the
trivial rows, mIoU and class IoU side by side, classes left out named); a figure support | query |
prediction | ground truth of the first episodes (``report.figure_samples``) of the first
episodes file. ``--aggregate``: the mean over folds of each fold's seed means, one
column per fold, and the yardstick rows per fold. ``--ablation``: each variant's 1-shot mIoU (mean ± std over seeds) per fold.
``--training-seeds`` (results/<dataset>/crnet_seeds; ``--eval KIND:TSEED:FOLD:SHOTS:ESEED=E.json``):
per fold and shot count, CRNet of each training seed (mean ± std over the episode seeds), the
mean ± std over the training seeds of those means, and the floor, with the margin of the
worst training seed over the floor -- the spread a "beats the floor" claim needs.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.config import load_params, section
from pipeline.data.episodes import read_episodes
from pipeline.data.fewshot_features import FeatureStore
from pipeline.data.folds import fold_novel_classes, load_fold
from pipeline.data.voc import VOCDataset
from pipeline.errors import PipelineError, run_stage
from pipeline.fewshot import binary_prediction
from pipeline.io import read_json
from pipeline.methods.crnet.results import (
    KINDS, parse_evals, report_rows, seed_tables, training_seed_spread, write_outputs, yardstick_markdown,
    yardstick_over_folds, yardstick_tables)
from pipeline.metrics.episodic import format_mean_std, mean_std_over_seeds
from pipeline.models.crnet import episode_probabilities
from pipeline.report import colorize_labels, compose_figure, fit_into_cell, markdown_table
from pipeline.runtime import stage_run
from pipeline.stage import stage_parser


def fold_markdown(metrics: dict, fold: int, dataset: str) -> str:
    shots = sorted({key for kind in KINDS for key in metrics.get(kind, {})}, key=lambda s: int(s[:-4]))
    lines = [f"# CRNet few-shot segmentation: {dataset}, fold {fold}", "",
             "Novel classes of the fold on the val split (episodes: work/<dataset>/episodes). Mean ± std over "
             f"the episode seeds {metrics.get('episode_seeds')}; scores in %, at the labels' own resolution, "
             "255 ignored.", "", "## 1-shot and 5-shot (mIoU, FB-IoU; standard episodes)", ""]
    header = ["Method"] + [f"{s} {name}" for s in shots for name in ("mIoU", "FB-IoU")]
    rows = []
    for kind, title in KINDS.items():
        if kind in metrics:
            rows.append([title] + [format_mean_std(metrics[kind][s][name]) if s in metrics[kind] else "–"
                                   for s in shots for name in ("miou", "fb_iou")])
    lines += [markdown_table(header, rows)]
    ft = metrics.get("finetune")
    if ft:
        lines += [f"## k-shot: fusion vs finetune ({ft['shots']}-shot, first {ft['subset']} episodes of episode "
                  f"seed {ft['seed']}, {ft['steps']} finetune steps per episode)", "",
                  markdown_table(["k-shot", "mIoU", "FB-IoU"],
                                 [[name.capitalize(), f"{100 * ft[name]['miou']:.1f}", f"{100 * ft[name]['fb_iou']:.1f}"]
                                  for name in ("fusion", "finetune")])]
    its = metrics.get("iterations", {})
    if its:
        first = next(iter(its.values()))
        lines += ["## Refinement iterations (mIoU after t iterations)", "",
                  markdown_table(["Shots"] + [str(t) for t in first],
                                 [[s] + [format_mean_std(v) for v in its[s].values()] for s in its])]
    sel = metrics.get("selection")
    if sel:
        lines += [f"Checkpoint selection: epoch {sel['epoch']} of {sel['epochs']} by the 1-shot mIoU "
                  f"({100 * sel['heldout_miou']:.1f}) of base classes held out of training (crnet.select); val and "
                  "the novel classes are never used.", ""]
    if metrics.get("yardstick"):
        lines += [yardstick_markdown(metrics["yardstick"])]
    if metrics.get("figure"):
        lines += ["## Episodes", "", f"![support | query | prediction | ground truth]({metrics['figure']})", ""]
    return "\n".join(lines) + "\n"


def selection(history_path: str) -> dict | None:
    with open(history_path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    scored = [(float(r["heldout_miou"]), -int(r["epoch"])) for r in rows if r.get("heldout_miou")]
    if not scored:
        return None
    best, neg_epoch = max(scored)
    return {"epoch": -neg_epoch, "epochs": len(rows), "heldout_miou": best}


def figure_rows(model, store: FeatureStore, episodes: list[dict], iterations: int, cell: int):
    """Panels of each episode: support (outside its mask dimmed), query, prediction, ground truth."""
    rows = []
    dataset = store.dataset
    for e in episodes:
        c, support = e["class"], e["supports"][0]
        probs = episode_probabilities(model, store.features(e["query"]), [store.features(support)],
                                      [store.mask(support, c)], iterations)
        gt = store.mask(e["query"], c).numpy()
        pred = binary_prediction(probs[-1], gt.shape).numpy()
        smask = store.mask(support, c).numpy()
        simage = dataset.load_image(support).copy()
        simage[smask != 1] = (0.3 * simage[smask != 1]).astype(np.uint8)  # the mask bright, the rest dimmed
        label = np.where(gt == 255, 255, gt * c).astype(np.uint8)
        rows.append([fit_into_cell(simage, cell), fit_into_cell(dataset.load_image(e["query"]), cell),
                     fit_into_cell(colorize_labels((pred * c).astype(np.uint8)), cell, nearest=True),
                     fit_into_cell(colorize_labels(label), cell, nearest=True)])
    return rows


def aggregate(dirs: list[str]) -> tuple[dict, str]:
    """Mean over folds of each fold's seed means (per kind, shots, score)."""
    folds = []
    for d in dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise PipelineError(path, "not found (build results/<dataset>/crnet_fold<k> first)")
        folds.append(read_json(path))
    out: dict = {"folds": [m["fold"] for m in folds], "dataset": folds[0].get("dataset")}
    header = ["Method", "Shots", "Score"] + [f"fold {m['fold']}" for m in folds] + ["mean"]
    rows = []
    for kind, title in KINDS.items():
        for shots in sorted({s for m in folds for s in m.get(kind, {})}, key=lambda s: int(s[:-4])):
            for score in ("miou", "fb_iou"):
                values = [m.get(kind, {}).get(shots, {}).get(score, {}).get("mean") for m in folds]
                known = [v for v in values if v is not None]
                mean = float(np.mean(known)) if known else None
                out.setdefault(kind, {}).setdefault(shots, {})[score] = {"per_fold": values, "mean": mean}
                rows.append([title, shots, score] + ["–" if v is None else f"{100 * v:.1f}" for v in values]
                            + ["–" if mean is None else f"{100 * mean:.1f}"])
    out["yardstick"], yard_text = yardstick_over_folds(folds)
    text = (f"# CRNet over folds: {out['dataset']}\n\nEach fold's mean over episode seeds (standard episodes); the "
            "last column averages the folds.\n\n" + markdown_table(header, rows) + "\n" + yard_text)
    return out, text


def ablation(evals: dict[tuple[str, int, int], str]) -> tuple[dict, str]:
    variants = sorted({v for v, _, _ in evals}, key=lambda v: (v != "full", v))
    folds = sorted({f for _, f, _ in evals})
    out: dict = {"folds": folds, "variants": {}}
    rows = []
    for v in variants:
        cells = []
        for f in folds:
            docs = {seed: read_json(p) for (vv, ff, seed), p in evals.items() if vv == v and ff == f}
            stat = mean_std_over_seeds({s: d["summary"]["miou"] for s, d in docs.items()})
            fb = mean_std_over_seeds({s: d["summary"]["fb_iou"] for s, d in docs.items()})
            out["variants"].setdefault(v, {})[str(f)] = {"miou": stat, "fb_iou": fb}
            cells.append(f"{format_mean_std(stat)} / {format_mean_std(fb)}")
        rows.append([v] + cells)
    text = ("# CRNet ablation (1-shot mIoU / FB-IoU, %, mean ± std over episode seeds)\n\nEach variant is its "
            "own training job (params.yaml crnet.ablation.variants); `full` is the complete model.\n\n"
            + markdown_table(["Variant"] + [f"fold {f}" for f in folds], rows))
    return out, text


def training_seeds(evals: dict[tuple[str, int, int, int, int], str]) -> tuple[dict, str]:
    """CRNet over training seeds against the floor: {fold: {"<k>shot": {...}}} and the table."""
    full = {key: read_json(path) for key, path in evals.items()}
    docs = {key: d["summary"] for key, d in full.items()}
    yard_texts: list[str] = []
    folds = sorted({f for _, _, f, _, _ in docs})
    shots_list = sorted({s for _, _, _, s, _ in docs})
    out: dict = {"folds": {}, "training_seeds": sorted({t for k, t, *_ in docs if k == "crnet"})}
    rows = []
    for f in folds:
        for shots in shots_list:
            cell: dict = {"crnet": {}, "prototype": {}}
            for score in ("miou", "fb_iou"):
                per_seed, over = training_seed_spread({(t, e): d[score] for (k, t, ff, s, e), d in docs.items()
                                                       if k == "crnet" and ff == f and s == shots})
                floor = mean_std_over_seeds({e: d[score] for (k, _, ff, s, e), d in docs.items()
                                             if k == "prototype" and ff == f and s == shots})
                cell["crnet"][score] = {"per_training_seed": per_seed, "over_training_seeds": over}
                cell["prototype"][score] = floor
                cell[f"worst_margin_{score}"] = min(v["mean"] for v in per_seed.values()) - floor["mean"]
                cell[f"seeds_above_floor_{score}"] = sum(v["mean"] > floor["mean"] for v in per_seed.values())
            out["folds"].setdefault(str(f), {})[f"{shots}shot"] = cell
            yard = yardstick_tables({(f"{k}__training seed {t}" if k == "crnet" else k, s, e): d
                                     for (k, t, ff, s, e), d in full.items() if ff == f and s == shots},
                                    {"crnet": "CRNet"})
            cell["yardstick"] = yard
            yard_texts.append(f"## Fold {f}\n\n" + yardstick_markdown(yard, level="###"))
            seeds_text = ", ".join(format_mean_std(v) for v in cell["crnet"]["miou"]["per_training_seed"].values())
            rows.append([f"fold {f}", f"{shots}-shot", seeds_text,
                         format_mean_std(cell["crnet"]["miou"]["over_training_seeds"]),
                         format_mean_std(cell["prototype"]["miou"]),
                         f"{cell['seeds_above_floor_miou']}/{len(out['training_seeds'])}",
                         f"{100 * cell['worst_margin_miou']:+.1f}",
                         format_mean_std(cell["crnet"]["fb_iou"]["over_training_seeds"]),
                         format_mean_std(cell["prototype"]["fb_iou"])])
    text = ("# CRNet over training seeds against the prototype floor (standard episodes; the yardstick below "
            "has both settings)\n\n"
            f"Training seeds {out['training_seeds']} (params.yaml crnet.training_seeds; each its own "
            "training job). Per seed: mIoU mean ± std over the episode seeds; 'over seeds': mean ± std "
            "over the training seeds of those means (the spread a claim rests on); the floor is "
            "training-free, so only the episode seeds move it. Worst margin: the lowest training "
            "seed's mIoU minus the floor's. Scores in %.\n\n"
            + markdown_table(["Fold", "Shots", "CRNet mIoU per training seed", "CRNet mIoU over seeds",
                              "Floor mIoU", "Seeds above floor", "Worst margin", "CRNet FB-IoU over seeds",
                              "Floor FB-IoU"], rows) + "\n" + "\n".join(yard_texts))
    return out, text


def main(argv=None):
    ap = stage_parser(__doc__)
    ap.add_argument("--fold", type=int)
    ap.add_argument("--eval", action="append", default=[], help="KIND:SHOTS:SEED=PATH (or VARIANT:FOLD:SEED=PATH)")
    ap.add_argument("--finetune")
    ap.add_argument("--history")
    ap.add_argument("--model")
    ap.add_argument("--features")
    ap.add_argument("--fold-file")
    ap.add_argument("--episodes")
    ap.add_argument("--aggregate", nargs="+")
    ap.add_argument("--ablation", action="store_true")
    ap.add_argument("--training-seeds", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    if args.aggregate:
        with stage_run("crnet_report", {"aggregate": args.aggregate}, {}):
            metrics, text = aggregate(args.aggregate)
            write_outputs(args.out, metrics, text)
        return
    if args.training_seeds:
        evals = parse_evals(args.eval, ints=4)
        if not any(k == "crnet" for k, *_ in evals) or not any(k == "prototype" for k, *_ in evals):
            raise PipelineError("--eval", "needs crnet:... and prototype:... evaluations")
        with stage_run("crnet_report", {"training_seeds": len(evals)}, {}):
            metrics, text = training_seeds(evals)
            write_outputs(args.out, metrics, text)
        return
    evals = parse_evals(args.eval)
    if not evals:
        raise PipelineError("--eval", "no evaluation files given")
    if args.ablation:
        with stage_run("crnet_report", {"ablation": len(evals)}, {}):
            metrics, text = ablation(evals)
            write_outputs(args.out, metrics, text)
        return
    required = ("fold", "finetune", "history", "model", "features", "fold_file", "episodes")
    missing = [name for name in required if getattr(args, name) is None]
    if missing:
        raise PipelineError(f"--{missing[0].replace('_', '-')}", "required for a fold report")
    params = load_params(args.params, args.dataset)
    with stage_run("crnet_report", {"fold": args.fold, "evals": len(evals)}, {"report": section(params, "report")}):
        docs = {key: read_json(path) for key, path in evals.items()}
        metrics = {"method": "crnet", "dataset": params["dataset"], "fold": args.fold,
                   "episode_seeds": sorted({seed for _, _, seed in evals}), **seed_tables(docs)}
        ft = read_json(args.finetune)
        metrics["finetune"] = {"shots": ft["shots"], "subset": ft["subset"], "steps": ft["steps"],
                               "seed": int(section(params, "crnet.test.finetune.episode_seed")),
                               "fusion": ft["fusion"], "finetune": ft["finetune"]}
        metrics["methods"] = report_rows(metrics)
        metrics["novel_classes"] = [docs[key]["class_names"][c] for key in list(docs)[:1]
                                    for c in sorted(docs[key]["class_names"], key=int)]
        metrics["selection"] = selection(args.history)
        metrics["yardstick"] = yardstick_tables(docs)
        metrics["figure"] = "figure.png"
        figure = make_figure(args, params)
        write_outputs(args.out, metrics, fold_markdown(metrics, args.fold, params["dataset"]), figure)


def make_figure(args, params: dict):
    from pipeline.crnet_training import load_crnet

    dataset = VOCDataset(params["data"], "val")
    store = FeatureStore(args.features, params, dataset)
    fold_novel_classes(load_fold(args.fold_file), args.fold_file, dataset.num_classes)
    model = load_crnet(args.model, store)
    settings = section(params, "report")
    episodes = read_episodes(args.episodes)[:int(settings.get("figure_samples", 4))]
    cell = int(settings.get("figure_cell", 160))
    rows = figure_rows(model, store, episodes, int(section(params, "crnet.test.iterations")), cell)
    return compose_figure(rows, ["support (masked)", "query", "prediction", "ground truth"], cell)


if __name__ == "__main__":
    run_stage(main)
