"""Helpers to run the real Snakefile in a scratch copy of the workflow (tests never write
into the repository's work/ or results/)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def tiny_dataset_entry(root: str | Path, classes: list[str], novel_classes, background: str | None = "background",
                       boundary_source: str = "outline", **extra) -> dict:
    """A params.yaml ``datasets`` entry for a VOC-layout test dataset under ``root``
    (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/{train,val}.txt; ignore 255)."""
    return {"root": str(root), "image_dir": "JPEGImages", "mask_dir": "SegmentationClass",
            "splits": {"train": "ImageSets/Segmentation/train.txt", "val": "ImageSets/Segmentation/val.txt"},
            "classes": list(classes), "background": background, "ignore_index": 255,
            "boundary_source": boundary_source, "novel_classes": novel_classes, **extra}


def scratch_workflow(tmp_path: Path, overrides: dict | None = None) -> Path:
    """Copy Snakefile, workflow/ and params.yaml to ``tmp_path``; merge ``overrides`` into
    params.yaml (top-level keys replaced section-wise by deep merge)."""
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
    return tmp_path


def snakemake(workdir: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)
