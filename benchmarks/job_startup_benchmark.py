"""Start-up cost of a DAG job: the wall time of stages that do nothing, run by snakemake.

    python benchmarks/job_startup_benchmark.py [--jobs 5] [--cores 1] [--json out.json]

Writes a throw-away Snakefile in a temporary directory with ``--jobs`` independent jobs
of each kind below, runs ``snakemake --cores N`` on it (from this repo's venv, with
``PYTHONPATH`` on this worktree) and reads the per-job wall times snakemake's
``benchmark:`` files record, plus the whole run's wall time:

* ``shell``   ``true`` (snakemake's own per-job cost);
* ``python``  ``python -c pass`` (the interpreter);
* ``torch``   ``python -c "import pipeline, torch"``;
* ``stage``   ``python -c "import pipeline.models, pipeline.stage, pipeline.runtime"``
  (torch, timm, torchvision through the shim, the package: what every network stage
  imports before its first line of work).

A stage job costs at least the ``stage`` figure before it reads its inputs: jobs whose own
work is shorter than that are candidates for merging or ``group:``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

KINDS = {
    "shell": "true",
    "python": "{python} -c pass",
    "torch": "{python} -c 'import pipeline, torch'",
    "stage": "{python} -c 'import pipeline.models, pipeline.stage, pipeline.runtime'",
}


def snakefile(jobs: int, python: str, kinds: list[str]) -> str:
    lines = [f"N = list(range({jobs}))", "",
             "rule all:", "    input: " + ", ".join(f"expand('out/{k}_{{i}}', i=N)" for k in kinds), ""]
    for kind in kinds:
        cmd = KINDS[kind]
        lines += [f"rule {kind}:", f"    output: 'out/{kind}_{{i}}'", f"    benchmark: 'bench/{kind}_{{i}}.tsv'",
                  f"    shell: \"{cmd.format(python=python)} && touch {{output}}\"", ""]
    return "\n".join(lines)


def direct_cost(cmd: str, env: dict, repeats: int) -> dict:
    """Wall and CPU seconds (user + sys, from the OS's child rusage) of ``cmd`` run directly:
    snakemake's ``cpu_time`` samples the process and misses most of a short job."""
    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(shlex.split(cmd), env=env, check=True, cwd=REPO_ROOT)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {"median_wall_s": statistics.median(walls), "median_cpu_s": statistics.median(cpus)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5, help="jobs of each kind")
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    python = sys.executable
    snakemake = str(Path(python).parent / "snakemake")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="job-startup-") as tmp:
        Path(tmp, "Snakefile").write_text(snakefile(args.jobs, python, args.kinds))
        start = time.perf_counter()
        proc = subprocess.run([snakemake, "--cores", str(args.cores), "--quiet", "all"], cwd=tmp, env=env,
                              capture_output=True, text=True)
        run_s = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"error: snakemake failed: {proc.stderr[-2000:]}")
        per_kind = {}
        for kind in args.kinds:
            walls, cpus = [], []
            for i in range(args.jobs):
                header, row = Path(tmp, "bench", f"{kind}_{i}.tsv").read_text().splitlines()[:2]
                record = dict(zip(header.split("\t"), row.split("\t")))
                walls.append(float(record["s"]))
                cpus.append(float(record.get("cpu_time", "nan")))
            per_kind[kind] = {"median_s": statistics.median(walls), "min_s": min(walls), "max_s": max(walls),
                              "median_cpu_s": statistics.median(cpus)}
    n_jobs = args.jobs * len(args.kinds)
    print(f"\njob start-up under snakemake, {args.jobs} jobs per kind, --cores {args.cores}")
    print(f"{'kind':<8} {'median s':>9} {'min s':>7} {'max s':>7} {'cpu s':>7}  command")
    for kind, row in per_kind.items():
        print(f"{kind:<8} {row['median_s']:>9.2f} {row['min_s']:>7.2f} {row['max_s']:>7.2f} {row['median_cpu_s']:>7.2f}  "
              f"{KINDS[kind].format(python='python')}")
    print("cpu s: snakemake's benchmark cpu_time (sampled: misses most of a short job)")
    direct = {kind: direct_cost(KINDS[kind].format(python=python), env, args.jobs) for kind in args.kinds
              if kind != "shell"}
    print("run directly (no snakemake), CPU = user + sys of the process: about its wall time on an idle core")
    for kind, row in direct.items():
        print(f"{kind:<8} wall {row['median_wall_s']:>6.2f} s  cpu {row['median_cpu_s']:>6.2f} s")
    print(f"whole run: {run_s:.1f} s for {n_jobs} jobs + the DAG ({run_s / n_jobs:.2f} s per job, snakemake's "
          f"scheduling included)")
    load_after = os.getloadavg()
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} cores")
    summary = {"jobs_per_kind": args.jobs, "cores": args.cores, "per_kind": per_kind, "run_s": run_s,
               "direct": direct,
               "load_before": load_before, "load_after": load_after}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
