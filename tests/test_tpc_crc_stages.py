"""TPC + CRC stages on tiny data: train_crnet with a tpc_crc variant (conditioning phase, never
selected), test_crnet --stress / --partial, make_hpartitions (median and std splits, counts,
an empty partition), the report_tpc_crc modes; the H-partition math on hand cases; the
bad-input paths (one line, exit 2, nothing written)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from conftest import CAT, CRNET_TRAIN, DOG, crnet_dataset, crnet_eval_args as eval_args, run_fails, run_ok, write_yaml
from pipeline.data.episodes import read_episodes
from pipeline.data.label_png import label_image
from pipeline.hpartitions import (
    bbox_fraction, class_cells, class_iou, cmps, color_layout_descriptor, episode_counts, partition_episodes,
    partition_index, ranked_supports, search_pools, split_high_low)
from pipeline.methods.crnet import make_hpartitions, report_tpc_crc, test_crnet, train_crnet

# 12 cat queries (boxes of growing size) and a dog: enough for median cells of 3 images
VAL = {**{f"v{i}": [(CAT, 2, 8 + i, 2, 8 + 2 * (i % 6))] for i in range(12)}, "v12": [(DOG, 4, 20, 4, 20)]}
MEDIAN = {"crnet.tpc_crc.partitions.split": "median", "crnet.tpc_crc.partitions.min_episodes": 3,
          "backbone.output_stride": 16}


# --------------------------------------------------------------------------- math on hand cases

def test_partition_index_follows_the_papers_order():
    assert partition_index(False, False, False) == 0 and partition_index(False, False, True) == 1
    assert partition_index(False, True, False) == 2 and partition_index(True, False, False) == 4
    assert partition_index(True, True, True) == 7


def test_iou_and_bbox_area_on_a_hand_case():
    gt = np.zeros((4, 4), np.uint8)
    gt[0:2, 0:2] = 1
    gt[3, 3] = 255
    pred = np.zeros((4, 4), np.uint8)
    pred[0:2, 0:1] = 1
    pred[2, 2] = 1
    pred[3, 3] = 1  # on ignore: not counted
    assert class_iou(pred, gt, 1) == pytest.approx(2 / 5)
    assert math.isnan(class_iou(np.zeros_like(gt), np.zeros_like(gt), 1))
    gt2 = np.zeros((4, 8), np.uint8)
    gt2[1, 2] = gt2[2, 5] = 3  # bbox rows 1-2, cols 2-5: 2 x 4 of 32
    assert bbox_fraction(gt2, 3) == pytest.approx(8 / 32) and bbox_fraction(gt2, 1) == 0.0


def test_std_and_median_splits_on_a_hand_case():
    values = {"a": 0.0, "b": 0.5, "c": 0.5, "d": 0.5, "e": 1.0}  # mean 0.5, sample std sqrt(0.125)
    high, low, cuts = split_high_low(values, "std")
    assert high == ["e"] and low == ["a"] and cuts["std"] == pytest.approx(math.sqrt(0.125))
    high, low, cuts = split_high_low(values, "median")
    assert high == ["b", "c", "d", "e"] and low == ["a"] and cuts == {"median": 0.5}
    assert split_high_low({"a": 0.3, "b": 0.3}, "std")[:2] == ([], [])  # nothing stands out
    assert split_high_low({}, "median") == ([], [], {})


def test_cells_and_episodes_with_an_empty_partition():
    iou = {"q0": 0.9, "q1": 0.8, "q2": 0.1, "q3": 0.2, "q4": float("nan")}  # q4: no defined IoU, left out
    area = {"q0": 0.5, "q1": 0.1, "q2": 0.3, "q3": 0.4, "q4": 0.9}
    cells = class_cells(iou, area, "median")  # IoU median 0.5: easy q0 q1, hard q2 q3
    assert cells == {(False, False): ["q0"], (False, True): ["q1"], (True, False): ["q3"], (True, True): ["q2"]}
    feats = {"a": np.array([0.0]), "b": np.array([1.0]), "c": np.array([5.0]), "d": np.array([2.0])}
    assert ranked_supports("a", ["a", "b", "c", "d"], feats, 1, farthest=False) == ["b"]
    assert ranked_supports("a", ["a", "b", "c", "d"], feats, 2, farthest=True) == ["c", "d"]
    assert ranked_supports("a", ["a"], feats, 1, farthest=True) == []
    parts = partition_episodes({CAT: {(False, False): ["a", "b", "c"], (True, True): ["d"]}}, feats, 1,
                               ["bg", "cat", "dog", "bus"])
    assert [len(p) for p in parts] == [3, 3, 0, 0, 0, 0, 0, 0]  # d alone in its cell: no support
    assert parts[0][0] == {"episode": 0, "class": CAT, "class_name": "cat", "query": "a", "supports": ["b"]}
    assert parts[1][0]["supports"] == ["c"] and parts[1][2]["query"] == "c" and parts[1][2]["supports"] == ["a"]


def test_small_cells_are_counted_and_the_fallback_widens_only_them():
    feats = {k: np.array([v]) for k, v in {"a": 0.0, "b": 1.0, "c": 5.0, "d": 2.0, "e": 9.0, "f": 3.0,
                                           "g": 7.0}.items()}
    names = ["bg", "cat"]
    # easy/large: a, b (one other each: nearest == farthest); easy/small: c alone; hard/large: d, e, f
    cells = {CAT: {(False, False): ["a", "b"], (False, True): ["c"], (True, False): ["d", "e", "f"],
                   (True, True): []}}
    queries = {CAT: ["a", "b", "c", "d", "e", "f", "g"]}  # g: the middle band of a std split, in no cell
    paper = partition_episodes(cells, feats, 1, names)
    counts = episode_counts(paper, queries, names)
    assert counts["per_partition"]["L0"] == {"episodes": 2, "coincide": 2, "widened": 0}
    assert counts["per_partition"]["L1"]["coincide"] == 2 and counts["per_partition"]["L4"]["coincide"] == 0
    assert counts["no_episode"] == {"cat": 2} and counts["queries"] == {"cat": 7}  # c (alone) and g
    pools = {CAT: search_pools(cells[CAT], queries[CAT], "size")}
    assert pools[CAT][(False, False)] == ["a", "b", "d", "e", "f"] and pools[CAT][(False, True)] == ["c"]
    widened = partition_episodes(cells, feats, 1, names, pools)
    counts = episode_counts(widened, queries, names)
    # a and b now search easy + hard large: a's nearest b, farthest e -- no longer the same image
    assert [e["supports"] for e in widened[0]] == [["b"], ["a"]] and widened[1][0]["supports"] == ["e"]
    assert counts["per_partition"]["L0"] == {"episodes": 2, "coincide": 0, "widened": 2}
    assert counts["per_partition"]["L4"]["widened"] == 0  # a cell with 2 others keeps the paper's rule
    assert counts["no_episode"] == {"cat": 2}  # c's size partition holds only c
    by_class = partition_episodes(cells, feats, 1, names, {CAT: search_pools(cells[CAT], queries[CAT], "class")})
    assert episode_counts(by_class, queries, names)["no_episode"] == {"cat": 1}  # only g, in no cell
    with pytest.raises(ValueError, match="fallback"):
        search_pools(cells[CAT], queries[CAT], "nope")


def test_color_layout_descriptor_on_a_hand_case():
    image = np.zeros((4, 4, 3), np.uint8)
    image[:2, :2] = 255  # the top-left cell white, the rest black
    d = color_layout_descriptor(image, bins=2, grid=2)
    assert d.shape == (2 * 2 * 3 * 2,)
    assert d[:6].tolist() == [0.0, 1.0] * 3 and d[6:12].tolist() == [1.0, 0.0] * 3
    half = image.copy()
    half[0, :2] = 0  # half of the white cell turns black: sqrt(1/2) in both bins
    assert np.allclose(color_layout_descriptor(half, bins=2, grid=2)[:2], [0.5 ** 0.5] * 2)


def test_cmps_leaves_out_empty_partitions_and_flags_small_ones():
    out = cmps([0.5, 0.3, None, 0.9, float("nan"), 0.1, 0.2, 0.4], [40, 30, 0, 5, 0, 31, 30, 30], 30)
    assert out["empty"] == [2, 4] and out["small"] == [3] and out["used"] == [0, 1, 5, 6, 7]
    assert out["cmps"] == pytest.approx((0.5 + 0.3 + 0.9 + 0.1 + 0.2 + 0.4) / 6)  # the small L3 counts, flagged
    assert out["cmps_min"] == pytest.approx((0.5 + 0.3 + 0.1 + 0.2 + 0.4) / 5)
    assert cmps([None] * 8, [0] * 8, 30) == {"cmps": None, "cmps_min": None, "used": [], "small": [],
                                             "empty": list(range(8))}
    assert cmps([0.5] + [None] * 7, [3] + [0] * 7, 30)["cmps_min"] is None


# --------------------------------------------------------------------------- stages on tiny data

@pytest.fixture(scope="module")
def tiny(crnet_tiny):
    return crnet_tiny


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny):
    """A val split of 12 cat queries, its features and labels, Fully Oracle predictions that
    miss a growing share of each cat, and the tiny fixture's models (full and tpc_crc)."""
    tmp = tmp_path_factory.mktemp("hpart")
    data, params, labels, fold, common = crnet_dataset(tmp, CRNET_TRAIN, VAL, MEDIAN, ("val",))
    oracle = tmp / "oracle"
    oracle.mkdir()
    for k, image_id in enumerate(data.val):
        mask = data.masks[image_id].copy()
        mask[:, : 2 + k % 5] = 0  # the oracle misses a strip: IoUs differ
        label_image(mask).save(oracle / f"{image_id}.png")
    tpc_model = tiny["tmp"] / "tpc_crc.pt"
    if not tpc_model.exists():
        run_ok(train_crnet.main, tiny["train_args"][:-4] + ["--variant", "tpc_crc", "--out", tpc_model,
                                                            "--history", tiny["tmp"] / "tpc_history.tsv"])
    args = common + ["--oracle", oracle, "--features", tmp / "val.pt", "--labels", labels, "--fold-file", fold]
    return {"tmp": tmp, "common": common, "args": args, "oracle": oracle, "fold": fold, "params": params,
            "tpc_model": tpc_model, "labels": labels}


