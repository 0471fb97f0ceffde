"""Few-shot test episodes (pipeline/data/episodes.py, stage make_episodes) on a tiny dataset
whose val images are known by hand, and the episode's binary mask."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import IGNORE, run_fails, run_ok, tiny_params, write_tiny_voc, write_yaml
from pipeline.data.episodes import episode_mask, read_episodes
from pipeline.stages import make_episodes

# Classes: 0 background, 1 cat, 2 dog, 3 bus; fold 0: novel cat and dog, base bus.
CAT, DOG = (1, 2, 12, 2, 12), (2, 16, 28, 16, 28)  # 100 and 144 px
TINY_CAT = (1, 0, 1, 0, 2)                           # 2 px of cat
VAL = {**{f"v{i}": [CAT] for i in range(4)},        # cat only: v0..v3
       **{f"v{i}": [CAT, DOG] for i in (4, 5, 6)},  # cat and dog: v4..v6
       **{f"v{i}": [DOG] for i in (7, 8, 9, 10)},   # dog only: v7..v10
       "v11": [(3, 4, 20, 4, 20)],                  # bus only: never in an episode
       "v12": [TINY_CAT, DOG]}                      # dog, and cat only with min_pixels <= 2
CAT_IMAGES = {"v0", "v1", "v2", "v3", "v4", "v5", "v6", "v12"}    # 8 (7 with min_pixels 5)
DOG_IMAGES = {"v4", "v5", "v6", "v7", "v8", "v9", "v10", "v12"}   # 8


@pytest.fixture
def tiny(tmp_path):
    data = write_tiny_voc(tmp_path / "tiny", {"t0": [CAT], "t1": [(3, 4, 20, 4, 20)]}, VAL)
    labels = data.write_labels(tmp_path / "labels.json")
    fold = data.write_fold(tmp_path / "fold0.json", [1, 2])

    def params(**episodes):
        changes = {f"episodes.{key}": value for key, value in {"num_episodes": 20, **episodes}.items()}
        return write_yaml(tmp_path / "params.yaml", tiny_params(data, [["cat", "dog"]], changes))

    def run(shots, seed, out=None, **episodes):
        out = out or tmp_path / f"fold0_{shots}shot_seed{seed}.jsonl"
        run_ok(make_episodes.main, ["--params", params(**episodes), "--labels", labels, "--fold-file", fold,
                                    "--shots", shots, "--seed", seed, "--out", out])
        return out

    return {"tmp": tmp_path, "labels": labels, "fold": fold, "params": params, "run": run}


def test_episodes_cycle_classes_and_draw_query_and_supports_of_the_class(tiny):
    episodes = read_episodes(tiny["run"](1, 0))
    assert [e["episode"] for e in episodes] == list(range(20))
    # HSNet: episode i is of novel[i % 2]
    assert [e["class"] for e in episodes] == [1, 2] * 10
    assert [e["class_name"] for e in episodes] == ["cat", "dog"] * 10
    for e in episodes:
        holding = CAT_IMAGES if e["class"] == 1 else DOG_IMAGES
        assert len(e["supports"]) == 1
        assert e["query"] not in e["supports"]
        assert {e["query"], *e["supports"]} <= holding  # val images containing the class
    lines = (tiny["tmp"] / "fold0_1shot_seed0.jsonl").read_text().splitlines()
    assert set(json.loads(lines[0])) == {"episode", "class", "class_name", "query", "supports"}


def test_five_shot_extends_one_shot_same_seed_same_file_other_seed_other_episodes(tiny):
    one, five = read_episodes(tiny["run"](1, 0)), read_episodes(tiny["run"](5, 0))
    assert [e["query"] for e in five] == [e["query"] for e in one]
    assert [e["supports"][:1] for e in five] == [e["supports"] for e in one]
    for e in five:
        assert len(set(e["supports"])) == 5 and e["query"] not in e["supports"]
    again = tiny["run"](1, 0, out=tiny["tmp"] / "again.jsonl")
    assert again.read_bytes() == (tiny["tmp"] / "fold0_1shot_seed0.jsonl").read_bytes()
    other = read_episodes(tiny["run"](1, 1))
    assert [(e["query"], e["supports"]) for e in other] != [(e["query"], e["supports"]) for e in one]
    assert [e["class"] for e in other] == [e["class"] for e in one]


def test_min_pixels_decides_which_val_images_hold_a_class(tiny):
    def cat_images(min_pixels):
        episodes = read_episodes(tiny["run"](1, 0, num_episodes=200, min_pixels=min_pixels))
        return {i for e in episodes if e["class"] == 1 for i in (e["query"], *e["supports"])}

    assert cat_images(1) == CAT_IMAGES          # v12's 2 cat pixels count
    assert cat_images(5) == CAT_IMAGES - {"v12"}


def test_class_in_too_few_val_images_is_one_line_naming_class_and_file(tiny, capsys):
    # 7-shot needs 8 images: cat and dog have 8 with min_pixels 1; with 5, cat has 7.
    tiny["run"](7, 0)
    argv = ["--params", tiny["params"](min_pixels=5), "--labels", tiny["labels"], "--fold-file", tiny["fold"],
            "--shots", 7, "--seed", 0, "--out", tiny["tmp"] / "bad.jsonl"]
    line = run_fails(make_episodes.main, argv, capsys, "'cat'", str(tiny["labels"]), "7 val images", "need 8")
    assert "'dog'" not in line
    assert not (tiny["tmp"] / "bad.jsonl").exists()


def test_episode_mask_is_the_class_against_everything_else_with_ignore_kept():
    mask = np.array([[0, 1, 2], [IGNORE, 1, 3]], np.uint8)
    np.testing.assert_array_equal(episode_mask(mask, 1), [[0, 1, 0], [IGNORE, 1, 0]])
    np.testing.assert_array_equal(episode_mask(mask, 3), [[0, 0, 0], [IGNORE, 0, 1]])
    assert episode_mask(mask, 1).dtype == np.uint8
    # no background class (CamVid: class 0 is an object like any other)
    np.testing.assert_array_equal(episode_mask(mask, 0), [[1, 0, 0], [IGNORE, 0, 0]])
    # a class absent from the image: all 0 but the ignored pixel
    np.testing.assert_array_equal(episode_mask(mask, 5), [[0, 0, 0], [IGNORE, 0, 0]])
    with pytest.raises(ValueError, match="ignore index"):
        episode_mask(mask, IGNORE)


def test_episode_mask_of_a_tiny_dataset_without_background(tmp_path):
    # classes sky(0) and car(1), no background; 1 px 255 outline around the car box
    data = write_tiny_voc(tmp_path / "nobg", {"t0": [(1, 2, 4, 2, 4)]}, ["t0"], classes=["sky", "car"],
                          background=None, size=6, outline=1)
    binary = episode_mask(data.masks["t0"], 0)
    assert (binary == IGNORE).sum() == 16 - 4      # the 4x4 outline band around the 2x2 car
    assert (binary == 1).sum() == 36 - 16          # every sky pixel
    assert (binary == 0).sum() == 4                # the car: "everything else"
