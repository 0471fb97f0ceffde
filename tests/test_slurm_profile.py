"""The SLURM profile (workflow/profiles/slurm) end to end, against stand-in SLURM commands.

`sbatch`, `srun`, `sacct`, `squeue`, `sinfo`, `scontrol`, `sacctmgr`, `sshare` and
`scancel` on PATH are shims to tests/slurm_standins/fake_slurm.py: each call is recorded,
`sbatch` runs the job here, synchronously, and `sacct` reports COMPLETED/FAILED per job
id. snakemake-executor-plugin-slurm runs unpatched, so what is asserted below is exactly
the `sbatch` command line a real cluster would get from the repository's profile.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from conftest import scratch_workflow, snakemake

FAKE_SLURM = Path(__file__).resolve().parent / "slurm_standins" / "fake_slurm.py"
COMMANDS = ("sbatch", "srun", "sacct", "squeue", "sinfo", "scontrol", "sacctmgr", "sshare", "scancel")
# tiny embedded data (as tests/test_workflow.py) and a CAM training of one short epoch
TINY = {"embedded_data": {"n_train": 40, "n_val": 12, "size": 64},
        "overrides": {"embedded": {"cam": {"train": {"crop": 32, "scale_range": [0.5, 0.5],
                                                     "batch_size": 20, "epochs": 1}}}}}
TARGETS = ("results/baseline_fold0", "work/embedded/shared/cam/model.pt")
SUBMITTED = {"make_embedded", "image_labels", "make_folds", "predict_background",
             "evaluate_baseline", "train_cam"}
LOCAL = {"result_baseline", "publish_default_dataset"}  # `localrule: True`


def sbatch_flags(argv: list[str]) -> dict:
    """{flag: value} of an sbatch argv ('--x=v', '--x v' and '-x v' forms; bare flags: True)."""
    with_value = {"--job-name", "--output", "--comment", "-A", "-p", "-t", "--mem", "-D", "-C",
                  "--clusters", "--mem-per-cpu"}
    flags, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            flags[key] = value
        elif arg in with_value:
            flags[arg] = argv[i + 1]
            i += 1
        else:
            flags[arg] = True
        i += 1
    return flags


def run_with_fake_slurm(workdir: Path, tmp: Path, *args: str, accounts: str = "wsss other"):
    """snakemake ARGS in WORKDIR with the stand-ins first on PATH; returns (proc, calls)."""
    bindir, state = tmp / "bin", tmp / "state"
    bindir.mkdir(parents=True)
    for name in COMMANDS:
        shim = bindir / name
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(FAKE_SLURM))} {name} "$@"\n')
        shim.chmod(0o755)
    mp = pytest.MonkeyPatch()
    mp.setenv("PATH", str(bindir) + os.pathsep + os.environ["PATH"])
    mp.setenv("FAKE_SLURM_DIR", str(state))
    mp.setenv("FAKE_SLURM_ACCOUNTS", accounts)  # what sacctmgr lists for the user
    mp.setenv("FAKE_SLURM_PARTITIONS", "cpu* gpu")  # sinfo: cpu is the cluster default
    mp.delenv("SLURM_JOB_ID", raising=False)
    try:
        # only the first status check is brought forward (default: 40 s after submission)
        proc = snakemake(workdir, *args, "--profile", "workflow/profiles/slurm",
                         "--slurm-init-seconds-before-status-checks", "1", timeout=600)
    finally:
        mp.undo()
    calls_file = state / "calls.jsonl"
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()] if calls_file.exists() else []
    return proc, calls


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    """One real run of the slurm profile on the tiny workflow; returns (proc, calls, workdir)."""
    workdir = scratch_workflow(tmp_path_factory.mktemp("wf"), TINY)
    # the README's command: targets first, account/partition as default resources
    proc, calls = run_with_fake_slurm(workdir, tmp_path_factory.mktemp("slurm"), *TARGETS,
                                      "--default-resources", "slurm_account=wsss", "slurm_partition=gpu")
    return proc, calls, workdir


def submissions(calls) -> dict[str, dict]:
    """rule name -> sbatch flags (the plugin's --comment is rule_<name>[_wildcards_...])."""
    out = {}
    for call in calls:
        if call["cmd"] == "sbatch":
            flags = sbatch_flags(call["argv"])
            rule = flags["--comment"].removeprefix("rule_").split("_wildcards_")[0]
            assert rule not in out, f"{rule} submitted twice"
            out[rule] = {**flags, "argv": call["argv"], "job_id": call["job_id"]}
    return out


def test_run_succeeds_and_builds_the_targets(slurm_run):
    proc, calls, workdir = slurm_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (workdir / "results/baseline_fold0/metrics.json").is_file()
    assert (workdir / "work/embedded/shared/cam/model.pt").is_file()
    assert "Using profile workflow/profiles/slurm" in proc.stderr


def test_every_non_local_rule_is_one_sbatch_job_and_local_rules_are_not(slurm_run):
    proc, calls, _ = slurm_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    subs = submissions(calls)
    assert set(subs) == SUBMITTED
    assert not LOCAL & set(subs)
    # ... but the local rules did run (on the "submit host", in this process's jobs)
    log = proc.stdout + proc.stderr
    for rule in LOCAL:
        assert f"localrule {rule}:" in log
    # each job ran its rule through a job step: srun -n1 ... --cpus-per-task=<threads>
    sruns = [c["argv"] for c in calls if c["cmd"] == "srun"]
    assert len(sruns) == len(SUBMITTED)
    assert all(a[0] == "-n1" and "--nodes=1" in a for a in sruns)


def test_gpu_rule_resources_map_to_sbatch_flags(slurm_run):
    proc, calls, _ = slurm_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    cam = submissions(calls)["train_cam"]  # resources: gpu=1, mem_mb=8000, runtime=240; threads 2
    assert cam["--gpus"] == "1"
    assert cam["--cpus-per-task"] == "2"
    assert cam["--mem"] == "8000"
    assert cam["-t"] == "240"
    assert cam["-A"] == "wsss" and cam["-p"] == "gpu"
    assert "--ntasks" not in cam  # the plugin sets no task count on GPU jobs
    # the job step asks for the same GPU and CPUs
    gpu_steps = [c["argv"] for c in calls if c["cmd"] == "srun" and "--gpus=1" in c["argv"]]
    assert len(gpu_steps) == 1 and "--cpus-per-task=2" in gpu_steps[0]


def test_cpu_rule_resources_map_to_sbatch_flags(slurm_run):
    proc, calls, _ = slurm_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    subs = submissions(calls)
    ev = subs["evaluate_baseline"]  # threads 1, mem_mb=1000, runtime=10
    assert ev["--cpus-per-task"] == "1" and ev["--mem"] == "1000" and ev["-t"] == "10"
    assert ev["--ntasks"] == "1" and "--gpus" not in ev
    assert subs["make_folds"]["--mem"] == "500" and subs["make_folds"]["-t"] == "5"
    for rule, flags in subs.items():
        if rule != "train_cam":
            assert "--gpus" not in flags, rule
        # --default-resources on the command line replaces the profile's mem_mb/runtime
        # defaults: every rule must (and does) set both itself
        assert flags["--mem"].isdigit() and flags["-t"].isdigit(), rule
        assert flags["-A"] == "wsss" and flags["-p"] == "gpu", rule
        assert flags["-D"] == str(Path(flags["-D"]).resolve()) and "--wrap" in flags, rule


def test_account_is_validated_and_jobs_are_polled_with_sacct(slurm_run):
    proc, calls, _ = slurm_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    names = [c["cmd"] for c in calls]
    assert "sacctmgr" in names  # slurm_account=wsss checked against the user's accounts
    status = [c["argv"] for c in calls if c["cmd"] == "sacct" and "--name" in c["argv"]]
    assert status, "the plugin never asked sacct for job states"
    run_ids = {sbatch_flags(c["argv"])["--job-name"] for c in calls if c["cmd"] == "sbatch"}
    assert len(run_ids) == 1 and {a[a.index("--name") + 1] for a in status} == run_ids


def test_profile_alone_needs_no_account_and_takes_the_default_partition(slurm_run, tmp_path):
    """Without --default-resources: no account (the plugin guesses from sacct, finds none and
    submits without -A; sacctmgr is never asked) and sinfo's default partition."""
    _, _, workdir = slurm_run
    proc, calls = run_with_fake_slurm(workdir, tmp_path, "work/embedded/folds/fold1.json", accounts="")
    assert proc.returncode == 0, proc.stderr[-4000:]
    subs = submissions(calls)
    assert set(subs) == {"make_folds"}
    flags = subs["make_folds"]
    assert "-A" not in flags and flags["-p"] == "cpu"
    assert flags["--mem"] == "500" and flags["-t"] == "5" and flags["--cpus-per-task"] == "1"
    assert "sacctmgr" not in [c["cmd"] for c in calls]
    assert (workdir / "work/embedded/folds/fold1.json").is_file()
