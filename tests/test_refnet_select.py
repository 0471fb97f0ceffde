"""Choosing Ref-Net's critic setting on base-class data (scope select<k>, results/<d>/refnet_select):
the pure selection setting by hand, the choice of the table by hand, train + test on a select
scope of a tiny dataset (no novel image anywhere, scored on the train split's S images), the
dry run of the target, and the one-line failures (too few base classes, unknown candidate)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from conftest import dry_run as rule_counts
from conftest import crnet_dataset, run_fails, run_ok, scratch_workflow, snakemake, write_yaml
from pipeline.errors import PipelineError
from pipeline.methods.refnet import tables, test_refnet, train_refnet
from pipeline.methods.refnet.results import foreground_shares, late_critic_max
from pipeline.refnet_training import select_scope

CAT, DOG, BUS = 1, 2, 3


# --------------------------------------------------------------------------- pure parts, by hand

def test_select_scope_samples_base_classes_and_drops_every_novel_image():
    # classes 0 bg, 1..5 objects; novel {5}; base objects {1, 2, 3, 4}
    counts = {"a": [10, 5, 0, 0, 0, 0], "b": [10, 0, 5, 0, 0, 1], "c": [10, 0, 0, 5, 5, 0], "d": [10, 0, 0, 0, 0, 9]}
    targets, open_classes, kept = select_scope(counts, ["a", "b", "c", "d"], [1, 2, 3, 4], [5], 2, seed=0, fold=0)
    # numpy's rng seeded with [seed, fold] picks these positions of the sorted base classes
    expected = sorted([1, 2, 3, 4][j] for j in np.random.default_rng([0, 0]).choice(4, size=2, replace=False))
    assert targets == expected and sorted(targets + open_classes) == [1, 2, 3, 4]
    assert not set(targets) & set(open_classes)
    assert kept == ["a", "c"]  # b holds 1 px of the novel class, d holds it: both gone
    again = select_scope(counts, ["a", "b", "c", "d"], [4, 3, 2, 1], [5], 2, seed=0, fold=0)
    assert again == (targets, open_classes, kept)  # same draw whatever the order of the fold's list
    with pytest.raises(PipelineError, match=r"refnet\.select\.classes = 4 needs at least 5 base classes"):
        select_scope(counts, ["a"], [1, 2, 3, 4], [5], 4, seed=0, fold=0)


def test_health_numbers_by_hand(tmp_path):
    history = tmp_path / "history.tsv"
    history.write_text("step\tloss\tw_outer\tw_inner\n1\t1\t\t\n2\t1\t-9\t1\n3\t1\t2\t-3\n4\t1\t1\t0.5\n")
    assert late_critic_max(history) == 1.0  # last 25 % of 4 steps: step 4 only
    assert late_critic_max(history, 0.5) == 3.0  # steps 3 and 4
    history.write_text("step\tloss\n1\t1\n2\t1\n")
    assert late_critic_max(history) is None  # no critics
    assert foreground_shares([[6, 2], [1, 1]]) == {"predicted": 0.3, "ground_truth": 0.2}


def fake_eval(miou_targets, miou, confusion, weight, critics=True):
    return {"summary": {"mpa": 0.5, "miou": miou, "fwiou": 0.5, "novel_miou": miou_targets},
            "setting": {"short": []}, "classes": ["background", "dog"], "confusion": confusion,
            "select": {"adversarial_weight": weight},
            "switches": {"outer_critic": critics, "inner_critic": critics}}


def test_the_table_chooses_the_highest_mean_pseudo_target_miou(tmp_path):
    history = tmp_path / "h.tsv"
    history.write_text("step\tw_outer\tw_inner\n1\t\t\n2\t5\t-7\n3\t4\t-60\n4\t2\t1\n")
    docs = {("adv_1", "select0", 0): fake_eval(0.1, 0.5, [[9, 0], [1, 0]], 1.0),   # collapsed
            ("adv_1", "select0", 1): fake_eval(0.3, 0.6, [[8, 1], [1, 0]], 1.0),
            ("adv_0p1", "select0", 0): fake_eval(0.4, 0.6, [[8, 1], [0, 1]], 0.1),
            ("adv_0p1", "select0", 1): fake_eval(0.5, 0.7, [[8, 1], [0, 1]], 0.1),
            ("none", "select0", 0): fake_eval(0.44, 0.6, [[8, 1], [0, 1]], None, critics=False),
            ("none", "select0", 1): fake_eval(0.44, 0.6, [[8, 1], [0, 1]], None, critics=False)}
    metrics = tables.select_metrics(docs, {key: history for key in docs})
    assert metrics["chosen"] == "adv_0p1"  # means 0.2, 0.45, 0.44
    adv = metrics["candidates"]["adv_1"]
    assert adv["pseudo_target_miou"]["mean"] == pytest.approx(0.2) and adv["late_max_abs_w"] == 2.0
    assert adv["predicted_foreground_share"] == pytest.approx(0.05)  # (0 + 0.1) / 2
    assert adv["ground_truth_foreground_share"] == pytest.approx(0.1) and adv["critics"] == ["outer", "inner"]
    assert metrics["candidates"]["none"]["adversarial_weight"] is None
    assert metrics["folds"] == [0] and metrics["pseudo_targets"] == {"select0": ["dog"]}
    text = tables.render_select(metrics, "tiny")
    assert "Chosen: **adv_0p1**" in text and "fold(s) 0 of the train split" in text
    with pytest.raises(PipelineError, match="eval and history files differ"):
        tables.select_metrics(docs, {})


# --------------------------------------------------------------------------- stages on tiny data

TRAIN = {**{f"t{i}": [(CAT, 4 + i, 16 + i, 4, 16)] for i in range(4)},
         **{f"t{i}": [(DOG, 10, 24, 2 + i, 16 + i)] for i in range(4, 8)},
         "t8": [(BUS, 6, 26, 6, 20)], "t9": [(BUS, 6, 26, 6, 20), (DOG, 2, 5, 2, 5)]}
VAL = {"v0": [(BUS, 4, 20, 4, 20)], "v1": [(CAT, 4, 20, 4, 20)]}
SMALL = {"refnet.size": 32, "refnet.grid": 4, "refnet.hidden": 64, "refnet.min_pixels": 4,
         "refnet.train.steps": 3, "refnet.train.warmup_steps": 1, "refnet.train.batch_size": 2,
         "refnet.critic.n_critic": 1, "refnet.critic.channels": 4, "refnet.critic.diagnostic_steps": 2,
         "report.figure_samples": 2,
         "backbone.output_stride": 16, "refnet.select.classes": 1,
         "refnet.select.candidates": {"adv_half": {"adversarial_weight": 0.5},
                                      "no_critics": {"inner_critic": False, "outer_critic": False}}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refnet_select")
    _, params, labels, fold, common = crnet_dataset(tmp, TRAIN, VAL, SMALL, ("train", "val"), novel="bus")
    return {"tmp": tmp, "params": params, "labels": labels, "fold": fold, "common": common}


def stage_args(tiny, out, variant):
    return tiny["common"] + ["--features", tiny["tmp"] / "train.pt", "--labels", tiny["labels"], "--shots", "2",
                             "--select-fold-file", tiny["fold"], "--variant", variant, "--out", out / "model.pt",
                             "--history", out / "history.tsv"]


def test_select_scope_trains_on_base_classes_and_scores_the_train_s_images(tiny):
    evals = {}
    for variant in ("adv_half", "no_critics"):
        out = tiny["tmp"] / variant
        out.mkdir()
        run_ok(train_refnet.main, stage_args(tiny, out, variant))
        run_ok(test_refnet.main, tiny["common"] + [
            "--model", out / "model.pt", "--train-features", tiny["tmp"] / "train.pt", "--val-features",
            tiny["tmp"] / "val.pt", "--labels", tiny["labels"], "--out", out / "eval.json", "--predictions",
            out / "predictions.npz"])
        evals[variant] = json.loads((out / "eval.json").read_text())
    scores = evals["adv_half"]
    setting = scores["setting"]
    assert setting["targets"] in ([CAT], [DOG]) and str(BUS) not in setting["references"]
    refs = [i for pairs in setting["references"].values() for i, _ in pairs]
    assert len(refs) == 2 and not {"t8", "t9"} & set(refs)  # t9 holds dog but also bus: removed
    assert scores["scored_on"] == "unlabelled" and scores["select"]["adversarial_weight"] == 0.5
    # the S images of the train split (4 images of the pseudo-target, 2 of them references), never val
    assert sum(map(sum, scores["confusion"])) == setting["unlabelled"] * 32 * 32 == 2 * 32 * 32
    assert evals["no_critics"]["switches"]["outer_critic"] is False
    assert "w_outer" not in (tiny["tmp"] / "no_critics" / "history.tsv").read_text()
    table = tiny["tmp"] / "table"
    run_ok(tables.main, tiny["common"] + ["--kind", "select", "--out", table] + [
        arg for v in evals for arg in ("--eval", f"{v}:select0:0={tiny['tmp'] / v / 'eval.json'}",
                                       "--history", f"{v}:select0:0={tiny['tmp'] / v / 'history.tsv'}")])
    metrics = json.loads((table / "metrics.json").read_text())
    best = max(sorted(evals), key=lambda v: evals[v]["summary"]["novel_miou"])
    assert metrics["table"] == "select" and metrics["chosen"] == best
    assert metrics["candidates"]["no_critics"]["late_max_abs_w"] is None
    assert f"Chosen: **{best}**" in (table / "report.md").read_text()


def test_a_candidate_on_the_fold_scope_trains_its_weight_on_the_novel_classes(tiny):
    # refnet.critics_check.candidates: the chosen setting, then run on the fold (scored on val)
    out = tiny["tmp"] / "fold_candidate"
    out.mkdir()
    args = [a if a != "--select-fold-file" else "--fold-file" for a in stage_args(tiny, out, "adv_half")]
    run_ok(train_refnet.main, args)
    meta = torch.load(out / "model.pt", weights_only=True)["meta"]
    assert meta["adversarial_weight"] == 0.5 and meta["variant"] == "adv_half" and "select" not in meta
    assert meta["setting"]["targets"] == [BUS]  # the fold's novel class, not a pseudo-target
    run_ok(test_refnet.main, tiny["common"] + [
        "--model", out / "model.pt", "--train-features", tiny["tmp"] / "train.pt", "--val-features",
        tiny["tmp"] / "val.pt", "--labels", tiny["labels"], "--out", out / "eval.json", "--predictions",
        out / "predictions.npz"])
    assert json.loads((out / "eval.json").read_text())["scored_on"] == "val"


def test_too_few_base_classes_and_unknown_candidate_are_one_line(tiny, capsys):
    out = tiny["tmp"] / "bad"
    run_fails(train_refnet.main, stage_args(tiny, out, "nope"), capsys,
              "refnet.select.candidates has no candidate 'nope'")
    raw = yaml.safe_load(tiny["params"].read_text())
    raw["refnet"]["select"]["classes"] = 2  # base objects: cat, dog -> 2 + 1 needed
    many = write_yaml(tiny["tmp"] / "many.yaml", raw)
    args = stage_args(tiny, out, "adv_half")
    args[args.index(tiny["params"])] = many
    run_fails(train_refnet.main, args, capsys, "params.yaml", "refnet.select.classes = 2 needs at least 3")
    assert not out.exists()


# --------------------------------------------------------------------------- the DAG

def test_dry_run_of_refnet_select_and_unknown_candidate(tmp_path):
    workdir = scratch_workflow(tmp_path)
    counts = rule_counts(workdir, "results/refnet_select")  # 6 candidates x fold 0 x 2 training seeds
    assert counts["train_refnet"] == 12 and counts["test_refnet"] == 12 and counts["refnet_table"] == 1
    assert counts["publish_refnet_default"] == 1 and "train_crnet" not in counts
    msrc = rule_counts(workdir, "results/msrc/refnet_select")
    assert msrc["train_refnet"] == 12 and "make_embedded" not in msrc
    proc = snakemake(workdir, "work/embedded/select0/refnet/nope/10shot_seed0/model.pt", "-n", "--cores", "1")
    assert proc.returncode != 0 and "refnet.select.candidates has no candidate 'nope'" in proc.stdout + proc.stderr
    proc = snakemake(workdir, "work/embedded/select0/refnet/adv_0p1/10shot_seed0/model.pt", "-n", "--cores", "1",
                     "-p")
    assert proc.returncode == 0 and "--select-fold-file work/embedded/folds/fold0.json" in proc.stdout
