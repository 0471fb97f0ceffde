"""Atomic artifact writing: complete or absent, never half-written."""
import os
import stat

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.io import atomic_dir, atomic_path, load_npz, read_json, save_npz, write_json


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_only_when_complete(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"  # consumers still see the complete old file
    assert target.read_text() == "new"


def test_outputs_respect_umask_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_atomic_dir_failure_keeps_previous_directory(tmp_path):
    target = tmp_path / "cams"
    target.mkdir()
    (target / "old.npz").write_text("x")
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "new.npz").write_text("y")
            raise ValueError
    assert [p.name for p in target.iterdir()] == ["old.npz"]
    assert [p.name for p in tmp_path.iterdir()] == ["cams"]


def test_npz_roundtrip_and_errors(tmp_path):
    save_npz(tmp_path / "a.npz", cams=np.ones((2, 3, 4), np.float16))
    assert load_npz(tmp_path / "a.npz")["cams"].shape == (2, 3, 4)
    with pytest.raises(PipelineError, match="file not found"):
        load_npz(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(PipelineError, match="unreadable npz"):
        load_npz(tmp_path / "bad.npz")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PipelineError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
