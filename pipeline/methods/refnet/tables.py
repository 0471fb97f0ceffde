"""Stage tables (Ref-Net): the paper's R(K) and ablation tables from test_refnet's eval files.

    python -m pipeline.methods.refnet.tables --params params.yaml --dataset D --kind rk \\
        --eval <K>:<scope>:<seed>=E.json ... --out results/D/refnet_all
    python -m pipeline.methods.refnet.tables ... --kind ablation --eval <variant>:<scope>:<seed>=E.json ... --out DIR
    python -m pipeline.methods.refnet.tables ... --kind select --eval <candidate>:select<k>:<seed>=E.json ... \\
        --history <candidate>:select<k>:<seed>=history.tsv ... --out results/D/refnet_select

``rk`` (refnet_all, refnet_single_<class>): one row per K, per scope (fold) the MIoU and a
mean over scopes of MPA, MIoU, FWIoU and novel mIoU; a cell whose K exceeded a class's
train images (all used) is marked ``*``. ``ablation`` (refnet_ablation, refnet_critics):
one row per variant, each score as mean ± std over the training seeds (of the per-seed
means over scopes), never the best seed. ``select`` (refnet_select): one row per critic
setting (``refnet.select.candidates``) scored on base-class pseudo-targets of the train split
(scopes ``select<k>``): pseudo-target mIoU and MIoU as mean ± std over training seeds, the
largest |Wasserstein estimate| of either critic over the last 25 % of steps, predicted vs
ground-truth foreground share of the scored pixels; the chosen candidate is the highest mean
pseudo-target mIoU. metrics.json holds every number of the tables.
"""
from __future__ import annotations

from pipeline.config import load_params
from pipeline.errors import PipelineError, run_stage
from pipeline.metrics.episodic import format_mean_std, mean_std_over_seeds
from pipeline.methods.refnet.results import (
    COLUMNS, foreground_shares, late_critic_max, late_history_means, parse_evals, percent, read_eval, write_outputs)
from pipeline.report import markdown_table
from pipeline.runtime import stage_run
from pipeline.stage import stage_parser

TITLES = {"rk": "R(K): K references per target class", "ablation": "Ablation (the paper's Table 3 form)",
          "select": "critic setting chosen on base-class data"}
LATE_SHARE = 0.25  # the history's last quarter of steps: where a diverging critic shows


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


SHARE_TOLERANCE = 0.3  # issue 23's goal: predicted foreground share within +-30 % of the true share
HEALTH_COLUMNS = ("grad_ratio", "adv_weight", "fg_pred", "fg_true", "w_outer", "w_inner")


def _mean(values):
    values = [v for v in values if v is not None and v == v]
    return sum(values) / len(values) if values else None


def health_metrics(docs: dict[tuple[str, str, int], dict], histories: dict[tuple[str, str, int], str]) -> dict:
    """Per row of an ablation / critics table: the predicted vs ground-truth foreground share of
    the scored pixels (mean over jobs, and how many jobs are within +-30 % of the true share), the
    fresh-critic diagnostic of the models (W with predictions vs with the targets' own GT as fake,
    mean over jobs), and, where histories are given, the last quarter's mean of the training-health
    columns (adversarial / Dice gradient ratio at the prediction, weight, train foreground shares, W)."""
    out: dict = {}
    for key, doc in docs.items():
        row = out.setdefault(key[0], {"jobs": {}})
        shares = foreground_shares(doc["confusion"])
        ratio = (shares["predicted"] / shares["ground_truth"]
                 if shares["predicted"] is not None and shares["ground_truth"] else None)
        job = {"foreground_share": shares, "share_ratio": ratio,
               "within_tolerance": ratio is not None and abs(ratio - 1.0) <= SHARE_TOLERANCE,
               "critic_diagnostic": doc.get("critic_diagnostic")}
        if key in histories:
            job["late"] = late_history_means(histories[key], HEALTH_COLUMNS, LATE_SHARE)
        row["jobs"][f"{key[1]}:{key[2]}"] = job
    for row in out.values():
        jobs = list(row["jobs"].values())
        row["predicted_share"] = _mean(j["foreground_share"]["predicted"] for j in jobs)
        row["ground_truth_share"] = _mean(j["foreground_share"]["ground_truth"] for j in jobs)
        row["within_tolerance"] = sum(j["within_tolerance"] for j in jobs)
        row["share_ratio_range"] = [min((j["share_ratio"] for j in jobs if j["share_ratio"] is not None), default=None),
                                    max((j["share_ratio"] for j in jobs if j["share_ratio"] is not None), default=None)]
        row["diagnostic"] = {f"{c}_{src}": _mean((j["critic_diagnostic"] or {}).get(c, {}).get(src) for j in jobs)
                             for c in ("outer", "inner") for src in ("prediction", "ground_truth")}
        row["late"] = {k: _mean(j.get("late", {}).get(k) for j in jobs) for k in HEALTH_COLUMNS}
    return out


