"""The folder targets of the DAG (workflow/rules/apply.smk): results/<d>/segment/<name>/<row>_fold<k>
and results/<d>/fewshot/<name> run for real on the tiny embedded dataset (the oracle row's net is
trained by the DAG first), their reruns (only when an image, the model or the params read
change), an unreadable file (one line, nothing written), and dry runs of other rows and methods."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import dry_run, scratch_workflow, snakemake

TINY = {
    "workflow": {"train_threads": 1},
    "embedded_data": {"n_train": 40, "n_val": 12, "size": 64},
    "overrides": {"embedded": {"segmentation": {"train": {"crop": 64, "epochs": 1}}}},
}


def make_images(folder):
    """Mixed sizes: an RGB JPEG, a grey-scale PNG, a PNG with alpha."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 70, 3), dtype=np.uint8)).save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 30), dtype=np.uint8), mode="L").save(folder / "b.png")
    Image.fromarray(rng.integers(0, 255, (33, 33, 4), dtype=np.uint8), mode="RGBA").save(folder / "c.png")


def make_support(folder):
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(1)
    for k in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / "images" / f"s{k}.jpg")
        mask = np.zeros((48, 48), np.uint8)
        mask[10:30, 10 + k:30 + k] = 255
        Image.fromarray(mask, mode="L").save(folder / "masks" / f"s{k}.png")


def apply_config(tmp):
    return {"apply": {"folders": {"mine": str(tmp / "photos")},
                      "fewshot": {"shapes": {"support": str(tmp / "support"), "query": str(tmp / "photos")}}}}


SEGMENT = "results/embedded/segment/mine/oracle_fold0"
FEWSHOT = "results/embedded/fewshot/shapes"


def workflow(path, overrides):
    path.mkdir(parents=True)
    return scratch_workflow(path, overrides)


def planned(workdir, *targets, extra=()):
    """Jobs snakemake would run now (rule names, one per line of --quiet rules)."""
    proc = snakemake(workdir, *targets, "-n", "--cores", "1", "--quiet", "rules", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {line.split()[0] for line in proc.stdout.splitlines() if len(line.split()) == 2
            and line.split()[1].isdigit()} - {"total"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apply_dag")
    workdir = workflow(tmp / "wf", {**TINY, **apply_config(tmp)})
    make_images(tmp / "photos")
    make_support(tmp / "support")
    proc = snakemake(workdir, SEGMENT, FEWSHOT, "--cores", "2")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return tmp, workdir


def test_the_segment_target_writes_masks_overlays_and_a_sheet(tiny_run):
    tmp, workdir = tiny_run
    out = workdir / SEGMENT
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png", "b.png", "c.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]
    assert (out / "sheet.jpg").is_file() and (out / "info.json").is_file()
    with Image.open(out / "masks" / "b.png") as im:
        assert im.mode == "P" and im.size == (30, 50)  # the image's own size
    few = workdir / FEWSHOT
    assert sorted(p.name for p in (few / "masks").iterdir()) == ["a.png", "b.png", "c.png"]
    assert (few / "sheet.jpg").is_file()


def test_reruns_only_when_an_image_or_the_params_change(tiny_run):
    tmp, workdir = tiny_run
    assert planned(workdir, SEGMENT, FEWSHOT) == set()
    # an edited image reruns both folder jobs, nothing upstream (the net is not retrained)
    original = (tmp / "photos" / "a.jpg").read_bytes()
    Image.fromarray(np.zeros((40, 70, 3), np.uint8)).save(tmp / "photos" / "a.jpg")
    assert planned(workdir, SEGMENT, FEWSHOT) == {"segment_folder", "fewshot_folder"}
    # the same bytes again (a newer mtime, the content snakemake recorded): nothing to do
    (tmp / "photos" / "a.jpg").write_bytes(original)
    assert planned(workdir, SEGMENT, FEWSHOT) == set()
    # an added image reruns them too (the input set changed); removed again, nothing to do
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp / "photos" / "d.jpg")
    assert planned(workdir, SEGMENT, FEWSHOT) == {"segment_folder", "fewshot_folder"}
    (tmp / "photos" / "d.jpg").unlink()
    assert planned(workdir, SEGMENT, FEWSHOT) == set()
    # an edited support mask reruns the few-shot job only
    mask_path = tmp / "support" / "masks" / "s0.png"
    original = mask_path.read_bytes()
    mask = np.zeros((48, 48), np.uint8)
    mask[5:25, 5:25] = 255
    Image.fromarray(mask, mode="L").save(mask_path)
    assert planned(workdir, SEGMENT, FEWSHOT) == {"fewshot_folder"}
    mask_path.write_bytes(original)
    # a display param reruns both; the few-shot method param reruns the few-shot job
    alpha = {"apply": {**apply_config(tmp)["apply"], "overlay_alpha": 0.3}}
    (tmp / "alpha.yaml").write_text(yaml.safe_dump(alpha))
    assert planned(workdir, SEGMENT, FEWSHOT, extra=("--configfile", str(tmp / "alpha.yaml"))) == {
        "segment_folder", "fewshot_folder"}
    crnet = {"apply": {**apply_config(tmp)["apply"], "fewshot_method": "crnet"}}
    (tmp / "crnet.yaml").write_text(yaml.safe_dump(crnet))
    jobs = planned(workdir, SEGMENT, FEWSHOT, extra=("--configfile", str(tmp / "crnet.yaml")))
    assert "fewshot_folder" in jobs and "train_crnet" in jobs and "segment_folder" not in jobs


