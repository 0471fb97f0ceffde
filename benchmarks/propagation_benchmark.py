"""Dense matrix-power random walk (PSA) vs the sparse step walk, at VOC scale.

    python benchmarks/propagation_benchmark.py [--threads 2] [--json benchmarks/out/propagation.json]
    python benchmarks/propagation_benchmark.py --threads 2 --load 2 --wait-policy both

Defaults: a 56 x 56 feature grid (448 px crops at stride 8), 21 channels (background + 20
classes), radius 5, logt 8, beta 8, alpha 16. Inputs are synthetic but structured: a
feature map made of random elliptical regions (so affinities are high inside a region and
low across), foreground CAMs peaked on some regions. Every variant runs the same work,
from the pair affinities to the walked CAMs (graph/transition construction + walk), in
float32 as PSA does, in its *own subprocess* with the same thread count (timing runs and
memory runs are separate subprocesses). Peak memory is the peak RSS of the run (Linux
VmHWM, reset after the inputs are loaded) minus the RSS at that point: it counts numpy,
scipy and torch allocations alike (tracemalloc would miss torch's), and the memory run sets
glibc's ``MALLOC_MMAP_THRESHOLD_`` so that arrays cannot hide in heap pages freed earlier.
Variants:

* ``dense``        PSA: dense ``A``, ``T = A / A.sum(0)``, ``logt`` squarings, ``cams @ T``;
* ``sparse-torch`` ``2 ** logt`` CSR x dense steps in torch (MKL), the pipeline default;
* ``sparse-scipy`` the same steps with scipy's CSR product;
* ``stencil``      the same steps as shifted multiply-adds over dense per-offset weight planes
  (``random_walk_stencil``: no index arrays, one ``addcmul_`` per disc offset and step).

The arithmetic floor: the walk's multiply-adds (``nnz(T) x channels x 2 ** logt``, counted
from the actual transition) at the float32 matrix-multiply rate measured on the same
threads in the same run (``torch.mm`` of 1024 x 1024 matrices, best of 5, in its own
subprocess): each variant's time is printed as a multiple of that floor.

The max abs difference of each variant to the dense result and to a float64 reference
(sparse walk in float64) is printed with the timings.

Busy machines (``--load N``, ``--wait-policy``): the sparse walk is 256 small parallel
products, each ending in an OpenMP barrier, so it suffers most when the cores are shared.
``--load N`` measures every variant twice, idle and beside N busy threads of load (bounded
in time: each load process exits after ``--load-seconds`` at the latest, and all are
stopped when the measurement ends). ``--load-kind spin``: N single-threaded pure-Python
busy loops; ``torch``: one process training a small conv net on N torch threads (like a
training stage beside the walk; it gets the same wait policy as the measurement).
``--wait-policy default|passive|both`` runs the measurement processes with OpenMP's own
default (idle threads spin ~300k iterations before they sleep: ``OMP_WAIT_POLICY=``) and/or
with ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep at once: what ``pipeline/__init__.py``
sets for every stage); ``inherit`` (the default) takes the caller's environment as a stage
would. The policy must reach the OpenMP runtime before torch loads it, hence one fresh
process per variant and condition. A table of the dense/sparse ratio per condition follows
the main table, with the max |diff| of every output to the same variant's output in the first
condition (the wait policy and the load must not change any number: 0 expected).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

VARIANTS = ("dense", "sparse-torch", "sparse-scipy", "stencil")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: The caller's OpenMP wait policy, read before anything imports ``pipeline`` (which sets
#: PASSIVE when it is unset) so that ``--wait-policy inherit`` passes on what the caller had.
CALLER_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
#: --wait-policy -> OMP_WAIT_POLICY for the measurement processes (None: the caller's).
#: An empty value makes ``pipeline`` leave the variable unset: the runtime's own default.
WAIT_POLICIES = {"inherit": None, "default": "", "passive": "PASSIVE"}


def _proc_status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def start_peak_window() -> tuple[float, str]:
    """Reset the peak-RSS mark to the current RSS; return (baseline MiB, how it is measured).

    Linux: writing 5 to /proc/self/clear_refs resets VmHWM, so the later peak is the peak
    of this window only (the imports' own transient peak no longer hides it). Elsewhere
    the fallback is ru_maxrss, which can under-report growth below an earlier peak.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        rss = _proc_status_mib("VmRSS")
        if rss is not None:
            return rss, "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "ru_maxrss"


def peak_since_window(how: str) -> float:
    """Peak RSS (MiB) since :func:`start_peak_window`."""
    if how == "VmHWM":
        return _proc_status_mib("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_inputs(height: int, width: int, channels: int, radius: int, n_features: int, seed: int):
    """Structured synthetic inputs: (pair affinities (M,), foreground CAMs (channels-1, H, W))."""
    import numpy as np
    import torch

    from pipeline.propagation.affinity import pairwise_affinity

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    region = np.zeros((height, width), dtype=np.int64)
    n_regions = 8
    centres_yx = []
    for r in range(1, n_regions):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry = rng.uniform(min(4.0, height / 4), max(height / 3, 2.0))
        rx = rng.uniform(min(4.0, width / 4), max(width / 3, 2.0))
        region[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = r
        centres_yx.append((cy, cx))
    centres = rng.normal(0, 1.0, size=(n_regions, n_features))
    feats = centres[region].transpose(2, 0, 1) + rng.normal(0, 0.15, size=(n_features, height, width))
    with torch.no_grad():
        aff = pairwise_affinity(torch.from_numpy(feats[None].astype(np.float32)), radius)[0].numpy()
    fg = np.zeros((channels - 1, height, width), dtype=np.float32)
    for r, (cy, cx) in enumerate(centres_yx, start=1):
        c = rng.integers(0, channels - 1)
        peak = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40.0)
        fg[c] = np.maximum(fg[c], (peak * (region == r)).astype(np.float32))
    fg += rng.uniform(0, 0.1, size=fg.shape).astype(np.float32)
    fg /= np.maximum(fg.max(axis=(1, 2), keepdims=True), 1e-5)
    return aff.astype(np.float32), fg


def run_variant(variant: str, aff, cams, height: int, width: int, radius: int, beta: float, logt: int):
    """Graph construction + walk for one variant; returns (walked C x N, build_s, walk_s)."""
    from pipeline.propagation.random_walk import (
        dense_affinity_matrix,
        random_walk_dense,
        random_walk_sparse,
        random_walk_stencil,
        stencil_transition,
        transition_from_affinity,
    )

    import numpy as np

    start = time.perf_counter()
    if variant == "dense":
        a = dense_affinity_matrix(aff, height, width, radius, beta, dtype=np.float32)
        built = time.perf_counter()
        out = random_walk_dense(cams, a, logt)
    elif variant == "stencil":
        offsets, planes = stencil_transition(aff, height, width, radius, beta)
        built = time.perf_counter()
        out = random_walk_stencil(cams, offsets, planes, logt)
    else:
        t = transition_from_affinity(aff, height, width, radius, beta)
        built = time.perf_counter()
        out = random_walk_sparse(cams, t, logt, backend=variant.split("-", 1)[1])
    done = time.perf_counter()
    return out, built - start, done - built


#: glibc serves allocations of at least this size with their own mmap and unmaps them on
#: free. In the memory run that makes ru_maxrss track live memory: without it, arrays reuse
#: heap pages freed by the imports and input loading, and a variant's peak can read as 0.
MMAP_THRESHOLD = 65536


def load_worker(args) -> None:
    """Subprocess body of one load process: busy until ``--load-deadline`` (epoch seconds)
    or until its parent (the benchmark) is gone, whichever comes first."""
    parent = os.getppid()
    deadline = args.load_deadline
    if args.load_worker == "spin":
        while time.time() < deadline and os.getppid() == parent:
            for _ in range(100_000):
                pass
        return
    import pipeline  # noqa: F401  (applies OMP_WAIT_POLICY before torch loads OpenMP)
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,))
    while time.time() < deadline and os.getppid() == parent:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


