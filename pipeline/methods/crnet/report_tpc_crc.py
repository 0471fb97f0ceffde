"""Stage report (TPC + CRC on CRNet): results/<dataset>/crnet_tpc_crc_fold<k>, _all, _components.

    python -m pipeline.methods.crnet.report_tpc_crc --fold 0 \\
        --eval crnet:1:0=E.json --eval crnet_tpc_crc:1:0=T.json --eval prototype:1:0=P.json ... \\
        --stress identical/crnet:0=S.json --stress zero_mask/crnet_tpc_crc:0=Z.json ... \\
        --partition crnet:0=L0.json ... --partition crnet_tpc_crc:7=L7.json \\
        --stress-partition identical/crnet:0=SL0.json ... \\
        --partitions work/D/fold0/hpartitions/partitions.json --out DIR
    python -m pipeline.methods.crnet.report_tpc_crc --aggregate results/D/crnet_tpc_crc_fold0 ... --out DIR
    python -m pipeline.methods.crnet.report_tpc_crc --components \\
        --eval <variant>:<tseed>:<fold>:<eseed>=E.json ... --eval prototype:0:<fold>:<eseed>=P.json --out DIR

Per fold, in the paper's table forms: CRNet and CRNet + TPC + CRC, 1-/5-shot mIoU and FB-IoU
as mean ± std over the episode seeds with the prototype floor beside them; the stress tests
(identical input: support = query; zero mask: all-zero support masks; 1-shot: mIoU and FB-IoU
on the standard episodes, mean ± std over the episode seeds, and CMPS on the H-partitions,
``--stress-partition``); the H-partition table L0-L7
with CMPS (:func:`pipeline.hpartitions.cmps`: a partition with no episodes reads "no
episodes" and is left out; one with fewer than ``min_episodes`` is marked, counts in CMPS and
is left out of the second CMPS column). ``--aggregate``: both methods and CMPS per fold and the mean over folds.
Every report carries the yardstick (trivial and mismatched-support rows, standard and
labelled-background episodes; :func:`pipeline.methods.crnet.results.yardstick_tables`).
``--components``: full / +TPC / +CRC / +TPC+CRC per fold, each training seed's 1-shot mIoU
(mean ± std over the episode seeds), the mean ± std over training seeds of mIoU and FB-IoU,
and the floor.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.config import load_params
from pipeline.errors import PipelineError, run_stage
from pipeline.hpartitions import PARTITIONS, cmps, describe
from pipeline.io import read_json
from pipeline.methods.crnet.results import (
    parse_evals, report_rows, seed_tables, training_seed_spread, write_outputs, yardstick_markdown, yardstick_over_folds,
    yardstick_tables)
from pipeline.metrics.episodic import format_mean_std, mean_std_over_seeds
from pipeline.report import markdown_table
from pipeline.runtime import stage_run
from pipeline.stage import stage_parser
from pipeline.tpc_crc import STRESS_TESTS

METHODS = {"crnet": "CRNet", "crnet_tpc_crc": "CRNet + TPC + CRC"}
KINDS = {**METHODS, "prototype": "Prototype floor (PANet, no alignment)"}
COMPONENTS = {"full": "CRNet (base)", "epoch_matched": "CRNet, epoch-matched (+ TPC's epochs, plain)",
              "tpc": "+ TPC", "crc": "+ CRC (cascade, the paper's)", "tpc_crc": "+ TPC + CRC (cascade)",
              "crc_branch": "+ CRC (branch, the earlier form)", "tpc_crc_branch": "+ TPC + CRC (branch)"}


def percent(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def stress_tables(docs: dict[tuple[str, int], dict]) -> dict:
    """``{test: {method: {"miou": mean±std, "fb_iou": ...}}}`` over episode seeds."""
    out: dict = {}
    for name in sorted({n for n, _ in docs}):
        test, _, method = name.partition("/")
        if test not in STRESS_TESTS or method not in METHODS:
            raise PipelineError("--stress", f"'{name}' is not TEST/METHOD ({', '.join(STRESS_TESTS)} / "
                                f"{', '.join(METHODS)})")
        by_seed = {seed: d["summary"] for (n, seed), d in docs.items() if n == name}
        out.setdefault(test, {})[method] = {score: mean_std_over_seeds({s: v[score] for s, v in by_seed.items()})
                                            for score in ("miou", "fb_iou")}
    return out


def partition_scores(docs: dict[int, dict], min_episodes: int, what: str) -> dict:
    """One model's L0-L7 evaluations -> ``{"miou": [8], "episodes": [8], **cmps}``."""
    missing = [PARTITIONS[i] for i in range(len(PARTITIONS)) if i not in docs]
    if missing:
        raise PipelineError("--partition", f"{what}: no evaluation of {', '.join(missing)}")
    counts = [int(docs[i]["summary"]["episodes"]) for i in range(len(PARTITIONS))]
    mious = [None if n == 0 else docs[i]["summary"]["miou"] for i, n in enumerate(counts)]
    mious = [None if m is None or math.isnan(m) else m for m in mious]
    return {"miou": mious, "episodes": counts, **cmps(mious, counts, min_episodes)}


