"""Stage: assemble a results directory from finished artifacts (atomically).

``--src DIR`` copies a whole results directory (the short results/<method>_fold<k> alias
of the default dataset); ``--file NAME=PATH`` (repeatable) copies single files in.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pipeline.errors import PipelineError, run_stage
from pipeline.io import atomic_dir


def parse_file_args(items: list[str]) -> list[tuple[str, Path]]:
    pairs = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or "/" in name:
            raise PipelineError("--file", f"'{item}' is not NAME=PATH with a plain file name")
        pairs.append((name, Path(path)))
    return pairs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", help="directory to copy")
    ap.add_argument("--file", action="append", default=[], help="NAME=PATH to copy in")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    files = parse_file_args(args.file)
    if args.src and not Path(args.src).is_dir():
        raise PipelineError(args.src, "source results directory not found")
    for _, path in files:
        if not path.is_file():
            raise PipelineError(path, "file to publish not found")
    with atomic_dir(args.out) as tmp:
        if args.src:
            shutil.copytree(args.src, tmp, dirs_exist_ok=True)
        for name, path in files:
            shutil.copy2(path, tmp / name)


if __name__ == "__main__":
    run_stage(main)
