"""The DAG: dry runs of the documented targets, lint, argument order, bad input that stops it
before any job (folds, dataset roots), and a real small run of the skeleton (generate data ->
image labels -> folds -> trivial prediction -> evaluate)."""
import json

import pytest
import yaml

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


def stopped_before_any_job(proc, workdir, *needles: str) -> str:
    """A (real, not dry) run failed with exactly one line 'error: ...' naming each of ``needles``,
    at DAG construction: no data generated, no job log, work/ holds only the effective params."""
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]
    errors = [line.strip() for line in log.splitlines() if line.strip().startswith("error: ")]
    assert len(errors) == 1, log[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert not (workdir / "data").exists() and not (workdir / "logs").exists()
    assert [p.name for p in (workdir / "work").iterdir()] == ["params"]
    return errors[0]


@pytest.mark.parametrize("target, fold", [("results/retab_fold9", 9), ("results/pnet_fold9", 9),
                                          ("results/embedded/cam_fold7", 7)])
def test_fold_the_dataset_lacks_stops_before_any_job(tmp_path, target, fold):
    workdir = scratch_workflow(tmp_path)
    line = stopped_before_any_job(snakemake(workdir, target, "--cores", "1", timeout=300), workdir)
    assert line == f"error: params.yaml: datasets.embedded.novel_classes: dataset 'embedded' has folds 0..3, not {fold}"


@pytest.mark.parametrize("novel_classes, needles", [
    ([["red_striped_disc"], ["nonexistent"]], ("datasets.embedded.novel_classes[1]: unknown class 'nonexistent'",)),
    ({"k": 21}, ("datasets.embedded.novel_classes.k: k = 21 is more than the 20 object classes",)),
    ({"k": 0}, ("datasets.embedded.novel_classes.k: k = 0 must be >= 1",)),
])
def test_bad_folds_stop_before_any_job(tmp_path, novel_classes, needles):
    """Every fold is checked where a fold file is planned: fold 0 is fine here, the spec is not."""
    workdir = scratch_workflow(tmp_path, {"datasets": {"embedded": {"novel_classes": novel_classes}}})
    proc = snakemake(workdir, "results/baseline_fold0", "--cores", "1", timeout=300)
    stopped_before_any_job(proc, workdir, "error: params.yaml: ", *needles)


def test_k_folds_plan_k_folds(tmp_path):
    workdir = scratch_workflow(tmp_path, {"datasets": {"embedded": {"novel_classes": {"k": 3}}}})
    proc = snakemake(workdir, "results/retab_all", "-n", "--cores", "2", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = {ln.split()[0]: int(ln.split()[1]) for ln in proc.stdout.splitlines()
              if len(ln.split()) == 2 and ln.split()[1].isdigit()}
    assert counts["make_folds"] == 3 and counts["train_boundary"] == 3 and counts["retab_result"] == 3
    proc = snakemake(workdir, "results/retab_fold3", "--cores", "1", timeout=300)
    stopped_before_any_job(proc, workdir, "datasets.embedded.novel_classes: dataset 'embedded' has folds 0..2, not 3")


def test_missing_user_dataset_root_stops_before_any_job(tmp_path):
    workdir = scratch_workflow(tmp_path)
    proc = snakemake(workdir, "results/voc/retab_fold0", "--cores", "1", timeout=300)
    stopped_before_any_job(proc, workdir, "error: params.yaml: datasets.voc.root: data/VOCdevkit/VOC2012 not found",
                           "SegmentationClassAug/", "train_aug.txt", "docs/datasets.md, 'VOC 2012 + SBD'")
    gone = tmp_path / "nowhere"
    (tmp_path / "camvid").mkdir()
    workdir = scratch_workflow(tmp_path / "camvid", {"datasets": {"camvid": {"root": str(gone)}}})
    proc = snakemake(workdir, "results/camvid/baseline_fold0", "--cores", "1", timeout=300)
    line = stopped_before_any_job(proc, workdir, f"error: params.yaml: datasets.camvid.root: {gone} not found")
    assert "VOC" not in line


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
    assert lines["train_cam"] == 1 and lines["infer_cam"] == 1 and lines["train_boundary"] == 4
    # shared net: the oracle seg once; 5 fold-dependent seg nets per fold (the cam row's
    # threshold is chosen on each fold's base samples, and the CAM-only walk learns from the
    # fold's confident labels: their pseudo labels and nets are per fold)
    assert lines["train_seg"] == 1 + 5 * 4 and lines["cam_threshold"] == 4
    assert lines["confident_labels"] == 4 and lines["train_affinity"] == 3 * 4


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


def test_a_dataset_file_adds_a_dataset_without_editing_params_yaml(tmp_path):
    """datasets/<name>.yaml beside the Snakefile: results/<name>/... resolve, its schedule
    applies, and a bad file stops the run with one line naming the file and the key."""
    workdir = scratch_workflow(tmp_path)  # datasets/msrc.yaml copied with it
    doc = yaml.safe_load((workdir / "datasets" / "msrc.yaml").read_text())
    doc["data"]["root"] = str(tmp_path / "msrc_here")  # any existing root: a dry run reads no image
    (tmp_path / "msrc_here").mkdir()
    (workdir / "datasets" / "msrc.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = snakemake(workdir, "results/msrc/retab_fold2", "-n", "--cores", "1", "--quiet", "rules", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train_boundary" in proc.stdout and "retab_result" in proc.stdout
    effective = yaml.safe_load((workdir / "work/params/effective.yaml").read_text())
    assert effective["overrides"]["msrc"]["propagation"]["logt"] == "auto"  # what the stages read
    proc = snakemake(workdir, "results/msrc/retab_fold3", "-n", "--cores", "1", timeout=300)
    assert proc.returncode != 0 and "dataset 'msrc' has folds 0..2, not 3" in proc.stdout + proc.stderr
    doc["params"]["cam"]["trian"] = {}
    (workdir / "datasets" / "msrc.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    proc = snakemake(workdir, "results/msrc/retab_fold0", "-n", "--cores", "1", timeout=300)
    errors = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if "error:" in line]
    assert proc.returncode != 0 and len(errors) == 1, errors
    assert "datasets/msrc.yaml: params.cam.trian: unknown key" in errors[0]
