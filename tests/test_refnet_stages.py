"""Ref-Net stages on a tiny dataset: train_refnet (fold and single-category settings, K
larger than available, K = 0), test_refnet, the fold report and the tables; and the bad-input
paths (one line, exit 2, nothing written): empty open-source set, unknown variant, unknown
class, a report of a non-Ref-Net file."""
from __future__ import annotations

import json

import pytest

from conftest import run_fails, run_ok, tiny_params, write_tiny_voc, write_yaml
from pipeline.methods.crnet import crnet_features
from pipeline.methods.refnet import report, tables, test_refnet, train_refnet

CAT, DOG, BUS = 1, 2, 3
TRAIN = {**{f"t{i}": [(CAT, 4 + i, 16 + i, 4, 16)] for i in range(4)},
         **{f"t{i}": [(DOG, 10, 24, 2 + i, 16 + i)] for i in range(4, 8)},
         **{f"t{i}": [(BUS, 6, 26, 6, 20)] for i in range(8, 10)}}
VAL = {**{f"v{i}": [(CAT, 4 + 2 * i, 18 + 2 * i, 6, 20)] for i in range(3)}, "v3": [(DOG, 4, 20, 4, 20)]}

SMALL = {"refnet.size": 32, "refnet.grid": 4, "refnet.hidden": 64, "refnet.min_pixels": 4,
         "refnet.train.steps": 3, "refnet.train.warmup_steps": 1, "refnet.train.batch_size": 2,
         "refnet.critic.n_critic": 2, "refnet.critic.channels": 4, "refnet.critic.diagnostic_steps": 2,
         "refnet.zero_shot_references": 2,
         "report.figure_samples": 2, "report.figure_cell": 32, "backbone.output_stride": 16}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refnet")
    data = write_tiny_voc(tmp / "tiny", TRAIN, VAL)
    params = write_yaml(tmp / "params.yaml", tiny_params(data, [["cat"]], SMALL))
    labels = data.write_labels(tmp / "labels.json")
    fold = data.write_fold(tmp / "fold0.json", [CAT])
    common = ["--params", params, "--dataset", "tiny"]
    for split in ("train", "val"):
        run_ok(crnet_features.main, common + ["--split", split, "--out", tmp / f"{split}.pt"])
    return {"tmp": tmp, "data": data, "params": params, "labels": labels, "fold": fold, "common": common}


def train(tiny, name, *extra):
    out = tiny["tmp"] / name
    out.mkdir(exist_ok=True)
    run_ok(train_refnet.main, tiny["common"] + ["--features", tiny["tmp"] / "train.pt", "--labels", tiny["labels"],
                                                 "--out", out / "model.pt", "--history", out / "history.tsv",
                                                 *extra])
    return out


def evaluate(tiny, out):
    run_ok(test_refnet.main, tiny["common"] + ["--model", out / "model.pt", "--train-features",
                                                tiny["tmp"] / "train.pt", "--val-features", tiny["tmp"] / "val.pt",
                                                "--labels", tiny["labels"], "--out", out / "eval.json",
                                                "--predictions", out / "predictions.npz"])
    return json.loads((out / "eval.json").read_text())


def test_fold_setting_trains_tests_and_reports(tiny):
    out = train(tiny, "full", "--fold-file", tiny["fold"], "--shots", "2")
    history = (out / "history.tsv").read_text().splitlines()
    assert history[0].startswith("step") and "w_outer" in history[0] and "w_inner" in history[0]
    assert len(history) == 1 + 3
    scores = evaluate(tiny, out)
    assert scores["classes"] == ["background", "cat"]
    assert set(scores["summary"]) == {"mpa", "miou", "fwiou", "novel_miou"}
    assert len(scores["setting"]["references"]["1"]) == 2 and scores["setting"]["short"] == []
    assert sum(map(sum, scores["confusion"])) == 4 * 32 * 32  # every val pixel scored once
    result = tiny["tmp"] / "result"
    run_ok(report.main, tiny["common"] + ["--scope", "fold0", "--eval", out / "eval.json", "--predictions",
                                          out / "predictions.npz", "--history", out / "history.tsv", "--out", result])
    metrics = json.loads((result / "metrics.json").read_text())
    assert metrics["fold"] == 0 and metrics["methods"]["refnet"]["val"]["miou"] == scores["summary"]["miou"]
    assert (result / "figure.png").is_file() and "w_outer" in (result / "critics.tsv").read_text()
    assert "absent" in (result / "report.md").read_text()  # no RETAB report given
    retab = tiny["tmp"] / "retab_metrics.json"
    retab.write_text(json.dumps({"methods": {"oracle": {"val": {"miou_novel": 0.5}}, "retab": {"val": {"miou_novel": 0.25}},
                                             "cam": {"val": {"miou_novel": 0.1}}}}))
    with_retab = tiny["tmp"] / "result_retab"
    run_ok(report.main, tiny["common"] + ["--scope", "fold0", "--eval", out / "eval.json", "--predictions",
                                          out / "predictions.npz", "--history", out / "history.tsv", "--retab", retab,
                                          "--out", with_retab])
    text = (with_retab / "report.md").read_text()
    assert "| RETAB Fully Oracle | – | – | – | 50.0 |" in text and "| RETAB | – | – | – | 25.0 |" in text
    assert json.loads((with_retab / "metrics.json").read_text())["retab_novel_miou"] == {"oracle": 0.5, "retab": 0.25}


