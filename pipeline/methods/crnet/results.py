"""The result files the CRNet report stages share (results/<dataset>/crnet_*): the two scored
kinds, the ``--eval NAME:INT:INT=PATH`` option, the seed tables and the result directory's writer."""
from __future__ import annotations

from typing import Mapping

from pipeline.errors import PipelineError
from pipeline.io import atomic_dir, write_json
from pipeline.metrics.episodic import mean_std_over_seeds, summaries_over_seeds

KINDS = {"crnet": "CRNet", "prototype": "Prototype floor (PANet, no alignment)"}


def parse_evals(entries: list[str], ints: int = 2) -> dict[tuple, str]:
    """``name:a:b=path`` -> ``{(name, a, b): path}``, with ``ints`` integer fields after the
    name (errors name the option)."""
    out = {}
    for entry in entries:
        key, sep, path = entry.partition("=")
        parts = key.split(":")
        if not sep or len(parts) != ints + 1 or not all(p.isdigit() for p in parts[1:]):
            raise PipelineError("--eval", f"'{entry}' is not NAME{':INT' * ints}=PATH")
        out[(parts[0], *(int(p) for p in parts[1:]))] = path
    return out


def training_seed_spread(scores: Mapping[tuple[int, int], float]) -> tuple[dict[str, dict], dict]:
    """``{(training seed, episode seed): score}`` -> (per training seed the mean ± std over its
    episode seeds, keyed ``str(seed)`` in seed order; the mean ± std over the training seeds of
    those means): the two spreads a claim that one row beats another needs."""
    per_seed = {str(t): mean_std_over_seeds({e: v for (tt, e), v in scores.items() if tt == t})
                for t in sorted({t for t, _ in scores})}
    return per_seed, mean_std_over_seeds({int(t): s["mean"] for t, s in per_seed.items()})


def write_outputs(out: str, metrics: dict, text: str, figure=None) -> None:
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", metrics)
        (tmp / "report.md").write_text(text)
        if figure is not None:
            figure.save(tmp / "figure.png")


def seed_tables(evals: dict[tuple[str, int, int], dict]) -> dict:
    """``{kind: {"<k>shot": summaries_over_seeds}}`` and the iteration scores of CRNet."""
    metrics: dict = {}
    for kind in sorted({k for k, _, _ in evals}):
        for shots in sorted({s for k, s, _ in evals if k == kind}):
            docs = {seed: evals[(k, s, seed)] for k, s, seed in evals if k == kind and s == shots}
            metrics.setdefault(kind, {})[f"{shots}shot"] = summaries_over_seeds({e: d["summary"] for e, d in docs.items()})
            if kind == "crnet":
                its = sorted({int(t) for d in docs.values() for t in d.get("by_iterations", {})})
                metrics.setdefault("iterations", {})[f"{shots}shot"] = {
                    str(t): mean_std_over_seeds({e: d["by_iterations"][str(t)]["miou"] for e, d in docs.items()})
                    for t in its}
    return metrics


def report_rows(metrics: dict, kinds=KINDS) -> dict:
    """``{kind: {"val": {"miou_<k>shot", "fb_iou_<k>shot"}}}`` (kinds: crnet, prototype, ...): the
    seed means that results/report (stage report_all) tabulates over folds."""
    return {kind: {"val": {f"{score}_{shots}": metrics[kind][shots][score]["mean"]
                           for shots in metrics[kind] for score in ("miou", "fb_iou")}}
            for kind in kinds if kind in metrics}


# ----------------------------------------------------------------------------- the yardstick (issue 21)

SETTING_TITLES = {"standard": "standard episodes (every query)",
                  "labelled_background": "labelled-background episodes (queries with >= {t:.0%} of their pixels "
                                         "labelled and not the class)"}
TRIVIAL_TITLES = {"all_foreground": "All foreground (the class everywhere)", "all_background": "All background"}


def row_title(kind: str, titles: Mapping[str, str]) -> str:
    base, _, rest = kind.partition("__")
    return titles.get(base, base) + (f" {rest}" if rest else "")


