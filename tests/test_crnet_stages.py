"""CRNet stages on a tiny dataset: crnet_features, train_crnet (base classes only, held-out
selection, resume), test_crnet (CRNet with fusion and iterations, the prototype floor, the
finetune), the report; and the bad-input paths (one line, exit 2, nothing written)."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import BUS, CAT, DOG, crnet_eval_args as eval_args, run_fails, run_ok
from pipeline.data.episodes import read_episodes
from pipeline.methods.crnet import cross_dataset, report, test_crnet, train_crnet
from pipeline.stages import make_episodes

@pytest.fixture(scope="module")
def tiny(crnet_tiny):
    return crnet_tiny


def test_training_selects_on_heldout_base_episodes_and_records_it(tiny):
    history = (tiny["tmp"] / "history.tsv").read_text().splitlines()
    assert "heldout_miou" in history[0].split("\t") and len(history) == 3
    meta = torch.load(tiny["tmp"] / "model.pt", weights_only=True)["meta"]
    assert meta["selected_epoch"] in (1, 2) and meta["novel_classes"] == [CAT]
    assert not (tiny["tmp"] / "model.best.pt").exists() and not (tiny["tmp"] / "model.checkpoint.pt").exists()


def test_training_pairs_never_use_a_novel_class_and_drop_removes_novel_images(tiny):
    from pipeline.crnet_training import draw_pairs
    import numpy as np

    images = {DOG: ["t0", "t1"], BUS: ["t6", "t7"]}
    pairs = draw_pairs(images, {DOG: ["t6"], BUS: ["t0"]}, 50, 0.3, np.random.default_rng(0))
    assert {p["class"] for p in pairs} == {DOG, BUS}
    for p in pairs:
        assert p["support"] in images[p["class"]]
        assert (p["query"] in images[p["class"]] and p["query"] != p["support"]) == p["positive"]
    assert any(not p["positive"] for p in pairs)
    settings = train_crnet.variant_settings({"crnet": {"train": {"novel_images": "drop"}, "ablation": {
        "variants": {}}}}, "full")
    assert settings["novel_images"] == "drop" and settings["cross_reference"] and not settings["single_level"]


# Hand-built label sets (pixel counts per class id) for the protocol: classes 0 background,
# 1-2 novel, 3-6 base. Each image's role is written beside it.
PROTOCOL_COUNTS = {
    "only_novel": [900, 100, 0, 0, 0, 0, 0],        # novel object alone: never a training image (PFENet/HSNet)
    "two_novel": [800, 100, 100, 0, 0, 0, 0],       # novel objects alone: never
    "base3": [900, 0, 0, 100, 0, 0, 0],             # base 3
    "base3_novel": [800, 100, 0, 100, 0, 0, 0],     # base 3 + novel: kept by background, dropped by drop (BAM)
    "base4": [900, 0, 0, 0, 100, 0, 0],
    "base4b": [900, 0, 0, 0, 100, 0, 0],
    "tiny3": [995, 0, 0, 5, 0, 0, 0],               # 5 px of base 3 only (< min_pixels): holds no base class
    "sel5": [900, 0, 0, 0, 0, 100, 0],              # base 5 / 6: candidates to play novel in selection
    "sel5b": [900, 0, 0, 0, 0, 100, 0],
    "sel6": [900, 0, 0, 0, 0, 0, 100],
    "sel6b": [900, 0, 0, 0, 0, 0, 100],
    "sel5_novel": [800, 100, 0, 0, 0, 100, 0],      # a selection class with a novel object: out of selection
    "sel5_base3": [800, 0, 0, 100, 0, 100, 0],      # a selection class beside base 3: out of training
}


def test_protocol_negatives_and_relabelled_images_only_from_images_holding_a_base_class():
    from pipeline.crnet_training import negative_queries, protocol_images

    ids = list(PROTOCOL_COUNTS)
    train, held = protocol_images(PROTOCOL_COUNTS, ids, [3, 4], [5, 6], [1, 2], "background", 16)
    assert train == ["base3", "base3_novel", "base4", "base4b"]
    assert held == ["sel5", "sel5b", "sel6", "sel6b", "sel5_base3"]
    negatives = negative_queries(PROTOCOL_COUNTS, train, [3, 4])
    assert negatives == {3: ["base4", "base4b"], 4: ["base3", "base3_novel"]}
    # no negative query and no training image is an image of novel objects alone
    assert not {"only_novel", "two_novel", "tiny3"} & (set(train) | {i for v in negatives.values() for i in v})
    drop, held_drop = protocol_images(PROTOCOL_COUNTS, ids, [3, 4], [5, 6], [1, 2], "drop", 16)
    assert drop == ["base3", "base4", "base4b"] and held_drop == held


def test_selection_classes_are_seeded_base_classes_never_novel_nor_trained():
    from pipeline.crnet_training import protocol_images, select_classes

    ids = list(PROTOCOL_COUNTS)
    chosen = select_classes(PROTOCOL_COUNTS, ids, [3, 4, 5, 6], [1, 2], 2, 0, 0, 16)
    assert chosen == select_classes(PROTOCOL_COUNTS, ids, [3, 4, 5, 6], [1, 2], 2, 0, 0, 16)
    assert len(chosen) == 2 and set(chosen) <= {3, 4, 5, 6}
    others = {tuple(select_classes(PROTOCOL_COUNTS, ids, [3, 4, 5, 6], [1, 2], 2, s, 0, 16)) for s in range(20)}
    assert len(others) > 1                                   # the seed decides
    trained = [c for c in (3, 4, 5, 6) if c not in chosen]
    train, held = protocol_images(PROTOCOL_COUNTS, ids, trained, chosen, [1, 2], "background", 16)
    assert not set(train) & set(held)
    for i in train:                                          # no training image shows a selection class
        assert all(PROTOCOL_COUNTS[i][c] == 0 for c in chosen)
    for i in held:                                           # no selection image shows a novel class
        assert PROTOCOL_COUNTS[i][1] == PROTOCOL_COUNTS[i][2] == 0


def test_selection_classes_need_one_class_left_to_train(capsys):
    from pipeline.crnet_training import select_classes
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="crnet.select.classes = 4"):
        select_classes(PROTOCOL_COUNTS, list(PROTOCOL_COUNTS), [3, 4, 5, 6], [1, 2], 4, 0, 0, 16)


def test_crnet_prototype_and_finetune_evaluations(tiny):
    tmp = tiny["tmp"]
    run_ok(test_crnet.main, eval_args(tiny, tmp / "ep2.jsonl", 2, tmp / "crnet2.json", "--model", tmp / "model.pt"))
    doc = json.loads((tmp / "crnet2.json").read_text())
    assert doc["summary"]["episodes"] == 6 and set(doc["by_iterations"]) == {"1", "2", "3", "4", "5"}
    assert doc["by_iterations"]["5"] == doc["summary"]
    assert len(doc["episodes"]) == 6 and set(doc["episodes"][0]) == {"class", "inter", "union"}
    assert 0.0 <= doc["summary"]["miou"] <= 1.0
    run_ok(test_crnet.main, eval_args(tiny, tmp / "ep1.jsonl", 1, tmp / "proto1.json", "--prototype"))
    proto = json.loads((tmp / "proto1.json").read_text())
    assert proto["method"] == "prototype" and "by_iterations" not in proto
    # clean synthetic colours: the floor finds the cat squares
    assert proto["summary"]["miou"] > 0.3
    run_ok(test_crnet.main, eval_args(tiny, tmp / "ep2.jsonl", 2, tmp / "ft.json", "--model", tmp / "model.pt",
                                      "--finetune"))
    ft = json.loads((tmp / "ft.json").read_text())
    assert ft["subset"] == 2 and ft["fusion"]["episodes"] == 2 and ft["finetune"]["episodes"] == 2


def test_fold_report_and_aggregate_and_ablation(tiny):
    tmp = tiny["tmp"]
    for name, args in (("c1", ["--model", tmp / "model.pt"]), ("p1", ["--prototype"])):
        run_ok(test_crnet.main, eval_args(tiny, tmp / "ep1.jsonl", 1, tmp / f"{name}.json", *args))
    if not (tmp / "ft.json").exists():
        run_ok(test_crnet.main, eval_args(tiny, tmp / "ep2.jsonl", 2, tmp / "ft.json", "--model", tmp / "model.pt",
                                          "--finetune"))
    out = tmp / "result"
    run_ok(report.main, tiny["common"] + ["--fold", 0, "--eval", f"crnet:1:0={tmp / 'c1.json'}",
                                          "--eval", f"crnet:1:1={tmp / 'c1.json'}",
                                          "--eval", f"prototype:1:0={tmp / 'p1.json'}", "--finetune", tmp / "ft.json",
                                          "--history", tmp / "history.tsv", "--model", tmp / "model.pt",
                                          "--features", tmp / "val.pt", "--fold-file", tiny["fold"],
                                          "--episodes", tmp / "ep1.jsonl", "--out", out])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["crnet"]["1shot"]["miou"]["n"] == 2 and metrics["crnet"]["1shot"]["miou"]["std"] == 0.0
    assert set(metrics["iterations"]["1shot"]) == {"1", "2", "3", "4", "5"}
    text = (out / "report.md").read_text()
    assert "Prototype floor" in text and "fusion vs finetune" in text and "Refinement iterations" in text
    # the yardstick: both settings, the trivial rows beside CRNet and the floor, per class
    for needle in ("Yardstick, 1-shot, standard episodes", "Yardstick, 1-shot, labelled-background episodes",
                   "| All foreground (the class everywhere) |", "| All background |", "| CRNet |", "cat ("):
        assert needle in text, needle
    assert set(metrics["yardstick"]["1shot"]["settings"]["standard"]["rows"]) >= {
        "CRNet", "Prototype floor (PANet, no alignment)", "All foreground (the class everywhere)", "All background"}
    assert (out / "figure.png").stat().st_size > 0
    run_ok(report.main, ["--aggregate", out, out, "--out", tmp / "all"])
    assert json.loads((tmp / "all" / "metrics.json").read_text())["crnet"]["1shot"]["miou"]["mean"] == \
        metrics["crnet"]["1shot"]["miou"]["mean"]
    assert "Yardstick over folds, 1-shot, labelled-background" in (tmp / "all" / "report.md").read_text()
    run_ok(report.main, ["--ablation", "--eval", f"full:0:0={tmp / 'c1.json'}",
                         "--eval", f"no_cache:0:0={tmp / 'c1.json'}", "--out", tmp / "abl"])
    assert "no_cache" in (tmp / "abl" / "report.md").read_text()


def _summary_file(path, miou, fb_iou):
    path.write_text(json.dumps({"summary": {"miou": miou, "fb_iou": fb_iou}}))
    return path


def test_training_seed_suffix_changes_only_the_seed():
    assert train_crnet.split_training_seed("full_seed2") == ("full", 2)
    assert train_crnet.split_training_seed("no_cache_seed10") == ("no_cache", 10)
    assert train_crnet.split_training_seed("full") == ("full", None)
    assert train_crnet.split_training_seed("seed3") == ("seed3", None)   # no variant before the suffix
    params = {"crnet": {"train": {"novel_images": "background"}, "ablation": {"variants": {"no_cache": {"cache": False}}}}}
    assert train_crnet.variant_settings(params, "no_cache_seed1") == train_crnet.variant_settings(params, "no_cache")
    assert train_crnet.variant_settings(params, "full_seed1") == train_crnet.variant_settings(params, "full")


def test_training_seeds_report_spread_and_worst_margin(tmp_path):
    # CRNet 1-shot mIoU per training seed (mean over 2 episode seeds): 0.30, 0.20, 0.40; floor 0.25
    evals = []
    for t, (a, b) in {0: (0.29, 0.31), 1: (0.19, 0.21), 2: (0.40, 0.40)}.items():
        for e, v in enumerate((a, b)):
            evals += ["--eval", f"crnet:{t}:0:1:{e}={_summary_file(tmp_path / f'c{t}{e}.json', v, 0.6)}"]
    for e in (0, 1):
        evals += ["--eval", f"prototype:0:0:1:{e}={_summary_file(tmp_path / f'p{e}.json', 0.25, 0.5)}"]
    run_ok(report.main, ["--training-seeds", *evals, "--out", tmp_path / "seeds"])
    cell = json.loads((tmp_path / "seeds" / "metrics.json").read_text())["folds"]["0"]["1shot"]
    over = cell["crnet"]["miou"]["over_training_seeds"]
    assert over["mean"] == pytest.approx(0.30) and over["std"] == pytest.approx(0.10)   # stdev(0.3, 0.2, 0.4)
    assert cell["crnet"]["miou"]["per_training_seed"]["1"]["std"] == pytest.approx(0.01414, abs=1e-4)
    assert cell["seeds_above_floor_miou"] == 2 and cell["worst_margin_miou"] == pytest.approx(-0.05)
    assert "30.0 ± 10.0" in (tmp_path / "seeds" / "report.md").read_text()


def test_training_seeds_report_needs_the_floor(tmp_path, capsys):
    path = _summary_file(tmp_path / "c.json", 0.3, 0.6)
    run_fails(report.main, ["--training-seeds", "--eval", f"crnet:0:0:1:0={path}", "--out", tmp_path / "s"], capsys,
              "prototype")
    assert not (tmp_path / "s").exists()


def _write_episodes(path, rows):
    path.write_text("".join(json.dumps({"episode": i, "class_name": "cat", **r}) + "\n" for i, r in enumerate(rows)))
    return path


def test_bad_episodes_one_line_and_nothing_written(tiny, capsys):
    tmp = tiny["tmp"]
    out = tmp / "bad.json"
    missing = _write_episodes(tmp / "missing.jsonl", [{"class": CAT, "query": "v0", "supports": ["v9"]}])
    run_fails(test_crnet.main, eval_args(tiny, missing, 1, out, "--prototype"), capsys, str(missing), "'v9'",
              "val split")
    assert not out.exists()
    # k larger than the supports an episode has
    run_fails(test_crnet.main, eval_args(tiny, tmp / "ep1.jsonl", 2, out, "--prototype"), capsys,
              "ep1.jsonl", "1 supports", "--shots 2")
    # a novel class of the fold without any episode (it has no val image)
    fold2 = tiny["data"].write_fold(tmp / "fold_catdog.json", [CAT, BUS])
    args = eval_args(tiny, tmp / "ep1.jsonl", 1, out, "--prototype")
    args[args.index("--fold-file") + 1] = fold2
    run_fails(test_crnet.main, args, capsys, "ep1.jsonl", "'bus'", "no val image")
    assert not out.exists()


def test_make_episodes_refuses_a_class_without_val_images_and_k_beyond_them(tiny, capsys):
    tmp = tiny["tmp"]
    fold2 = tiny["data"].write_fold(tmp / "fold_bus.json", [CAT, BUS])
    base = tiny["common"] + ["--labels", tiny["labels"], "--seed", 0]
    run_fails(make_episodes.main, base + ["--fold-file", fold2, "--shots", 1, "--out", tmp / "x.jsonl"], capsys,
              "'bus'", "0 val images")
    run_fails(make_episodes.main, base + ["--fold-file", tiny["fold"], "--shots", 4, "--out", tmp / "x.jsonl"],
              capsys, "'cat'", "4 val images", "need 5")
    assert not (tmp / "x.jsonl").exists()


def test_unknown_variant_and_resume(tiny, capsys):
    run_fails(train_crnet.main, tiny["train_args"] + ["--variant", "nope"], capsys, "--variant", "'nope'")
    # a finished model and a rerun: same weights (deterministic, seeded)
    tmp = tiny["tmp"]
    args = list(tiny["train_args"])
    args[args.index("--out") + 1] = tmp / "again.pt"
    run_ok(train_crnet.main, args)
    a = torch.load(tmp / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp / "again.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_episodes(tmp / "ep1.jsonl")[0]["class"] == CAT


def test_results_report_includes_the_crnet_fold_report(tiny):
    from pipeline.stages import report_all

    tmp = tiny["tmp"]
    if not (tmp / "result" / "metrics.json").exists():
        test_fold_report_and_aggregate_and_ablation(tiny)
    run_ok(report_all.main, ["--crnet", tmp / "result", "--out", tmp / "report"])
    text = (tmp / "report" / "report.md").read_text()
    assert "CRNet few-shot segmentation" in text and "1-shot mIoU" in text and "Prototype floor" in text
    document = json.loads((tmp / "report" / "metrics.json").read_text())
    mean = document["datasets"]["tiny"]["crnet"]["mean"]["crnet"]["val"]
    assert mean["num_folds"] == 1 and 0.0 <= mean["miou_1shot"] <= 1.0
    assert (tmp / "report" / "figures" / "tiny_crnet_fold0.png").is_file()


def test_seen_unseen_split_by_name_and_by_the_class_map():
    # MSRC fold -> CamVid: car seen by name, pedestrian through the user's map to MSRC's body
    seen = cross_dataset.seen_classes(["pole", "car", "pedestrian", "bicyclist", "sign_symbol"],
                                      ["car", "body", "cow"], {"pedestrian": "body", "sign_symbol": "sign"})
    assert seen == {"pole": None, "car": "car", "pedestrian": "body", "bicyclist": None, "sign_symbol": None}
    iou = {"pole": 0.2, "car": 0.6, "pedestrian": 0.4, "bicyclist": 0.0, "sign_symbol": 0.1}
    split = cross_dataset.split_miou(iou, seen)
    assert split["seen"] == pytest.approx(0.5) and split["unseen"] == pytest.approx(0.1)
    assert split["all"] == pytest.approx(0.26)
    # no seen class (a single-class test dataset): the seen group is empty, not zero
    assert cross_dataset.split_miou({"cat": 0.3}, {"cat": None}) == {"seen": None, "unseen": 0.3, "all": 0.3}


def test_cross_dataset_episodes_scores_and_report(tiny, capsys):
    tmp = tiny["tmp"]
    base = tiny["common"] + ["--labels", tiny["labels"], "--seed", 0, "--shots", 1]
    run_ok(make_episodes.main, base + ["--classes", "cat", "--out", tmp / "cross1.jsonl"])
    assert {e["class_name"] for e in read_episodes(tmp / "cross1.jsonl")} == {"cat"}
    run_fails(make_episodes.main, base + ["--classes", "cat,horse", "--out", tmp / "x.jsonl"], capsys,
              "--classes", "'horse'", "not an object class")
    assert not (tmp / "x.jsonl").exists()
    common = tiny["common"] + ["--features", tmp / "val.pt", "--classes", "cat", "--episodes", tmp / "cross1.jsonl",
                               "--shots", 1]
    run_ok(test_crnet.main, common + ["--model", tmp / "model.pt", "--out", tmp / "xc.json"])
    run_ok(test_crnet.main, common + ["--prototype", "--out", tmp / "xp.json"])
    out = tmp / "cross_result"
    run_ok(cross_dataset.main, tiny["common"] + ["--train-dataset", "tiny", "--train-fold-file", tiny["fold"],
                                                 "--eval", f"crnet:1:0={tmp / 'xc.json'}",
                                                 "--eval", f"prototype:1:0={tmp / 'xp.json'}", "--out", out])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seen"] == {"cat": None} and "seen" not in metrics["crnet"]["1shot"]
    assert metrics["crnet"]["1shot"]["unseen"] == metrics["crnet"]["1shot"]["all"]
    assert "mIoU over seen, unseen and all" in (out / "report.md").read_text()
    assert "Yardstick, 1-shot, labelled-background" in (out / "report.md").read_text()
    run_ok(cross_dataset.main, ["--aggregate", out, "--out", tmp / "cross_all"])
    assert list(json.loads((tmp / "cross_all" / "metrics.json").read_text())) == ["tiny_fold0->tiny"]
    assert "## CRNet across datasets: tiny fold 0 -> tiny" in (tmp / "cross_all" / "report.md").read_text()