def partition_table(docs: dict[tuple[str, int], dict], meta: dict) -> dict:
    """``{"split", "min_episodes", "counts", <method>: partition_scores}``."""
    out = {"split": meta["split"], "shots": meta.get("shots"), "min_episodes": int(meta["min_episodes"]),
           "counts": meta["counts"], "fallback": meta.get("fallback", "none"), "similarity": meta.get("similarity"),
           "degenerate": meta.get("degenerate")}
    for method in sorted({m for m, _ in docs}):
        if method not in METHODS:
            raise PipelineError("--partition", f"'{method}' is not one of {', '.join(METHODS)}")
        out[method] = partition_scores({i: d for (m, i), d in docs.items() if m == method}, out["min_episodes"],
                                       method)
    return out


def stress_cmps(docs: dict[tuple[str, int], dict], min_episodes: int, tables: dict) -> None:
    """Adds ``cmps`` (the stress test on the H-partitions) to each ``tables[test][method]``."""
    for name in sorted({n for n, _ in docs}):
        test, _, method = name.partition("/")
        if test not in STRESS_TESTS or method not in METHODS:
            raise PipelineError("--stress-partition", f"'{name}' is not TEST/METHOD")
        entry = partition_scores({i: d for (n, i), d in docs.items() if n == name}, min_episodes, name)
        tables.setdefault(test, {}).setdefault(method, {})["cmps"] = entry


def degenerate_lines(part: dict) -> list[str]:
    """What the small cells did to the partitions (stage make_hpartitions' counts), as text."""
    info = part.get("degenerate")
    if not info:
        return []
    per = info["per_partition"]
    lost = {c: n for c, n in info["no_episode"].items() if n}
    similarity = {"pixels": "colour-layout histograms of the images (no network)",
                  "encoder": "the frozen encoder's pooled features (the floor's own space)"}.get(part.get("similarity"),
                                                                                              "not recorded")
    return [f"Supports: nearest / farthest by {similarity}; fallback **{part.get('fallback', 'none')}** "
            "(crnet.tpc_crc.partitions.fallback: where a query with <= shots other images in its cell searches). "
            "Episodes whose nearest and farthest supports are the same images (so the even and odd partition "
            "hold the same episode): " + ", ".join(f"{n} {per[n]['coincide']} of {per[n]['episodes']}"
                                                 for n in PARTITIONS)
            + "; searched in a widened pool: " + ", ".join(f"{n} {per[n]['widened']}" for n in PARTITIONS) + ". "
            + "Queries without any episode: "
            + (", ".join(f"{c} {n} of {info['queries'][c]}" for c, n in lost.items()) if lost else "none")
            + f" ({sum(info['no_episode'].values())} of {sum(info['queries'].values())}).", ""]


