"""The Ref-Net branch of the DAG (workflow/rules/refnet.smk): dry runs of its targets (fold,
R(K) over all folds, ablation, critics check, single category, MSRC), params errors at DAG
construction, and one real tiny run of results/refnet_fold0 on a small generated dataset."""
from __future__ import annotations

import json

import pytest

from conftest import dry_run as rule_counts, scratch_workflow, snakemake

TINY = {
    "workflow": {"train_threads": 1},
    "embedded_data": {"n_train": 60, "n_val": 20, "size": 64},
    "overrides": {"embedded": {
        "refnet": {"size": 32, "grid": 8, "min_pixels": 4,
                   "train": {"steps": 3, "warmup_steps": 1, "batch_size": 2},
                   "critic": {"n_critic": 1, "channels": 4}},
        "report": {"figure_samples": 2, "figure_cell": 64},
    }},
}


def test_dry_runs_of_the_refnet_targets(tmp_path):
    workdir = scratch_workflow(tmp_path)
    fold = rule_counts(workdir, "results/refnet_fold0")
    assert fold["train_refnet"] == 1 and fold["test_refnet"] == 1 and fold["refnet_result"] == 1
    assert fold["crnet_features"] == 2 and "train_crnet" not in fold and "train_cam" not in fold
    every = rule_counts(workdir, "results/refnet_all")  # 5 K values x 4 folds, each its own job
    assert every["train_refnet"] == 20 and every["refnet_table"] == 1
    ablation = rule_counts(workdir, "results/refnet_ablation")  # full + 7 variants on fold 0
    assert ablation["train_refnet"] == 8
    critics = rule_counts(workdir, "results/refnet_critics")  # full, no_critics x 3 training seeds (no candidate)
    assert critics["train_refnet"] == 6
    cow = rule_counts(workdir, "results/msrc/refnet_single_cow")  # K in 0, 1, 5, 10
    assert cow["train_refnet"] == 4 and "make_embedded" not in cow
    msrc = rule_counts(workdir, "results/msrc/refnet_all")
    assert msrc["train_refnet"] == 5 * 3


def test_results_report_includes_refnet(tmp_path):
    workdir = scratch_workflow(tmp_path, {"report": {"datasets": ["embedded"], "methods": ["refnet"], "extras": []}})
    counts = rule_counts(workdir, "results/report")
    assert counts["refnet_result"] == 4 and counts["report_all"] == 1 and "train_seg" not in counts


def test_params_errors_stop_before_any_job(tmp_path):
    workdir = scratch_workflow(tmp_path)
    proc = snakemake(workdir, "work/embedded/fold0/refnet/nope/10shot_seed0/model.pt", "-n", "--cores", "1")
    assert proc.returncode != 0 and "refnet.ablation.variants has no variant 'nope'" in proc.stdout + proc.stderr
    proc = snakemake(workdir, "results/msrc/refnet_single_horse", "-n", "--cores", "1")
    assert proc.returncode != 0 and "'horse' is not an object class of dataset 'msrc'" in proc.stdout + proc.stderr
    proc = snakemake(workdir, "results/refnet_fold7", "-n", "--cores", "1")
    assert proc.returncode != 0
    (tmp_path / "bad_candidate").mkdir()
    bad = scratch_workflow(tmp_path / "bad_candidate", {"refnet": {"critics_check": {"candidates": ["nope"]}}})
    proc = snakemake(bad, "results/refnet_critics", "-n", "--cores", "1")
    assert proc.returncode != 0 and "refnet.critics_check.candidates: 'nope'" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = scratch_workflow(tmp_path_factory.mktemp("refnet_dag"), TINY)
    proc = snakemake(workdir, "results/refnet_fold0", "--cores", "2")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return workdir


def test_tiny_dag_builds_the_refnet_report(tiny_run):
    out = tiny_run / "results" / "refnet_fold0"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "refnet" and metrics["fold"] == 0 and metrics["shots"] == 10
    assert set(metrics["methods"]["refnet"]["val"]) >= {"mpa", "miou", "fwiou", "novel_miou"}
    assert (out / "figure.png").is_file() and (out / "critics.tsv").read_text().startswith("step\tw_outer")
    again = snakemake(tiny_run, "results/refnet_fold0", "-n", "--cores", "2")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