def yardstick_tables(docs: Mapping[tuple, dict], titles: Mapping[str, str] | None = None) -> dict:
    """The yardstick of test_crnet's evaluation files ``{(kind, shots, seed): doc}``, per shot
    count: per setting (standard, labelled background), each row's mIoU and class IoU as
    mean ± std over the episode seeds -- each kind's own row and its mismatched-support row,
    and the trivial rows (all foreground, all background; they read only the ground truth, so
    the first kind's are everyone's) -- with the query count per class, the classes a
    setting leaves out of its mean (no query there) and the classes left out of the episodes
    (``episodes.small_classes: leave_out``) with their val image counts. A kind ``a__b``
    is titled ``<title of a> b`` (e.g. one training seed). Files without a yardstick
    (older runs) are skipped."""
    titles = {**KINDS, **(titles or {})}
    out: dict = {}
    for shots in sorted({s for _, s, _ in docs}):
        here = {(k, e): d for (k, s, e), d in docs.items() if s == shots and "yardstick" in d}
        if not here:
            continue
        kinds = sorted({k for k, _ in here}, key=lambda k: (k not in titles, k))
        first = here[next(iter(here))]
        names = first["class_names"]
        table: dict = {"class_names": names, "settings": {},
                       "min_labelled_background": first["yardstick"]["min_labelled_background"],
                       "left_out": first["yardstick"].get("left_out", {})}
        for setting in SETTING_TITLES:
            rows: dict = {}
            for kind in kinds:
                seeds = {e: d["yardstick"]["rows"][setting] for (k, e), d in here.items() if k == kind}
                model_row = next(r for r in next(iter(seeds.values())) if r not in TRIVIAL_TITLES
                                 and r != "mismatched")
                for row, title in ((model_row, row_title(kind, titles)),
                                   ("mismatched", f"{row_title(kind, titles)}, mismatched support")):
                    if all(row in r for r in seeds.values()):
                        rows[title] = seed_row({e: r[row] for e, r in seeds.items()})
            trivial_kind = kinds[0]
            seeds = {e: d["yardstick"]["rows"][setting] for (k, e), d in here.items() if k == trivial_kind}
            for row, title in TRIVIAL_TITLES.items():
                rows[title] = seed_row({e: r[row] for e, r in seeds.items()})
            queries = {c: sum(r["all_foreground"]["episodes_per_class"][c] for r in seeds.values()) for c in names}
            standard = {c: sum(d["yardstick"]["rows"]["standard"]["all_foreground"]["episodes_per_class"][c]
                               for (k, _), d in here.items() if k == trivial_kind) for c in names}
            without = {names[c]: f"{queries[c]} of {standard[c]} queries" for c in names
                       if queries[c] == 0 and names[c] not in table["left_out"]}
            table["settings"][setting] = {"rows": rows, "queries": queries, "left_out_of_mean": without}
        out[f"{shots}shot"] = table
    return out


def seed_row(summaries: Mapping[int, dict]) -> dict:
    """One yardstick row over episode seeds: mIoU and each class IoU, mean ± std."""
    classes = next(iter(summaries.values()))["class_iou"]
    return {"miou": mean_std_over_seeds({e: s["miou"] for e, s in summaries.items()}),
            "class_iou": {c: mean_std_over_seeds({e: s["class_iou"][c] for e, s in summaries.items()})
                          for c in classes}}