def render_health(health: dict, kind: str) -> str:
    def number(value, digits=3):
        return "–" if value is None else f"{value:.{digits}g}"

    header = ["Variant", "pred / GT fg share (val)", "pred/GT range", f"jobs within ±{int(100 * SHARE_TOLERANCE)} %",
              "W outer: pred / GT as fake", "W inner: pred / GT as fake", "grad ratio adv/Dice (last 25 %)",
              "adv weight", "train fg pred / true"]
    lines = []
    for name in ordered(health, kind):
        h = health[name]
        d, late = h["diagnostic"], h["late"]
        lines.append([name, f"{number(h['predicted_share'], 2)} / {number(h['ground_truth_share'], 2)}",
                      f"{number(h['share_ratio_range'][0], 2)}..{number(h['share_ratio_range'][1], 2)}",
                      f"{h['within_tolerance']} / {len(h['jobs'])}",
                      f"{number(d['outer_prediction'])} / {number(d['outer_ground_truth'])}",
                      f"{number(d['inner_prediction'])} / {number(d['inner_ground_truth'])}",
                      number(late["grad_ratio"]), number(late["adv_weight"]),
                      f"{number(late['fg_pred'], 2)} / {number(late['fg_true'], 2)}"])
    notes = ["Health: foreground shares of the scored val pixels (mean over jobs; the goal is every job within "
             f"±{int(100 * SHARE_TOLERANCE)} % of the true share); W: fresh critics (refnet.critic.diagnostic_steps) on "
             "open-source triplets vs the target images with the trained net's predictions / with their own "
             "ground truth as fake (mean W over the last quarter of the steps, mean over jobs): far below with GT "
             "means the critics judge the masks, not image content; training columns: the last 25 % of steps' mean "
             "of history.tsv (– where the table got no histories or the variant has no critics)."]
    return "\n".join(["\n## Training health\n", markdown_table(header, lines), *notes]) + "\n"


def select_metrics(docs: dict[tuple[str, str, int], dict], histories: dict[tuple[str, str, int], str]) -> dict:
    """The selection table: per candidate the pseudo-target mIoU (the targets' mean IoU) and MIoU
    as mean ± std over seeds (:func:`table_metrics`), per job the health numbers, and the chosen
    candidate (highest mean pseudo-target mIoU; a NaN mean is never chosen)."""
    missing = sorted(set(docs) ^ set(histories))
    if missing:
        raise PipelineError("--history", f"eval and history files differ for {':'.join(map(str, missing[0]))}")
    rows = table_metrics(docs)
    candidates = {}
    for name, entry in rows.items():
        jobs = {f"{scope}:{seed}": {"late_max_abs_w": late_critic_max(histories[key], LATE_SHARE),
                                    "foreground_share": foreground_shares(doc["confusion"]),
                                    "pseudo_targets": doc["classes"][1:],
                                    "adversarial_weight": doc.get("select", {}).get("adversarial_weight"),
                                    "switches": doc["switches"]}
                for key, doc in docs.items() if key[0] == name for _, scope, seed in [key]}
        late = [j["late_max_abs_w"] for j in jobs.values() if j["late_max_abs_w"] is not None]
        shares = {kind: [j["foreground_share"][kind] for j in jobs.values()
                         if j["foreground_share"][kind] is not None] for kind in ("predicted", "ground_truth")}
        first = next(iter(jobs.values()))
        critics = [c for c in ("outer", "inner") if first["switches"].get(f"{c}_critic")]
        candidates[name] = {
            "pseudo_target_miou": entry["mean"]["novel_miou"], "miou": entry["mean"]["miou"],
            "adversarial_weight": first["adversarial_weight"] if critics else None,  # no weight without critics
            "critics": critics,
            "late_max_abs_w": max(late) if late else None,
            "predicted_foreground_share": sum(shares["predicted"]) / len(shares["predicted"]) if shares["predicted"] else None,
            "ground_truth_foreground_share": (sum(shares["ground_truth"]) / len(shares["ground_truth"])
                                              if shares["ground_truth"] else None),
            "jobs": jobs}
    scored = {n: c["pseudo_target_miou"]["mean"] for n, c in candidates.items()
              if c["pseudo_target_miou"]["mean"] == c["pseudo_target_miou"]["mean"]}
    chosen = max(sorted(scored), key=lambda n: scored[n]) if scored else None
    scopes = sorted({scope for _, scope, _ in docs})
    folds = [int(s[len("select"):]) for s in scopes if s.startswith("select") and s[len("select"):].isdigit()]
    pseudo = {scope: next(doc["classes"][1:] for (_, sc, _), doc in docs.items() if sc == scope) for scope in scopes}
    return {"candidates": candidates, "rows": rows, "chosen": chosen, "folds": folds, "pseudo_targets": pseudo}


