"""The DAG: dry runs of the documented targets, lint, argument order, and a real small run
of the skeleton (generate data -> image labels -> folds -> trivial prediction -> evaluate)."""
import json

import pytest

from conftest import ROOT, scratch_workflow, snakemake

TINY_DATA = {"embedded_data": {"n_train": 40, "n_val": 12, "size": 64}}


def test_lint_is_clean():
    proc = snakemake(ROOT, "--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


@pytest.mark.parametrize("target", ["results/retab_fold0", "results/retab_all", "results/camvid/retab_fold0",
                                    "results/voc/retab_fold3", "results/cam_rw_seggt_fold1", "results/baseline_fold0"])
def test_dry_run_resolves_documented_targets(tmp_path, target):
    workdir = scratch_workflow(tmp_path)
    (workdir / "data/VOCdevkit/VOC2012").mkdir(parents=True)  # users bring VOC; a dry run needs the root
    proc = snakemake(workdir, target, "-n", "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_missing_user_dataset_is_reported_by_path(tmp_path):
    workdir = scratch_workflow(tmp_path)
    proc = snakemake(workdir, "results/voc/retab_fold0", "-n", "--cores", "2")
    assert proc.returncode != 0
    assert "data/VOCdevkit/VOC2012" in proc.stdout + proc.stderr


def test_main_target_dag_shares_the_cam_stages_across_methods(tmp_path):
    workdir = scratch_workflow(tmp_path)
    proc = snakemake(workdir, "results/retab_fold0", "-n", "--cores", "2", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    assert counts["train_cam"] == 1 and counts["infer_cam"] == 1 and counts["train_boundary"] == 1
    assert counts["train_affinity"] == 3  # cam-only, gt-mixed, boundary-aware mixed
    assert counts["train_seg"] == 6  # one per table row
    assert counts["propagate"] == 3


def test_all_four_folds_share_one_cam_network(tmp_path):
    workdir = scratch_workflow(tmp_path)
    proc = snakemake(workdir, "results/retab_all", "-n", "--cores", "2", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = {ln.split()[0]: int(ln.split()[1]) for ln in proc.stdout.splitlines()
             if len(ln.split()) == 2 and ln.split()[1].isdigit()}
    assert lines["train_cam"] == 1 and lines["train_boundary"] == 4
    # shared nets: cam, cam_rw, oracle seg once; 3 fold-dependent seg nets per fold
    assert lines["train_seg"] == 3 + 3 * 4


def test_resources_before_target_is_the_documented_pitfall(tmp_path):
    workdir = scratch_workflow(tmp_path)
    good = snakemake(workdir, "results/retab_fold0", "-n", "--cores", "8", "--resources", "gpu=2")
    assert good.returncode == 0, good.stderr[-2000:]
    also_good = snakemake(workdir, "-n", "--cores", "8", "--resources", "gpu=2", "--", "results/retab_fold0")
    assert also_good.returncode == 0, also_good.stderr[-2000:]
    bad = snakemake(workdir, "-n", "--cores", "8", "--resources", "gpu=2", "results/retab_fold0")
    assert bad.returncode != 0


def test_mistyped_params_key_stops_the_workflow_with_one_line(tmp_path):
    workdir = scratch_workflow(tmp_path, {"image_labels": {"min_pixel": 2}})
    proc = snakemake(workdir, "results/baseline_fold0", "-n", "--cores", "1")
    assert proc.returncode != 0
    assert "image_labels.min_pixel: unknown key" in proc.stdout + proc.stderr


def test_skeleton_runs_end_to_end_and_second_run_does_nothing(tmp_path):
    workdir = scratch_workflow(tmp_path, TINY_DATA)
    proc = snakemake(workdir, "results/baseline_fold0", "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((workdir / "results/baseline_fold0/metrics.json").read_text())
    # all-background prediction: background IoU > 0, every object class IoU 0
    per_class = metrics["per_class_iou"]
    assert per_class["background"] > 0
    assert all(v == 0 for k, v in per_class.items() if k != "background" and v is not None)
    again = snakemake(workdir, "results/baseline_fold0", "--cores", "2")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