def yardstick_markdown(tables: Mapping[str, dict], shots: str | None = None, level: str = "##") -> str:
    """The yardstick tables (of :func:`yardstick_tables`) of one shot count (None: every one),
    a table per setting: rows (model, mismatched support, the trivial rows) x (mIoU, each
    class IoU), in %, mean ± std over episode seeds; the classes left out of a mean and of
    the episodes, named with their counts."""
    from pipeline.metrics.episodic import format_mean_std
    from pipeline.report import markdown_table

    lines = []
    for key in [shots] if shots else list(tables):
        if key not in tables:
            continue
        table = tables[key]
        names = table["class_names"]
        order = sorted(names, key=int)
        for setting, title in SETTING_TITLES.items():
            part = table["settings"][setting]
            title = title.format(t=float(table["min_labelled_background"]))
            lines += [f"{level} Yardstick, {key[:-4]}-shot, {title}", "",
                      "Same episodes for every row; trivial rows read only the ground truth; the mismatched-support "
                      "row gives each query the supports (and masks) of another class of the fold: a net that "
                      "follows its support scores low there. IoU in %, mean ± std over episode seeds.", ""]
            header = ["Row", "mIoU"] + [f"{names[c]} ({part['queries'][c]} q.)" for c in order]
            rows = [[row, fmt(stat["miou"], format_mean_std)]
                    + [fmt(stat["class_iou"][c], format_mean_std) for c in order] for row, stat in part["rows"].items()]
            lines += [markdown_table(header, rows)]
            if part["left_out_of_mean"]:
                lines += ["Left out of this table's mean (no query in this setting): "
                          + ", ".join(f"{n} ({v})" for n, v in part["left_out_of_mean"].items()) + ".", ""]
        if table["left_out"]:
            lines += ["Left out of the episodes (episodes.small_classes: leave_out; fewer than k + 1 val images): "
                      + ", ".join(f"{n} ({v} val image{'s' if v != 1 else ''})" for n, v in table["left_out"].items())
                      + ".", ""]
    return "\n".join(lines) + "\n"


def fmt(stat: dict, format_mean_std) -> str:
    import math
    return "–" if stat["mean"] is None or math.isnan(stat["mean"]) else format_mean_std(stat)


def yardstick_over_folds(folds: list[dict], level: str = "##") -> tuple[dict, str]:
    """The folds' yardsticks (each fold's ``metrics["yardstick"]``) side by side: per shot count
    and setting, each row's mIoU (mean over episode seeds) per fold and the mean over folds;
    the classes a fold leaves out of a mean or of its episodes named with their counts."""
    from pipeline.report import markdown_table

    out: dict = {}
    lines: list[str] = []
    with_yard = [m for m in folds if m.get("yardstick")]
    shots_keys = sorted({s for m in with_yard for s in m["yardstick"]}, key=lambda s: int(s[:-4]))
    for shots in shots_keys:
        for setting, title in SETTING_TITLES.items():
            parts = {m["fold"]: m["yardstick"][shots]["settings"][setting] for m in with_yard if shots in m["yardstick"]}
            thresholds = {m["yardstick"][shots]["min_labelled_background"] for m in with_yard if shots in m["yardstick"]}
            rows_order = list(dict.fromkeys(r for p in parts.values() for r in p["rows"]))
            table = {}
            text_rows = []
            for row in rows_order:
                values = [parts[f]["rows"][row]["miou"]["mean"] if row in parts[f]["rows"] else None for f in parts]
                known = [v for v in values if v is not None and v == v]
                mean = sum(known) / len(known) if len(known) == len(values) and known else None
                table[row] = {"per_fold": values, "mean": mean}
                text_rows.append([row] + ["–" if v is None or v != v else f"{100 * v:.1f}" for v in values]
                                 + ["–" if mean is None else f"{100 * mean:.1f}"])
            out.setdefault(shots, {})[setting] = table
            lines += [f"{level} Yardstick over folds, {shots[:-4]}-shot, "
                      + title.format(t=float(min(thresholds) if thresholds else 0)), "",
                      "Each fold's mIoU (%, mean over episode seeds) on the same episodes for every row; the "
                      "last column averages the folds.", "",
                      markdown_table(["Row"] + [f"fold {f}" for f in parts] + ["mean"], text_rows)]
            notes = [f"fold {f}: " + ", ".join(f"{n} ({v})" for n, v in p["left_out_of_mean"].items())
                     for f, p in parts.items() if p["left_out_of_mean"]]
            if notes:
                lines += ["Left out of a fold's mean (no query in this setting): " + "; ".join(notes) + ".", ""]
        left = [f"fold {m['fold']}: " + ", ".join(f"{n} ({v} val images)" for n, v in m["yardstick"][shots]["left_out"].items())
                for m in with_yard if shots in m["yardstick"] and m["yardstick"][shots]["left_out"]]
        if left:
            lines += ["Left out of the episodes (episodes.small_classes: leave_out): " + "; ".join(left) + ".", ""]
    return out, "\n".join(lines) + "\n"
