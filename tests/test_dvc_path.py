"""dvc.yaml's commands work with a PATH that lacks the virtual environment (DVC runs a
stage's cmd through the shell with the caller's PATH: `.venv/bin/dvc repro retab@0` from a
fresh clone must not need an activated venv). The stage commands start snakemake through
workflow/snakemake.sh, which finds <repo>/.venv/bin/snakemake, else snakemake on PATH,
else python3 -m snakemake, else fails with one line."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, scratch_workflow

LAUNCHER = "sh workflow/snakemake.sh "
BARE_PATH = "/usr/bin:/bin"  # a login shell's PATH: no venv in it


def stage_cmds() -> dict[str, str]:
    """{stage: cmd} of dvc.yaml, foreach/matrix bodies unexpanded."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: (body["do"] if "do" in body else body)["cmd"] for name, body in stages.items()}


def retab0_cmd() -> str:
    """The cmd of stage retab@0 as DVC runs it (${item} and ${cores} interpolated)."""
    cores = next(v["cores"] for v in yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"] if "cores" in v)
    return stage_cmds()["retab"].replace("${item}", "0").replace("${cores}", str(cores))


def write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def test_every_stage_starts_snakemake_through_the_launcher():
    cmds = stage_cmds()
    assert cmds and all(cmd.startswith(LAUNCHER) for cmd in cmds.values()), cmds
    assert retab0_cmd() == LAUNCHER + "results/retab_fold0 --cores 2"


def test_retab0_cmd_runs_without_the_venv_on_path(tmp_path):
    """A fresh clone after scripts/setup.sh: .venv holds snakemake, PATH does not. The
    stage's cmd, dry run (-n), plans the RETAB DAG."""
    venv_snakemake = Path(sys.prefix) / "bin" / "snakemake"
    if not venv_snakemake.exists():
        pytest.skip(f"the test interpreter's environment has no {venv_snakemake}")
    if shutil.which("snakemake", path=BARE_PATH):
        pytest.skip(f"{BARE_PATH} holds a snakemake: the check would prove nothing")
    workdir = scratch_workflow(tmp_path)
    (workdir / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    env = {"PATH": BARE_PATH, "HOME": os.environ.get("HOME", str(tmp_path)),
           "PYTHONPATH": str(ROOT)}  # the package under test, not an installed copy
    proc = subprocess.run(["sh", "-c", retab0_cmd() + " -n"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "command not found" not in out
    for rule in ("train_cam", "propagate", "train_seg", "retab_result"):
        assert rule in out, (rule, out[-3000:])


def test_launcher_falls_back_to_path_then_python3_then_one_line_error(tmp_path):
    workdir = tmp_path / "clone"
    (workdir / "workflow").mkdir(parents=True)
    shutil.copy(ROOT / "workflow/snakemake.sh", workdir / "workflow/snakemake.sh")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    sh = shutil.which("sh")

    def run(*args):
        return subprocess.run([sh, "workflow/snakemake.sh", *args], cwd=workdir, env={"PATH": str(bindir)},
                              capture_output=True, text=True, timeout=30)

    # nothing: exit 127 and one line saying what to do
    proc = run("-n")
    assert proc.returncode == 127
    assert proc.stderr.count("\n") == 1 and "error: snakemake not found" in proc.stderr
    assert "bash scripts/setup.sh" in proc.stderr

    # a python3 without snakemake is not enough; one with it is used as python3 -m snakemake
    write_exe(bindir / "python3", '#!/bin/sh\n[ "$1" = -c ] && exit 1\necho "python3 $*"\n')
    assert run("-n").returncode == 127
    write_exe(bindir / "python3", '#!/bin/sh\n[ "$1" = -c ] && exit 0\necho "python3 $*"\n')
    assert run("results/retab_fold0", "-n").stdout == "python3 -m snakemake results/retab_fold0 -n\n"

    # snakemake on PATH comes before python3
    write_exe(bindir / "snakemake", '#!/bin/sh\necho "path-snakemake $*"\n')
    assert run("a b", "-n").stdout == "path-snakemake a b -n\n"

    # the clone's .venv comes first, whatever PATH holds
    (workdir / ".venv/bin").mkdir(parents=True)
    write_exe(workdir / ".venv/bin/snakemake", '#!/bin/sh\necho "venv-snakemake $*"\n')
    assert run("results/retab_fold0", "--cores", "2").stdout == "venv-snakemake results/retab_fold0 --cores 2\n"