def partition_markdown(part: dict) -> list[str]:
    header = ["Method"] + [f"{name}" for name in PARTITIONS] + ["CMPS", f"CMPS (>= {part['min_episodes']} only)"]
    rows = []
    for method, title in METHODS.items():
        if method not in part:
            continue
        entry = part[method]
        cells = []
        for i, (m, n) in enumerate(zip(entry["miou"], entry["episodes"])):
            cells.append("no episodes" if n == 0 else f"{percent(m)}*" if i in entry["small"] else percent(m))
        rows.append([title] + cells + [percent(entry["cmps"]), percent(entry["cmps_min"])])
    counts = part["counts"]
    lines = ["## H-partitions L0-L7 and CMPS (1-shot mIoU, %)", "",
             f"Split: **{part['split']}** (crnet.tpc_crc.partitions.split; std = the paper's mean ± 1 std cuts, "
             "median = median cuts for small data). " + "; ".join(f"{n}: {describe(i)}"
                                                                 for i, n in enumerate(PARTITIONS)) + ".", "",
             "Episodes per partition: " + ", ".join(f"{n} {counts[n]}" for n in PARTITIONS) + ".", "",
             *degenerate_lines(part),
             markdown_table(header, rows),
             "CMPS: the mean mIoU over the partitions that have episodes (the paper's); a cell marked * has fewer "
             f"than {part['min_episodes']} episodes (crnet.tpc_crc.partitions.min_episodes): it counts in CMPS and "
             f"is left out of 'CMPS (>= {part['min_episodes']} only)'; 'no episodes': the partition is empty (left "
             "out of both; '–' when nothing is left).", ""]
    return lines


def fold_markdown(metrics: dict) -> str:
    shots = sorted({key for kind in KINDS for key in metrics.get(kind, {})}, key=lambda s: int(s[:-4]))
    lines = [f"# CRNet + TPC + CRC: {metrics['dataset']}, fold {metrics['fold']}", "",
             "Novel classes of the fold on the val split. Mean ± std over the episode seeds "
             f"{metrics['episode_seeds']}; scores in %.", "", "## 1-shot and 5-shot (mIoU, FB-IoU; standard episodes)", "",
             markdown_table(["Method"] + [f"{s[:-4]}-shot {n}" for s in shots for n in ("mIoU", "FB-IoU")],
                            [[title] + [format_mean_std(metrics[kind][s][n]) if s in metrics[kind] else "–"
                                        for s in shots for n in ("miou", "fb_iou")]
                             for kind, title in KINDS.items() if kind in metrics])]
    titles = {"identical": "Identical input (support = query)", "zero_mask": "All-zero support mask"}
    for test, by_method in metrics.get("stress", {}).items():
        lines += [f"## Stress test: {titles[test]} (1-shot)", "",
                  "Standard episodes: mIoU and FB-IoU, mean ± std over the episode seeds; H-partitions: CMPS "
                  "(every non-empty partition; '>= min' only those with enough episodes, as below).", "",
                  markdown_table(["Method", "mIoU", "FB-IoU", "CMPS", "CMPS (>= min only)"],
                                 [[METHODS[m], format_mean_std(v["miou"]) if "miou" in v else "–",
                                   format_mean_std(v["fb_iou"]) if "fb_iou" in v else "–",
                                   percent(v.get("cmps", {}).get("cmps")), percent(v.get("cmps", {}).get("cmps_min"))]
                                  for m, v in by_method.items()])]
    if metrics.get("hpartitions"):
        lines += partition_markdown(metrics["hpartitions"])
    if metrics.get("yardstick"):
        lines += [yardstick_markdown(metrics["yardstick"])]
    return "\n".join(lines) + "\n"