def test_k_larger_than_available_uses_all_and_the_table_marks_it(tiny):
    out = train(tiny, "k9", "--fold-file", tiny["fold"], "--shots", "9", "--variant", "full")
    scores = evaluate(tiny, out)
    assert scores["setting"]["short"] == [CAT] and len(scores["setting"]["references"]["1"]) == 4
    table = tiny["tmp"] / "rk"
    run_ok(tables.main, tiny["common"] + ["--kind", "rk", "--eval", f"9:fold0:0={out / 'eval.json'}", "--out", table])
    assert "R(9)*" in (table / "report.md").read_text()


def test_single_category_with_zero_shots_and_ablation_table(tiny):
    out = train(tiny, "zero", "--target-class", "cat", "--shots", "0", "--train-seed", "1")
    scores = evaluate(tiny, out)
    assert scores["setting"]["zero_shot"] and not scores["switches"]["dice"]
    refs = scores["setting"]["references"]["1"]
    assert len(refs) == 2 and all(c != CAT for _, c in refs)  # conditioned on open-source pairs
    variant = train(tiny, "nocrit", "--fold-file", tiny["fold"], "--shots", "1", "--variant", "no_critics")
    assert "w_outer" not in (variant / "history.tsv").read_text()
    evaluate(tiny, variant)
    table = tiny["tmp"] / "ablation"
    run_ok(tables.main, tiny["common"] + ["--kind", "ablation", "--eval", f"no_critics:fold0:0={variant / 'eval.json'}",
                                          "--out", table])
    document = json.loads((table / "metrics.json").read_text())
    assert document["rows"]["no_critics"]["mean"]["miou"]["n"] == 1


def test_empty_open_source_set_is_one_line_and_nothing_written(tiny, capsys):
    # every train image holds the target class: no open-source image is left
    data = tiny["data"]
    labels = json.loads(tiny["labels"].read_text())
    for image_id in data.train:
        labels["pixel_counts"][image_id][CAT] = max(1, labels["pixel_counts"][image_id][CAT])
    bad = tiny["tmp"] / "bad_labels.json"
    bad.write_text(json.dumps(labels))
    out = tiny["tmp"] / "empty"
    run_fails(train_refnet.main, tiny["common"] + ["--features", tiny["tmp"] / "train.pt", "--labels", bad,
                                                   "--fold-file", tiny["fold"], "--shots", "1", "--out",
                                                   out / "model.pt", "--history", out / "history.tsv"],
              capsys, "fold0.json", "the open-source set is empty")
    assert not out.exists()


def test_unknown_variant_and_class_are_one_line(tiny, capsys):
    base = tiny["common"] + ["--features", tiny["tmp"] / "train.pt", "--labels", tiny["labels"], "--shots", "1",
                             "--out", tiny["tmp"] / "x" / "model.pt", "--history", tiny["tmp"] / "x" / "h.tsv"]
    run_fails(train_refnet.main, base + ["--fold-file", tiny["fold"], "--variant", "nope"], capsys,
              "refnet.ablation.variants has no variant 'nope'")
    run_fails(train_refnet.main, base + ["--target-class", "horse"], capsys, "'horse' is not an object class")
    run_fails(train_refnet.main, base + ["--fold-file", tiny["fold"], "--shots", "-1"], capsys, "--shots")
    run_fails(test_refnet.main, tiny["common"] + ["--model", tiny["labels"], "--train-features", tiny["tmp"] / "train.pt",
                                                  "--val-features", tiny["tmp"] / "val.pt", "--labels", tiny["labels"],
                                                  "--out", tiny["tmp"] / "x.json", "--predictions",
                                                  tiny["tmp"] / "x.npz"], capsys, "labels.json")
    assert not (tiny["tmp"] / "x").exists() and not (tiny["tmp"] / "x.json").exists()
