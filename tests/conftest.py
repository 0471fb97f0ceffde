"""Shared test helpers; test modules take them with ``from conftest import ...`` (pytest puts
tests/ on sys.path) and never import each other (tests/test_test_hygiene.py checks that).

* Paths and class lists: ``ROOT``, ``CAMVID_ROOT`` / ``needs_camvid``, ``VOC_CLASSES``,
  ``CAMVID_CLASSES``, ``TINY_CLASSES``.
* The one tiny VOC-layout dataset builder, ``write_tiny_voc`` (masks from boxes via
  ``box_mask``; optional 255 outline band; images coloured by class), returning a
  ``TinyVOC`` that also writes the dataset's params entry, image-level labels and folds.
* Params: ``tiny_dataset_entry``, ``tiny_params`` (the repository's params.yaml with a tiny
  dataset), ``set_keys`` (dotted keys), ``write_yaml``.
* Running stages in-process as ``python -m`` does: ``run_ok``, ``run_fails``.
* Datasets shared by two modules: ``make_boundary_tiny`` (boundary stages, faults) and
  ``make_lnet_tiny`` (L-Net stages, P-Net).
* The real Snakefile in a scratch copy: ``scratch_workflow``, ``snakemake``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CAMVID_ROOT = (ROOT.parent / "shared" / "data" / "camvid").resolve()
needs_camvid = pytest.mark.skipif(not CAMVID_ROOT.is_dir(), reason="../shared/data/camvid not present")

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]
CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
                  "pedestrian", "bicyclist"]
TINY_CLASSES = ["background", "cat", "dog", "bus"]
IGNORE = 255

# --------------------------------------------------------------------------- the tiny dataset

Box = tuple[int, int, int, int, int]  # (class, row0, row1, col0, col1): mask[row0:row1, col0:col1] = class
# Image colour of a class (by index); classes not listed take their VOC colour-map colour.
COLOURS = {0: (40, 40, 40), 1: (220, 30, 30), 2: (30, 30, 220), 3: (30, 200, 30)}


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def box_mask(boxes: Sequence[Box] = (), size: int | tuple[int, int] = 32, fill: int = 0,
             outline: int = 0) -> np.ndarray:
    """uint8 mask of ``fill`` with ``boxes`` painted in order; ``outline`` > 0 first puts a
    255 band that many pixels wide around each box (VOC's void outline)."""
    mask = np.full(_hw(size), fill, np.uint8)
    if outline:
        for _, r0, r1, c0, c1 in boxes:
            mask[max(r0 - outline, 0):r1 + outline, max(c0 - outline, 0):c1 + outline] = IGNORE
    for cls, r0, r1, c0, c1 in boxes:
        mask[r0:r1, c0:c1] = cls
    return mask


def save_mask(path: Path, mask: np.ndarray, mode: str = "P") -> None:
    """Mask PNG as VOC stores it ('P': indices + the VOC colour map) or plain grey ('L')."""
    from pipeline.data.label_png import write_label_png

    if mode == "P":
        write_label_png(path, mask)
    else:
        assert mode == "L", mode
        Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(path)


def _colour_table(colours: Mapping[int, tuple[int, int, int]] | None) -> np.ndarray:
    from pipeline.data.label_png import voc_palette

    table = np.array(voc_palette(), np.int64).reshape(256, 3)
    for cls, colour in {**COLOURS, **(colours or {})}.items():
        table[cls] = colour
    return table


def tiny_dataset_entry(root: str | Path, classes: Sequence[str], novel_classes, background: str | None = "background",
                       boundary_source: str = "outline", **extra) -> dict:
    """A params.yaml ``datasets`` entry for a VOC-layout test dataset under ``root``
    (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/{train,val}.txt; ignore 255)."""
    return {"root": str(root), "image_dir": "JPEGImages", "mask_dir": "SegmentationClass",
            "splits": {"train": "ImageSets/Segmentation/train.txt", "val": "ImageSets/Segmentation/val.txt"},
            "classes": list(classes), "background": background, "ignore_index": IGNORE,
            "boundary_source": boundary_source, "novel_classes": novel_classes, **extra}


@dataclass
class TinyVOC:
    """What ``write_tiny_voc`` wrote: masks by id (train images first) and the split lists."""

    root: Path
    classes: list[str]
    background: str | None
    masks: dict[str, np.ndarray]
    train: list[str]
    val: list[str]

    @property
    def background_index(self) -> int | None:
        return None if self.background is None else self.classes.index(self.background)

    def pixel_counts(self) -> dict[str, list[int]]:
        """Pixels of each class per image (255 not counted)."""
        return {i: [int((m == c).sum()) for c in range(len(self.classes))] for i, m in self.masks.items()}

    def labels(self, min_pixels: int = 1) -> dict[str, list[int]]:
        """Image-level labels: classes with >= ``min_pixels`` pixels, the background left out."""
        return {i: [c for c, n in enumerate(counts) if n >= min_pixels and c != self.background_index]
                for i, counts in self.pixel_counts().items()}

    def entry(self, novel_classes, **extra) -> dict:
        """This dataset's params.yaml ``datasets`` entry."""
        return tiny_dataset_entry(self.root, self.classes, novel_classes, background=self.background, **extra)

    def write_labels(self, path: Path, dataset: str = "tiny") -> Path:
        """The image-labels file stage image_labels would write (min_pixels 1), with pixel counts."""
        from pipeline.data.labels import write_image_labels

        write_image_labels(path, dataset_name=dataset, class_names=self.classes, background=self.background,
                           min_pixels=1, splits={"train": self.train, "val": self.val}, labels=self.labels(),
                           pixel_counts=self.pixel_counts())
        return Path(path)

    def fold(self, novel_classes: Sequence[int], dataset: str = "tiny", fold: int = 0,
             novel_min_pixels: int | None = None) -> dict:
        """Fold document (make_folds' format, empty counts): a train image holding any pixel of a
        novel class (with ``novel_min_pixels``: that many pixels of one novel class, the number
        then also written) is a novel sample, every other one a base sample."""
        least = 1 if novel_min_pixels is None else novel_min_pixels
        novel = [i for i in self.train if any((self.masks[i] == c).sum() >= least for c in novel_classes)]
        rule = {} if novel_min_pixels is None else {"novel_min_pixels": novel_min_pixels}
        return {"fold": fold, "dataset": dataset, "novel_classes": list(novel_classes),
                "base_classes": [c for c in range(len(self.classes)) if c not in novel_classes], **rule,
                "novel_samples": novel, "base_samples": [i for i in self.train if i not in novel], "counts": {}}

    def write_fold(self, path: Path, novel_classes: Sequence[int], **fold_args) -> Path:
        from pipeline.io import write_json

        write_json(path, self.fold(novel_classes, **fold_args))
        return Path(path)


def write_tiny_voc(root: Path, train: Mapping[str, Sequence[Box]],
                   val: Mapping[str, Sequence[Box]] | Sequence[str] = (), *,
                   classes: Sequence[str] = TINY_CLASSES, background: str | None = "background",
                   size: int | tuple[int, int] | Mapping[str, int | tuple[int, int]] = 32,
                   fill: int = 0, outline: int = 0,
                   colours: Mapping[int, tuple[int, int, int]] | None = None, noise: int = 10, seed: int = 0,
                   mask_mode: str = "P") -> TinyVOC:
    """A VOC-layout dataset under ``root``: JPEGImages/<id>.jpg, SegmentationClass/<id>.png,
    ImageSets/Segmentation/{train,val}.txt.

    ``train`` / ``val`` map image id -> boxes (see ``box_mask``); ``val`` may instead list ids
    of train images. Each mask is ``box_mask(boxes, size, fill, outline)``, ``size`` one for all
    images or a mapping id -> size; each image paints every pixel with its class's colour
    (``COLOURS`` updated by ``colours``; the outline band takes the colour underneath) plus
    uniform noise in [-noise, noise) from one generator seeded ``seed``. Masks are stored as
    palette ('P') or grey ('L') PNGs (``mask_mode``)."""
    root = Path(root)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    table = _colour_table(colours)
    rng = np.random.default_rng(seed)
    if isinstance(val, Mapping):
        scenes = {**train, **val}
    else:
        assert set(val) <= set(train), f"val ids {sorted(set(val) - set(train))} are not train images"
        scenes = dict(train)
    if isinstance(size, Mapping):
        assert set(scenes) <= set(size), f"no size for {sorted(set(scenes) - set(size))}"
    masks = {}
    for image_id, boxes in scenes.items():
        hw = size[image_id] if isinstance(size, Mapping) else size
        image = table[box_mask(boxes, hw, fill)]
        if noise:
            image = image + rng.integers(-noise, noise, image.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg",
                                                                      quality=95)
        masks[image_id] = box_mask(boxes, hw, fill, outline)
        save_mask(root / "SegmentationClass" / f"{image_id}.png", masks[image_id], mask_mode)
    splits = {"train": list(train), "val": list(val)}
    for split, ids in splits.items():
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return TinyVOC(root, list(classes), background, masks, splits["train"], splits["val"])


# --------------------------------------------------------------------------- params

def set_keys(raw: dict, changes: Mapping[str, object]) -> dict:
    """Set dotted keys in place ({'cam.train.epochs': 2} sets raw['cam']['train']['epochs']); returns raw."""
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return raw


def tiny_params(data: TinyVOC, novel_classes, changes: Mapping[str, object] | None = None, *, name: str = "tiny",
                **entry) -> dict:
    """The repository's params.yaml with ``data`` as dataset ``name`` (the default dataset),
    then the dotted-key ``changes`` (see ``set_keys``)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["datasets"][name] = data.entry(novel_classes, **entry)
    raw["dataset"] = name
    return set_keys(raw, changes or {})


def write_yaml(path: Path, document: dict) -> Path:
    Path(path).write_text(yaml.safe_dump(document, sort_keys=False))
    return Path(path)


# --------------------------------------------------------------------------- running stages

def run_ok(main, argv) -> None:
    """Run a stage in-process the way ``python -m`` does; it must exit 0."""
    from pipeline.errors import run_stage

    with pytest.raises(SystemExit) as exit_info:
        run_stage(main, [str(a) for a in argv])
    assert exit_info.value.code == 0


def run_fails(main, argv, capsys, *needles: str, alone: bool = False) -> str:
    """Run a stage that must fail on bad input: exit 2, exactly one stderr line 'error: ...',
    the last one (``alone``: the only line at all), naming each of ``needles``. Returns it."""
    from pipeline.errors import run_stage

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_stage(main, [str(a) for a in argv])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, lines
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert not alone or len(lines) == 1, lines
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


# --------------------------------------------------------------------------- shared tiny datasets

def boundary_square(index: int) -> Box:
    """The 10x10 square of boundary test image ``index``: cat/dog (0..3) or bus (4, 5), moving
    down-left with the index."""
    r, c = 4 + 3 * index, 20 - 2 * index
    return (3 if index >= 4 else 1 + index % 2, r, r + 10, c, c + 10)


def make_boundary_tiny(tmp_path: Path, squares: Sequence[int], epochs: int) -> dict:
    """32x32 images t0, t1, ... with ``boundary_square(squares[k])`` and a 1-px 255 outline
    (val: t0); params (novel bus, CPU, no ImageNet weights, a 32 px boundary-net schedule of
    ``epochs``) and fold 0 (novel bus)."""
    data = write_tiny_voc(tmp_path / "tiny", {f"t{k}": [boundary_square(s)] for k, s in enumerate(squares)},
                          val=["t0"], outline=1)
    raw = tiny_params(data, [["bus"]], {"device": "cpu", "backbone.pretrained": False})
    raw["boundary"]["train"].update({"crop": 32, "scale_range": [0.9, 1.1], "batch_size": 2, "epochs": epochs})
    return {"tmp": tmp_path, "data": data, "raw": raw, "params": write_yaml(tmp_path / "params.yaml", raw),
            "fold": data.write_fold(tmp_path / "fold0.json", [3])}


# L-Net / P-Net dataset: t0..t5 hold a cat or dog square (base samples of the fold whose novel
# class is bus), t6, t7 a bus square, t8 a bus and a cat (novel samples); val v0 (cat), v1 (bus).
LNET_SCENES: dict[str, list[Box]] = {
    "t0": [(1, 4, 16, 4, 16)], "t1": [(2, 10, 24, 14, 28)], "t2": [(1, 16, 26, 2, 12)], "t3": [(2, 2, 14, 18, 30)],
    "t4": [(1, 8, 24, 8, 24)], "t5": [(2, 18, 30, 18, 30)],
    "t6": [(3, 6, 20, 6, 20)], "t7": [(3, 14, 28, 12, 26)], "t8": [(3, 2, 14, 2, 14), (1, 18, 30, 18, 30)],
    "v0": [(1, 10, 22, 10, 22)], "v1": [(3, 8, 22, 8, 22)],
}
LNET_NOVEL = ["t6", "t7", "t8"]
LNET_OVERRIDES = {
    "backbone": {"pretrained": False, "output_stride": 16, "frozen_blocks": 2},
    "self_diffusion": {"slic_n_segments": 40},
    "lnet": {"train": {"crop": 32, "batch_size": 2, "epochs": 1}, "infer": {"batch_size": 4}},
    "pnet": {"pretrain_epochs": 1, "train": {"crop": 32, "batch_size": 2, "epochs": 1}},
}


def make_lnet_tiny(tmp_path: Path, overrides: dict | None = None, dataset: dict | None = None) -> dict:
    """The L-Net dataset, params (dataset 'tiny', fold 0 novel bus, ``LNET_OVERRIDES`` deep-merged
    with ``overrides``, dataset-entry keys replaced by ``dataset``), image labels and fold 0
    made by the stages image_labels and make_folds."""
    from pipeline.config import deep_merge
    from pipeline.stages import image_labels, make_folds

    data = write_tiny_voc(tmp_path / "tiny", {i: LNET_SCENES[i] for i in LNET_SCENES if i[0] == "t"},
                          {i: LNET_SCENES[i] for i in ("v0", "v1")})
    changes = {"overrides.tiny": deep_merge(LNET_OVERRIDES, overrides or {}),
               **{f"datasets.tiny.{key}": value for key, value in (dataset or {}).items()}}
    params = write_yaml(tmp_path / "params.yaml", tiny_params(data, [["bus"]], changes, boundary_source="transitions"))
    labels, fold = tmp_path / "labels.json", tmp_path / "fold0.json"
    run_ok(image_labels.main, ["--params", params, "--out", labels])
    run_ok(make_folds.main, ["--params", params, "--labels", labels, "--fold", "0", "--out", fold])
    return {"root": data.root, "data": data, "params": params, "labels": labels, "fold": fold}


# --------------------------------------------------------------------------- the real workflow

def scratch_workflow(tmp_path: Path, overrides: dict | None = None) -> Path:
    """Copy Snakefile, workflow/, params.yaml and datasets/ to ``tmp_path``; merge ``overrides``
    into params.yaml (top-level keys replaced section-wise by deep merge)."""
    from pipeline.config import deep_merge

    shutil.copy(ROOT / "Snakefile", tmp_path / "Snakefile")
    shutil.copy(ROOT / "environment.yml", tmp_path / "environment.yml")  # rules name it (conda:)
    shutil.copytree(ROOT / "workflow", tmp_path / "workflow")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    camvid = params["datasets"]["camvid"]
    camvid["root"] = str((ROOT / camvid["root"]).resolve())  # relative to the repo
    if overrides:
        params = deep_merge(params, overrides)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "datasets").mkdir()  # the dataset files (msrc: results/report covers it), roots resolved
    for path in sorted((ROOT / "datasets").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        doc["data"]["root"] = str((ROOT / doc["data"]["root"]).resolve())
        (tmp_path / "datasets" / path.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return tmp_path


def snakemake(workdir: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)


def rule_counts(stdout: str) -> dict[str, int]:
    """{rule: job count} of a snakemake --quiet rules listing."""
    counts = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def dry_run(workdir, target):
    """{rule: job count} that ``snakemake -n`` plans for ``target`` (it must plan without error)."""
    proc = snakemake(workdir, target, "-n", "--cores", "2", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return rule_counts(proc.stdout)


# --------------------------------------------------------------------------- the CRNet stages' tiny data

CAT, DOG, BUS = 1, 2, 3
CRNET_TRAIN = {**{f"t{i}": [(DOG, 4 + i, 16 + i, 4, 16)] for i in range(6)},
               **{f"t{i}": [(BUS, 10, 24, 2 + i, 16 + i)] for i in range(6, 12)}}
CRNET_TRAIN["t2"] = CRNET_TRAIN["t2"] + [(CAT, 20, 30, 20, 30)]   # a novel object in a training image
CRNET_VAL = {**{f"v{i}": [(CAT, 4 + 2 * i, 18 + 2 * i, 6, 20)] for i in range(4)}, "v4": [(DOG, 4, 20, 4, 20)]}

CRNET_SMALL = {"crnet.hidden": 8, "crnet.train.episodes_per_epoch": 8, "crnet.train.batch_size": 4,
               "crnet.train.epochs": 2, "crnet.train.optimizer": "adam", "crnet.train.lr": 0.001,
               "crnet.select.classes": 1, "crnet.select.episodes": 4,
               "crnet.test.finetune.episodes": 2, "crnet.test.finetune.steps": 2, "crnet.test.finetune.shots": 2,
               "episodes.num_episodes": 6, "backbone.output_stride": 16,
               "crnet.test.mismatched": False}  # fold 0 has one novel class (cat): no other class to mismatch


def crnet_dataset(tmp: Path, train, val, changes, splits, novel: str = "cat"):
    """A tiny dataset under ``tmp`` (fold 0: ``novel`` novel), its params (``changes``), labels, fold
    file and the CRNet features of ``splits``: (data, params, labels, fold, common args)."""
    from pipeline.methods.crnet import crnet_features

    data = write_tiny_voc(tmp / "tiny", train, val)
    params = write_yaml(tmp / "params.yaml", tiny_params(data, [[novel]], changes))
    labels = data.write_labels(tmp / "labels.json")
    fold = data.write_fold(tmp / "fold0.json", [TINY_CLASSES.index(novel)])
    common = ["--params", params, "--dataset", "tiny"]
    for split in splits:
        run_ok(crnet_features.main, common + ["--split", split, "--out", tmp / f"{split}.pt"])
    return data, params, labels, fold, common


@pytest.fixture(scope="session")
def crnet_tiny(tmp_path_factory):
    """The CRNet stages' tiny dataset (CRNET_TRAIN, CRNET_VAL; fold 0: cat novel): its
    features, 1- and 2-shot episodes and a trained CRNet (test_crnet_stages, test_tpc_crc_stages)."""
    from pipeline.methods.crnet import train_crnet
    from pipeline.stages import make_episodes

    tmp = tmp_path_factory.mktemp("crnet")
    data, params, labels, fold, common = crnet_dataset(tmp, CRNET_TRAIN, CRNET_VAL, CRNET_SMALL, ("train", "val"))
    for shots in (1, 2):
        run_ok(make_episodes.main, common + ["--labels", labels, "--fold-file", fold, "--shots", shots, "--seed", 0,
                                             "--out", tmp / f"ep{shots}.jsonl"])
    train_args = common + ["--features", tmp / "train.pt", "--labels", labels, "--fold-file", fold,
                           "--out", tmp / "model.pt", "--history", tmp / "history.tsv",
                           "--threads", 1]  # fixed: a rerun (test_unknown_variant_and_resume) must give the same
    run_ok(train_crnet.main, train_args)      # bits whatever thread count earlier tests left torch at
    return {"tmp": tmp, "data": data, "params": params, "labels": labels, "fold": fold, "common": common,
            "train_args": train_args}


def crnet_eval_args(tiny, episodes, shots, out, *extra):
    return tiny["common"] + ["--features", tiny["tmp"] / "val.pt", "--fold-file", tiny["fold"],
                             "--episodes", episodes, "--shots", shots, *extra, "--out", out]
