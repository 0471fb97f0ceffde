"""The few-shot yardstick (issue 21): trivial rows, the mismatched-support row, the
labelled-background setting and left-out small classes, scored by test_crnet on the same
episodes; their bad input (one line, exit 2, nothing written)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import (BUS, CAT, CRNET_SMALL, CRNET_TRAIN, DOG, IGNORE, run_fails, run_ok, tiny_params,
                      write_tiny_voc, write_yaml)
from pipeline.data.episodes import labelled_background_share, mismatched_episodes, small_classes
from pipeline.methods.crnet import test_crnet
from pipeline.stages import make_episodes

# Val: cats and dogs on labelled background; c_void a cat whose surroundings are all void (255):
# painting the class everywhere loses nothing there (MSRC's book).
VAL = {**{f"c{i}": [(CAT, 4 + 2 * i, 18 + 2 * i, 6, 20)] for i in range(4)},
       **{f"d{i}": [(DOG, 6, 20, 4 + 2 * i, 18 + 2 * i)] for i in range(4)},
       "c_void": [(IGNORE, 0, 32, 0, 32), (CAT, 8, 24, 8, 24)]}


def make_tiny(tmp, val=VAL, novel=("cat", "dog"), changes=None):
    from pipeline.methods.crnet import crnet_features

    data = write_tiny_voc(tmp / "tiny", CRNET_TRAIN, val)
    params = write_yaml(tmp / "params.yaml", tiny_params(data, [list(novel)], {**CRNET_SMALL,
                                                                               "crnet.test.mismatched": True,
                                                                               "episodes.num_episodes": 12,
                                                                               **(changes or {})}))
    labels = data.write_labels(tmp / "labels.json")
    fold = data.write_fold(tmp / "fold0.json", [data.classes.index(n) for n in novel])
    common = ["--params", params, "--dataset", "tiny"]
    run_ok(crnet_features.main, common + ["--split", "val", "--out", tmp / "val.pt"])
    return {"tmp": tmp, "params": params, "labels": labels, "fold": fold, "common": common}


def episodes_of(t, shots=1, name="ep.jsonl"):
    run_ok(make_episodes.main, t["common"] + ["--labels", t["labels"], "--fold-file", t["fold"], "--shots", shots,
                                              "--seed", 0, "--out", t["tmp"] / name])
    return t["tmp"] / name


def floor_args(t, episodes, out, shots=1):
    return t["common"] + ["--features", t["tmp"] / "val.pt", "--fold-file", t["fold"], "--episodes", episodes,
                          "--shots", shots, "--prototype", "--out", out]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    t = make_tiny(tmp_path_factory.mktemp("yardstick"))
    t["episodes"] = episodes_of(t)
    run_ok(test_crnet.main, floor_args(t, t["episodes"], t["tmp"] / "floor.json"))
    t["doc"] = json.loads((t["tmp"] / "floor.json").read_text())
    return t


# ----------------------------------------------------------------------------- the pure parts

def test_labelled_background_share_counts_labelled_non_class_pixels():
    mask = np.array([[1, 1, 0, 255], [255, 255, 0, 0]], np.uint8)
    assert labelled_background_share(mask) == pytest.approx(3 / 8)
    assert labelled_background_share(np.array([[1, 255]], np.uint8)) == 0.0


def test_mismatched_episodes_take_another_class_and_never_the_query():
    episodes = [{"episode": 0, "class": 1, "query": "a", "supports": ["b", "c"]},
                {"episode": 1, "class": 2, "query": "x", "supports": ["a", "y"]},    # holds query a: skipped for 0
                {"episode": 2, "class": 1, "query": "b", "supports": ["a"]},
                {"episode": 3, "class": 2, "query": "y", "supports": ["z", "w"]}]
    out = mismatched_episodes(episodes, 1)
    assert [(e["query"], e["class"], e["support_class"], e["supports"]) for e in out] == [
        ("a", 1, 2, ["z"]), ("x", 2, 1, ["a"]), ("b", 1, 2, ["z"]), ("y", 2, 1, ["b"])]
    for e, m in zip(episodes, out):
        assert m["support_class"] != e["class"] and e["query"] not in m["supports"]
    with pytest.raises(ValueError, match="at least 2 classes"):
        mismatched_episodes([e for e in episodes if e["class"] == 1], 1)


def test_small_classes_are_those_without_a_query_and_k_supports():
    assert small_classes({1: ["a", "b"], 2: ["a"], 3: []}, 1) == {2: 1, 3: 0}
    assert small_classes({1: ["a", "b"]}, 2) == {1: 2}


# ----------------------------------------------------------------------------- test_crnet's rows

def test_rows_are_scored_on_the_same_episodes_in_both_settings(tiny):
    rows = tiny["doc"]["yardstick"]["rows"]
    assert set(rows) == {"standard", "labelled_background"}
    assert set(rows["standard"]) == {"prototype", "mismatched", "all_foreground", "all_background"}
    assert rows["standard"]["prototype"] == tiny["doc"]["summary"]
    for row in rows["standard"].values():
        assert row["episodes"] == 12
    # c_void's episodes are out of the labelled-background setting, and only they
    episodes = [json.loads(line) for line in tiny["episodes"].read_text().splitlines()]
    void = sum(e["query"] == "c_void" for e in episodes)
    assert void > 0 and rows["labelled_background"]["prototype"]["episodes"] == 12 - void
    assert rows["standard"]["all_background"]["miou"] == 0.0


def test_all_foreground_is_the_class_share_of_labelled_pixels_summed_per_class(tiny):
    from pipeline.data.voc import VOCDataset
    import yaml

    params = yaml.safe_load(open(tiny["params"]))
    dataset = VOCDataset(params["datasets"]["tiny"], "val")
    episodes = [json.loads(line) for line in tiny["episodes"].read_text().splitlines()]
    for setting, keep in (("standard", lambda m, c: True),
                          ("labelled_background", lambda m, c: ((m != c) & (m != 255)).mean() >= 0.05)):
        for c in (CAT, DOG):
            fg = union = 0
            for e in episodes:
                m = dataset.load_mask(e["query"])
                if e["class"] == c and keep(m, c):
                    fg += int((m == c).sum())
                    union += int((m != 255).sum())
            got = tiny["doc"]["yardstick"]["rows"][setting]["all_foreground"]["class_iou"][str(c)]
            assert got == pytest.approx(fg / union)
    # c_void's pixels are all class or void: painting scores higher where it counts
    rows = tiny["doc"]["yardstick"]["rows"]
    assert (rows["standard"]["all_foreground"]["class_iou"][str(CAT)]
            > rows["labelled_background"]["all_foreground"]["class_iou"][str(CAT)])


class OneHotStore:
    """A feature store whose features are the one-hot class map (perfect features): the floor
    then finds exactly the class its support shows."""

    class dataset:  # noqa: N801 - the attribute FeatureStore users read
        ignore_index = IGNORE

    def __init__(self, masks):
        self.masks = masks

    def features(self, image_id, flip=False):
        m = torch.from_numpy(self.masks[image_id].astype(np.int64))
        return torch.nn.functional.one_hot(m.clamp(max=4), 5).permute(2, 0, 1)[None].float()

    def mask(self, image_id, class_id, flip=False):
        from pipeline.data.episodes import episode_mask
        return torch.from_numpy(episode_mask(self.masks[image_id], class_id, IGNORE))


def test_mismatched_support_row_is_low_for_a_floor_that_follows_its_support():
    from conftest import box_mask
    from pipeline.fewshot import binary_prediction
    from pipeline.metrics.episodic import EpisodeIoUAccumulator

    masks = {"c0": box_mask([(CAT, 2, 10, 2, 10)], 16), "c1": box_mask([(CAT, 4, 12, 4, 12)], 16),
             "d0": box_mask([(DOG, 2, 10, 6, 14)], 16), "d1": box_mask([(DOG, 6, 14, 2, 10), (CAT, 0, 4, 10, 16)], 16)}  # d1 shows a cat too: its
    # dog mask, not the query's class, must condition the mismatched row
    store = OneHotStore(masks)
    episodes = [{"episode": 0, "class": CAT, "query": "c0", "supports": ["c1"]},
                {"episode": 1, "class": DOG, "query": "d0", "supports": ["d1"]}]
    rows = {"matched": episodes, "mismatched": mismatched_episodes(episodes, 1)}
    scores = {}
    for name, eps in rows.items():
        acc = EpisodeIoUAccumulator([CAT, DOG])
        for e in eps:
            gt = store.mask(e["query"], e["class"])
            p = test_crnet.probabilities(None, store, e, 1, 1, "cpu")[-1]
            acc.update(binary_prediction(p, gt.shape).numpy(), gt.numpy(), e["class"])
        scores[name] = acc.miou()
    assert scores["matched"] == 1.0 and scores["mismatched"] == 0.0


def test_mismatched_on_a_single_class_fold_is_one_line_and_nothing_written(tmp_path, capsys):
    t = make_tiny(tmp_path, novel=("cat",))
    episodes = episodes_of(t)
    out = tmp_path / "eval.json"
    run_fails(test_crnet.main, floor_args(t, episodes, out), capsys, "crnet.test.mismatched", "2 classes")
    assert not out.exists()


def test_labelled_background_filter_names_the_class_and_only_an_empty_fold_is_an_error(tmp_path, capsys):
    from pipeline.methods.crnet import report

    # every dog query is void around the dog: dog has no labelled-background query
    val = {**{f"c{i}": [(CAT, 4 + 2 * i, 18 + 2 * i, 6, 20)] for i in range(3)},
           **{f"d{i}": [(IGNORE, 0, 32, 0, 32), (DOG, 6, 20, 4 + 2 * i, 18 + 2 * i)] for i in range(3)}}
    t = make_tiny(tmp_path / "a", val=val)
    episodes = episodes_of(t)
    run_ok(test_crnet.main, floor_args(t, episodes, tmp_path / "floor.json"))
    doc = json.loads((tmp_path / "floor.json").read_text())
    lab = doc["yardstick"]["rows"]["labelled_background"]["prototype"]
    assert lab["episodes_per_class"][str(DOG)] == 0 and lab["episodes_per_class"][str(CAT)] == 6
    assert lab["miou"] == pytest.approx(lab["class_iou"][str(CAT)])      # dog left out of the mean
    from pipeline.methods.crnet.results import yardstick_tables, yardstick_markdown
    text = yardstick_markdown(yardstick_tables({("prototype", 1, 0): doc}), "1shot")
    assert "Left out of this table's mean (no query in this setting): dog (0 of 6 queries)" in text
    # no class left at all: one line naming the key, nothing written
    void = {f"{k}": [(IGNORE, 0, 32, 0, 32), *v] for k, v in val.items()}
    t = make_tiny(tmp_path / "b", val=void)
    episodes = episodes_of(t)
    out = tmp_path / "none.json"
    run_fails(test_crnet.main, floor_args(t, episodes, out), capsys, "episodes.min_labelled_background")
    assert not out.exists()


def test_small_classes_leave_out_names_them_with_counts(tmp_path, capsys):
    val = {**VAL, "b0": [(BUS, 4, 20, 4, 20)]}
    t = make_tiny(tmp_path / "a", val=val, novel=("cat", "dog", "bus"))
    run_fails(make_episodes.main, t["common"] + ["--labels", t["labels"], "--fold-file", t["fold"], "--shots", 1,
                                                 "--seed", 0, "--out", tmp_path / "x.jsonl"], capsys, "'bus'")
    t = make_tiny(tmp_path / "b", val=val, novel=("cat", "dog", "bus"), changes={"episodes.small_classes": "leave_out"})
    episodes = episodes_of(t)
    assert {json.loads(line)["class"] for line in episodes.read_text().splitlines()} == {CAT, DOG}
    run_ok(test_crnet.main, floor_args(t, episodes, tmp_path / "floor.json"))
    doc = json.loads((tmp_path / "floor.json").read_text())
    assert doc["yardstick"]["left_out"] == {"bus": 1}
    assert doc["summary"]["episodes_per_class"][str(BUS)] == 0
    from pipeline.methods.crnet.results import yardstick_tables, yardstick_markdown
    assert "bus (1 val image" in yardstick_markdown(yardstick_tables({("prototype", 1, 0): doc}), "1shot")


def test_reports_over_folds_and_training_seeds_carry_the_rows(tiny, tmp_path):
    from pipeline.methods.crnet import report
    from pipeline.methods.crnet.results import yardstick_over_folds, yardstick_tables

    doc = tiny["doc"]
    folds = [{"fold": f, "yardstick": yardstick_tables({("prototype", 1, 0): doc, ("prototype", 1, 1): doc})}
             for f in (0, 1)]
    out, text = yardstick_over_folds(folds)
    row = out["1shot"]["labelled_background"]["All foreground (the class everywhere)"]
    assert row["per_fold"][0] == row["per_fold"][1] == row["mean"]
    assert "Yardstick over folds, 1-shot, standard" in text and "| Prototype floor (PANet, no alignment), " \
        "mismatched support |" in text
    # crnet_seeds: a row per training seed beside the floor and the trivial rows
    path = tmp_path / "e.json"
    path.write_text(json.dumps({**doc, "method": "crnet", "yardstick": {
        **doc["yardstick"], "rows": {s: {("crnet" if k == "prototype" else k): v for k, v in rows.items()}
                                     for s, rows in doc["yardstick"]["rows"].items()}}}))
    evals = {("crnet", t, 0, 1, 0): path for t in (0, 1)} | {("prototype", 0, 0, 1, 0): tiny["tmp"] / "floor.json"}
    metrics, text = report.training_seeds(evals)
    for needle in ("| CRNet training seed 0 |", "| CRNet training seed 1, mismatched support |", "| All background |"):
        assert needle in text, needle
