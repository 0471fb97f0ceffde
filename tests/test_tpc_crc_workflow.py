"""The TPC + CRC part of the DAG (workflow/rules/crnet.smk): dry runs of its targets, the
variants as training jobs, an unknown variant."""
from __future__ import annotations

import re

from conftest import dry_run as rule_counts, scratch_workflow, snakemake


def test_dry_runs_of_the_tpc_crc_targets(tmp_path):
    workdir = scratch_workflow(tmp_path)
    fold = rule_counts(workdir, "results/crnet_tpc_crc_fold0")
    # full and tpc_crc: 2 trainings; each on 2 shot counts x 5 episode seeds; per model ONE suite job for
    # 2 stress tests x 5 episode seeds (1-shot) and L0-L7 (plain and stressed); the floor; one H-partition
    # stage on the Fully Oracle's predictions
    assert fold["train_crnet"] == 2 and fold["test_crnet"] == 20 and fold["test_prototype"] == 10
    assert fold["test_crnet_tpc_crc_suite"] == 2
    assert not {"test_crnet_stress", "test_crnet_partition", "test_crnet_partition_stress"} & set(fold)
    assert fold["make_hpartitions"] == 1 and fold["train_seg"] == 1 and fold["predict_seg"] == 1
    assert fold["crnet_tpc_crc_result"] == 1 and "train_cam" not in fold
    every = rule_counts(workdir, "results/crnet_tpc_crc_all")
    assert every["train_crnet"] == 8 and every["crnet_tpc_crc_result"] == 4 and every["make_hpartitions"] == 4
    assert every["train_seg"] == 1  # one shared oracle net for every fold
    components = rule_counts(workdir, "results/crnet_tpc_crc_components")
    # full, epoch_matched, tpc, crc, tpc_crc, crc_branch, tpc_crc_branch x training seeds 0 (the plain
    # variant), 1, 2; 1-shot x 5 episode seeds
    assert components["train_crnet"] == 21 and components["test_crnet"] == 105 and components["test_prototype"] == 5
    assert "make_hpartitions" not in components
    msrc = rule_counts(workdir, "results/msrc/crnet_tpc_crc_fold0")
    assert msrc["train_crnet"] == 2 and msrc["test_crnet_tpc_crc_suite"] == 2


def test_tpc_variants_and_their_seeds_train_as_their_own_jobs(tmp_path):
    workdir = scratch_workflow(tmp_path)
    proc = snakemake(workdir, "work/embedded/fold0/crnet/full/model.pt", "work/embedded/fold0/crnet/no_cache/model.pt",
                     "work/embedded/fold0/crnet/tpc_crc_seed1/model.pt", "-n", "-p", "--cores", "1")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert sorted(re.findall(r"--variant (\S+)", text)) == ["full", "no_cache", "tpc_crc_seed1"]


def test_unknown_variant_names_both_variant_lists(tmp_path):
    workdir = scratch_workflow(tmp_path)
    proc = snakemake(workdir, "work/embedded/fold0/crnet/nope_seed1/model.pt", "-n", "--cores", "1")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "crnet.ablation.variants has no variant 'nope'" in text
    assert "crnet.tpc_crc.variants" in text


def test_results_report_takes_the_tpc_crc_fold_reports(tmp_path):
    workdir = scratch_workflow(tmp_path, {"report": {"datasets": ["embedded"], "folds": [0],
                                                     "methods": ["crnet", "crnet_tpc_crc"], "extras": []}})
    counts = rule_counts(workdir, "results/report")
    assert counts["crnet_tpc_crc_result"] == 1 and counts["crnet_result"] == 1 and counts["report_all"] == 1
