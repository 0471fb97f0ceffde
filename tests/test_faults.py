"""Faults: real SIGKILLs of stage processes, artifact writers and snakemake.

* A training stage (train_boundary, tiny VOC-layout data, random-weight backbone) is
  SIGKILLed inside epoch 2: the model file does not exist, the per-epoch checkpoint
  does; a rerun of the same command resumes after the checkpoint's epoch and ends with
  weights bit-identical to an uninterrupted run (same seed, CPU) and one history row
  per epoch.
* A process writing through ``pipeline.io.atomic_path`` / ``atomic_dir`` is SIGKILLed
  mid-write: the final path never exists half-written (only a hidden ``.tmp-*`` name is
  left), a previous complete version survives, and a rerun writes the whole artifact.
* snakemake itself (and its job) is SIGKILLed while ``make_embedded`` writes
  ``data/embedded``: the output is absent, the stale lock stops the next run until
  ``--unlock``; an output that exists with the incomplete mark stops a run without the
  default profile (IncompleteFilesException) and is deleted and regenerated with it
  (``rerun-incomplete: true``), byte-identical to a fresh generation.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.config import REPO_ROOT
from conftest import make_boundary_tiny, scratch_workflow

ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "PYTHONUNBUFFERED": "1"}


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.02):
    """Poll ``condition()`` until true; fail (naming ``what``) on timeout or if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(poll)


def _kill(proc: subprocess.Popen, group: bool = False) -> None:
    """SIGKILL ``proc`` (or its process group) and reap it; it must still have been running."""
    assert proc.poll() is None, "the process finished before it could be killed"
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


# --------------------------------------------------------------------------- training stage

N_IMAGES = 24          # base samples of the fold (all train images): 12 batches of 2 per epoch
EPOCHS = 3


@pytest.fixture()
def boundary_run(tmp_path):
    """conftest.make_boundary_tiny (the data of tests/test_boundary_stages.py): cat/dog
    squares with a 255 outline, so every image is a base sample of fold 0."""
    s = make_boundary_tiny(tmp_path, [index % 4 for index in range(N_IMAGES)], epochs=EPOCHS)
    assert s["data"].fold([3])["base_samples"] == [f"t{i}" for i in range(N_IMAGES)]

    def command(out_dir: Path) -> list[str]:
        return [sys.executable, "-m", "pipeline.methods.retab.train_boundary", "--params", str(s["params"]),
                "--fold-file", str(s["fold"]), "--out", str(out_dir / "model.pt"),
                "--history", str(out_dir / "history.tsv"), "--threads", "1"]

    return {"tmp": tmp_path, "command": command}


