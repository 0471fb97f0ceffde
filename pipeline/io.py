"""Atomic artifact writing: every output is written to a temporary name in the same
directory and renamed into place when complete, so no consumer (and no resumed run)
ever reads a half-written file."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np


def _umask_mode(base: int) -> int:
    """``base`` (0o666 files, 0o777 dirs) less the process umask: what open() would give.
    mkstemp/mkdtemp create owner-only entries, unreadable to a shared cluster's group."""
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; it replaces ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o777))
        old = None
        if path.exists():
            # Rename the old version away first: a kill in between leaves either the old or
            # the new complete directory at ``path``, never a half-deleted one.
            old = Path(tempfile.mkdtemp(prefix=f".old-{path.name}-", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> object:
    from pipeline.errors import PipelineError

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PipelineError(path, "file not found") from None
    except json.JSONDecodeError as err:
        raise PipelineError(path, f"not valid JSON ({err.msg} at line {err.lineno})") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Compressed npz, atomically (np.savez appends .npz to names without it)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    from pipeline.errors import PipelineError

    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise PipelineError(path, "file not found") from None
    except (OSError, ValueError) as err:
        raise PipelineError(path, f"unreadable npz ({err})") from None


def check_files_exist(directory: str | os.PathLike, ids, suffix: str, what: str, *,
                      directory_problem: str | None = None, listed: str = "listed images") -> None:
    """Fail before any work when ``directory`` or one ``<id><suffix>`` in it is missing.

    The one "every image has its file" check of the stages (CAMs, boundary maps, confident
    labels, pseudo labels, predictions): one line naming the first missing file.
    """
    from pipeline.errors import PipelineError

    directory = Path(directory)
    if not directory.is_dir():
        raise PipelineError(directory, directory_problem or f"{what} directory not found")
    with os.scandir(directory) as entries:
        names = {entry.name for entry in entries}
    missing = [i for i in ids if f"{i}{suffix}" not in names]
    if missing:
        raise PipelineError(directory / f"{missing[0]}{suffix}",
                            f"{what} missing ({len(missing)} of {len(ids)} {listed} have none)")
