"""Training loop: poly schedule, per-epoch checkpoints, exact resume, model files."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.models import CAMNet
from pipeline.training import count_steps, load_model, poly_lr_factor, poly_scheduler, save_model, train

LOG = logging.getLogger("pipeline.test_training")
X = torch.randn(24, 6, generator=torch.Generator().manual_seed(0))
Y = (X[:, :2].sum(1) > 0).long()
EPOCHS, BATCH = 3, 4
META = {"model": "tiny", "backbone": "none", "output_stride": 1, "num_classes": 2}


class Interrupted(Exception):
    """Stands in for a killed process."""


def tiny_model(init_seed: int) -> torch.nn.Module:
    torch.manual_seed(init_seed)
    # Dropout makes the result depend on the torch RNG, which resume must restore.
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 2))


def make_batches(epoch: int, rng: np.random.Generator) -> list[dict]:
    order = rng.permutation(len(X))
    return [{"x": X[order[i:i + BATCH]], "y": Y[order[i:i + BATCH]]} for i in range(0, len(X), BATCH)]


def make_step(fail_at: int | None = None):
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        if fail_at is not None and calls["n"] == fail_at:
            raise Interrupted
        loss = torch.nn.functional.cross_entropy(model(batch["x"]), batch["y"])
        return loss, {"ce": float(loss.detach())}

    return step


def run(model, checkpoint: Path, step, epochs: int = EPOCHS, meta=META):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = poly_scheduler(optimizer, total_steps=epochs * len(X) // BATCH)
    history = train(model, make_batches, step, optimizer, scheduler, epochs, checkpoint, LOG, seed=7,
                    meta=meta, device="cpu")
    return history, optimizer


def test_poly_factor():
    assert poly_lr_factor(0, 10) == 1.0
    assert poly_lr_factor(5, 10) == pytest.approx(0.5 ** 0.9)
    assert poly_lr_factor(10, 10) == 0.0 and poly_lr_factor(12, 10) == 0.0
    assert count_steps(10, 4) == 2 and count_steps(10, 4, drop_last=False) == 3


def test_poly_scheduler_per_group():
    w = torch.nn.Parameter(torch.zeros(1))
    v = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [w], "lr": 1.0}, {"params": [v], "lr": 10.0}])
    scheduler = poly_scheduler(optimizer, total_steps=4)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.5 ** 0.9, 10 * 0.5 ** 0.9])


def test_resume_after_kill_equals_uninterrupted_run(tmp_path: Path, caplog):
    reference = tiny_model(init_seed=1)
    history_ref, opt_ref = run(reference, tmp_path / "ref.ckpt", make_step())
    assert [h["epoch"] for h in history_ref] == [1, 2, 3]

    checkpoint = tmp_path / "run.ckpt"
    killed = tiny_model(init_seed=1)
    with pytest.raises(Interrupted):
        run(killed, checkpoint, make_step(fail_at=2 * (len(X) // BATCH) + 3))  # during epoch 3
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2
    assert not list(tmp_path.glob(".tmp-*"))  # no half-written checkpoint left

    # A new process builds its model from scratch (here even from another seed): the
    # checkpoint supplies the weights, optimizer, scheduler and RNG states.
    resumed = tiny_model(init_seed=99)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        history, opt = run(resumed, checkpoint, make_step())
    assert "resuming" in caplog.text and "after epoch 2/3" in caplog.text
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert history == [{**h, "seconds": history[i]["seconds"]} for i, h in enumerate(history_ref)]
    assert opt.param_groups[0]["lr"] == opt_ref.param_groups[0]["lr"]


def test_finished_checkpoint_is_not_retrained_and_stale_one_is_ignored(tmp_path: Path, caplog):
    checkpoint = tmp_path / "run.ckpt"
    model = tiny_model(init_seed=1)
    run(model, checkpoint, make_step(), epochs=1)
    again = tiny_model(init_seed=5)
    run(again, checkpoint, make_step(fail_at=1), epochs=1)  # no step runs: nothing to do
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    other = tiny_model(init_seed=5)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        run(other, checkpoint, make_step(), epochs=1, meta={**META, "num_classes": 3})
    assert "ignoring checkpoint" in caplog.text and "num_classes" in caplog.text


def test_one_log_line_per_epoch(tmp_path: Path, caplog):
    with caplog.at_level(logging.INFO, logger="pipeline"):
        run(tiny_model(1), tmp_path / "c.ckpt", make_step(), epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2
    assert "ce=" in lines[0] and "lr=0.1" in lines[0] and "time=" in lines[0]


def test_empty_epoch_is_a_pipeline_error(tmp_path: Path):
    model = tiny_model(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(PipelineError, match="no batches"):
        train(model, lambda e, rng: [], make_step(), optimizer, None, 1, tmp_path / "c.ckpt", LOG, 0, device="cpu")


def test_save_and_load_model_checks_meta(tmp_path: Path):
    cfg = {"name": "efficientnet_lite0", "pretrained": False, "output_stride": 16}
    torch.manual_seed(0)
    net = CAMNet(cfg, num_classes=3)
    path = tmp_path / "cam.pth"
    save_model(path, net, net.meta)
    torch.manual_seed(1)
    fresh = CAMNet(cfg, num_classes=3)
    assert load_model(path, fresh, fresh.meta) == net.meta
    assert torch.equal(fresh.classifier.weight, net.classifier.weight)

    other = CAMNet(cfg, num_classes=4)
    with pytest.raises(PipelineError) as err:
        load_model(path, other, other.meta)
    message = str(err.value)
    assert str(path) in message and "num_classes: file has 3, expected 4" in message and "\n" not in message
    with pytest.raises(PipelineError, match="backbone: file has 'efficientnet_lite0', expected 'resnet50'"):
        load_model(path, fresh, {**net.meta, "backbone": "resnet50"})


def test_load_model_bad_files(tmp_path: Path):
    model = tiny_model(1)
    with pytest.raises(PipelineError, match="not found"):
        load_model(tmp_path / "missing.pth", model)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00 not torch")
    with pytest.raises(PipelineError, match="garbage.pth"):
        load_model(garbage, model)
    wrong = tmp_path / "wrong.pth"
    save_model(wrong, torch.nn.Linear(2, 2), {})
    with pytest.raises(PipelineError, match="do not fit"):
        load_model(wrong, model)


def test_history_tsv_one_format_for_every_training_stage():
    from pipeline.training import history_tsv

    rows = [{"phase": "pretrain", "epoch": 1, "d_loss": 0.25, "lr": {"pnet": 0.001}, "batches": 3, "seconds": 1.5},
            {"phase": "finetune", "epoch": 1, "loss": 0.5, "d_loss": 0.125, "lr": {"backbone": 1e-5, "pnet": 0.001},
             "batches": 4, "seconds": 2.0}]
    assert history_tsv(rows).splitlines() == [
        "phase\tepoch\td_loss\tloss\tlr_pnet\tlr_backbone\tbatches\tseconds",
        "pretrain\t1\t0.25\t\t0.001\t\t3\t1.5",
        "finetune\t1\t0.125\t0.5\t0.001\t1e-05\t4\t2"]
    # no phase column without phases; a checkpoint's old list of lrs gets numbered groups
    assert history_tsv([{"epoch": 2, "loss": 0.5, "lr": [0.01, 0.1], "batches": 3, "seconds": 1.0}]) == (
        "epoch\tloss\tlr_group0\tlr_group1\tbatches\tseconds\n2\t0.5\t0.01\t0.1\t3\t1\n")


def test_after_epoch_scores_join_the_history_and_survive_a_resume(tmp_path: Path):
    """The hook checkpoint selection uses (train_crnet): its values are history columns, kept in
    the checkpoint, so a run killed in epoch 3 and resumed holds the scores of epochs 1-2 too."""
    from pipeline.training import history_tsv

    seen = []

    def after_epoch(model, epoch):
        seen.append(epoch)
        return {"heldout": 0.1 * epoch}

    def go(step):
        model = tiny_model(0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        return train(model, make_batches, step, optimizer, None, 3, tmp_path / "c.pt", LOG, seed=7,
                     meta=META, device="cpu", after_epoch=after_epoch)

    with pytest.raises(Interrupted):
        go(make_step(fail_at=2 * len(X) // BATCH + 2))  # dies inside epoch 3
    history = go(make_step())
    assert seen == [1, 2, 3]
    assert [round(row["heldout"], 6) for row in history] == [0.1, 0.2, 0.3]
    assert "heldout" in history_tsv(history).splitlines()[0].split("\t")
