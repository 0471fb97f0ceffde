"""OpenMP threads that sleep when idle (OMP_WAIT_POLICY=PASSIVE), set by pipeline/__init__.py
for every stage before torch loads its OpenMP runtime; an explicit value wins, an empty one
keeps the runtime's default. The policy must not change any number. Each check runs a
fresh interpreter: the runtime reads the variable once, when torch is imported."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def run_python(args: list[str], policy: str | None, **extra: str) -> subprocess.CompletedProcess:
    """``python *args`` in the repo with OMP_WAIT_POLICY=``policy`` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="2", **extra)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def runtime_settings(policy: str | None) -> dict[str, str]:
    """The settings libgomp reports at load (OMP_DISPLAY_ENV=verbose) when a stage module
    that imports torch at its top (train_cam) starts as snakemake starts it."""
    proc = run_python(["-m", "pipeline.stages.train_cam", "--help"], policy, OMP_DISPLAY_ENV="verbose")
    if "OPENMP DISPLAY ENVIRONMENT" not in proc.stderr:
        pytest.skip("torch's OpenMP runtime is not libgomp (no OMP_DISPLAY_ENV report)")
    assert "Invalid value" not in proc.stderr, proc.stderr
    return dict(re.findall(r"^\s*(\w+) = '([^']*)'", proc.stderr, flags=re.M))


def test_every_stage_gets_a_passive_openmp_runtime():
    # PASSIVE: no spinning at all between parallel regions
    assert runtime_settings(None)["GOMP_SPINCOUNT"] == "0"


def test_an_explicit_wait_policy_wins_and_an_empty_one_keeps_the_runtime_default():
    assert runtime_settings("ACTIVE")["OMP_WAIT_POLICY"] == "ACTIVE"
    assert runtime_settings("")["GOMP_SPINCOUNT"] != "0"  # libgomp's default: spin, then sleep


WALK = """
import hashlib, sys
import numpy as np
import pipeline.propagation.random_walk as rw
import torch
torch.set_num_threads(2)
rng = np.random.default_rng(0)
h = w = 24
from pipeline.propagation.affinity import pairwise_affinity
feats = torch.from_numpy(rng.normal(size=(1, 8, h, w)).astype(np.float32))
aff = pairwise_affinity(feats, 5)[0].numpy()
cams = rng.uniform(size=(3, h, w)).astype(np.float32)
out = rw.random_walk_sparse(cams, rw.transition_from_affinity(aff, h, w, 5, 8.0), 6)
print(hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest())
"""


def test_the_wait_policy_changes_no_number_of_the_sparse_walk():
    digests = {policy: run_python(["-c", WALK], policy).stdout.strip() for policy in ("", None, "ACTIVE")}
    assert len(set(digests.values())) == 1, digests


def test_benchmark_compares_wait_policies_idle_and_under_load(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("propagation_benchmark",
                                                  REPO / "benchmarks" / "propagation_benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    summary = bench.main(["--height", "10", "--width", "10", "--channels", "3", "--logt", "3", "--features", "8",
                          "--threads", "1", "--repeats", "1", "--variants", "dense", "sparse-torch",
                          "--load", "1", "--load-seconds", "60", "--wait-policy", "both"])
    rows = summary["conditions"]
    assert [(r["condition"], r["wait_policy"]) for r in rows] == [
        ("idle", "passive"), ("idle", "default"), ("load", "passive"), ("load", "default")]
    assert all(r["max_abs_diff_vs_first"] == 0.0 for r in rows)
    assert all(r["ratio_dense_over"]["sparse-torch"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "per condition" in printed and "load (1 busy proc(s))" in printed and "PASSIVE" in printed
    # the load processes (children of this process) are gone
    ps = subprocess.run(["ps", "-eo", "ppid=,args="], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines()
                if line.split(None, 1)[0] == str(os.getpid()) and "--load-worker" in line]
