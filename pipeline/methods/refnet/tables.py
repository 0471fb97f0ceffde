"""Stage tables (Ref-Net): the paper's R(K) and ablation tables from test_refnet's eval files.

    python -m pipeline.methods.refnet.tables --params params.yaml --dataset D --kind rk \\
        --eval <K>:<scope>:<seed>=E.json ... --out results/D/refnet_all
    python -m pipeline.methods.refnet.tables ... --kind ablation --eval <variant>:<scope>:<seed>=E.json ... --out DIR

``rk`` (refnet_all, refnet_single_<class>): one row per K, per scope (fold) the MIoU and a
mean over scopes of MPA, MIoU, FWIoU and novel mIoU; a cell whose K exceeded a class's
train images (all used) is marked ``*``. ``ablation`` (refnet_ablation, refnet_critics):
one row per variant, each score as mean ± std over the training seeds (of the per-seed
means over scopes), never the best seed. metrics.json holds every number of the tables.
"""
from __future__ import annotations

from pipeline.config import load_params
from pipeline.errors import PipelineError, run_stage
from pipeline.metrics.episodic import format_mean_std, mean_std_over_seeds
from pipeline.methods.refnet.results import COLUMNS, parse_evals, percent, read_eval, write_outputs
from pipeline.report import markdown_table
from pipeline.runtime import stage_run
from pipeline.stage import stage_parser

TITLES = {"rk": "R(K): K references per target class", "ablation": "Ablation (the paper's Table 3 form)"}


def ordered(keys, kind: str) -> list[str]:
    """R(K) rows by K (``all`` last); ablation rows full first, then by name."""
    if kind == "rk":
        return sorted(keys, key=lambda k: (k == "all", int(k) if k != "all" else 0))
    return sorted(keys, key=lambda k: (k != "full", k))


def table_metrics(docs: dict[tuple[str, str, int], dict]) -> dict:
    """{row: {"scopes": {scope: {seed: summary}}, "short": bool, "mean": {score: mean_std over seeds}}}."""
    out: dict = {}
    for (row, scope, seed), doc in docs.items():
        entry = out.setdefault(row, {"scopes": {}, "short": False})
        entry["scopes"].setdefault(scope, {})[str(seed)] = doc["summary"]
        entry["short"] = entry["short"] or bool(doc["setting"]["short"])
    for entry in out.values():
        seeds = sorted({s for per in entry["scopes"].values() for s in per})
        entry["mean"] = {}
        for key, _ in COLUMNS:
            per_seed = {}
            for s in seeds:
                values = [per[s][key] for per in entry["scopes"].values() if s in per]
                per_seed[int(s)] = sum(values) / len(values)
            entry["mean"][key] = mean_std_over_seeds(per_seed)
    return out


def render(metrics: dict, kind: str, dataset: str) -> str:
    rows = ordered(metrics, kind)
    scopes = sorted({scope for r in rows for scope in metrics[r]["scopes"]})
    first = "K" if kind == "rk" else "Variant"
    header = [first, *[f"{scope} MIoU" for scope in scopes], *[f"mean {title}" for _, title in COLUMNS]]
    lines = []
    for r in rows:
        entry = metrics[r]
        label = (f"R({r})" if kind == "rk" else r) + ("*" if entry["short"] else "")
        per_scope = []
        for scope in scopes:
            per = entry["scopes"].get(scope)
            per_scope.append(percent(sum(v["miou"] for v in per.values()) / len(per)) if per else "–")
        lines.append([label, *per_scope, *[format_mean_std(entry["mean"][key]) for key, _ in COLUMNS]])
    seeds = sorted({s for r in rows for per in metrics[r]["scopes"].values() for s in per})
    notes = [f"Scores in %: MPA, MIoU, FWIoU over background and the targets, novel mIoU over the targets; "
             f"training seeds {', '.join(seeds)} (mean ± std over seeds of the mean over {', '.join(scopes)})."]
    if any(metrics[r]["short"] for r in rows):
        notes.append("* K exceeded a target class's train images: all of them were used.")
    return "\n".join([f"# Ref-Net {TITLES[kind]}: {dataset}\n", markdown_table(header, lines), *notes]) + "\n"


def main(argv=None):
    ap = stage_parser(__doc__)
    ap.add_argument("--kind", required=True, choices=sorted(TITLES))
    ap.add_argument("--eval", action="append", default=[], help="ROW:SCOPE:SEED=eval.json (repeat)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    params = load_params(args.params, args.dataset)
    entries = parse_evals(args.eval)
    if not entries:
        raise PipelineError("--eval", "no eval file given")
    with stage_run("refnet_tables", {"kind": args.kind, "evals": len(entries)}, {}) as log:
        docs = {key: read_eval(path) for key, path in entries.items()}
        metrics = table_metrics(docs)
        document = {"dataset": params["dataset"], "method": "refnet", "table": args.kind, "rows": metrics}
        write_outputs(args.out, document, render(metrics, args.kind, params["dataset"]))
        log.info("%s table of %d rows -> %s", args.kind, len(metrics), args.out)


if __name__ == "__main__":
    run_stage(main)
