"""One error type for bad input, and the wrapper that turns it into one line + exit code.

Stages raise :class:`PipelineError` naming the file (or params key) and the problem.
``run_stage`` prints ``error: <where>: <problem>`` on stderr and exits with status 2,
so users never see a traceback from deep inside numpy for a problem in their data.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence

EXIT_BAD_INPUT = 2


class PipelineError(Exception):
    """Bad input: ``where`` is a file path or a params key, ``problem`` says what is wrong."""

    def __init__(self, where: object, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


def run_stage(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> None:
    """Call a stage's ``main`` and exit: 0 on success, 2 with one line on bad input."""
    try:
        main(argv)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(0)
