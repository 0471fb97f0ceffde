"""Reader for datasets in PASCAL VOC layout (VOC 2012 + SBD train_aug, CamVid, embedded).

Everything comes from one ``params["data"]`` entry (``datasets.<name>`` in params.yaml):

    <root>/<image_dir>/<id>.jpg      RGB image
    <root>/<mask_dir>/<id>.png       one channel of class indices (mode 'L' or 'P'),
                                     ``ignore_index`` (255) = void / unlabelled
    <root>/<splits[split]>           one image id per line

Cheap checks run at construction (root, split list, every listed image and mask exists:
one directory listing each, no decoding). Expensive checks run per image when it is
loaded (decodable JPEG, mask size equals image size, mask ids are known classes or
``ignore_index``). Every problem is a :class:`PipelineError` naming the file.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import PipelineError

IMAGE_SUFFIX = ".jpg"
MASK_SUFFIX = ".png"
# PIL raises these for files that are not images or are cut short (truncated JPEGs raise
# OSError on load as long as ImageFile.LOAD_TRUNCATED_IMAGES stays False).
_DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)
# Palette ('P') masks hold class indices; their palette colours are only for display.
_INDEX_MASK_MODES = ("L", "P")
# Where the data of a user-provided dataset belongs, said when its root is missing
# (docs/datasets.md, "VOC 2012 + SBD").
ROOT_HINTS = {
    "voc": "put VOC 2012 there, with SBD's SegmentationClassAug/ and ImageSets/Segmentation/train_aug.txt "
           "(10,582 images) beside the VOC folders (docs/datasets.md, 'VOC 2012 + SBD')",
}


def missing_root_problem(data_cfg: dict) -> str | None:
    """What is wrong with ``datasets.<name>.root`` ('not found (...)'; None when it is a directory),
    with where the data belongs for the datasets ``ROOT_HINTS`` knows. Relative roots resolve
    from the working directory. The stages (VOCDataset) and the workflow (common.smk) say it."""
    root = Path(data_cfg["root"])
    if root.is_dir():
        return None
    what = "is not a directory" if root.exists() else "not found"
    hint = ROOT_HINTS.get(str(data_cfg.get("name")))
    return f"{what} (resolved from {Path.cwd()})" + (f"; {hint}" if hint else "")


def parse_split_line(line: str) -> str | None:
    """Image id of one split-list line, or None for a blank line.

    Accepts the VOC form (``2007_000032``) and the DeepLab/SBD train_aug form
    (``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png``), whose first
    token is an image path: the id is then its file stem.
    """
    tokens = line.split()
    if not tokens:
        return None
    first = tokens[0]
    if "/" in first or first.lower().endswith((".jpg", ".jpeg", ".png")):
        return Path(first).stem
    return first


def read_split_ids(list_path: Path) -> list[str]:
    """Ids listed in a split file, in file order, duplicates removed (first wins)."""
    try:
        text = list_path.read_text()
    except FileNotFoundError:
        raise PipelineError(list_path, "split list not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise PipelineError(list_path, f"split list unreadable ({err})") from None
    ids = [i for i in (parse_split_line(line) for line in text.splitlines()) if i is not None]
    if not ids:
        raise PipelineError(list_path, "split list is empty")
    return list(dict.fromkeys(ids))


def _list_names(directory: Path) -> set[str]:
    """File names in ``directory`` (one listing instead of one stat per image)."""
    try:
        with os.scandir(directory) as entries:
            return {entry.name for entry in entries}
    except FileNotFoundError:
        raise PipelineError(directory, "directory not found") from None
    except NotADirectoryError:
        raise PipelineError(directory, "not a directory") from None


@contextmanager
def decoding(path, what: str = "image", broken: str = "not a readable {what} ({err})") -> Iterator[None]:
    """PIL's failures while reading ``path`` inside the block as one error line naming the file:
    missing, not an image at all, or broken (``broken`` formatted with ``what`` and the error)."""
    try:
        yield
    except FileNotFoundError:
        raise PipelineError(path, "file not found") from None
    except UnidentifiedImageError:
        raise PipelineError(path, f"not a readable {what} (unknown or corrupt format)") from None
    except _DECODE_ERRORS as err:
        raise PipelineError(path, broken.format(what=what, err=err)) from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    with decoding(path), Image.open(path) as im:
        return im.size


class VOCDataset:
    """One split of a VOC-layout dataset, configured by ``params["data"]``."""

    def __init__(self, data_cfg: dict, split: str):
        self.name = str(data_cfg.get("name", "dataset"))
        key = f"datasets.{self.name}"
        self.split = split
        self.class_names: list[str] = list(data_cfg["classes"])
        self.num_classes = len(self.class_names)
        self.ignore_index = int(data_cfg["ignore_index"])
        if self.ignore_index < self.num_classes:
            raise PipelineError(f"{key}.ignore_index", f"{self.ignore_index} collides with a class id "
                                f"(there are {self.num_classes} classes, ids 0..{self.num_classes - 1})")
        background = data_cfg.get("background")
        if background is None:
            self.background_index: int | None = None
        elif background in self.class_names:
            self.background_index = self.class_names.index(background)
        else:
            raise PipelineError(f"{key}.background", f"'{background}' is not one of the classes")
        self.foreground_indices = [c for c in range(self.num_classes) if c != self.background_index]

        self.root = Path(data_cfg["root"])
        problem = missing_root_problem({**data_cfg, "name": self.name})
        if problem:
            raise PipelineError(self.root, f"dataset root (params key {key}.root) {problem}")
        splits = data_cfg["splits"]
        if split not in splits:
            raise PipelineError(f"{key}.splits", f"no split '{split}' (known: {', '.join(sorted(splits))})")
        self.image_dir = self.root / data_cfg["image_dir"]
        self.mask_dir = self.root / data_cfg["mask_dir"]
        self.list_path = self.root / splits[split]
        self.ids: list[str] = read_split_ids(self.list_path)
        self._check_files_exist()

    def _check_files_exist(self) -> None:
        """Every listed id has an image and a mask (two directory listings, no decoding)."""
        image_names = _list_names(self.image_dir)
        mask_names = _list_names(self.mask_dir)
        for image_id in self.ids:
            if image_id + IMAGE_SUFFIX not in image_names:
                raise PipelineError(self.image_path(image_id), f"image listed in {self.list_path} not found")
            if image_id + MASK_SUFFIX not in mask_names:
                raise PipelineError(self.mask_path(image_id), f"mask listed in {self.list_path} not found")

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"VOCDataset({self.name!r}, split={self.split!r}, {len(self)} images, {self.num_classes} classes)"

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}{IMAGE_SUFFIX}"

    def mask_path(self, image_id: str) -> Path:
        return self.mask_dir / f"{image_id}{MASK_SUFFIX}"

    def load_image(self, image_id: str) -> np.ndarray:
        """HxWx3 uint8 RGB (grey or CMYK JPEGs are converted)."""
        path = self.image_path(image_id)
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        except FileNotFoundError:
            raise PipelineError(path, "image not found") from None
        except UnidentifiedImageError:
            raise PipelineError(path, "not a readable image (unknown or corrupt format)") from None
        except _DECODE_ERRORS as err:
            raise PipelineError(path, f"unreadable or corrupt image ({err})") from None

    def load_mask(self, image_id: str) -> np.ndarray:
        """HxW uint8 class indices, validated against the image size and the class list."""
        path = self.mask_path(image_id)
        try:
            with Image.open(path) as im:
                if im.mode not in _INDEX_MASK_MODES:
                    raise PipelineError(path, f"mask mode is '{im.mode}'; expected one channel of class "
                                        f"indices (mode 'L' or 'P'), not colours")
                mask = np.asarray(im, dtype=np.uint8).copy()
        except FileNotFoundError:
            raise PipelineError(path, "mask not found") from None
        except UnidentifiedImageError:
            raise PipelineError(path, "not a readable PNG mask (unknown or corrupt format)") from None
        except _DECODE_ERRORS as err:
            raise PipelineError(path, f"unreadable or corrupt mask ({err})") from None
        width, height = image_size(self.image_path(image_id))
        if mask.shape != (height, width):
            raise PipelineError(path, f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                                f"{width}x{height}")
        self._check_label_ids(mask, path)
        return mask

    def _check_label_ids(self, mask: np.ndarray, path: Path) -> None:
        present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
        unknown = [int(v) for v in present if v >= self.num_classes and v != self.ignore_index]
        if unknown:
            raise PipelineError(path, f"holds class ids {unknown}, but datasets.{self.name}.classes names "
                                f"{self.num_classes} classes (ids 0..{self.num_classes - 1}, ignore "
                                f"{self.ignore_index}): the class list does not match the masks")

    def load_sample(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(image, mask) of one id."""
        return self.load_image(image_id), self.load_mask(image_id)
