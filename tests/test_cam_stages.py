"""CAM stages (train_cam, infer_cam, eval_cam, confident_labels) on tiny VOC-layout data.

Dataset "tiny": classes [background, cat, dog], six 32x32 train images (a red 'cat' square,
a blue 'dog' square, both, or nothing) and one val image. Dataset "tinynb" has the same
files but no background class (classes [sky, cat, dog], 'sky' where tiny has background).
The network is trained for one short epoch on random weights (fast); eval_cam and
confident_labels also run on hand-written CAM files so their numbers can be checked by hand.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.cam import cam_path, read_cam_file, write_cam_file
from pipeline.config import REPO_ROOT
from pipeline.data.label_png import read_label_png
from pipeline.stages import confident_labels, eval_cam, image_labels, infer_cam, train_cam
from conftest import run_fails, tiny_dataset_entry, tiny_params, write_tiny_voc, write_yaml

SIZE = 32
# id -> list of (class, row0, row1, col0, col1) squares
SCENES = {
    "t0": [(1, 4, 14, 4, 14)],
    "t1": [(2, 16, 28, 10, 22)],
    "t2": [(1, 2, 12, 18, 30), (2, 18, 30, 2, 14)],
    "t3": [],
    "t4": [(1, 10, 22, 10, 22)],
    "t5": [(2, 3, 13, 3, 13)],
    "v0": [(1, 8, 16, 8, 16)],
}
CAM_CHANGES = {
    "device": "cpu", "backbone.pretrained": False, "backbone.output_stride": 16, "cam.output_stride": None,
    "cam.train.crop": 32, "cam.train.scale_range": [0.9, 1.1], "cam.train.batch_size": 3, "cam.train.epochs": 2,
    "cam.train.lr": 0.01, "cam.train.momentum": 0.9, "cam.infer.scales": [1.0, 0.5], "cam.store_stride": 4,
    "cam.eval.thresholds": [0.5, 0.8],
}


def _write_params(path, data, **changes):
    """Params with dataset 'tiny' (default) and 'tinynb' (the same files, 'sky' for background)."""
    nb = tiny_dataset_entry(data.root, ["sky", "cat", "dog"], [["dog"]], background=None)
    raw = tiny_params(data, [["dog"]], {"datasets.tinynb": nb, **CAM_CHANGES, **changes})
    return str(write_yaml(path, raw))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Dataset, params, labels files, one trained model and its CAMs (shared by the tests)."""
    tmp = tmp_path_factory.mktemp("cam")
    data = write_tiny_voc(tmp / "tiny", {k: v for k, v in SCENES.items() if k[0] == "t"}, {"v0": SCENES["v0"]},
                          classes=["background", "cat", "dog"])
    params = _write_params(tmp / "params.yaml", data)
    labels = {}
    for name in ("tiny", "tinynb"):
        labels[name] = str(tmp / f"labels_{name}.json")
        image_labels.main(["--params", params, "--dataset", name, "--out", labels[name]])
    model, history = tmp / "cam" / "model.pt", tmp / "cam" / "history.tsv"
    train_cam.main(["--params", params, "--labels", labels["tiny"], "--out", str(model),
                    "--history", str(history), "--threads", "2"])
    cams = tmp / "cam" / "cams"
    infer_cam.main(["--params", params, "--model", str(model), "--labels", labels["tiny"], "--split", "train",
                    "--out", str(cams), "--threads", "2"])
    return {"tmp": tmp, "data": data, "params": params, "labels": labels, "model": model,
            "history": history, "cams": cams}


def test_train_writes_model_with_metadata_and_history(trained):
    data = torch.load(trained["model"], map_location="cpu", weights_only=True)
    assert data["meta"] == {"model": "CAMNet", "backbone": "efficientnet_lite0", "output_stride": 16,
                            "num_classes": 2, "classes": ["cat", "dog"]}
    rows = trained["history"].read_text().splitlines()
    assert rows[0] == "epoch\tloss\tlr_backbone\tlr_head\tbatches\tseconds"
    assert [r.split("\t")[0] for r in rows[1:]] == ["1", "2"]
    first_lr = float(rows[1].split("\t")[2])
    assert first_lr == pytest.approx(0.01) and float(rows[2].split("\t")[2]) < first_lr   # poly decay
    assert not (trained["model"].parent / "model.checkpoint.pt").exists()                      # removed when done


