"""The L-Net / P-Net branch of the DAG (workflow/rules/lnet.smk): dry runs of its targets,
what it shares with the RETAB branch, named split-sets, and params errors."""
from __future__ import annotations

import pytest

from conftest import dry_run, rule_counts, scratch_workflow, snakemake


def test_pnet_target_reuses_the_shared_cam_and_oracle_stages(tmp_path):
    counts = dry_run(scratch_workflow(tmp_path), "results/pnet_fold0")
    assert counts["train_cam"] == 1 and counts["infer_cam"] == 1 and counts["pseudo_labels"] == 1
    assert counts["train_seg"] == 1  # the RETAB branch's oracle, nothing else of that branch
    assert counts["evaluate_seg"] == 1  # the oracle's evaluation on the same fold file
    assert counts["train_lnet"] == 1 and counts["infer_lnet"] == 1 and counts["self_diffusion"] == 1
    assert counts["lnet_train_seg"] == 2  # CAM-only and L-Net rows, via the shared train_seg stage
    assert counts["train_pnet"] == 1 and counts["lnet_predict_seg"] == 3
    assert counts["lnet_evaluate_val"] == 3 and counts["lnet_evaluate_pseudo"] == 2
    assert counts["lnet_result"] == 1 and counts["publish_default_dataset"] == 1
    for retab_only in ("train_boundary", "train_affinity", "propagate"):
        assert retab_only not in counts


def test_lnet_target_needs_no_pnet_and_other_datasets_resolve(tmp_path):
    workdir = scratch_workflow(tmp_path)
    counts = dry_run(workdir, "results/lnet_fold0")
    assert "train_pnet" not in counts and counts["lnet_train_seg"] == 2 and counts["lnet_evaluate_val"] == 2
    camvid = dry_run(workdir, "results/camvid/pnet_fold0")
    assert camvid["train_pnet"] == 1 and "make_embedded" not in camvid


def test_named_split_set_gets_its_own_fold_file_and_oracle_evaluation(tmp_path):
    split = {"lnet": {"split": "shapes", "split_sets": {"shapes": [
        ["red_striped_disc", "blue_checkered_square", "green_dotted_triangle", "yellow_shaded_star",
         "purple_speckled_ring", "red_dotted_disc"]]}}}
    workdir = scratch_workflow(tmp_path, {"overrides": {"embedded": split}})
    proc = snakemake(workdir, "results/pnet_fold0", "-n", "-p", "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "work/embedded/lnet_splits/shapes/fold0.json" in log
    assert "work/embedded/fold0/lnet/shapes/eval/oracle_val.json" in log
    assert "--novel-classes red_striped_disc,blue_checkered_square" in log
    counts = rule_counts(snakemake(workdir, "results/pnet_fold0", "-n", "--cores", "2", "--quiet", "rules").stdout)
    assert counts["lnet_split_fold"] == 1 and counts["lnet_evaluate_val"] == 4


@pytest.mark.parametrize("overrides, message", [
    ({"lnet": {"split": "nonexistent"}}, "lnet.split = 'nonexistent' is neither pascal5i nor a key"),
    ({"pnet": {"lambda_adv": -1}}, "pnet.lambda_adv"),
    ({"pnet": {"pretrain": "yes"}}, "pnet.pretrain"),
    ({"lnet": {"train": {"epoch": 3}}}, "lnet.train.epoch: unknown key"),
])
def test_bad_branch_params_stop_the_workflow_with_the_key(tmp_path, overrides, message):
    workdir = scratch_workflow(tmp_path, overrides)
    proc = snakemake(workdir, "results/pnet_fold0", "-n", "--cores", "1")
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