class Load:
    """``threads`` busy threads beside the measurement (context manager; stopped on exit)."""

    def __init__(self, kind: str, threads: int, seconds: float, policy: str):
        self.kind, self.threads, self.seconds, self.policy = kind, threads, seconds, policy
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Load":
        deadline = time.time() + self.seconds
        n_procs, per_proc = (self.threads, 1) if self.kind == "spin" else (1, self.threads)
        env = policy_env(self.policy)
        env.update({name: str(per_proc) for name in THREAD_VARS})
        for _ in range(n_procs):
            self.procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--load-worker", self.kind,
                 "--load-deadline", str(deadline), "--threads", str(per_proc)], env=env, cwd=REPO_ROOT))
        time.sleep(2.0 if self.kind == "torch" else 0.5)  # torch's import; then the load is steady
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def describe(self) -> str:
        if self.kind == "spin":
            return f"{self.threads} busy proc(s)"
        return f"torch training, {self.threads} thread(s)"


def matmul_rate_worker(args) -> None:
    """Subprocess body: the float32 multiply-add rate of ``torch.mm`` (1024^3) on ``--threads``."""
    import pipeline  # noqa: F401  (OpenMP wait policy before torch loads)
    import torch

    torch.set_num_threads(args.threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    Path(args.result).write_text(json.dumps({"macs_per_s": 1024 ** 3 / best}))


def matmul_rate(args, workdir: Path, policy: str) -> float:
    """Multiply-adds per second of a large float32 matmul, measured in a fresh process."""
    env = policy_env(policy)
    env.update({name: str(args.threads) for name in THREAD_VARS})
    result = workdir / "matmul-rate.json"
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--matmul-rate", "--result", str(result),
                    "--threads", str(args.threads)], check=True, env=env, cwd=REPO_ROOT)
    return json.loads(result.read_text())["macs_per_s"]


