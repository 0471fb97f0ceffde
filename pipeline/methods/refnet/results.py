"""What the Ref-Net report stages share: the ``--eval KEY:FOLD:SEED=PATH`` option, the
paper's metric columns and the result directory's writer."""
from __future__ import annotations

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
