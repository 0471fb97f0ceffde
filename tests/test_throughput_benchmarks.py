"""Smoke tests of the throughput benchmarks at tiny sizes (benchmarks/*.py): they run, print
their tables and return numbers; none of their figures is checked here (those are machine
measurements, docs/operations.md)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pseudo_label_path_benchmark_runs_at_tiny_size(tmp_path, capsys):
    bench = load_benchmark("pseudo_label_path_benchmark")
    summary = bench.main(["--height", "48", "--width", "64", "--threads", "1", "--repeats", "1",
                          "--schedule", "cpu", "--json", str(tmp_path / "path.json")])
    printed = capsys.readouterr().out
    (res,) = summary["schedules"]
    assert set(res["times"]) == set(bench.STAGES) and all(t > 0 for t in res["times"].values())
    assert set(res["anchors"]) == {"walk", "cam"}
    # the walk of the path and its dense anchor walk the same scores
    assert res["notes"]["walk_max_abs_diff_vs_dense"] <= 1e-4
    assert res["total_s"] == sum(res["times"].values()) and res["extrapolated_hours"] > 0
    assert "10582 images" in printed and "anchor/ours" in printed
    assert (tmp_path / "path.json").exists()


def test_dataset_state_benchmark_flags_what_exceeds_the_limit(capsys):
    bench = load_benchmark("dataset_state_benchmark")
    summary = bench.main(["--height", "48", "--width", "64", "--images", "100", "--schedule", "cpu",
                          "--limit-gib", "0.001"])
    rows = {row["state"]: row for row in summary["schedules"]["cpu"]}
    cache = rows["seg_features cache"]
    assert cache["bytes_per_image"] == 2 * cache["shape"][0] * cache["shape"][1] * cache["shape"][2]
    assert abs(cache["total_gib"] - 100 * cache["bytes_per_image"] / 2 ** 30) < 1e-12
    assert "OVER 0.001 GiB: seg_features cache" in capsys.readouterr().out


def test_job_startup_benchmark_reads_snakemake_benchmark_files():
    bench = load_benchmark("job_startup_benchmark")
    summary = bench.main(["--jobs", "1", "--kinds", "shell", "python"])
    assert set(summary["per_kind"]) == {"shell", "python"}
    assert all(row["median_s"] >= 0 for row in summary["per_kind"].values())