def worker(args) -> None:
    """Subprocess body: load inputs, run one variant, write its result files.

    ``--mode time``: best of ``--repeats`` runs; ``--mode memory``: one run, peak memory.
    """
    import numpy as np

    import pipeline.propagation.random_walk  # noqa: F401  (imports happen before the baseline)
    import torch

    torch.set_num_threads(args.threads)
    with np.load(args.inputs) as data:
        aff, cams = data["aff"], data["cams"]
    baseline, how = start_peak_window()
    runs = []
    out = None
    for _ in range(args.repeats if args.mode == "time" else 1):
        out, build_s, walk_s = run_variant(args.worker, aff, cams, args.height, args.width,
                                           args.radius, args.beta, args.logt)
        runs.append((build_s + walk_s, build_s, walk_s))
    peak = peak_since_window(how)
    best = min(runs)
    np.save(args.result + ".npy", out)
    Path(args.result + ".json").write_text(json.dumps({
        "variant": args.worker, "mode": args.mode, "total_s": best[0], "build_s": best[1], "walk_s": best[2],
        "peak_mem_mib": peak - baseline, "baseline_mib": baseline, "memory_measure": how, "runs": len(runs)}))


def policy_env(policy: str) -> dict:
    """os.environ with OMP_WAIT_POLICY as ``--wait-policy`` ``policy`` wants it (the
    subprocess imports ``pipeline`` before torch, which applies it)."""
    env = dict(os.environ)
    value = WAIT_POLICIES[policy]
    if value is None:
        value = CALLER_WAIT_POLICY
    if value is None:
        env.pop("OMP_WAIT_POLICY", None)
    else:
        env["OMP_WAIT_POLICY"] = value
    return env


