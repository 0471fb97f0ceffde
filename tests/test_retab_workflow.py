"""The RETAB branch for real, on tiny embedded data (40 train / 12 val images of 64 px, one
epoch per network, one torch thread per job): the whole `results/retab_fold0` DAG, a second
invocation that does nothing, selective reruns after a params edit, and byte-identical
reruns (determinism). One module-scoped run feeds every test (~2 min on 2 cores)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, scratch_workflow, snakemake

TINY = {
    "workflow": {"train_threads": 1},  # two one-thread jobs at a time on --cores 2
    "embedded_data": {"n_train": 40, "n_val": 12, "size": 64},
    "overrides": {"embedded": {
        "cam": {"train": {"crop": 64, "epochs": 1}, "infer": {"scales": [1.0]}},
        "boundary": {"train": {"crop": 64, "epochs": 1}},
        "affinity": {"train": {"crop": 64, "epochs": 1}},
        "segmentation": {"train": {"crop": 64, "epochs": 1}},
        "report": {"figure_samples": 2, "figure_cell": 64},
    }},
}
TARGET = "results/retab_fold0"
# Jobs that must not rerun when only the random walk's parameters change.
UPSTREAM_OF_PROPAGATION = ("train_cam", "infer_cam", "train_boundary", "infer_boundary", "train_affinity",
                           "seg_features")


def digests(directory: Path) -> dict[str, str]:
    """sha256 of every file below ``directory`` (snakemake's hidden .snakemake_timestamp excluded)."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def planned_rules(workdir: Path, *args: str) -> dict[str, int]:
    """{rule: job count} snakemake would run (dry run)."""
    proc = snakemake(workdir, TARGET, "-n", "--cores", "2", "--quiet", "rules", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = scratch_workflow(tmp_path_factory.mktemp("retab_dag"), TINY)
    proc = snakemake(workdir, TARGET, "--cores", "2")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return workdir


def test_the_main_target_builds_the_paper_table(tiny_run):
    out = tiny_run / TARGET
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["figure.png", "metrics.json", "per_class_iou.csv", "report.md"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"cam", "cam_rw", "cam_rw_seggt", "cam_rw_affgt_seggt", "retab", "oracle"}
    for method, entry in metrics["methods"].items():
        for key in ("miou", "miou_base", "miou_novel"):
            assert 0.0 <= entry["val"][key] <= 1.0, (method, key)
    # pseudo labels are scored for every method that has them (all but the oracle)
    assert metrics["methods"]["oracle"]["pseudo"] is None
    assert all(metrics["methods"][m]["pseudo"]["miou_novel"] is not None for m in ("cam", "cam_rw", "retab"))
    report = (out / "report.md").read_text()
    assert "| Method | all | base | novel |" in report and "| CAM+RETAB |" in report
    header = (out / "per_class_iou.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["class", "novel"] and "retab" in header
    # the alias of the default dataset is the published copy of results/embedded/retab_fold0
    assert digests(out) == digests(tiny_run / "results/embedded/retab_fold0")


def test_second_invocation_does_nothing(tiny_run):
    proc = snakemake(tiny_run, TARGET, "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_propagation_param_edit_reruns_only_the_walk_and_what_follows(tiny_run, tmp_path):
    params_path = tiny_run / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["overrides"]["embedded"].setdefault("propagation", {})["beta"] = 10
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        planned = planned_rules(tiny_run)
    finally:
        params_path.write_text(original)
    assert planned["propagate"] == 3 and planned["pseudo_labels"] == 3
    assert not set(UPSTREAM_OF_PROPAGATION) & set(planned), planned
    # the four rows trained on random-walk pseudo labels retrain; the CAM-threshold row and
    # the oracle do not read the walk: their nets stay
    assert planned["train_seg"] == 4 and planned["predict_seg"] == 4
    assert planned_rules(tiny_run) == {}, "restoring params.yaml must leave nothing to do"


# The fold-independent stages: they read the images and the image-level labels, never the folds.
# (confident_labels is per fold: its `auto` thresholds follow the fold's CAM threshold; cheap)
SHARED_CAM_STAGES = ("image_labels", "train_cam", "infer_cam", "eval_cam", "seg_features")


@pytest.mark.parametrize("edit", ["fold lists", "novel_min_pixels"])
def test_a_fold_edit_reruns_no_cam_job(tiny_run, edit):
    """Editing the folds (their class lists, or the novel-sample rule) redoes the folds and what
    reads them; the CAM network, its CAMs and the segmentation features stay (at VOC scale
    those are the hours of GPU time)."""
    params_path = tiny_run / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    entry = params["datasets"]["embedded"]
    if edit == "fold lists":  # fold 0 without its last class; folds 1-3 as PASCAL-5i
        classes = entry["classes"]
        entry["novel_classes"] = [classes[1:5]] + [classes[5 * i + 1:5 * i + 6] for i in (1, 2, 3)]
    else:
        entry["novel_min_pixels"] = 50
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        planned = planned_rules(tiny_run)
    finally:
        params_path.write_text(original)
    assert planned.get("make_folds") == 1 and planned.get("train_boundary") == 1, planned
    assert not set(SHARED_CAM_STAGES) & set(planned), planned
    assert planned_rules(tiny_run) == {}, "restoring params.yaml must leave nothing to do"


def test_same_seed_gives_byte_identical_pseudo_labels_and_metrics(tiny_run):
    pseudo = tiny_run / "work/embedded/fold0/pseudo/retab"
    before_pseudo, before_metrics = digests(pseudo), digests(tiny_run / TARGET)
    assert before_pseudo, f"no pseudo labels under {pseudo}"
    proc = snakemake(tiny_run, TARGET, "--cores", "2", "--forcerun", "propagate")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert digests(pseudo) == before_pseudo
    assert digests(tiny_run / TARGET) == before_metrics


def test_seed_spread_script_retrains_the_dag_segmentation_nets_with_other_seeds(tiny_run):
    """scripts/seg_seed_spread.py: retrained with the DAG's seed, a net reproduces the DAG's
    scores exactly (so the script runs the DAG's stages); another seed gives another net; the
    table holds the DAG's run plus the new one, with mean and std over both."""
    import subprocess
    import sys

    import torch

    script = str(ROOT / "scripts/seg_seed_spread.py")
    cmd = [sys.executable, script, "--methods", "retab", "--seeds", "7", "--threads", "1", "--check-dag-seed"]
    proc = subprocess.run(cmd, cwd=tiny_run, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "retab seed 0: reproduces the DAG's scores exactly" in proc.stdout
    spread = tiny_run / "work/embedded/fold0/seed_spread"
    rows = json.loads((spread / "spread.json").read_text())["rows"]
    runs = rows["retab"]["runs"]
    assert [run["seed"] for run in runs] == [0, 7]
    dag_scores = json.loads((tiny_run / "work/embedded/fold0/eval/retab_val.json").read_text())
    assert runs[0]["miou"] == dag_scores["miou"]
    values = [run["miou_novel"] for run in runs]
    assert rows["retab"]["summary"]["miou_novel"]["mean"] == pytest.approx(sum(values) / 2)
    assert rows["retab"]["summary"]["miou_novel"]["std"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    assert "| CAM+RETAB | 0,7 |" in (spread / "spread.md").read_text()

    def weights(path):
        return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]

    dag_net = weights(tiny_run / "work/embedded/fold0/seg/retab/model.pt")
    rerun, other = (weights(spread / f"retab/seed{s}/model.pt") for s in (0, 7))
    assert all(torch.equal(dag_net[k], rerun[k]) for k in dag_net)
    assert not all(torch.equal(dag_net[k], other[k]) for k in dag_net)
    # a second call trains nothing: every (method, seed) already has its eval.json
    again = subprocess.run(cmd, cwd=tiny_run, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "reproduces" in again.stdout


def test_affinity_transfer_probe_on_the_tiny_run(tiny_run):
    """scripts/affinity_transfer_probe.py pools pair affinities of every affinity variant
    over the fold's novel samples: every pair type is counted, means are affinities."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "scripts/affinity_transfer_probe.py"), "--threads", "1"],
                          cwd=tiny_run, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    doc = json.loads((tiny_run / "work/embedded/fold0/affinity_probe.json").read_text())
    assert sorted(doc["variants"]) == ["cam", "gt", "retab"]
    for result in doc["variants"].values():
        assert result["pairs"]["within_novel"] > 0 and result["pairs"]["across"] > 0
        for key in ("affinity", "affinity_pow_beta"):
            assert all(0.0 <= v <= 1.0 for v in result[key].values() if v is not None)
    assert "| cam |" in proc.stdout and "novel / base" in proc.stdout


def test_seed_spread_script_on_an_unfinished_fold_says_what_to_run(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(ROOT / "scripts/seg_seed_spread.py"), "--fold", "2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: work/params/effective.yaml: missing; run `snakemake results/retab_fold2` first"]
    probe = subprocess.run([sys.executable, str(ROOT / "scripts/affinity_transfer_probe.py"), "--fold", "1"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 2
    assert probe.stderr.strip().splitlines() == [
        "error: work/params/effective.yaml: missing; run `snakemake results/retab_fold1` first"]


# --------------------------------------------------------------------------- DVC on top

def run_tool(workdir: Path, *args: str, timeout: int = 900):
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # dvc's cmd runs snakemake
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(list(args), cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{(proc.stdout + proc.stderr)[-3000:]}"
    return proc.stdout + proc.stderr


def test_dvc_repro_exp_run_metrics_plots_and_linked_cache(tiny_run):
    """dvc repro of the main stage on top of the tiny run, then `dvc exp run -S
    propagation.beta=10`: only the walk and what follows rerun (the networks' files keep
    their mtime), metrics/plots commands work, and the cache holds links, not copies."""
    import shutil
    import sys

    shutil.copy(ROOT / "dvc.yaml", tiny_run / "dvc.yaml")
    shutil.copy(ROOT / ".gitignore", tiny_run / ".gitignore")
    shutil.copy(ROOT / ".dvcignore", tiny_run / ".dvcignore")
    shutil.copytree(ROOT / "pipeline", tiny_run / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    dvc = [sys.executable, "-m", "dvc"]
    run_tool(tiny_run, "git", "init", "-q")
    run_tool(tiny_run, *dvc, "init", "-q")
    shutil.copy(ROOT / ".dvc/config", tiny_run / ".dvc/config")
    run_tool(tiny_run, "git", "add", "-A")
    run_tool(tiny_run, *git, "commit", "-q", "-m", "tiny")

    networks = [tiny_run / "work/embedded/shared/cam/model.pt", tiny_run / "work/embedded/shared/cam/cams",
                *sorted((tiny_run / "work/embedded/fold0").glob("*/model.pt")),
                *sorted((tiny_run / "work/embedded/fold0/affinity").glob("*/model.pt"))]
    assert len(networks) >= 5, networks
    before = {p: p.stat().st_mtime_ns for p in networks}
    # dvc's cmd starts snakemake through its launcher script, the test ran `python -m
    # snakemake`: the same interpreter param, so nothing reruns
    run_tool(tiny_run, *dvc, "repro", "retab@0")
    assert {p: p.stat().st_mtime_ns for p in networks} == before
    metrics = tiny_run / TARGET / "metrics.json"
    cached = metrics.is_symlink() or metrics.stat().st_nlink > 1
    assert cached, "results/retab_fold0 was copied into the DVC cache, not linked"
    shown = run_tool(tiny_run, *dvc, "metrics", "show")
    assert "results/retab_fold0/metrics.json" in shown
    run_tool(tiny_run, *git, "add", "-A")
    run_tool(tiny_run, *git, "commit", "-q", "-m", "repro")

    pseudo = tiny_run / "work/embedded/fold0/pseudo/retab"
    pseudo_before = pseudo.stat().st_mtime_ns
    run_tool(tiny_run, *dvc, "exp", "run", "retab@0", "-S", "propagation.beta=10")
    assert {p: p.stat().st_mtime_ns for p in networks} == before  # no network retrained
    assert pseudo.stat().st_mtime_ns > pseudo_before                # the walk ran again
    assert "propagation.beta" in run_tool(tiny_run, *dvc, "exp", "show", "--csv")
    run_tool(tiny_run, *dvc, "metrics", "diff")
    run_tool(tiny_run, *dvc, "plots", "show", "-o", "plots_out")
    assert (tiny_run / "plots_out/index.html").is_file()