def test_infer_writes_normalised_cams_per_labelled_class(trained):
    labels = json.loads(open(trained["labels"]["tiny"]).read())["labels"]
    files = sorted(p.name for p in trained["cams"].iterdir())
    assert files == [f"t{i}.npz" for i in range(6)]
    for image_id in (f"t{i}" for i in range(6)):
        record = read_cam_file(cam_path(trained["cams"], image_id), num_classes=3, background_index=0)
        assert record["keys"] == labels[image_id]
        assert record["size"] == (SIZE, SIZE) and record["stride"] == 4
        assert record["cams"].shape == (len(labels[image_id]), 8, 8)        # ceil(32 / 4)
        if record["keys"]:
            peaks = record["cams"].max(axis=(1, 2))
            assert ((peaks > 0.99) | (peaks == 0)).all() and record["cams"].min() >= 0
    with np.load(cam_path(trained["cams"], "t0")) as raw:
        assert raw["cams"].dtype == np.float16
    assert read_cam_file(cam_path(trained["cams"], "t3"))["cams"].shape == (0, 8, 8)   # no foreground label


def test_eval_and_confident_labels_run_on_inferred_cams(trained):
    out = trained["tmp"] / "eval_real.json"
    eval_cam.main(["--params", trained["params"], "--cams", str(trained["cams"]), "--labels",
                   trained["labels"]["tiny"], "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["thresholds"] == [0.5, 0.8] and len(doc["miou_per_threshold"]) == 2
    assert doc["best_threshold"] in (0.5, 0.8) and 0 <= doc["miou"] <= 1
    conf = trained["tmp"] / "conf_real"
    confident_labels.main(["--params", trained["params"], "--cams", str(trained["cams"]), "--labels",
                           trained["labels"]["tiny"], "--out", str(conf)])
    for i in range(6):
        label = read_label_png(conf / f"t{i}.png")
        assert label.shape == (SIZE, SIZE) and set(np.unique(label)) <= {0, 1, 2, 255}
    assert set(np.unique(read_label_png(conf / "t3.png"))) == {0}     # no labelled class: background


def _hand_cams(cam_dir, value=0.8, ring=None, keys_of=None):
    """CAM files at stride 1 equal to ``value`` on each labelled object's square, 0 elsewhere;
    ``ring`` (a value) is put on a 1-px frame around each square."""
    cam_dir.mkdir(parents=True, exist_ok=True)
    for image_id, squares in SCENES.items():
        if not image_id.startswith("t"):
            continue
        keys = sorted({cls for cls, *_ in squares}) if keys_of is None else keys_of(squares)
        cams = np.zeros((len(keys), SIZE, SIZE), np.float32)
        for cls, r0, r1, c0, c1 in squares:
            if cls not in keys:
                continue
            k = keys.index(cls)
            if ring is not None:
                cams[k, max(r0 - 1, 0):r1 + 1, max(c0 - 1, 0):c1 + 1] = ring
            cams[k, r0:r1, c0:c1] = value
        write_cam_file(cam_path(cam_dir, image_id), cams, keys, (SIZE, SIZE), 1)


def _pixels_of_class(cls):
    return sum((r1 - r0) * (c1 - c0) for k, sq in SCENES.items() if k[0] == "t" for c, r0, r1, c0, c1 in sq
               if c == cls)


def _object_labels_nb(trained, name):
    """tinynb's labels file with each image labelled by its squares' classes only (the CAM
    keys): the stage-written labels include 'sky' (class 0) where present."""
    labels_nb = json.loads(open(trained["labels"]["tinynb"]).read())
    assert labels_nb["labels"]["t3"] == [0]  # t3 holds no square: all 'sky'
    labels_nb["labels"] = {k: sorted({c for c, *_ in sq}) for k, sq in SCENES.items()}
    labels_path = trained["tmp"] / name
    labels_path.write_text(json.dumps(labels_nb))
    return labels_path


def test_eval_cam_threshold_sweep_by_hand(trained):
    cams = trained["tmp"] / "hand_cams"
    _hand_cams(cams, value=0.8)
    out = trained["tmp"] / "eval_hand.json"
    eval_cam.main(["--params", trained["params"], "--cams", str(cams), "--labels", trained["labels"]["tiny"],
                   "--out", str(out)])
    doc = json.loads(out.read_text())
    # t = 0.5: CAMs (0.8) equal the masks -> every IoU 1. t = 0.8: no CAM is above the
    # threshold -> all background: IoU bg = bg pixels / all pixels, cat = dog = 0.
    total = 6 * SIZE * SIZE
    background = total - _pixels_of_class(1) - _pixels_of_class(2)
    assert doc["miou_per_threshold"] == pytest.approx([1.0, (background / total) / 3])
    assert doc["best_threshold"] == 0.5 and doc["miou"] == 1.0
    assert doc["per_class_iou"] == {"background": 1.0, "cat": 1.0, "dog": 1.0}
    assert doc["has_background"] is True and doc["num_images"] == 6


def test_eval_cam_without_background_class(trained):
    cams = trained["tmp"] / "hand_cams_nb"
    # 'sky' (id 0) is a class here: label every image with its squares' classes only, so
    # the argmax over the labelled classes paints the whole image with them.
    _hand_cams(cams, value=0.8)
    labels_path = _object_labels_nb(trained, "labels_nb_objects.json")
    out = trained["tmp"] / "eval_nb.json"
    eval_cam.main(["--params", trained["params"], "--dataset", "tinynb", "--cams", str(cams),
                   "--labels", str(labels_path), "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["best_threshold"] is None and doc["thresholds"] == [] and doc["has_background"] is False
    # Single-class images (t0, t1, t4, t5) become that class everywhere; t2 (cat and dog)
    # takes the argmax, first class (cat) where both are 0; t3 (no label) is void.
    cat_pred = (3 * SIZE * SIZE) - (12 * 12)     # t0, t4 whole + t2 minus its dog square
    dog_pred = 2 * SIZE * SIZE + 12 * 12          # t1, t5 whole + t2's dog square
    cat_tp, dog_tp = _pixels_of_class(1), _pixels_of_class(2)
    assert doc["per_class_iou"]["cat"] == pytest.approx(cat_tp / cat_pred)
    assert doc["per_class_iou"]["dog"] == pytest.approx(dog_tp / dog_pred)
    assert doc["per_class_iou"]["sky"] == 0.0
    assert doc["coverage"] == pytest.approx(5 / 6)


def test_confident_labels_threshold_rule_by_hand(trained):
    cams = trained["tmp"] / "hand_cams_ring"
    _hand_cams(cams, value=0.5, ring=0.2)         # 0.2 lies between conf_bg 0.05 and conf_fg 0.30
    out = trained["tmp"] / "confident_hand"
    confident_labels.main(["--params", trained["params"], "--cams", str(cams), "--labels",
                           trained["labels"]["tiny"], "--out", str(out)])
    label = read_label_png(out / "t0.png")
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[3:15, 3:15] = 255
    expected[4:14, 4:14] = 1
    assert (label == expected).all()


def test_confident_labels_auto_follow_the_folds_cam_threshold(trained):
    # t = 0.2: alpha_t = ln 0.2 / ln 0.8 = 7.21; PSA's band at alpha_t/4 and 2 alpha_t gives
    # conf_fg 0.399 and conf_bg 0.131, so the 0.5 object is foreground and its 0.2 ring ignored.
    cams = trained["tmp"] / "hand_cams_auto"
    _hand_cams(cams, value=0.5, ring=0.2)
    threshold = trained["tmp"] / "threshold_auto.json"
    threshold.write_text(json.dumps({"best_threshold": 0.2}))
    params = _write_params(trained["tmp"] / "params_conf_auto.yaml", trained["data"],
                           **{"confident_labels.conf_fg": "auto", "confident_labels.conf_bg": "auto"})
    out = trained["tmp"] / "confident_auto"
    confident_labels.main(["--params", params, "--cams", str(cams), "--labels", trained["labels"]["tiny"],
                           "--cam-threshold", str(threshold), "--out", str(out)])
    label = read_label_png(out / "t0.png")
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[3:15, 3:15] = 255
    expected[4:14, 4:14] = 1
    assert (label == expected).all()
    info = json.loads((out / "confident.json").read_text())
    assert info["auto"] == ["conf_fg", "conf_bg"]
    assert info["conf_fg"] == pytest.approx(0.3991, abs=1e-4) and info["conf_bg"] == pytest.approx(0.1313, abs=1e-4)


def test_confident_labels_auto_without_the_threshold_file_is_named(trained, capsys):
    params = _write_params(trained["tmp"] / "params_conf_auto2.yaml", trained["data"],
                           **{"confident_labels.conf_fg": "auto"})
    out = trained["tmp"] / "confident_auto2"
    run_fails(confident_labels.main, ["--params", params, "--cams", trained["cams"], "--labels",
                                      trained["labels"]["tiny"], "--out", str(out)], capsys, "confident_labels.conf_fg")
    assert not out.exists()


def test_confident_labels_crf_method(trained):
    pytest.importorskip("pydensecrf.densecrf")     # optional package pydensecrf2
    cams = trained["tmp"] / "hand_cams_crf"
    _hand_cams(cams, value=0.9)
    params = _write_params(trained["tmp"] / "params_crf_ok.yaml", trained["data"],
                           **{"confident_labels.method": "crf"})
    out = trained["tmp"] / "confident_crf_ok"
    confident_labels.main(["--params", params, "--cams", str(cams), "--labels", trained["labels"]["tiny"],
                           "--out", str(out)])
    label = read_label_png(out / "t0.png")       # cat square rows/cols 4:14
    assert (label[6:12, 6:12] == 1).all() and (label[20:, 20:] == 0).all()
    assert set(np.unique(read_label_png(out / "t3.png"))) == {0}


def test_confident_labels_without_background_class(trained):
    cams = trained["tmp"] / "hand_cams_nb2"
    _hand_cams(cams, value=0.5, ring=0.2)
    labels_path = _object_labels_nb(trained, "labels_nb_objects2.json")
    out = trained["tmp"] / "confident_nb"
    confident_labels.main(["--params", trained["params"], "--dataset", "tinynb", "--cams", str(cams),
                           "--labels", str(labels_path), "--out", str(out)])
    label = read_label_png(out / "t0.png")
    expected = np.full((SIZE, SIZE), 255, np.uint8)   # no background: ignore unless CAM >= conf_fg
    expected[4:14, 4:14] = 1
    assert (label == expected).all()


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("stage", [eval_cam, confident_labels])
def test_missing_cam_file_is_named(trained, capsys, stage):
    cams = trained["tmp"] / f"partial_{stage.__name__.rsplit('.', 1)[1]}"
    _hand_cams(cams)
    (cams / "t4.npz").unlink()
    out = trained["tmp"] / f"out_{stage.__name__.rsplit('.', 1)[1]}"
    run_fails(stage.main, ["--params", trained["params"], "--cams", cams, "--labels", trained["labels"]["tiny"],
                           "--out", out], capsys, "t4.npz", "CAM file missing")
    assert not out.exists()


def test_stale_cam_file_is_named(trained, capsys):
    cams = trained["tmp"] / "stale"
    _hand_cams(cams, keys_of=lambda squares: [1] if squares else [])   # t1 labelled dog, CAM says cat
    out = trained["tmp"] / "eval_stale.json"
    run_fails(eval_cam.main, ["--params", trained["params"], "--cams", cams, "--labels", trained["labels"]["tiny"],
                              "--out", out], capsys, "t1.npz", "stale")
    assert not out.exists()


def test_model_for_other_classes_is_named(trained, capsys):
    from pipeline.models import CAMNet
    from pipeline.training import save_model

    other = CAMNet({"name": "efficientnet_lite0", "pretrained": False, "output_stride": 16}, 5)
    path = trained["tmp"] / "other.pt"
    save_model(path, other, {**other.meta, "classes": list("abcde")})
    out = trained["tmp"] / "cams_other"
    run_fails(infer_cam.main, ["--params", trained["params"], "--model", path, "--labels", trained["labels"]["tiny"],
                               "--out", out], capsys, "other.pt", "num_classes")
    assert not out.exists()


def test_model_for_other_stride_is_named(trained, capsys):
    params = _write_params(trained["tmp"] / "params_os8.yaml", trained["data"], **{"cam.output_stride": 8})
    out = trained["tmp"] / "cams_os8"
    run_fails(infer_cam.main, ["--params", params, "--model", trained["model"], "--labels", trained["labels"]["tiny"],
                               "--out", out], capsys, "model.pt", "output_stride")
    assert not out.exists()


@pytest.mark.parametrize("changes, key", [
    ({"confident_labels.conf_bg": 0.4, "confident_labels.conf_fg": 0.3}, "confident_labels.conf_bg"),
    ({"confident_labels.method": "crf", "confident_labels.crf_alpha_fg": 40}, "confident_labels.crf_alpha_fg"),
    ({"confident_labels.conf_fg": 1.5}, "confident_labels.conf_fg"),
])
def test_out_of_range_confident_params_are_named(trained, capsys, changes, key):
    params = _write_params(trained["tmp"] / "params_bad.yaml", trained["data"], **changes)
    out = trained["tmp"] / "confident_bad"
    run_fails(confident_labels.main, ["--params", params, "--cams", trained["cams"], "--labels",
                                      trained["labels"]["tiny"], "--out", out], capsys, key)
    assert not out.exists()


def test_out_of_range_cam_params_are_named(trained, capsys):
    params = _write_params(trained["tmp"] / "params_bad2.yaml", trained["data"],
                           **{"cam.train.scale_range": [1.5, 0.5]})
    out = trained["tmp"] / "bad" / "model.pt"
    run_fails(train_cam.main, ["--params", params, "--labels", trained["labels"]["tiny"], "--out", out, "--history",
                               out.parent / "h.tsv"], capsys, "cam.train.scale_range")
    assert not out.parent.exists()
    params = _write_params(trained["tmp"] / "params_bad3.yaml", trained["data"],
                           **{"cam.eval.thresholds": [0.3, 0.3]})
    run_fails(eval_cam.main, ["--params", params, "--cams", trained["cams"], "--labels", trained["labels"]["tiny"],
                              "--out", trained["tmp"] / "e.json"], capsys, "cam.eval.thresholds")


def test_crf_method_without_the_package_is_named(trained):
    try:
        import pydensecrf.densecrf  # noqa: F401
        pytest.skip("pydensecrf is installed here")
    except ImportError:
        pass
    params = _write_params(trained["tmp"] / "params_crf.yaml", trained["data"],
                           **{"confident_labels.method": "crf"})
    out = trained["tmp"] / "confident_crf"
    # Through `python -m`, as snakemake runs it: exit 2, one line, no output directory.
    proc = subprocess.run([sys.executable, "-m", "pipeline.stages.confident_labels", "--params", params,
                           "--cams", str(trained["cams"]), "--labels", trained["labels"]["tiny"],
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: confident_labels.method")
    assert "pydensecrf2" in proc.stderr
    assert not out.exists()


def test_eval_cam_on_a_folds_base_samples_reads_no_novel_mask(trained, monkeypatch):
    """The `cam` row's threshold: swept on the fold's base samples only (dog novel: t0, t3, t4),
    and no novel sample's mask is ever opened (weak-shot: only the evaluation may)."""
    from pipeline.data.voc import VOCDataset

    cams = trained["tmp"] / "hand_cams_fold"
    _hand_cams(cams, value=0.8)
    fold = trained["tmp"] / "fold_dog.json"
    fold.write_text(json.dumps({"dataset": "tiny", "fold": 0, "novel_classes": [2], "base_classes": [0, 1],
                                "base_samples": ["t0", "t3", "t4"], "novel_samples": ["t1", "t2", "t5"], "counts": {}}))
    opened = []
    original = VOCDataset.load_mask
    monkeypatch.setattr(VOCDataset, "load_mask", lambda self, i: opened.append(i) or original(self, i))
    out = trained["tmp"] / "eval_fold.json"
    eval_cam.main(["--params", trained["params"], "--cams", str(cams), "--labels", trained["labels"]["tiny"],
                   "--fold-file", str(fold), "--out", str(out)])
    assert sorted(opened) == ["t0", "t3", "t4"]
    doc = json.loads(out.read_text())
    assert doc["num_images"] == 3 and doc["samples"] == "base_samples" and doc["novel_classes"] == [2]
    # t = 0.5 reproduces the base samples' masks exactly; dog appears in none of them
    assert doc["best_threshold"] == 0.5 and doc["per_class_iou"] == {"background": 1.0, "cat": 1.0, "dog": None}
