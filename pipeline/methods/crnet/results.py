"""The result files the CRNet report stages share (results/<dataset>/crnet_*): the two scored
kinds, the ``--eval NAME:INT:INT=PATH`` option and the result directory's writer."""
from __future__ import annotations

from pipeline.errors import PipelineError
from pipeline.io import atomic_dir, write_json

KINDS = {"crnet": "CRNet", "prototype": "Prototype floor (PANet, no alignment)"}


def parse_evals(entries: list[str]) -> dict[tuple[str, int, int], str]:
    """``name:a:b=path`` -> ``{(name, a, b): path}`` (errors name the option)."""
    out = {}
    for entry in entries:
        key, sep, path = entry.partition("=")
        parts = key.split(":")
        if not sep or len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise PipelineError("--eval", f"'{entry}' is not NAME:INT:INT=PATH")
        out[(parts[0], int(parts[1]), int(parts[2]))] = path
    return out


def write_outputs(out: str, metrics: dict, text: str, figure=None) -> None:
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", metrics)
        (tmp / "report.md").write_text(text)
        if figure is not None:
            figure.save(tmp / "figure.png")