def render_select(metrics: dict, dataset: str) -> str:
    def number(value, digits=3):
        return "–" if value is None else f"{value:.{digits}g}"

    header = ["Candidate", "adversarial weight", "critics", "pseudo-target mIoU", "MIoU",
              "max |W| last 25 %", "predicted fg share", "GT fg share"]
    lines = []
    for name in sorted(metrics["candidates"]):
        c = metrics["candidates"][name]
        lines.append([f"**{name}**" if name == metrics["chosen"] else name, number(c["adversarial_weight"]),
                      "+".join(c["critics"]) or "none", format_mean_std(c["pseudo_target_miou"]),
                      format_mean_std(c["miou"]), number(c["late_max_abs_w"]),
                      number(c["predicted_foreground_share"], 2), number(c["ground_truth_foreground_share"], 2)])
    seeds = sorted({s for c in metrics["rows"].values() for per in c["scopes"].values() for s in per})
    folds = ", ".join(map(str, metrics["folds"]))
    targets = "; ".join(f"{scope}: {', '.join(names)}" for scope, names in metrics["pseudo_targets"].items())
    chosen = metrics["chosen"] or "none (every candidate's score is NaN)"
    notes = [f"Chosen: **{chosen}** (highest mean pseudo-target mIoU), chosen on base classes of fold(s) {folds} "
             f"of the train split: pseudo-targets ({targets}) in the novel classes' role, the other base classes as "
             "the open-source set, every train image with a novel pixel removed; scored on the setting's S images "
             "(train split). No val score and no novel-class mask or image was read.",
             f"Scores in %, mean ± std over training seeds {', '.join(seeds)}: pseudo-target mIoU over the "
             "pseudo-targets, MIoU over background and them. Health: the largest |Wasserstein estimate| of either "
             "critic over the last 25 % of steps (max over jobs; – without critics), the predicted vs ground-truth "
             "foreground share of the scored pixels (mean over jobs; a mask collapse shows a predicted share near 0)."]
    return "\n".join([f"# Ref-Net {TITLES['select']}: {dataset}\n", markdown_table(header, lines), *notes]) + "\n"


def main(argv=None):
    ap = stage_parser(__doc__)
    ap.add_argument("--kind", required=True, choices=sorted(TITLES))
    ap.add_argument("--eval", action="append", default=[], help="ROW:SCOPE:SEED=eval.json (repeat)")
    ap.add_argument("--history", action="append", default=[],
                    help="--kind select (required) / ablation (optional, health columns): ROW:SCOPE:SEED=history.tsv of "
                    "each eval's training (repeat)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    params = load_params(args.params, args.dataset)
    entries = parse_evals(args.eval)
    if not entries:
        raise PipelineError("--eval", "no eval file given")
    with stage_run("refnet_tables", {"kind": args.kind, "evals": len(entries)}, {}) as log:
        docs = {key: read_eval(path) for key, path in entries.items()}
        if args.kind == "select":
            metrics = select_metrics(docs, parse_evals(args.history))
            text = render_select(metrics, params["dataset"])
            log.info("select: chose %s of %d candidates -> %s", metrics["chosen"], len(metrics["candidates"]), args.out)
        else:
            metrics = {"rows": table_metrics(docs)}
            text = render(metrics["rows"], args.kind, params["dataset"])
            if args.kind == "ablation":
                metrics["health"] = health_metrics(docs, parse_evals(args.history))
                text += render_health(metrics["health"], args.kind)
            log.info("%s table of %d rows -> %s", args.kind, len(metrics["rows"]), args.out)
        write_outputs(args.out, {"dataset": params["dataset"], "method": "refnet", "table": args.kind, **metrics}, text)


if __name__ == "__main__":
    run_stage(main)