def aggregate(dirs: list[str]) -> tuple[dict, str]:
    folds = []
    for d in dirs:
        path = Path(d) / "metrics.json"
        if not path.is_file():
            raise PipelineError(path, "not found (build results/<dataset>/crnet_tpc_crc_fold<k> first)")
        folds.append(read_json(path))
    out: dict = {"folds": [m["fold"] for m in folds], "dataset": folds[0].get("dataset"), "rows": {}}
    rows = []
    for kind, title in KINDS.items():
        for shots in sorted({s for m in folds for s in m.get(kind, {})}, key=lambda s: int(s[:-4])):
            values = [m.get(kind, {}).get(shots, {}).get("miou", {}).get("mean") for m in folds]
            known = [v for v in values if v is not None]
            mean = float(np.mean(known)) if known else None
            out["rows"][f"{kind}_{shots}"] = {"per_fold": values, "mean": mean}
            rows.append([title, f"{shots[:-4]}-shot mIoU"] + [percent(v) for v in values] + [percent(mean)])
    for method, title in METHODS.items():
        values = [m.get("hpartitions", {}).get(method, {}).get("cmps") for m in folds]
        known = [v for v in values if v is not None]
        mean = float(np.mean(known)) if known else None
        out["rows"][f"{method}_cmps"] = {"per_fold": values, "mean": mean}
        rows.append([title, "CMPS"] + [percent(v) for v in values] + [percent(mean)])
    text = (f"# CRNet vs CRNet + TPC + CRC over folds: {out['dataset']}\n\nEach fold's mean over episode seeds "
            "(one training seed); CMPS of each fold's H-partitions; the last column averages the folds "
            "that have a value.\n\n"
            + markdown_table(["Method", "Score"] + [f"fold {m['fold']}" for m in folds] + ["mean"], rows))
    out["yardstick"], yard_text = yardstick_over_folds(folds)
    return out, text + "\n" + yard_text


def components(evals: dict[tuple[str, int, int, int], str]) -> tuple[dict, str]:
    """The component table: per fold, each variant over training and episode seeds, and the floor."""
    full = {key: read_json(path) for key, path in evals.items()}
    docs = {key: d["summary"] for key, d in full.items()}
    unknown = sorted({v for v, *_ in docs} - set(COMPONENTS) - {"prototype"})
    if unknown:
        raise PipelineError("--eval", f"unknown component '{unknown[0]}' (known: {', '.join(COMPONENTS)}, prototype)")
    folds = sorted({f for _, _, f, _ in docs})
    out: dict = {"folds": {}, "training_seeds": sorted({t for v, t, *_ in docs if v != "prototype"})}
    rows = []
    yard_texts: list[str] = []
    for f in folds:
        cell: dict = {}
        for variant in [*COMPONENTS, "prototype"]:
            seeds = sorted({t for v, t, ff, _ in docs if v == variant and ff == f})
            if not seeds:
                continue
            spreads = {score: training_seed_spread({(t, e): d[score] for (v, t, ff, e), d in docs.items()
                                                    if v == variant and ff == f})
                       for score in ("miou", "fb_iou")}
            per_seed = {score: spread[0] for score, spread in spreads.items()}
            over = {score: spread[1] for score, spread in spreads.items()}
            cell[variant] = {"per_training_seed": per_seed, "over_training_seeds": over}
            title = COMPONENTS.get(variant, "Prototype floor (training-free)")
            deltas = []
            for reference in ("full", "epoch_matched"):  # the base, and the control with TPC's epochs
                base = cell.get(reference, {}).get("over_training_seeds", {}).get("miou")
                skip = base is None or variant in (reference, "full", "prototype")
                deltas.append("–" if skip else f"{100 * (over['miou']['mean'] - base['mean']):+.1f}")
                if not skip:
                    cell[variant].setdefault("delta_miou", {})[reference] = over["miou"]["mean"] - base["mean"]
            rows.append([f"fold {f}", title, ", ".join(format_mean_std(v) for v in per_seed["miou"].values()),
                         format_mean_std(over["miou"]), format_mean_std(over["fb_iou"]), *deltas])
        out["folds"][str(f)] = cell
        cell["yardstick"] = yardstick_tables({(v if v == "prototype" else f"{v}__training seed {t}", 1, e): d
                                              for (v, t, ff, e), d in full.items() if ff == f}, COMPONENTS)
        yard_texts.append(f"## Fold {f}\n\n" + yardstick_markdown(cell["yardstick"], level="###"))
    text = ("# CRNet + TPC + CRC: component table (1-shot, standard episodes; the yardstick below has both "
            "settings)\n\n"
            f"Training seeds {out['training_seeds']} (crnet.tpc_crc.components; each variant and seed its own "
            "training job). Per training seed: mIoU mean ± std over the episode seeds; then mean ± std over the "
            "training seeds of those means (the spread a gain must exceed); Δ: the variant's mean mIoU minus the "
            "base's, and minus the epoch-matched base's (the base trained as many epochs more as TPC conditions "
            "for: what TPC adds beyond extra training). The floor is training-free. Scores in %.\n\n"
            + markdown_table(["Fold", "Variant", "mIoU per training seed", "mIoU over seeds", "FB-IoU over seeds",
                              "Δ mIoU vs base", "Δ mIoU vs epoch-matched"], rows) + "\n" + "\n".join(yard_texts))
    return out, text


