"""params.yaml loading: overrides, schema validation, one-line errors naming the key."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    check_range,
    deep_merge,
    load_params,
    read_params_file,
    resolve_params,
    validate_params,
    with_dataset_files,
)
from pipeline.errors import PipelineError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def raw():
    return read_params_file(ROOT / "params.yaml")


def test_deep_merge_overrides_leaves_and_keeps_siblings():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 3}
    merged = deep_merge(base, {"a": {"b": 5, "c": [9]}})
    assert merged == {"a": {"b": 5, "c": [9]}, "d": 3}
    assert base["a"]["b"] == 1  # the input is not mutated


def test_shipped_params_validate_for_every_dataset(raw):
    validate_params(raw)
    for name in raw["datasets"]:
        params = resolve_params(raw, name)
        assert params["data"]["name"] == name
        assert "overrides" not in params


def test_dataset_overrides_apply_only_to_their_dataset(raw):
    raw = copy.deepcopy(raw)
    raw.setdefault("overrides", {}).setdefault("camvid", {})["seed"] = 123
    assert resolve_params(raw, "camvid")["seed"] == 123
    assert resolve_params(raw, "voc")["seed"] == raw["seed"]


def test_mistyped_key_names_the_key(raw):
    raw = copy.deepcopy(raw)
    raw["backbone"]["output_strid"] = 8
    with pytest.raises(PipelineError, match=r"backbone\.output_strid: unknown key"):
        validate_params(raw)


def test_mistyped_key_inside_an_override_is_caught(raw):
    raw = copy.deepcopy(raw)
    raw.setdefault("overrides", {})["camvid"] = {"sead": 1}
    with pytest.raises(PipelineError, match=r"overrides\.camvid -> sead: unknown key"):
        validate_params(raw)


def test_wrong_type_names_the_key(raw):
    raw = copy.deepcopy(raw)
    raw["seed"] = "zero"
    with pytest.raises(PipelineError, match=r"seed: 'zero' is not of type 'integer'"):
        validate_params(raw)


def test_novel_classes_forms_in_the_schema(raw):
    """pascal5i, class-name lists and {k: K} validate (K's range is checked by pipeline.data.folds);
    anything else names the key."""
    for form in ("pascal5i", [["sky"], ["car", "pole"]], {"k": 3}, {"k": 0}):
        raw = copy.deepcopy(raw)
        raw["datasets"]["camvid"]["novel_classes"] = form
        validate_params(raw)
    for form in ({"k": 3, "n": 1}, {"k": "3"}, {}, "pascal"):
        raw = copy.deepcopy(raw)
        raw["datasets"]["camvid"]["novel_classes"] = form
        with pytest.raises(PipelineError, match=r"datasets\.camvid\.novel_classes: "):
            validate_params(raw)


def test_unknown_dataset_is_one_clear_error(raw):
    with pytest.raises(PipelineError, match="dataset 'kitti' is not defined"):
        resolve_params(raw, "kitti")


def test_missing_params_file(tmp_path):
    with pytest.raises(PipelineError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_check_range_open_and_closed_bounds():
    check_range(0.5, "boundary.tau", 0, 1, low_open=True, high_open=True)
    with pytest.raises(PipelineError, match=r"boundary\.tau = 1 is out of range \(0, 1\)"):
        check_range(1, "boundary.tau", 0, 1, low_open=True, high_open=True)
    with pytest.raises(PipelineError, match=r"propagation\.logt = -1"):
        check_range(-1, "propagation.logt", 0)


def test_stage_with_mistyped_params_exits_2_with_one_line(tmp_path, raw):
    raw = copy.deepcopy(raw)
    raw["image_labels"]["min_pixel"] = 3
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    out = tmp_path / "labels.json"
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.image_labels", "--params", str(bad),
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "image_labels.min_pixel" in lines[0]
    assert not out.exists()


# --- dataset files: datasets/<name>.yaml --------------------------------------------------

def write_dataset_file(folder: Path, name: str, doc: dict) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def msrc_like_entry(root="somewhere") -> dict:
    return {"root": root, "image_dir": "JPEGImages", "mask_dir": "SegmentationClass",
            "splits": {"train": "train.txt", "val": "val.txt"}, "classes": ["background", "a", "b", "c"],
            "background": "background", "ignore_index": 255, "boundary_source": "transitions",
            "novel_classes": {"k": 3}}


def test_a_dataset_file_joins_datasets_and_overrides(raw, tmp_path):
    write_dataset_file(tmp_path, "mine", {"data": msrc_like_entry(), "params": {"cam": {"train": {"epochs": 2}}}})
    merged = with_dataset_files(raw, tmp_path)
    assert merged["datasets"]["mine"]["novel_classes"] == {"k": 3}
    assert merged["overrides"]["mine"]["cam"]["train"]["epochs"] == 2
    # a param that follows the data and the file leaves unset: auto
    assert merged["overrides"]["mine"]["propagation"]["logt"] == "auto"
    assert "mine" not in raw["datasets"], "the params.yaml dict is not modified"
    params = resolve_params(merged, "mine")
    assert params["cam"]["train"]["epochs"] == 2 and params["cam"]["train"]["lr"] == raw["cam"]["train"]["lr"]
    assert resolve_params(merged, "embedded")["propagation"]["logt"] == raw["overrides"]["embedded"]["propagation"]["logt"]


def test_the_shipped_msrc_file_loads_with_three_folds():
    from pipeline.data.folds import num_folds

    params = load_params(ROOT / "params.yaml", "msrc")  # datasets/msrc.yaml beside it
    assert params["data"]["classes"][:2] == ["background", "cow"] and len(params["data"]["classes"]) == 16
    assert num_folds(params["data"]) == 3 and params["propagation"]["logt"] == "auto"
    assert params["segmentation"]["feature_cache"] is True


@pytest.mark.parametrize("doc, needle", [
    ({"data": {**msrc_like_entry(), "clases": []}}, "data.clases: unknown key"),
    ({"data": msrc_like_entry(), "params": {"cam": {"trian": {}}}}, "params.cam.trian: unknown key"),
    ({"data": msrc_like_entry(), "extra": 1}, "extra: unknown key"),
    ({"params": {}}, "data: missing"),
])
def test_a_bad_dataset_file_is_one_line_naming_the_file_and_key(raw, tmp_path, doc, needle):
    path = write_dataset_file(tmp_path, "mine", doc)
    with pytest.raises(PipelineError) as err:
        with_dataset_files(raw, tmp_path)
    assert err.value.where == str(path) and needle in err.value.problem


def test_a_dataset_file_may_not_redefine_a_params_yaml_dataset(raw, tmp_path):
    path = write_dataset_file(tmp_path, "camvid", {"data": msrc_like_entry()})
    with pytest.raises(PipelineError, match="also defined") as err:
        with_dataset_files(raw, tmp_path)
    assert err.value.where == str(path)
