"""Stand-in for the SLURM client commands that snakemake-executor-plugin-slurm calls.

tests/test_slurm_profile.py puts one small shell shim per command name on PATH
(`exec python fake_slurm.py <name> "$@"`). Every call appends its argv as one JSON line to
``$FAKE_SLURM_DIR/calls.jsonl``. ``sbatch`` runs the job synchronously on this machine
(``--wrap=CMD`` or a script on stdin / in a file), in the ``-D`` directory, with its
output in ``--output`` (``%j`` replaced), records COMPLETED or FAILED under the job id and
prints the id as ``sbatch --parsable`` does. ``sacct``/``squeue`` answer the plugin's
status queries (``<id>|<STATE>`` per job of the ``--name``), ``srun`` runs its command as a
job step would, ``scontrol``/``sinfo``/``sacctmgr``/``sshare`` give minimal answers.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

STATE = Path(os.environ["FAKE_SLURM_DIR"])
ACCOUNTS = os.environ.get("FAKE_SLURM_ACCOUNTS", "")  # what sacctmgr lists for the user
PARTITIONS = os.environ.get("FAKE_SLURM_PARTITIONS", "cpu* gpu")  # sinfo -o %P, '*' = default

# sbatch options that take their value as the next argument (the plugin's spelling)
SBATCH_VALUE_OPTS = {"--job-name", "-J", "--output", "-o", "--error", "-e", "--comment", "-A",
                     "--account", "-p", "--partition", "--clusters", "-M", "-t", "--time", "-C",
                     "--constraint", "--mem", "--mem-per-cpu", "-D", "--chdir", "-c", "-n", "-N",
                     "--gres", "--gpus", "-G", "--qos", "--exclude", "--array", "-a"}


@contextmanager
def locked():
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def record(name: str, argv: list[str], **extra) -> None:
    with locked(), open(STATE / "calls.jsonl", "a") as fh:
        fh.write(json.dumps({"cmd": name, "argv": argv, "cwd": os.getcwd(), **extra}) + "\n")


def load_jobs() -> dict:
    path = STATE / "jobs.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_job(job_id: str, **fields) -> None:
    with locked():
        jobs = load_jobs()
        jobs.setdefault(job_id, {}).update(fields)
        (STATE / "jobs.json").write_text(json.dumps(jobs))


def new_job_id() -> str:
    with locked():
        path = STATE / "next_id"
        job_id = int(path.read_text()) if path.exists() else 1001
        path.write_text(str(job_id + 1))
    return str(job_id)


def parse_sbatch(argv: list[str]) -> tuple[dict, list[str]]:
    """Options as {name: value} ('--x=v' and '--x v' both), and the positional rest."""
    opts, rest, i = {}, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
            opts[key] = value
        elif arg in SBATCH_VALUE_OPTS:
            opts[arg] = argv[i + 1]
            i += 1
        elif arg.startswith("-") and arg != "-":
            opts[arg] = True
        else:
            rest = argv[i:]
            break
        i += 1
    return opts, rest


def sbatch(argv: list[str]) -> int:
    opts, rest = parse_sbatch(argv)
    job_id = new_job_id()
    if "--wrap" in opts:
        cmd, script = ["/bin/sh", "-c", opts["--wrap"]], None
    elif rest and rest[0] != "/dev/stdin":
        cmd, script = ["/bin/sh", *rest], None
    else:  # the plugin's --slurm-pass-command-as-script mode: script on stdin
        cmd, script = ["/bin/sh", "-s"], sys.stdin.read()
    record("sbatch", argv, job_id=job_id, script=script)
    name = opts.get("--job-name", opts.get("-J", ""))
    save_job(job_id, name=name, state="RUNNING")
    workdir = opts.get("-D", opts.get("--chdir", os.getcwd()))
    env = dict(os.environ, SLURM_JOB_ID=job_id, SLURM_JOBID=job_id, SLURM_JOB_NAME=name,
               SLURM_CPUS_PER_TASK=str(opts.get("--cpus-per-task", 1)))
    if opts.get("--gpus"):
        env["SLURM_GPUS"] = str(opts["--gpus"])
    log = Path(workdir, str(opts.get("--output", "slurm-%j.out")).replace("%j", job_id))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        rc = subprocess.run(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                            input=script, text=True).returncode
    save_job(job_id, state="COMPLETED" if rc == 0 else "FAILED", exit_code=rc)
    print(job_id)
    return 0


def status_lines(argv: list[str]) -> str:
    name = None
    for i, arg in enumerate(argv):
        if arg == "--name" and i + 1 < len(argv):
            name = argv[i + 1]
        elif arg.startswith("--name="):
            name = arg.split("=", 1)[1]
    if name is None:  # e.g. `sacct -j ID -o nodelist`, `sacct -nu USER -o Account`
        return ""
    return "".join(f"{jid}|{job['state']}\n" for jid, job in sorted(load_jobs().items())
                   if job.get("name") == name)


def srun(argv: list[str]) -> int:
    """`srun -n1 --cpu-bind=q --cpus-per-task=N [--gpus=G] --nodes=1 CMD...`: run CMD."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 1
    if i == len(argv):
        return 2
    os.execvp(argv[i], argv[i:])
    return 127  # not reached


def main() -> int:
    name, argv = sys.argv[1], sys.argv[2:]
    if name == "sbatch":
        return sbatch(argv)  # records itself (with the job id)
    record(name, argv)
    if name in ("sacct", "squeue"):
        sys.stdout.write(status_lines(argv))
    elif name == "srun":
        return srun(argv)
    elif name == "sinfo":
        print("PARTITION")
        print("\n".join(PARTITIONS.split()))
    elif name == "scontrol":
        if argv[:2] == ["show", "config"]:
            print("MinJobAge               = 300 sec")
            print("MaxArraySize            = 1001")
    elif name == "sacctmgr":
        print("\n".join(ACCOUNTS.split()))
    elif name == "sshare":
        print("\n".join(ACCOUNTS.split()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
