"""L-Net branch stages on a tiny VOC-layout dataset built in tmp_path: train_lnet,
infer_lnet, self_diffusion (and make_folds --novel-classes for named split-sets).

Dataset "tiny" (conftest.make_lnet_tiny, shared with test_pnet.py): classes [background,
cat, dog, bus], 32x32 images, random backbone weights, one epoch. Train images t0..t5 hold
a cat or dog square (base samples of the fold whose novel class is bus); t6, t7 a bus
square, t8 a bus and a cat (novel samples). Val: v0 (cat), v1 (bus).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cam import write_cam_file
from pipeline.config import REPO_ROOT, load_params
from pipeline.data.label_png import read_label_png
from pipeline.data.probability_png import read_probability_map, write_map
from pipeline.errors import PipelineError
from pipeline.methods.lnet import infer_lnet, self_diffusion, train_lnet
from pipeline.methods.lnet.train_lnet import object_class_ids, object_target, objectness_bce
from pipeline.stages import make_folds
from conftest import LNET_NOVEL, LNET_SCENES, TINY_CLASSES, box_mask, make_lnet_tiny, run_fails, run_ok

SIZE = 32


def gt_mask(image_id: str) -> np.ndarray:
    return box_mask(LNET_SCENES[image_id], SIZE)


def write_cams(cam_dir: Path, labels: dict[str, list[int]], zero: dict | None = None, stride: int = 4) -> None:
    """CAM files of the novel samples: each labelled class peaks on its ground-truth square."""
    cam_dir.mkdir(parents=True, exist_ok=True)
    for image_id in LNET_NOVEL:
        mask = gt_mask(image_id)
        keys = sorted(labels[image_id])
        h = w = -(-SIZE // stride)
        cams = np.zeros((len(keys), h, w), dtype=np.float32)
        for k, cls in enumerate(keys):
            if zero and cls in zero.get(image_id, ()):
                continue
            grid = mask[::stride, ::stride] == cls
            cams[k] = grid.astype(np.float32)
        write_cam_file(cam_dir / f"{image_id}.npz", cams, keys, (SIZE, SIZE), stride)


def write_object_maps(map_dir: Path, size: int = SIZE) -> None:
    """L-Net maps: 0.9 on every object square, 0.05 elsewhere."""
    map_dir.mkdir(parents=True, exist_ok=True)
    for image_id in LNET_NOVEL:
        prob = np.where(gt_mask(image_id) > 0, 0.9, 0.05)
        if size != SIZE:
            prob = np.full((size, size), 0.5)
        write_map(map_dir / f"{image_id}.png", prob)


# --- pure functions ---------------------------------------------------------------------

def test_object_target_binarises_and_keeps_ignore():
    mask = np.array([[0, 1, 2], [3, 255, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(object_target(mask, [1, 2], 255), [[0, 1, 1], [0, 255, 0]])


def test_object_classes_default_and_no_background_datasets():
    assert object_class_ids(None, TINY_CLASSES, 0, "tiny") == [1, 2, 3]
    camvid = ["sky", "road", "car", "pedestrian"]
    with pytest.raises(PipelineError, match="lnet.object_classes is null.*no background"):
        object_class_ids(None, camvid, None, "camvid")
    assert object_class_ids(["pedestrian", "car"], camvid, None, "camvid") == [2, 3]
    with pytest.raises(PipelineError, match="every class"):
        object_class_ids(camvid, camvid, None, "camvid")
    with pytest.raises(PipelineError, match="unknown class 'cow'"):
        object_class_ids(["cow"], camvid, None, "camvid")
    with pytest.raises(PipelineError, match="background class"):
        object_class_ids(["background"], TINY_CLASSES, 0, "tiny")


def test_objectness_bce_hand_computed_and_ignore():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 5.0]]])
    target = torch.tensor([[[1, 0], [255, 1]]])
    # mean of -log sigmoid(0), -log(1 - sigmoid(2)), -log sigmoid(5)
    expected = (np.log(2) + np.log1p(np.exp(2.0)) + np.log1p(np.exp(-5.0))) / 3
    assert float(objectness_bce(logits, target)) == pytest.approx(expected, rel=1e-6)
    all_ignored = objectness_bce(logits.requires_grad_(), torch.full_like(target, 255))
    assert float(all_ignored.detach()) == 0.0 and all_ignored.requires_grad


# --- train_lnet + infer_lnet ------------------------------------------------------------

def test_lnet_trains_on_base_samples_and_maps_every_weak_image(tmp_path):
    tiny = make_lnet_tiny(tmp_path)
    model, history = tmp_path / "lnet/model.pt", tmp_path / "lnet/history.tsv"
    run_ok(train_lnet.main, ["--params", tiny["params"], "--fold-file", tiny["fold"], "--out", model,
                             "--history", history, "--threads", 1])
    meta = torch.load(model, weights_only=True)["meta"]
    assert meta["task"] == "lnet" and meta["num_classes"] == 1 and meta["object_classes"] == [1, 2, 3]
    rows = history.read_text().splitlines()
    assert rows[0].split("\t")[:3] == ["epoch", "loss", "bce"] and len(rows) == 2
    assert not list((tmp_path / "lnet").glob("*.checkpoint.pt"))  # removed once the model is written

    maps = tmp_path / "lnet/maps"
    run_ok(infer_lnet.main, ["--params", tiny["params"], "--model", model, "--fold-file", tiny["fold"],
                             "--out", maps, "--threads", 1])
    assert sorted(p.stem for p in maps.iterdir()) == LNET_NOVEL
    for image_id in LNET_NOVEL:
        with Image.open(maps / f"{image_id}.png") as im:
            assert im.mode == "L" and im.size == (SIZE, SIZE)
        prob = read_probability_map(maps / f"{image_id}.png", (SIZE, SIZE))
        assert prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1


def test_lnet_on_dataset_without_background_needs_object_classes(tmp_path, capsys):
    tiny = make_lnet_tiny(tmp_path, dataset={"background": None, "classes": ["floor", "cat", "dog", "bus"]})
    line = run_fails(train_lnet.main, ["--params", tiny["params"], "--fold-file", tiny["fold"],
                                       "--out", tmp_path / "m.pt", "--history", tmp_path / "h.tsv"], capsys)
    assert "lnet.object_classes" in line and "no background" in line
    assert not (tmp_path / "m.pt").exists()


def test_lnet_bad_inputs_name_the_file(tmp_path, capsys):
    tiny = make_lnet_tiny(tmp_path)
    line = run_fails(train_lnet.main, ["--params", tiny["params"], "--fold-file", tmp_path / "nope.json",
                                       "--out", tmp_path / "m.pt", "--history", tmp_path / "h.tsv"], capsys)
    assert "nope.json" in line
    fold = json.loads(tiny["fold"].read_text())
    fold["base_samples"] = ["t0", "ghost"]
    bad = tmp_path / "bad_fold.json"
    bad.write_text(json.dumps(fold))
    line = run_fails(train_lnet.main, ["--params", tiny["params"], "--fold-file", bad,
                                       "--out", tmp_path / "m.pt", "--history", tmp_path / "h.tsv"], capsys)
    assert "bad_fold.json" in line and "ghost" in line
    not_a_model = tmp_path / "junk.pt"
    not_a_model.write_text("junk")
    line = run_fails(infer_lnet.main, ["--params", tiny["params"], "--model", not_a_model, "--fold-file",
                                       tiny["fold"], "--out", tmp_path / "maps"], capsys)
    assert "junk.pt" in line and not (tmp_path / "maps").exists()


# --- self_diffusion ---------------------------------------------------------------------

def diffusion_args(tiny, tmp_path, out="pseudo"):
    return ["--params", tiny["params"], "--cams", tmp_path / "cams", "--maps", tmp_path / "maps",
            "--labels", tiny["labels"], "--fold-file", tiny["fold"], "--out", tmp_path / out]


def test_self_diffusion_labels_the_weak_objects(tmp_path):
    tiny = make_lnet_tiny(tmp_path)
    labels = json.loads(tiny["labels"].read_text())["labels"]
    write_cams(tmp_path / "cams", labels)
    write_object_maps(tmp_path / "maps")
    run_ok(self_diffusion.main, diffusion_args(tiny, tmp_path))
    out = tmp_path / "pseudo"
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{i}.png" for i in LNET_NOVEL] + ["info.json"])
    for image_id in LNET_NOVEL:
        truth = tiny["data"].masks[image_id]
        pseudo = read_label_png(out / f"{image_id}.png")
        assert set(np.unique(pseudo)) <= {0, *labels[image_id]}
        assert (pseudo == truth).mean() > 0.8, image_id  # superpixels of a 32 px image
    info = json.loads((out / "info.json").read_text())
    assert info["summary"]["images"] == 3 and info["summary"]["images_without_classes"] == []
    assert info["images"]["t8"]["classes"] == [1, 3]


def test_self_diffusion_degenerate_images_have_defined_labels(tmp_path):
    tiny = make_lnet_tiny(tmp_path)
    document = json.loads(tiny["labels"].read_text())
    labels = document["labels"]
    write_cams(tmp_path / "cams", labels, zero={"t8": [1]})  # t8: the cat's CAM is all zero
    write_object_maps(tmp_path / "maps")
    document["labels"]["t7"] = []  # t7: no image-level class at all
    tiny["labels"].write_text(json.dumps(document))
    run_ok(self_diffusion.main, diffusion_args(tiny, tmp_path))
    out = tmp_path / "pseudo"
    assert (read_label_png(out / "t7.png") == 0).all()
    t8 = read_label_png(out / "t8.png")
    assert 1 not in np.unique(t8) and 3 in np.unique(t8)
    info = json.loads((out / "info.json").read_text())
    assert info["images"]["t8"]["absent_classes"] == [1]
    assert info["summary"]["images_without_classes"] == ["t7"]
    assert info["summary"]["absent_class_counts"] == {"cat": 1}


def test_self_diffusion_bad_inputs_name_the_file_and_write_nothing(tmp_path, capsys):
    tiny = make_lnet_tiny(tmp_path)
    labels = json.loads(tiny["labels"].read_text())["labels"]
    write_cams(tmp_path / "cams", labels)
    write_object_maps(tmp_path / "maps", size=20)  # wrong size
    line = run_fails(self_diffusion.main, diffusion_args(tiny, tmp_path), capsys)
    assert str(tmp_path / "maps" / "t6.png") in line and "20x20" in line
    write_object_maps(tmp_path / "maps")
    (tmp_path / "cams" / "t7.npz").unlink()
    line = run_fails(self_diffusion.main, diffusion_args(tiny, tmp_path), capsys)
    assert "t7.npz" in line and "missing" in line
    write_cams(tmp_path / "cams", {**labels, "t8": [1]})  # CAM file lacks the image's bus class
    line = run_fails(self_diffusion.main, diffusion_args(tiny, tmp_path), capsys)
    assert "t8.npz" in line and "no CAM for class(es) [3]" in line
    assert not (tmp_path / "pseudo").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_named_split_set_fold_file(tmp_path, capsys):
    tiny = make_lnet_tiny(tmp_path)
    out = tmp_path / "split_fold0.json"
    run_ok(make_folds.main, ["--params", tiny["params"], "--labels", tiny["labels"], "--fold", "0",
                             "--novel-classes", "dog,bus", "--out", out])
    fold = json.loads(out.read_text())
    assert fold["novel_classes"] == [2, 3] and fold["base_classes"] == [0, 1]
    assert fold["base_samples"] == ["t0", "t2", "t4"]
    line = run_fails(make_folds.main, ["--params", tiny["params"], "--labels", tiny["labels"], "--fold", "0",
                                       "--novel-classes", "cow", "--out", tmp_path / "x.json"], capsys)
    assert "unknown class 'cow'" in line and not (tmp_path / "x.json").exists()


def test_params_of_the_branch_validate_for_every_dataset():
    for dataset in ("embedded", "voc", "camvid"):
        params = load_params(REPO_ROOT / "params.yaml", dataset)
        assert params["lnet"]["split"] == "pascal5i" or params["lnet"]["split"] in params["lnet"]["split_sets"]
        assert params["pnet"]["train"]["lr_seg"] == pytest.approx(1e-5)
        assert params["pnet"]["train"]["lr_pnet"] == pytest.approx(1e-3)
    camvid = load_params(REPO_ROOT / "params.yaml", "camvid")
    ids = object_class_ids(camvid["lnet"]["object_classes"], camvid["data"]["classes"], None, "camvid")
    assert 0 < len(ids) < len(camvid["data"]["classes"])


# --- report_lnet ------------------------------------------------------------------------

def test_report_table_metrics_and_figure(tmp_path, capsys):
    from pipeline.methods.lnet import report as report_lnet

    tiny = make_lnet_tiny(tmp_path)
    labels = json.loads(tiny["labels"].read_text())["labels"]
    write_cams(tmp_path / "cams", labels)
    write_object_maps(tmp_path / "maps")
    run_ok(self_diffusion.main, diffusion_args(tiny, tmp_path))
    scores = {"cam_seggt": (0.40, 0.50, 0.20), "lnet": (0.50, 0.55, 0.40), "pnet": (0.54, 0.56, 0.50),
              "oracle": (0.60, 0.60, 0.60)}
    args = ["--params", tiny["params"], "--method", "pnet", "--fold", 0, "--split", "pascal5i",
            "--fold-file", tiny["fold"], "--labels", tiny["labels"], "--cams", tmp_path / "cams",
            "--maps", tmp_path / "maps", "--pseudo", tmp_path / "pseudo", "--out", tmp_path / "result"]
    for name, (all_, strong, weak) in scores.items():
        for kind in ("val", "pseudo"):
            path = tmp_path / f"{name}_{kind}.json"
            path.write_text(json.dumps({"miou": all_, "miou_base": strong, "miou_novel": weak, "split": "val",
                                        "num_images": 2, "coverage": 0.9}))
            args += ["--metrics", f"{name}_{kind}={path}"]
    run_ok(report_lnet.main, args)
    out = tmp_path / "result"
    document = json.loads((out / "metrics.json").read_text())
    assert (document["miou"], document["miou_strong"], document["miou_weak"]) == (0.54, 0.56, 0.50)
    assert set(document["methods"]) == {"cam_seggt", "lnet", "pnet", "oracle"}
    assert document["methods"]["pnet"]["share_of_oracle"] == pytest.approx(0.9)
    assert document["methods"]["lnet"]["pseudo"]["miou_novel"] == 0.40
    assert document["methods"]["pnet"]["pseudo"] is None
    assert document["weak_classes"] == ["bus"] and document["strong_classes"] == ["background", "cat", "dog"]
    assert document["figure_images"] == ["t6", "t7", "t8"]  # most weak-class pixels first, ties by id
    report = (out / "report.md").read_text()
    assert "| P-Net | 54.0 | 56.0 | 50.0 | 90.0 |" in report
    assert "| CAM-only pseudo labels | 40.0 | 50.0 | 20.0 | 66.7 |" in report
    assert "| L-Net (self-diffusion) | 50.0 | 40.0 | 90.0 |" in report  # pseudo labels: all, weak, coverage
    report_params = load_params(tiny["params"])["report"]
    with Image.open(out / "figure.png") as figure:
        assert figure.size[0] == 6 * report_params["figure_cell"] + 7 * 4  # six panels, 4 px gaps

    position = args.index(next(a for a in args if str(a).startswith("oracle_val=")))
    without_oracle = args[:position - 1] + args[position + 1:]
    without_oracle[without_oracle.index("--out") + 1] = tmp_path / "result2"
    line = run_fails(report_lnet.main, without_oracle, capsys)
    assert "--metrics" in line and "oracle_val" in line
    assert not (tmp_path / "result2").exists()