def test_an_unreadable_file_fails_the_job_with_one_line(tiny_run):
    tmp, workdir = tiny_run
    bad = tmp / "bad_photos"
    make_images(bad)
    (bad / "notes.txt").write_text("not an image")
    config = {"apply": {"folders": {"bad": str(bad)}}}
    (tmp / "bad.yaml").write_text(yaml.safe_dump(config))
    target = "results/embedded/segment/bad/oracle_fold0"
    proc = snakemake(workdir, target, "--cores", "1", "--configfile", str(tmp / "bad.yaml"))
    assert proc.returncode != 0
    log = (workdir / "logs/embedded/segment/bad/oracle_fold0.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "notes.txt: not a readable image" in errors[0]
    assert not (workdir / target).exists()


def test_dry_runs_of_other_rows_and_methods(tmp_path):
    workdir = workflow(tmp_path / "wf", apply_config(tmp_path))
    make_images(tmp_path / "photos")
    make_support(tmp_path / "support")
    retab = dry_run(workdir, "results/embedded/segment/mine/retab_fold0")
    assert retab["segment_folder"] == 1 and retab["train_seg"] == 1 and retab["propagate"] >= 1
    pnet = dry_run(workdir, "results/embedded/segment/mine/pnet_fold1")
    assert pnet["train_pnet"] == 1 and pnet["segment_folder"] == 1
    msrc = dry_run(workdir, "results/msrc/segment/mine/cam_rw_seggt_fold2")
    assert msrc["train_seg"] == 1 and "make_embedded" not in msrc
    floor = dry_run(workdir, FEWSHOT)
    assert floor == {"fewshot_folder": 1, "total": 1}  # the floor needs no training
    (tmp_path / "refnet.yaml").write_text(yaml.safe_dump({"apply": {"fewshot_method": "refnet", "fewshot_fold": 1}}))
    proc = snakemake(workdir, FEWSHOT, "-n", "--cores", "1", "--configfile", str(tmp_path / "refnet.yaml"))
    assert proc.returncode == 0 and "work/embedded/fold1/refnet/full/" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("target, needle", [
    ("results/embedded/segment/nope/oracle_fold0", "apply.folders has no folder 'nope' (known: mine)"),
    ("results/embedded/segment/mine/cam_fold9", "fold"),
    ("results/embedded/segment/mine/prototype_fold0", "no segmentation net of row 'prototype'"),
    ("results/embedded/fewshot/nope", "apply.fewshot has no set 'nope'"),
])
def test_bad_names_stop_the_dag_with_one_line(tmp_path, target, needle):
    workdir = workflow(tmp_path / "wf", apply_config(tmp_path))
    make_images(tmp_path / "photos")
    make_support(tmp_path / "support")
    proc = snakemake(workdir, target, "-n", "--cores", "1")
    assert proc.returncode != 0 and needle in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-2000:]


def test_a_missing_folder_stops_the_dag_with_one_line(tmp_path):
    workdir = workflow(tmp_path / "wf", apply_config(tmp_path))  # no photos made
    proc = snakemake(workdir, SEGMENT, "-n", "--cores", "1")
    assert proc.returncode != 0
    assert f"apply.folders.mine: {tmp_path / 'photos'}: folder not found" in proc.stdout + proc.stderr
