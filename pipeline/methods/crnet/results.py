"""The result files the CRNet report stages share (results/<dataset>/crnet_*): the two scored
kinds, the ``--eval NAME:INT:INT=PATH`` option and the result directory's writer."""
from __future__ import annotations

from pipeline.errors import PipelineError
from pipeline.io import atomic_dir, write_json

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


def write_outputs(out: str, metrics: dict, text: str, figure=None) -> None:
    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", metrics)
        (tmp / "report.md").write_text(text)
        if figure is not None:
            figure.save(tmp / "figure.png")
