"""The CRNet branch of the DAG (workflow/rules/crnet.smk): dry runs of its targets (fold, all
folds, ablation, another dataset), a params error, and one real tiny run of
results/crnet_fold0 on a small generated embedded dataset."""
from __future__ import annotations

import json

import pytest

from conftest import dry_run as rule_counts, scratch_workflow, snakemake

TINY = {
    "workflow": {"train_threads": 1},
    "embedded_data": {"n_train": 60, "n_val": 40, "size": 64},
    "episodes": {"num_episodes": 10, "seeds": [0, 1], "shots": [1, 2]},
    "overrides": {"embedded": {
        "crnet": {"hidden": 8, "train": {"episodes_per_epoch": 16, "batch_size": 8, "epochs": 1},
                  "select": {"classes": 1, "episodes": 4},
                  "test": {"finetune": {"episodes": 2, "steps": 1, "shots": 2}}},
        "report": {"figure_samples": 2, "figure_cell": 64},
    }},
}


def test_dry_runs_of_the_crnet_targets(tmp_path):
    workdir = scratch_workflow(tmp_path)
    fold = rule_counts(workdir, "results/crnet_fold0")
    # 2 shot counts x 5 episode seeds, each for CRNet and the floor; one training; one finetune
    assert fold["train_crnet"] == 1 and fold["test_crnet"] == 10 and fold["test_prototype"] == 10
    assert fold["finetune_crnet"] == 1 and fold["crnet_features"] == 2 and fold["crnet_result"] == 1
    assert "train_cam" not in fold and "train_seg" not in fold  # nothing of the weak-shot branches
    every = rule_counts(workdir, "results/crnet_all")
    assert every["train_crnet"] == 4 and every["crnet_result"] == 4 and every["crnet_features"] == 2
    ablation = rule_counts(workdir, "results/crnet_ablation")
    # full + 10 variants (6 ablations, the 2 pre-paper readings, the prior and the mosaic rows), 1-shot
    assert ablation["train_crnet"] == 11 and ablation["test_crnet"] == 11 * 5
    camvid = rule_counts(workdir, "results/camvid/crnet_fold0")  # no background class
    assert camvid["train_crnet"] == 1 and "make_embedded" not in camvid
    seeds = rule_counts(workdir, "results/crnet_seeds")
    # training seeds 0 (the `full` run), 1, 2, each its own job; 3 x 2 shots x 5 episode seeds
    assert seeds["train_crnet"] == 3 and seeds["test_crnet"] == 30 and seeds["test_prototype"] == 10


def test_dry_runs_of_the_cross_dataset_targets(tmp_path):
    workdir = scratch_workflow(tmp_path)
    msrc = rule_counts(workdir, "results/msrc/crnet_from_embedded_fold0")
    # CRNet and the floor on 2 shot counts x 5 episode seeds of MSRC's cross episodes
    assert msrc["train_crnet"] == 1 and msrc["make_cross_episodes"] == 10 and msrc["test_crnet_cross"] == 20
    assert msrc["crnet_cross_result"] == 1 and "test_crnet" not in msrc and "make_episodes" not in msrc
    camvid = rule_counts(workdir, "results/camvid/crnet_from_msrc_fold1")  # no background class
    assert camvid["train_crnet"] == 1 and camvid["test_crnet_cross"] == 20 and "make_embedded" not in camvid
    both = rule_counts(workdir, "results/crnet_cross")  # crnet.cross_dataset.pairs
    assert both["crnet_cross_result"] == 2 and both["train_crnet"] == 2 and both["crnet_cross_all"] == 1


def test_unknown_cross_dataset_class_is_one_line(tmp_path):
    workdir = scratch_workflow(tmp_path, {"crnet": {"cross_dataset": {"camvid": {"classes": ["pole", "person"]}}}})
    proc = snakemake(workdir, "results/camvid/crnet_from_msrc_fold0", "-n", "--cores", "1")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "crnet.cross_dataset.camvid.classes: 'person' is not an object class of the dataset" in text


def test_unknown_ablation_variant_is_one_line(tmp_path):
    workdir = scratch_workflow(tmp_path)
    proc = snakemake(workdir, "work/embedded/fold0/crnet/nope/model.pt", "-n", "--cores", "1")
    assert proc.returncode != 0 and "crnet.ablation.variants has no variant 'nope'" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = scratch_workflow(tmp_path_factory.mktemp("crnet_dag"), TINY)
    proc = snakemake(workdir, "results/crnet_fold0", "--cores", "2")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return workdir


def test_tiny_dag_builds_the_crnet_report(tiny_run):
    out = tiny_run / "results" / "crnet_fold0"
    metrics = json.loads((out / "metrics.json").read_text())
    for kind in ("crnet", "prototype"):
        for shots in ("1shot", "2shot"):
            assert metrics[kind][shots]["miou"]["n"] == 2  # both episode seeds
    assert metrics["finetune"]["subset"] == 2 and metrics["selection"]["epochs"] == 1
    assert set(metrics["methods"]) == {"crnet", "prototype"} and "miou_1shot" in metrics["methods"]["crnet"]["val"]
    text = (out / "report.md").read_text()
    assert "Prototype floor" in text and "Refinement iterations" in text and (out / "figure.png").is_file()
    again = snakemake(tiny_run, "results/crnet_fold0", "-n", "--cores", "2")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