def main(argv=None):
    ap = stage_parser(__doc__)
    ap.add_argument("--fold", type=int)
    ap.add_argument("--eval", action="append", default=[], help="KIND:SHOTS:SEED=PATH (or VARIANT:TSEED:FOLD:ESEED)")
    ap.add_argument("--stress", action="append", default=[], help="TEST/METHOD:SEED=PATH")
    ap.add_argument("--partition", action="append", default=[], help="METHOD:INDEX=PATH (L0..L7)")
    ap.add_argument("--stress-partition", action="append", default=[], help="TEST/METHOD:INDEX=PATH (L0..L7)")
    ap.add_argument("--partitions", help="partitions.json of stage make_hpartitions")
    ap.add_argument("--aggregate", nargs="+")
    ap.add_argument("--components", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    if args.aggregate:
        with stage_run("crnet_tpc_crc_report", {"aggregate": args.aggregate}, {}):
            write_outputs(args.out, *aggregate(args.aggregate))
        return
    if args.components:
        evals = parse_evals(args.eval, ints=3)
        if not evals:
            raise PipelineError("--eval", "no evaluation files given")
        with stage_run("crnet_tpc_crc_report", {"components": len(evals)}, {}):
            write_outputs(args.out, *components(evals))
        return
    evals = parse_evals(args.eval)
    if args.fold is None or not evals:
        raise PipelineError("--fold/--eval", "a fold report needs --fold and --eval files")
    stress = parse_evals(args.stress, ints=1)
    parts = parse_evals(args.partition, ints=1)
    stress_parts = parse_evals(args.stress_partition, ints=1)
    if (parts or stress_parts) and not args.partitions:
        raise PipelineError("--partitions", "required with --partition / --stress-partition")
    params = load_params(args.params, args.dataset)
    with stage_run("crnet_tpc_crc_report", {"fold": args.fold, "evals": len(evals)}, {}):
        docs = {key: read_json(path) for key, path in evals.items()}
        unknown = sorted({k for k, _, _ in docs} - set(KINDS))
        if unknown:
            raise PipelineError("--eval", f"unknown kind '{unknown[0]}' (known: {', '.join(KINDS)})")
        first = next(iter(docs.values()))
        metrics = {"method": "crnet_tpc_crc", "fold": args.fold, "dataset": params["dataset"],
                   "episode_seeds": sorted({seed for _, _, seed in evals}),
                   **{k: v for k, v in seed_tables(docs).items() if k != "iterations"}}
        metrics["novel_classes"] = [first["class_names"][c] for c in sorted(first["class_names"], key=int)]
        metrics["methods"] = report_rows(metrics, KINDS)
        metrics["yardstick"] = yardstick_tables(docs, KINDS)
        metrics["stress"] = stress_tables({key: read_json(path) for key, path in stress.items()})
        if parts or stress_parts:
            meta = read_json(args.partitions)
            metrics["hpartitions"] = partition_table({key: read_json(path) for key, path in parts.items()}, meta)
            stress_cmps({key: read_json(path) for key, path in stress_parts.items()}, int(meta["min_episodes"]),
                        metrics["stress"])
        write_outputs(args.out, metrics, fold_markdown(metrics))


if __name__ == "__main__":
    run_stage(main)