def spawn(variant: str, mode: str, args, inputs: Path, workdir: Path, policy: str = "inherit",
          tag: str = "") -> dict:
    """Run one variant in a fresh interpreter (same thread count for every variant)."""
    import numpy as np

    env = policy_env(policy)
    env.update({name: str(args.threads) for name in THREAD_VARS})
    if mode == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    result = workdir / f"{variant}-{mode}{tag}"
    repeats = args.dense_repeats if variant == "dense" else args.repeats
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--mode", mode,
           "--inputs", str(inputs), "--result", str(result), "--threads", str(args.threads),
           "--repeats", str(repeats), "--height", str(args.height), "--width", str(args.width),
           "--radius", str(args.radius), "--beta", str(args.beta), "--logt", str(args.logt)]
    subprocess.run(cmd, check=True, env=env, cwd=REPO_ROOT)
    info = json.loads(Path(str(result) + ".json").read_text())
    info["output"] = np.load(str(result) + ".npy")
    return info


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=56)
    parser.add_argument("--width", type=int, default=56)
    parser.add_argument("--channels", type=int, default=21, help="background + foreground channels")
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--beta", type=float, default=8.0)
    parser.add_argument("--logt", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--features", type=int, default=64, help="feature channels of the synthetic map")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timed runs per sparse variant")
    parser.add_argument("--dense-repeats", type=int, default=1,
                        help="timed runs of the dense variant (~10 s each on 2 cores)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--load", type=int, default=0,
                        help="also measure beside N busy threads of load (0: idle only)")
    parser.add_argument("--load-kind", default="spin", choices=("spin", "torch"),
                        help="spin: N single-threaded busy loops; torch: one N-thread training loop")
    parser.add_argument("--load-seconds", type=float, default=900.0,
                        help="upper bound on each load process's life (it is stopped earlier when done)")
    parser.add_argument("--wait-policy", default="inherit", choices=(*WAIT_POLICIES, "both"),
                        help="OMP_WAIT_POLICY of the measurement: inherit (the caller's; pipeline sets PASSIVE "
                             "when unset), default (OpenMP's own: spin, then sleep), passive, both")
    parser.add_argument("--matmul-rate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load-worker", default=None, choices=("spin", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--load-deadline", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="time", choices=("time", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--inputs", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.matmul_rate:
        matmul_rate_worker(args)
        return {}
    if args.load_worker:
        load_worker(args)
        return {}
    if args.worker:
        worker(args)
        return {}
    if args.load < 0 or args.load_seconds <= 0:
        parser.error("--load must be >= 0 and --load-seconds > 0")
    # the first policy fills the main table: PASSIVE, what the stages run with
    policies = ["passive", "default"] if args.wait_policy == "both" else [args.wait_policy]

    import numpy as np

    from pipeline.propagation.random_walk import background_channel, random_walk_sparse, transition_from_affinity

    if "dense" not in args.variants:
        args.variants = ["dense", *args.variants]
    aff, fg = make_inputs(args.height, args.width, args.channels, args.radius, args.features, args.seed)
    cams = np.concatenate([background_channel(fg, args.alpha)[None], fg]).astype(np.float32)
    n = args.height * args.width
    transition = transition_from_affinity(aff, args.height, args.width, args.radius, args.beta)
    reference = random_walk_sparse(cams.astype(np.float64), transition, args.logt)
    walk_macs = transition.nnz * cams.shape[0] * 2 ** args.logt
    with tempfile.TemporaryDirectory(prefix="propagation-bench-") as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, aff=aff, cams=cams)
        # conditions: (name, policy, load or None); the first one fills the main table
        conditions = [("idle", policy, None) for policy in policies]
        if args.load:
            conditions += [("load", policy, Load(args.load_kind, args.load, args.load_seconds, policy))
                           for policy in policies]
        runs = []
        for i, (name, policy, load) in enumerate(conditions):
            loadavg = os.getloadavg()[0]
            with load or contextlib.nullcontext():
                timed = {variant: spawn(variant, "time", args, inputs, Path(tmp), policy, f"-{i}")
                         for variant in args.variants}
            runs.append({"condition": name, "wait_policy": policy, "loadavg_1min_before": loadavg,
                         "load": load.describe() if load else "none", "results": timed})
        results = runs[0]["results"]
        macs_per_s = matmul_rate(args, Path(tmp), policies[0])
        for variant in args.variants:  # memory does not depend on load or policy: measured once, idle
            memory = spawn(variant, "memory", args, inputs, Path(tmp), policies[0])
            results[variant].update(peak_mem_mib=memory["peak_mem_mib"], memory_measure=memory["memory_measure"])

    dense = results["dense"]
    print(f"\nrandom walk, {args.height}x{args.width} grid (N={n}), {args.channels} channels, radius {args.radius}, "
          f"{aff.size} pairs, beta {args.beta:g}, logt {args.logt} ({2 ** args.logt} steps), float32, "
          f"{args.threads} thread(s), best of {args.dense_repeats} dense / {args.repeats} sparse runs, "
          f"idle, OpenMP wait policy: {policy_label(policies[0])}")
    floor_s = walk_macs / macs_per_s
    header = (f"{'variant':<13} {'total s':>9} {'build s':>9} {'walk s':>9} {'speedup':>9} {'x floor':>8} "
              f"{'peak MiB':>9} {'max|d| dense':>13} {'max|d| f64':>11}")
    print(header)
    print("-" * len(header))
    summary = {"config": {k: getattr(args, k) for k in ("height", "width", "channels", "radius", "beta", "logt",
                                                        "alpha", "threads", "repeats", "dense_repeats")},
               "pairs": int(aff.size), "walk_macs": int(walk_macs), "matmul_macs_per_s": macs_per_s,
               "floor_s": floor_s, "variants": {}}
    for name, info in results.items():
        diff_dense = float(np.abs(info["output"] - dense["output"]).max())
        diff_ref = float(np.abs(info["output"] - reference.reshape(info["output"].shape)).max())
        speedup = dense["total_s"] / info["total_s"]
        print(f"{name:<13} {info['total_s']:>9.3f} {info['build_s']:>9.3f} {info['walk_s']:>9.3f} {speedup:>8.1f}x "
              f"{info['walk_s'] / floor_s:>7.1f}x "
              f"{info['peak_mem_mib']:>9.1f} {diff_dense:>13.2e} {diff_ref:>11.2e}")
        summary["variants"][name] = {k: info[k] for k in ("total_s", "build_s", "walk_s", "peak_mem_mib")}
        summary["variants"][name].update(speedup_vs_dense=speedup, walk_over_floor=info["walk_s"] / floor_s,
                                         max_abs_diff_vs_dense=diff_dense,
                                         max_abs_diff_vs_float64=diff_ref)
    print(f"floor: {walk_macs / 1e9:.2f} G multiply-adds (nnz(T) {transition.nnz} x {cams.shape[0]} channels x "
          f"{2 ** args.logt} steps) at the measured float32 matmul rate {macs_per_s / 1e9:.1f} G multiply-adds/s "
          f"({args.threads} thread(s)) = {floor_s * 1e3:.2f} ms; 'x floor' = walk s / floor")
    measure = dense["memory_measure"]
    print(f"peak MiB: peak RSS ({measure}) minus RSS after loading the inputs, in a separate run of each variant "
          f"in its own process with MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD} (freed memory is not silently reused); "
          f"one dense N x N float32 matrix is {n * n * 4 / 2 ** 20:.1f} MiB")
    print(f"load average at the end (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cores: timings of a busy machine are noisy")
    for fast_name in ("sparse-torch", "stencil"):
        fast = summary["variants"].get(fast_name)
        if not fast:
            continue
        ok_speed = fast["speedup_vs_dense"] >= 50
        ok_diff = fast["max_abs_diff_vs_dense"] <= 1e-4
        ok_floor = fast["walk_over_floor"] <= 2
        print(f"{fast_name} vs dense: {fast['speedup_vs_dense']:.1f}x faster (target >= 50x: "
              f"{'met' if ok_speed else 'NOT met'}), walk {fast['walk_over_floor']:.1f}x the floor (target <= 2x: "
              f"{'met' if ok_floor else 'NOT met'}), max |diff| {fast['max_abs_diff_vs_dense']:.2e} "
              f"(target <= 1e-4: {'met' if ok_diff else 'NOT met'})")
    if len(runs) > 1 or args.wait_policy != "inherit":
        summary["conditions"] = report_conditions(runs, args)
    if args.json:
        from pipeline.io import write_json

        write_json(args.json, summary)
    return summary


def policy_label(policy: str) -> str:
    if policy == "inherit":
        value = CALLER_WAIT_POLICY
        return f"inherit ({value if value is not None else 'PASSIVE via pipeline'})"
    return {"default": "OpenMP default", "passive": "PASSIVE"}[policy]


def report_conditions(runs: list[dict], args) -> list[dict]:
    """Print and return the dense / sparse ratio of every condition (idle / load x policy)."""
    import numpy as np

    sparse = [v for v in args.variants if v != "dense"]
    first = runs[0]["results"]
    print(f"\nper condition ({args.threads} thread(s); load avg = 1-min load average before the condition, "
          f"the machine's other jobs included; max|d| = max |diff| to the same variant in the first row):")
    header = (f"{'condition':<38} {'wait policy':<30} {'load avg':>8} {'dense s':>8} "
              + " ".join(f"{v + ' s':>15} {'ratio':>7}" for v in sparse) + f" {'max|d|':>8}")
    print(header)
    print("-" * len(header))
    rows = []
    for run in runs:
        res = run["results"]
        diff = max(float(np.abs(res[v]["output"] - first[v]["output"]).max()) for v in res)
        cond = run["condition"] + ("" if run["load"] == "none" else f" ({run['load']})")
        cells = " ".join(f"{res[v]['total_s']:>15.3f} {res['dense']['total_s'] / res[v]['total_s']:>6.1f}x"
                         for v in sparse)
        print(f"{cond:<38} {policy_label(run['wait_policy']):<30} {run['loadavg_1min_before']:>8.2f} "
              f"{res['dense']['total_s']:>8.3f} {cells} {diff:>8.1e}")
        rows.append({"condition": run["condition"], "load": run["load"], "wait_policy": run["wait_policy"],
                     "loadavg_1min_before": run["loadavg_1min_before"], "max_abs_diff_vs_first": diff,
                     "total_s": {v: res[v]["total_s"] for v in res},
                     "ratio_dense_over": {v: res["dense"]["total_s"] / res[v]["total_s"] for v in sparse}})
    return rows


if __name__ == "__main__":
    main()
