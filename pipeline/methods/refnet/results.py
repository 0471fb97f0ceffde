"""What the Ref-Net report stages share: the ``--eval KEY:FOLD:SEED=PATH`` option, the
paper's metric columns and the result directory's writer."""
from __future__ import annotations

import csv

from pipeline.errors import PipelineError
from pipeline.io import atomic_dir, read_json, write_json

# (key in eval.json "summary", column title): the paper's Table 1 columns, then novel mIoU
COLUMNS = (("mpa", "MPA"), ("miou", "MIoU"), ("fwiou", "FWIoU"), ("novel_miou", "novel mIoU"))


def parse_evals(entries: list[str]) -> dict[tuple[str, str, int], str]:
    """``key:scope:seed=path`` -> ``{(key, scope, seed): path}`` (errors name the option)."""
    out = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        parts = name.split(":")
        if not sep or len(parts) != 3 or not parts[2].isdigit():
            raise PipelineError("--eval", f"'{entry}' is not KEY:SCOPE:SEED=PATH")
        out[(parts[0], parts[1], int(parts[2]))] = path
    return out


def read_eval(path: str) -> dict:
    document = read_json(path)
    if not isinstance(document, dict) or "summary" not in document or "setting" not in document:
        raise PipelineError(path, "not an eval file of stage test_refnet (no 'summary' / 'setting')")
    return document


def percent(value) -> str:
    return "–" if value is None or value != value else f"{100 * value:.1f}"


def write_outputs(out: str, metrics: dict, text: str, figure=None, files: dict[str, str] | None = None) -> None:
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", metrics)
        (tmp / "report.md").write_text(text)
        if figure is not None:
            figure.save(tmp / "figure.png")
        for name, content in (files or {}).items():
            (tmp / name).write_text(content)


def late_history_rows(history_path: str, share: float) -> list[dict]:
    """The rows of a train_refnet history (history.tsv) in the last ``share`` of its steps."""
    try:
        rows = list(csv.DictReader(open(history_path), delimiter="\t"))
    except OSError as err:
        raise PipelineError(history_path, f"unreadable ({err})") from None
    if not rows or "step" not in rows[0]:
        raise PipelineError(history_path, "not a history of stage train_refnet (no 'step' column)")
    last = max(int(r["step"]) for r in rows)
    return [r for r in rows if int(r["step"]) > (1 - share) * last]


def late_critic_max(history_path: str, share: float = 0.25) -> float | None:
    """The largest |Wasserstein estimate| of either critic over the last ``share`` of a
    train_refnet history's steps (None when no critic trained then, e.g. without critics)."""
    values = [abs(float(r[k])) for r in late_history_rows(history_path, share) for k in ("w_outer", "w_inner")
              if r.get(k)]
    return max(values) if values else None


def foreground_shares(confusion) -> dict:
    """Predicted and ground-truth foreground (any target) shares of the scored pixels of a
    test_refnet confusion matrix (rows GT, columns prediction; a mask collapse: prediction ~0)."""
    total = sum(map(sum, confusion))
    if not total:
        return {"predicted": None, "ground_truth": None}
    return {"predicted": sum(sum(row[1:]) for row in confusion) / total,
            "ground_truth": sum(sum(row) for row in confusion[1:]) / total}


def late_history_means(history_path: str, columns: tuple[str, ...], share: float = 0.25) -> dict:
    """The mean of each column over the last ``share`` of a train_refnet history's steps (None
    where the column is blank there, e.g. the gradient ratio of a variant without critics)."""
    rows = late_history_rows(history_path, share)
    out = {}
    for key in columns:
        values = [float(r[key]) for r in rows if r.get(key)]
        values = [v for v in values if v == v]
        out[key] = sum(values) / len(values) if values else None
    return out