def test_tpc_crc_training_conditions_first_and_never_selects_a_conditioning_epoch(tiny, parts):
    rows = [line.split("\t") for line in (tiny["tmp"] / "tpc_history.tsv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    phases = [r[header.index("phase")] for r in rows]
    # ceil(crnet.tpc_crc.train.epoch_share 0.15 x crnet.train.epochs 2) = 1 conditioning epoch, then the 2
    assert phases == ["tpc"] * 1 + ["train"] * 2
    assert all(r[header.index("heldout_miou")] == "" for r in rows[:1])
    meta = torch.load(parts["tpc_model"], weights_only=True)["meta"]
    assert meta["variant"] == "tpc_crc" and meta["selected_epoch"] in (2, 3)


def test_the_epoch_matched_control_trains_the_tpc_epochs_as_plain_epochs(tiny):
    out, history = tiny["tmp"] / "epoch_matched.pt", tiny["tmp"] / "epoch_matched_history.tsv"
    run_ok(train_crnet.main, tiny["train_args"][:-4] + ["--variant", "epoch_matched", "--out", out,
                                                        "--history", history])
    rows = [line.split("\t") for line in history.read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    assert len(rows) == 1 + 2 and "phase" not in header  # TPC's 1 epoch + crnet.train.epochs, all plain training
    assert all(r[header.index("heldout_miou")] != "" for r in rows)  # every epoch scored and selectable
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["variant"] == "epoch_matched" and 1 <= meta["selected_epoch"] <= 10


def test_stress_tests_and_partial_partition_evaluations(tiny, parts):
    tmp = tiny["tmp"]
    for stress in ("identical", "zero_mask"):
        run_ok(test_crnet.main, eval_args(tiny, tmp / "ep1.jsonl", 1, tmp / f"{stress}.json", "--model",
                                          parts["tpc_model"], "--stress", stress))
        doc = json.loads((tmp / f"{stress}.json").read_text())
        assert doc["stress"] == stress and doc["summary"]["episodes"] == 6
    run_ok(make_hpartitions.main, parts["args"] + ["--out", parts["tmp"] / "hp"])
    meta = json.loads((parts["tmp"] / "hp" / "partitions.json").read_text())
    assert meta["split"] == "median" and sum(meta["counts"].values()) == 2 * 12  # every query twice
    assert all(n == 3 for n in meta["counts"].values())  # cells of 3 images
    assert meta["similarity"] == "pixels" and meta["fallback"] == "none"
    assert meta["degenerate"]["no_episode"] == {"cat": 0}
    assert all(v["coincide"] == 0 for v in meta["degenerate"]["per_partition"].values())  # 2 others each
    # the supports are the nearest by the images' colour layout (the key input: the images)
    from pipeline.data.voc import VOCDataset
    from pipeline.config import load_params
    val = VOCDataset(load_params(parts["params"])["data"], "val")
    episodes = read_episodes(parts["tmp"] / "hp" / "L0.jsonl")
    for e in episodes:
        cell = [x["query"] for x in episodes]
        d = {i: color_layout_descriptor(val.load_image(i)) for i in cell}
        assert e["supports"] == ranked_supports(e["query"], cell, d, 1, farthest=False)
    for name in ("L0", "L7"):
        episodes = read_episodes(parts["tmp"] / "hp" / f"{name}.jsonl")
        assert len(episodes) == 3 and all(e["class"] == CAT for e in episodes)
    feats = parts["common"] + ["--features", parts["tmp"] / "val.pt", "--fold-file", parts["fold"]]
    run_ok(test_crnet.main, feats + ["--episodes", parts["tmp"] / "hp" / "L0.jsonl", "--shots", 1, "--partial",
                                     "--model", tiny["tmp"] / "model.pt", "--out", parts["tmp"] / "L0.json"])
    assert json.loads((parts["tmp"] / "L0.json").read_text())["summary"]["episodes"] == 3


def test_one_grouped_job_scores_like_the_per_file_calls(tiny, parts, capsys):
    """The TPC + CRC suite (test_crnet --job, one process per (variant, fold)) writes, per file,
    what the single-file call writes with the same options: compared in this run."""
    tmp, hp = tiny["tmp"], parts["tmp"] / "hp_group"
    run_ok(make_hpartitions.main, parts["args"] + ["--out", hp])
    feats = parts["common"] + ["--features", parts["tmp"] / "val.pt", "--fold-file", parts["fold"]]
    cases = {"hpart/L0.json": (hp / "L0.jsonl", ["--partial"]),
             "hpart/zero_mask/L5.json": (hp / "L5.jsonl", ["--partial", "--stress", "zero_mask"]),
             "hpart/identical/L2.json": (hp / "L2.jsonl", ["--partial", "--stress", "identical"])}
    jobs = []
    for name, (episodes, options) in cases.items():
        spec = f"{name}={episodes}" + "".join(
            ",partial" if o == "--partial" else f",stress={v}" for o, v in zip(options, options[1:] + [""])
            if o in ("--partial", "--stress"))
        jobs += ["--job", spec]
        run_ok(test_crnet.main, feats + ["--episodes", episodes, "--shots", 1, *options, "--model",
                                         parts["tpc_model"], "--out", tmp / name.replace("/", "_")])
    stress_spec = f"stress/identical_seed0.json={tmp / 'ep1.jsonl'},shots=1,stress=identical"
    run_ok(test_crnet.main, eval_args(tiny, tmp / "ep1.jsonl", 1, tmp / "single_identical.json", "--model",
                                      parts["tpc_model"], "--stress", "identical"))
    group = tmp / "suite"
    run_ok(test_crnet.main, feats + jobs + ["--model", parts["tpc_model"], "--out", group])
    for name in cases:
        grouped = json.loads((group / name).read_text())
        single = json.loads((tmp / name.replace("/", "_")).read_text())
        assert grouped["stress"] == single["stress"] and grouped["episodes"] == single["episodes"]
        for t, summary in single["by_iterations"].items():
            for key in ("miou", "fb_iou"):
                a, b = grouped["by_iterations"][t][key], summary[key]
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-6)
    # the standard 1-shot episodes under a stress test, as the suite runs them (its own fold file)
    suite2 = tmp / "suite2"
    run_ok(test_crnet.main, tiny["common"] + ["--features", tmp / "val.pt", "--fold-file", tiny["fold"], "--job",
                                              stress_spec, "--model", parts["tpc_model"], "--out", suite2])
    a = json.loads((suite2 / "stress" / "identical_seed0.json").read_text())["summary"]
    b = json.loads((tmp / "single_identical.json").read_text())["summary"]
    assert a["miou"] == pytest.approx(b["miou"], abs=1e-6) and a["episodes"] == b["episodes"]
    # bad input in any job: one line, nothing written
    bad = tmp / "suite_bad"
    absent = tmp / "no_such_suite_episodes.jsonl"  # tmp is shared with other test files: a name of its own
    run_fails(test_crnet.main, feats + jobs + ["--job", f"x.json={absent},partial", "--model", parts["tpc_model"],
                                               "--out", bad], capsys, absent.name)
    assert not bad.exists()
    run_fails(test_crnet.main, feats + ["--job", f"x.json={hp / 'L0.jsonl'},stress=nope", "--model",
                                        parts["tpc_model"], "--out", bad], capsys, "unknown option")
    run_fails(test_crnet.main, feats + ["--job", f"x.json={hp / 'L0.jsonl'}", "--shots", 1, "--model",
                                        parts["tpc_model"], "--out", bad], capsys, "single-file option")
    assert not bad.exists()


def test_supports_follow_the_images_not_the_encoder(parts, monkeypatch):
    """similarity: pixels reads the images: with images whose white share grows with the id,
    each query's nearest support is the id closest to it and its farthest the most distant."""
    from pipeline.data.voc import VOCDataset

    def load_image(self, image_id):
        image = np.zeros((26, 20, 3), np.uint8)
        image[: 2 * (int(image_id[1:]) + 1)] = 255  # white share (k + 1) / 13
        return image

    monkeypatch.setattr(VOCDataset, "load_image", load_image)
    out = parts["tmp"] / "hp_pixels"
    run_ok(make_hpartitions.main, parts["args"] + ["--out", out])
    for name, farthest in (("L0", False), ("L1", True), ("L6", False), ("L7", True)):
        episodes = read_episodes(out / f"{name}.jsonl")
        cell = [e["query"] for e in episodes]
        for e in episodes:
            others = sorted((x for x in cell if x != e["query"]), key=lambda x: abs(int(x[1:]) - int(e["query"][1:])))
            assert e["supports"] == [others[-1] if farthest else others[0]], (name, e, cell)


def test_std_split_leaves_partitions_empty_and_the_report_says_so(tiny, parts, capsys):
    raw = yaml.safe_load(open(parts["params"]))
    raw["crnet"]["tpc_crc"]["partitions"]["split"] = "std"
    params = write_yaml(parts["tmp"] / "std.yaml", raw)
    args = ["--params", params] + parts["args"][2:]
    out = parts["tmp"] / "hp_std"
    run_ok(make_hpartitions.main, args + ["--out", out])
    counts = json.loads((out / "partitions.json").read_text())["counts"]
    assert sum(counts.values()) < 24 and 0 in counts.values()
    feats = parts["common"] + ["--features", parts["tmp"] / "val.pt", "--fold-file", parts["fold"]]
    evals = []
    for i in range(8):
        target = parts["tmp"] / f"std_L{i}.json"
        run_ok(test_crnet.main, feats + ["--episodes", out / f"L{i}.jsonl", "--shots", 1, "--partial",
                                         "--model", tiny["tmp"] / "model.pt", "--out", target])
        evals += ["--partition", f"crnet:{i}={target}", "--stress-partition", f"zero_mask/crnet:{i}={target}"]
    report_dir = parts["tmp"] / "report"
    c1 = parts["tmp"] / "c1.json"
    run_ok(test_crnet.main, eval_args(tiny, tiny["tmp"] / "ep1.jsonl", 1, c1, "--model", tiny["tmp"] / "model.pt"))
    run_ok(report_tpc_crc.main, tiny["common"] + ["--fold", 0, "--eval", f"crnet:1:0={c1}", "--eval", f"crnet:1:1={c1}",
                                                  "--eval", f"crnet_tpc_crc:1:0={c1}",
                                                  "--stress", f"identical/crnet:0={c1}", *evals,
                                                  "--partitions", out / "partitions.json", "--out", report_dir])
    metrics = json.loads((report_dir / "metrics.json").read_text())
    part = metrics["hpartitions"]
    assert part["split"] == "std" and part["crnet"]["empty"] and metrics["method"] == "crnet_tpc_crc"
    assert set(metrics["methods"]) == {"crnet", "crnet_tpc_crc"}
    text = (report_dir / "report.md").read_text()
    assert "no episodes" in text and "Split: **std**" in text and "Identical input" in text
    # the std cuts leave the middle band without episodes: the report counts them per class
    lost = json.loads((out / "partitions.json").read_text())["degenerate"]["no_episode"]["cat"]
    assert lost > 0 and f"Queries without any episode: cat {lost} of 12" in text
    assert "nearest and farthest supports are the same images" in text and "fallback **none**" in text
    assert metrics["stress"]["zero_mask"]["crnet"]["cmps"]["cmps"] == part["crnet"]["cmps"]
    assert "miou" not in metrics["stress"]["zero_mask"]["crnet"] and "All-zero support mask" in text
    from pipeline.stages import report_all  # results/report takes the fold report (no figure)

    run_ok(report_all.main, ["--crnet", report_dir, "--out", parts["tmp"] / "all_report"])
    mean = json.loads((parts["tmp"] / "all_report" / "metrics.json").read_text())["datasets"]["tiny"]["crnet"]["mean"]
    assert set(mean) == {"crnet", "crnet_tpc_crc"} and "CRNet + TPC + CRC" in (
        parts["tmp"] / "all_report" / "report.md").read_text()
    # every partition empty: no CMPS, no division by zero
    empty = {"counts": {f"L{i}": 0 for i in range(8)}, "split": "std", "min_episodes": 30}
    table = report_tpc_crc.partition_table({("crnet", i): {"summary": {"episodes": 0, "miou": float("nan")}}
                                            for i in range(8)}, empty)
    assert table["crnet"]["cmps"] is None and report_tpc_crc.partition_markdown(table)


def test_components_and_aggregate_reports(tiny, parts):
    c1 = parts["tmp"] / "c1.json"
    if not c1.exists():
        run_ok(test_crnet.main, eval_args(tiny, tiny["tmp"] / "ep1.jsonl", 1, c1, "--model", tiny["tmp"] / "model.pt"))
    better = parts["tmp"] / "c1_better.json"  # the same evaluation, mIoU 10 points higher
    doc = json.loads(c1.read_text())
    doc["summary"]["miou"] += 0.1
    better.write_text(json.dumps(doc))
    evals = [f"--eval={v}:{t}:0:{e}={better if v == 'tpc' else c1}"
             for v in ("full", "epoch_matched", "tpc", "crc", "tpc_crc") for t in (0, 1) for e in (0, 1)]
    out = parts["tmp"] / "components"
    run_ok(report_tpc_crc.main, ["--components", *evals, f"--eval=prototype:0:0:0={c1}", "--out", out])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["training_seeds"] == [0, 1] and metrics["folds"]["0"]["tpc_crc"]["over_training_seeds"]["miou"]["n"] == 2
    deltas = {v: cell.get("delta_miou") for v, cell in metrics["folds"]["0"].items()}
    assert deltas["tpc"] == pytest.approx({"full": 0.1, "epoch_matched": 0.1})
    assert deltas["epoch_matched"] == pytest.approx({"full": 0.0}) and deltas["full"] is None
    text = (out / "report.md").read_text()
    assert "+ TPC + CRC" in text and "+10.0" in text and "epoch-matched" in text
    if (parts["tmp"] / "report").exists():
        run_ok(report_tpc_crc.main, ["--aggregate", parts["tmp"] / "report", "--out", parts["tmp"] / "all"])
        assert "CMPS" in (parts["tmp"] / "all" / "report.md").read_text()


def test_missing_oracle_and_bad_prediction_are_one_line(parts, capsys):
    out = parts["tmp"] / "never"
    run_fails(make_hpartitions.main, parts["args"][:4] + ["--oracle", parts["tmp"] / "nope"] + parts["args"][6:]
              + ["--out", out], capsys, "Fully Oracle predictions not found", "shared/seg/oracle/pred_val")
    bad = parts["tmp"] / "bad_oracle"
    bad.mkdir()
    for png in parts["oracle"].iterdir():
        (bad / png.name).write_bytes(png.read_bytes())
    (bad / "v3.png").unlink()
    run_fails(make_hpartitions.main, parts["args"][:4] + ["--oracle", bad] + parts["args"][6:] + ["--out", out],
              capsys, "v3.png", "file not found")
    assert not out.exists()


def test_unknown_stress_method_is_one_line(tiny, parts, capsys):
    c1 = parts["tmp"] / "c1.json"
    if not c1.exists():
        run_ok(test_crnet.main, eval_args(tiny, tiny["tmp"] / "ep1.jsonl", 1, c1, "--model", tiny["tmp"] / "model.pt"))
    out = parts["tmp"] / "never_report"
    run_fails(report_tpc_crc.main, tiny["common"] + ["--fold", 0, "--eval", f"crnet:1:0={c1}",
                                                     "--stress", f"identical/nope:0={c1}", "--out", out],
              capsys, "--stress", "identical/nope")
    assert not out.exists()
