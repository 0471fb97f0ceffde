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
