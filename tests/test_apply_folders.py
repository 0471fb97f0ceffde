"""Stages segment_folder and fewshot_folder on tiny folders made here: mixed sizes, a grey-scale
image, a PNG with alpha, hidden files and sub-folders (skipped), unreadable files (one line,
nothing written), and the support-mask conventions (palette / 0-255, empty mask)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import load_params
from pipeline.data.image_folder import read_object_mask, read_rgb, support_pairs
from pipeline.data.label_png import label_image, read_label_png
from pipeline.errors import PipelineError
from pipeline.folder_outputs import contact_sheet, overlay
from pipeline.models import backbone_normalization
from pipeline.segmentation import build_seg_model, class_model_meta, predict_config, predict_label_map
from pipeline.stages import fewshot_folder, segment_folder
from pipeline.training import save_model
from conftest import TINY_CLASSES, run_fails, run_ok, tiny_params, write_tiny_voc, write_yaml

RED, GREY = (220, 30, 30), (110, 110, 110)


def photo(size: tuple[int, int], box: tuple[int, int, int, int] | None, seed: int) -> np.ndarray:
    """HxWx3 uint8: noisy grey with a noisy red rectangle (rows r0:r1, cols c0:c1)."""
    rng = np.random.default_rng(seed)
    image = np.empty((*size, 3), np.float32)
    image[:] = GREY
    if box is not None:
        r0, r1, c0, c1 = box
        image[r0:r1, c0:c1] = RED
    return np.clip(image + rng.integers(-12, 12, image.shape), 0, 255).astype(np.uint8)


def box_array(size, box) -> np.ndarray:
    out = np.zeros(size, np.uint8)
    r0, r1, c0, c1 = box
    out[r0:r1, c0:c1] = 1
    return out


def mixed_folder(folder: Path) -> dict[str, tuple[int, int]]:
    """A JPEG, a grey-scale PNG, an RGBA PNG of three sizes, a hidden file and a sub-folder;
    returns {file name: (height, width)} of the images."""
    folder.mkdir(parents=True)
    Image.fromarray(photo((40, 56), (8, 30, 10, 40), 0)).save(folder / "wide.jpg", quality=95)
    Image.fromarray(photo((50, 26), (10, 30, 4, 20), 1)).convert("L").save(folder / "grey.png")
    rgba = Image.fromarray(photo((32, 32), (4, 20, 4, 20), 2)).convert("RGBA")
    rgba.putalpha(100)
    rgba.save(folder / "alpha.png")
    (folder / ".DS_Store").write_bytes(b"\0\1junk")
    (folder / "sub").mkdir()
    (folder / "sub" / "ignored.txt").write_text("not read")
    return {"wide.jpg": (40, 56), "grey.png": (50, 26), "alpha.png": (32, 32)}


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """Params of a tiny dataset and an untrained seg-net model file of its classes (the stage
    is plumbing: the net's accuracy is not the question here)."""
    tmp = tmp_path_factory.mktemp("segfolder")
    data = write_tiny_voc(tmp / "tiny", {"t0": [(1, 4, 20, 4, 20)]}, ["t0"])
    raw = tiny_params(data, [["bus"]], {"overrides": {"tiny": {
        "backbone": {"pretrained": False, "output_stride": 16},
        "segmentation": {"predict": {"scales": [1.0, 0.75], "flip": True}}}},
        "apply.sheet": {"cell": 48, "columns": 2}})
    params = write_yaml(tmp / "params.yaml", raw)
    loaded = load_params(params, "tiny")
    torch.manual_seed(0)
    model = build_seg_model({**loaded, "backbone": {**loaded["backbone"], "pretrained": False}}, len(TINY_CLASSES))
    save_model(tmp / "model.pt", model, class_model_meta(model, TINY_CLASSES))
    return {"tmp": tmp, "params": params, "model": tmp / "model.pt", "loaded": loaded, "net": model.eval()}


def seg_args(seg, images, out):
    return ["--params", seg["params"], "--dataset", "tiny", "--model", seg["model"], "--images", images,
            "--out", out, "--threads", "1"]


def test_segment_folder_writes_a_mask_and_overlay_per_image_at_its_size(seg, tmp_path):
    sizes = mixed_folder(tmp_path / "imgs")
    run_ok(segment_folder.main, seg_args(seg, tmp_path / "imgs", tmp_path / "out"))
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["alpha.png", "grey.png", "wide.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["alpha.jpg", "grey.jpg", "wide.jpg"]
    cfg = predict_config(seg["loaded"])
    mean, std = backbone_normalization(seg["loaded"]["backbone"])
    for name, size in sizes.items():
        stem = Path(name).stem
        with Image.open(out / "masks" / f"{stem}.png") as im:
            assert im.mode == "P" and im.size == (size[1], size[0])
        with Image.open(out / "overlays" / f"{stem}.jpg") as im:
            assert im.format == "JPEG" and im.size == (size[1], size[0])
        # the same prediction as stage predict_seg's function on the image (the model is used)
        expected = predict_label_map(seg["net"], read_rgb(tmp_path / "imgs" / name), cfg["scales"], cfg["flip"],
                                     mean, std, "cpu", torch.channels_last)
        assert np.array_equal(read_label_png(out / "masks" / f"{stem}.png"), expected)
    with Image.open(out / "sheet.jpg") as sheet:
        assert sheet.size[0] == 2 * 48 + 3 * 4  # two columns of 48 px cells
    info = json.loads((out / "info.json").read_text())
    assert set(info["per_image"]) == set(sizes) and info["classes"]["1"] == "cat"
    assert info["per_image"]["grey.png"]["height"] == 50
    assert abs(sum(info["per_image"]["wide.jpg"]["classes"].values()) - 1) < 1e-3


@pytest.mark.parametrize("bad, content, problem", [
    ("broken.jpg", "cut", "corrupt"),
    ("notes.txt", b"hello", "not a readable image"),
])
def test_an_unreadable_file_is_one_line_and_nothing_is_written(seg, tmp_path, capsys, bad, content, problem):
    mixed_folder(tmp_path / "imgs")
    good = (tmp_path / "imgs" / "wide.jpg").read_bytes()
    (tmp_path / "imgs" / bad).write_bytes(good[:300] if content == "cut" else content)
    line = run_fails(segment_folder.main, seg_args(seg, tmp_path / "imgs", tmp_path / "out"), capsys, bad, problem,
                     "nothing was written")
    assert str(tmp_path / "imgs" / bad) in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


def test_two_files_of_one_name_are_an_error(seg, tmp_path, capsys):
    mixed_folder(tmp_path / "imgs")
    Image.fromarray(photo((20, 20), None, 3)).save(tmp_path / "imgs" / "wide.png")
    run_fails(segment_folder.main, seg_args(seg, tmp_path / "imgs", tmp_path / "out"), capsys, "wide", "same name")


def test_empty_or_missing_folder_is_one_line(seg, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    run_fails(segment_folder.main, seg_args(seg, tmp_path / "empty", tmp_path / "out"), capsys, "holds no file")
    run_fails(segment_folder.main, seg_args(seg, tmp_path / "nope", tmp_path / "out"), capsys, "not found")


def test_a_model_of_other_classes_is_one_line(seg, tmp_path, capsys):
    mixed_folder(tmp_path / "imgs")
    net = build_seg_model({**seg["loaded"], "backbone": {**seg["loaded"]["backbone"], "pretrained": False}}, 5)
    save_model(tmp_path / "other.pt", net, class_model_meta(net, [*TINY_CLASSES, "horse"]))
    args = seg_args(seg, tmp_path / "imgs", tmp_path / "out")
    args[args.index(seg["model"])] = tmp_path / "other.pt"
    run_fails(segment_folder.main, args, capsys, "other.pt")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- support masks

def save_palette(path, values):
    label_image(np.asarray(values, np.uint8)).save(path)


def test_palette_mask_object_is_every_index_but_0_and_255(tmp_path):
    values = np.array([[0, 1, 2], [255, 1, 0]])
    save_palette(tmp_path / "m.png", values)
    assert read_object_mask(tmp_path / "m.png", (2, 3)).tolist() == [[0, 1, 1], [255, 1, 0]]
    # only the listed indices are the object (a second class becomes background)
    assert read_object_mask(tmp_path / "m.png", (2, 3), [2]).tolist() == [[0, 0, 1], [255, 0, 0]]


def test_grey_mask_object_is_128_and_above(tmp_path):
    Image.fromarray(np.array([[0, 255, 127], [128, 0, 255]], np.uint8), mode="L").save(tmp_path / "m.png")
    assert read_object_mask(tmp_path / "m.png", (2, 3)).tolist() == [[0, 1, 0], [1, 0, 1]]
    Image.fromarray(np.array([[0, 1], [1, 0]], bool)).save(tmp_path / "b.png")  # mode '1'
    assert read_object_mask(tmp_path / "b.png", (2, 2)).tolist() == [[0, 1], [1, 0]]


@pytest.mark.parametrize("make, problem", [
    (lambda p: save_palette(p, [[0, 0], [255, 0]]), "without any object pixel"),
    (lambda p: Image.fromarray(np.zeros((2, 2), np.uint8), mode="L").save(p), "without any object pixel"),
    (lambda p: Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(p), "mode 'RGB'"),
    (lambda p: save_palette(p, [[1, 1, 1]]), "but its image is 2x2"),
    (lambda p: p.write_bytes(b"not a png"), "not a readable mask"),
])
def test_bad_support_masks_are_one_error_naming_the_file(tmp_path, make, problem):
    make(tmp_path / "m.png")
    with pytest.raises(PipelineError) as err:
        read_object_mask(tmp_path / "m.png", (2, 2))
    assert err.value.where == str(tmp_path / "m.png") and problem in err.value.problem


def test_support_pairs_need_a_mask_per_image(tmp_path):
    (tmp_path / "s" / "images").mkdir(parents=True)
    (tmp_path / "s" / "masks").mkdir()
    Image.fromarray(photo((8, 8), None, 0)).save(tmp_path / "s" / "images" / "a.jpg")
    save_palette(tmp_path / "s" / "masks" / "a.png", np.ones((8, 8)))
    assert [(i.name, m.name) for i, m in support_pairs(tmp_path / "s")] == [("a.jpg", "a.png")]
    Image.fromarray(photo((8, 8), None, 0)).save(tmp_path / "s" / "images" / "b.jpg")
    with pytest.raises(PipelineError, match="support image without a mask"):
        support_pairs(tmp_path / "s")
    (tmp_path / "s" / "images" / "b.jpg").unlink()
    save_palette(tmp_path / "s" / "masks" / "c.png", np.ones((8, 8)))
    with pytest.raises(PipelineError, match="support mask without an image"):
        support_pairs(tmp_path / "s")


def test_overlay_tints_objects_only_and_the_sheet_holds_every_cell():
    image = np.full((4, 4, 3), 100, np.uint8)
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0] = 1
    out = overlay(image, labels, 0.5)
    assert (out[1:] == 100).all() and not (out[0, 0] == 100).all()
    cells = [(f"n{k}", Image.new("RGB", (16, 16), (0, 0, 0))) for k in range(5)]
    sheet = contact_sheet(cells, 16, 2, pad=4)
    assert sheet.size[0] == 2 * 16 + 3 * 4 and sheet.size[1] > 3 * 16  # 3 rows of 2


# --------------------------------------------------------------------------- few-shot on folders

BOX_SIZE = (64, 64)


def write_fewshot_folders(tmp: Path, grey_masks: bool = False) -> tuple[Path, Path, dict]:
    """Support: 3 photos with a red rectangle and its mask (palette, or 0/255 grey); query: 4
    photos of mixed sizes (one grey-scale, one RGBA), the rectangles' truth by name."""
    sup, query = tmp / "support", tmp / "query"
    (sup / "images").mkdir(parents=True)
    (sup / "masks").mkdir()
    query.mkdir()
    for k, box in enumerate([(8, 40, 10, 44), (20, 56, 20, 50), (4, 30, 30, 60)]):
        Image.fromarray(photo(BOX_SIZE, box, 10 + k)).save(sup / "images" / f"s{k}.jpg", quality=95)
        mask = box_array(BOX_SIZE, box)
        if grey_masks:
            Image.fromarray(mask * 255, mode="L").save(sup / "masks" / f"s{k}.png")
        else:
            save_palette(sup / "masks" / f"s{k}.png", mask)
    truth = {}
    for k, (size, box, mode) in enumerate([((64, 64), (10, 40, 20, 50), "RGB"), ((48, 80), (8, 36, 30, 70), "RGB"),
                                           ((72, 56), (30, 60, 8, 40), "RGBA"), ((64, 64), (30, 60, 4, 34), "L")]):
        image = Image.fromarray(photo(size, box, 20 + k)).convert(mode)
        name = f"q{k}.png" if mode != "RGB" else f"q{k}.jpg"
        image.save(query / name)
        truth[Path(name).stem] = box_array(size, box)
    return sup, query, truth


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    return float((pred & truth).sum()) / max(float((pred | truth).sum()), 1.0)


def fewshot_args(params, sup, query, out, method="prototype", *extra):
    return ["--params", params, "--dataset", "tiny", "--support", sup, "--query", query, "--method", method,
            *extra, "--out", out, "--threads", "1"]


@pytest.fixture(scope="module")
def fewshot(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fewshotfolder")
    data = write_tiny_voc(tmp / "tiny", {"t0": [(1, 4, 20, 4, 20)]}, ["t0"])
    params = write_yaml(tmp / "params.yaml", tiny_params(data, [["bus"]], {"backbone.output_stride": 16}))
    return {"tmp": tmp, "params": params}


def test_prototype_floor_finds_the_supports_object_and_follows_the_masks(fewshot, tmp_path):
    sup, query, truth = write_fewshot_folders(tmp_path)
    run_ok(fewshot_folder.main, fewshot_args(fewshot["params"], sup, query, tmp_path / "out"))
    out = tmp_path / "out"
    scores = {}
    for stem, box in truth.items():
        mask = read_label_png(out / "masks" / f"{stem}.png")
        assert mask.shape == box.shape and set(np.unique(mask)) <= {0, 1}
        scores[stem] = iou(mask.astype(bool), box.astype(bool))
    assert min(scores.values()) > 0.5, scores
    info = json.loads((out / "info.json").read_text())
    assert info["method"] == "prototype" and len(info["supports"]) == 3 and len(info["per_image"]) == 4
    # the support masks are the key input: the same supports with the background marked as the
    # object segment the background instead (a stage that ignored the masks would not change)
    for mask_path in sorted((sup / "masks").iterdir()):
        save_palette(mask_path, 1 - read_label_png(mask_path))
    run_ok(fewshot_folder.main, fewshot_args(fewshot["params"], sup, query, tmp_path / "inverted"))
    for stem, box in truth.items():
        mask = read_label_png(tmp_path / "inverted" / "masks" / f"{stem}.png").astype(bool)
        assert iou(mask, box.astype(bool)) < 0.2 and iou(mask, ~box.astype(bool)) > 0.5


def test_grey_0_255_support_masks_give_the_palette_result(fewshot, tmp_path):
    sup, query, _ = write_fewshot_folders(tmp_path / "p")
    run_ok(fewshot_folder.main, fewshot_args(fewshot["params"], sup, query, tmp_path / "p_out"))
    sup_g, query_g, _ = write_fewshot_folders(tmp_path / "g", grey_masks=True)
    run_ok(fewshot_folder.main, fewshot_args(fewshot["params"], sup_g, query_g, tmp_path / "g_out"))
    for path in sorted((tmp_path / "p_out" / "masks").iterdir()):
        assert np.array_equal(read_label_png(path), read_label_png(tmp_path / "g_out" / "masks" / path.name))


def test_a_support_without_object_pixels_is_one_error(fewshot, tmp_path, capsys):
    sup, query, _ = write_fewshot_folders(tmp_path)
    save_palette(sup / "masks" / "s1.png", np.zeros(BOX_SIZE))
    run_fails(fewshot_folder.main, fewshot_args(fewshot["params"], sup, query, tmp_path / "out"), capsys,
              "s1.png", "without any object pixel")
    assert not (tmp_path / "out").exists()


def test_unreadable_query_and_missing_model_are_one_line(fewshot, tmp_path, capsys):
    sup, query, _ = write_fewshot_folders(tmp_path)
    run_fails(fewshot_folder.main, fewshot_args(fewshot["params"], sup, query, tmp_path / "out", "crnet"), capsys,
              "--model", "needs the trained model")
    (query / "bad.jpg").write_bytes(b"\xff\xd8\xffnot really")
    run_fails(fewshot_folder.main, fewshot_args(fewshot["params"], sup, query, tmp_path / "out"), capsys, "bad.jpg")
    assert not (tmp_path / "out").exists()


def test_crnet_on_folders_uses_the_trained_model(crnet_tiny, tmp_path, capsys):
    sup, query, truth = write_fewshot_folders(tmp_path)
    args = fewshot_args(crnet_tiny["params"], sup, query, tmp_path / "out", "crnet",
                        "--model", crnet_tiny["tmp"] / "model.pt")
    run_ok(fewshot_folder.main, args)
    for stem, box in truth.items():
        mask = read_label_png(tmp_path / "out" / "masks" / f"{stem}.png")
        assert mask.shape == box.shape and set(np.unique(mask)) <= {0, 1}
    assert json.loads((tmp_path / "out" / "info.json").read_text())["method"] == "crnet"
    # a model file of another kind is one line naming it
    args[args.index(crnet_tiny["tmp"] / "model.pt")] = crnet_tiny["tmp"] / "fold0.json"
    run_fails(fewshot_folder.main, args, capsys, "fold0.json")


def test_refnet_on_folders_uses_the_trained_model(tmp_path, capsys):
    from pipeline.methods.crnet import crnet_features
    from pipeline.methods.refnet import train_refnet

    train = {**{f"t{i}": [(1, 4 + i, 16 + i, 4, 16)] for i in range(4)},
             **{f"t{i}": [(2, 10, 24, 2 + i, 16 + i)] for i in range(4, 8)}}
    data = write_tiny_voc(tmp_path / "tiny", train, ["t0"])
    small = {"refnet.size": 32, "refnet.grid": 4, "refnet.hidden": 64, "refnet.min_pixels": 4,
             "refnet.train.steps": 2, "refnet.train.warmup_steps": 1, "refnet.train.batch_size": 2,
             "refnet.critic.n_critic": 1, "refnet.critic.channels": 4, "backbone.output_stride": 16}
    params = write_yaml(tmp_path / "params.yaml", tiny_params(data, [["cat"]], small))
    common = ["--params", params, "--dataset", "tiny"]
    run_ok(crnet_features.main, common + ["--split", "train", "--out", tmp_path / "train.pt"])
    run_ok(train_refnet.main, common + ["--features", tmp_path / "train.pt", "--labels",
                                        data.write_labels(tmp_path / "labels.json"), "--fold-file",
                                        data.write_fold(tmp_path / "fold0.json", [1]), "--shots", "2",
                                        "--out", tmp_path / "model.pt", "--history", tmp_path / "history.tsv"])
    sup, query, truth = write_fewshot_folders(tmp_path / "folders")
    args = fewshot_args(params, sup, query, tmp_path / "out", "refnet", "--model", tmp_path / "model.pt")
    run_ok(fewshot_folder.main, args)
    for stem, box in truth.items():
        mask = read_label_png(tmp_path / "out" / "masks" / f"{stem}.png")
        assert mask.shape == box.shape and set(np.unique(mask)) <= {0, 1}
    assert json.loads((tmp_path / "out" / "info.json").read_text())["method"] == "refnet"
    args[args.index(tmp_path / "model.pt")] = tmp_path / "train.pt"  # not a model file
    run_fails(fewshot_folder.main, args, capsys, "train.pt")


def test_fit_scale_bounds_the_longer_side():
    from pipeline.data.image_folder import fit_scale

    assert fit_scale((100, 50), 200) == 1.0 and fit_scale((100, 50), None) == 1.0
    assert fit_scale((100, 400), 200) == 0.5 and fit_scale((300, 150), 100) == pytest.approx(1 / 3)


def test_large_images_are_seen_at_max_side_and_masks_keep_their_size(seg, tmp_path):
    import yaml

    raw = yaml.safe_load(seg["params"].read_text())
    raw["apply"]["max_side"] = 48
    params = write_yaml(tmp_path / "params.yaml", raw)
    (tmp_path / "imgs").mkdir()
    image = photo((96, 120), (20, 70, 30, 100), 5)
    Image.fromarray(image).save(tmp_path / "imgs" / "big.png")
    args = seg_args(seg, tmp_path / "imgs", tmp_path / "out")
    args[args.index(seg["params"])] = params
    run_ok(segment_folder.main, args)
    mask = read_label_png(tmp_path / "out" / "masks" / "big.png")
    assert mask.shape == (96, 120)
    cfg = predict_config(seg["loaded"])
    mean, std = backbone_normalization(seg["loaded"]["backbone"])
    expected = predict_label_map(seg["net"], image, [s * 0.4 for s in cfg["scales"]], cfg["flip"], mean, std, "cpu",
                                 torch.channels_last)
    assert np.array_equal(mask, expected)


def test_exif_orientation_is_applied(seg, tmp_path):
    (tmp_path / "imgs").mkdir()
    stored = Image.fromarray(photo((20, 40), None, 6))  # stored 40 wide, 20 high
    exif = stored.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    stored.save(tmp_path / "imgs" / "phone.jpg", exif=exif)
    assert read_rgb(tmp_path / "imgs" / "phone.jpg").shape == (40, 20, 3)
    run_ok(segment_folder.main, seg_args(seg, tmp_path / "imgs", tmp_path / "out"))
    assert read_label_png(tmp_path / "out" / "masks" / "phone.png").shape == (40, 20)


def test_the_sheet_of_a_large_folder_stays_within_jpeg_limits(tmp_path):
    from pipeline.folder_outputs import MAX_SHEET_SIDE, save_sheet, sheet_capacity

    capacity = sheet_capacity(32, 2)
    cells = [(f"n{k}", Image.new("RGB", (32, 32))) for k in range(capacity + 3)]
    assert save_sheet(tmp_path, cells, 32, 2) == capacity
    with Image.open(tmp_path / "sheet.jpg") as sheet:
        assert sheet.size[1] <= MAX_SHEET_SIDE