def _run_stage(command: list[str], log: Path) -> str:
    with open(log, "w") as err:
        proc = subprocess.run(command, cwd=REPO_ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err, timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    return text


def _history_rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_sigkill_mid_epoch_then_rerun_resumes_exactly(boundary_run):
    tmp, command = boundary_run["tmp"], boundary_run["command"]

    reference = tmp / "reference"
    _run_stage(command(reference), tmp / "reference.log")

    out = tmp / "killed"
    model, checkpoint = out / "model.pt", out / "model.checkpoint.pt"
    log = tmp / "killed.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(command(out), cwd=REPO_ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
    try:
        # The checkpoint appears (renamed into place) once epoch 1 is finished; its log
        # line says how long an epoch takes: kill half an epoch later, inside epoch 2.
        _wait_for(checkpoint.exists, 300, "the epoch-1 checkpoint", proc)
        line = _wait_for(lambda: re.search(r"epoch 1/\d+ .*time=([\d.]+)s", log.read_text()), 30,
                         "the epoch-1 log line", proc)
        time.sleep(max(0.2, 0.5 * float(line.group(1))))
        _kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not model.exists() and not (out / "history.tsv").exists()
    assert checkpoint.exists()
    done = torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= done < EPOCHS  # killed inside epoch done + 1

    text = _run_stage(command(out), tmp / "rerun.log")
    assert re.search(rf"resuming from \S*model\.checkpoint\.pt after epoch {done}/{EPOCHS}", text), text
    assert f"epoch 1/{EPOCHS} " not in text  # finished epochs are not trained again
    assert not checkpoint.exists()  # removed once model and history are written

    got = torch.load(model, map_location="cpu", weights_only=True)
    want = torch.load(reference / "model.pt", map_location="cpu", weights_only=True)
    assert got["meta"] == want["meta"]
    assert got["state_dict"].keys() == want["state_dict"].keys()
    for key, value in want["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), key

    rows, ref_rows = _history_rows(out / "history.tsv"), _history_rows(reference / "history.tsv")
    assert [r["epoch"] for r in rows] == [str(e) for e in range(1, EPOCHS + 1)]
    drop_seconds = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert drop_seconds == [{k: v for k, v in r.items() if k != "seconds"} for r in ref_rows]


# --------------------------------------------------------------------------- atomic writers

WRITER = r"""
import sys, time
from pathlib import Path
from pipeline.io import atomic_dir, atomic_path

kind, target, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
pause = float(sys.argv[4])
if kind == "file":
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            for i in range(n):
                fh.write(bytes([i % 256]) * (1 << 20))
                fh.flush()
                if i == 0:
                    print("writing", tmp, flush=True)
                time.sleep(pause)
else:
    with atomic_dir(target) as tmp:
        for i in range(n):
            (tmp / f"{i:04d}.txt").write_text(f"part {i}\n" * 100)
            if i == 0:
                print("writing", tmp, flush=True)
            time.sleep(pause)
print("done", flush=True)
"""


def _writer(kind: str, target: Path, n: int, pause: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, kind, str(target), str(n), str(pause)],
                            cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, text=True)


def _kill_while_writing(kind: str, target: Path, n: int) -> Path:
    """Start a writer, SIGKILL it once it has written part of the artifact; the temp path."""
    proc = _writer(kind, target, n, pause=0.02)
    try:
        line = proc.stdout.readline().split()
        assert line and line[0] == "writing", line
        tmp = Path(line[1])
        time.sleep(0.2)  # ~10 of the n parts
        _kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return tmp


def _finish(kind: str, target: Path, n: int) -> None:
    proc = subprocess.run([sys.executable, "-c", WRITER, kind, str(target), str(n), "0"], cwd=REPO_ROOT,
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "done", proc.stderr


def _complete_file(path: Path, n: int) -> bool:
    data = path.read_bytes()
    return len(data) == n << 20 and all(data[i << 20] == i % 256 for i in range(n))


def test_sigkill_during_atomic_path_write(tmp_path):
    n = 64  # 64 MiB, ~1.3 s when not killed
    target = tmp_path / "out" / "big.bin"
    tmp = _kill_while_writing("file", target, n)
    assert not target.exists()  # a consumer never sees the half-written file
    assert tmp.parent == target.parent and tmp.name.startswith(".tmp-big.bin-")
    assert 0 < tmp.stat().st_size < n << 20  # it was killed mid-write; only the hidden temp is left
    assert [p.name for p in target.parent.iterdir()] == [tmp.name]

    _finish("file", target, n)  # a rerun writes the complete artifact
    assert _complete_file(target, n)

    # Killed while rewriting: the previous complete version stays in place.
    _kill_while_writing("file", target, n)
    assert _complete_file(target, n)


def test_sigkill_during_atomic_dir_write(tmp_path):
    n = 200  # files, ~4 s when not killed
    target = tmp_path / "data" / "parts"
    tmp = _kill_while_writing("dir", target, n)
    assert not target.exists()  # the directory appears complete or not at all
    assert tmp.parent == target.parent and tmp.name.startswith(".tmp-parts-")
    assert 0 < len(list(tmp.iterdir())) < n

    _finish("dir", target, n)
    names = sorted(p.name for p in target.iterdir())
    assert names == [f"{i:04d}.txt" for i in range(n)]
    assert (target / f"{n - 1:04d}.txt").read_text() == f"part {n - 1}\n" * 100

    _kill_while_writing("dir", target, n)  # killed while replacing it: the old one stays whole
    assert sorted(p.name for p in target.iterdir()) == names


# --------------------------------------------------------------------------- snakemake

EMBEDDED = {"embedded_data": {"n_train": 80, "n_val": 20, "size": 64}}


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".snakemake_timestamp"}


def test_snakemake_killed_during_make_embedded_reruns_incomplete_job(tmp_path):
    (tmp_path / "wf").mkdir()
    workdir = scratch_workflow(tmp_path / "wf", EMBEDDED)
    # as in the repository: snakemake finds the default profile at profiles/default
    (workdir / "profiles").symlink_to("workflow/profiles")
    command = [sys.executable, "-m", "snakemake", "data/embedded", "--cores", "1"]
    proc = subprocess.Popen(command, cwd=workdir, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # own process group: snakemake and its job
    try:
        # make_embedded writes into data/.tmp-embedded-*/ and renames it when complete
        _wait_for(lambda: len(list((workdir / "data").glob(".tmp-embedded-*/JPEGImages/*"))) >= 10, 120,
                  "make_embedded to write images", proc)
        _kill(proc, group=True)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (workdir / "data/embedded").exists()
    # snakemake had no chance to clean up: the job's incomplete marker and its lock stay
    assert list((workdir / ".snakemake/incomplete").iterdir())
    assert list((workdir / ".snakemake/locks").iterdir())

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*command, *args], cwd=workdir, env=ENV, capture_output=True, text=True, timeout=300)

    locked = run()  # the stale lock stops the next run until `snakemake --unlock`
    assert locked.returncode != 0 and "cannot be locked" in locked.stdout + locked.stderr
    assert not (workdir / "data/embedded").exists()
    unlocked = run("--unlock")
    assert unlocked.returncode == 0, unlocked.stderr[-2000:]

    # What a writer without atomic rename would have left: a half-written output.
    (workdir / "data/embedded").mkdir()
    (workdir / "data/embedded/half.txt").write_text("half")
    no_profile = run("-n", "--workflow-profile", "none")  # no rerun-incomplete: stops, names it
    assert no_profile.returncode != 0
    assert "IncompleteFilesException" in no_profile.stdout + no_profile.stderr
    assert "data/embedded" in no_profile.stdout + no_profile.stderr

    rerun = run()  # the default profile's rerun-incomplete: deleted and made again
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not (workdir / "data/embedded/half.txt").exists()

    # the generator is byte-identical per seed: compare with a fresh generation
    from pipeline.config import load_params, section
    from pipeline.data.embedded import generate_dataset

    params = load_params(workdir / "params.yaml", "embedded")
    generate_dataset(tmp_path / "fresh", section(params, "embedded_data"), list(params["data"]["classes"]))
    assert _tree_digest(workdir / "data/embedded") == _tree_digest(tmp_path / "fresh")
