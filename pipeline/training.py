"""A small generic training loop with exact resume, and model files that know what they fit.

``train`` runs epochs of ``step_fn(model, batch) -> (loss, parts)`` over the batches of
``make_batches(epoch, rng)``. At the end of every epoch it writes a checkpoint atomically
(model, optimizer, scheduler, finished epochs, RNG states, metadata); when started again
with the same arguments it resumes after the last finished epoch, and the final weights
are bit-identical to an uninterrupted run with the same seed (CPU). Randomness:

* the data order of epoch ``e`` comes from ``rng = np.random.default_rng([seed, e])``,
  so it does not depend on where a run was interrupted;
* torch/numpy/python global RNGs (dropout, augmentation that uses them) are seeded from
  ``seed`` at a fresh start and restored from the checkpoint on resume.

A checkpoint whose metadata (or epochs/seed) differ from the current run's is stale (the
params changed): it is ignored with a warning and training starts over. Put everything
that changes the weights in ``meta`` (e.g. the params hash of the stage's section).

Learning rate: :func:`poly_scheduler` (PSA/IRN/DeepLab "poly", power 0.9) steps once per
optimizer step. One log line per epoch (loss parts, learning rates, seconds); a tqdm bar
over batches on a terminal only.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.io import atomic_path
from pipeline.runtime import choose_device, progress

CHECKPOINT_FORMAT = "pipeline-checkpoint-1"
MODEL_FORMAT = "pipeline-model-1"

StepFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, Mapping[str, float]]]
MakeBatches = Callable[[int, np.random.Generator], Iterable[dict]]


def poly_lr_factor(step: int, total_steps: int, power: float = 0.9) -> float:
    """``(1 - step / total_steps) ** power``, 0 after the end."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return max(0.0, 1.0 - step / total_steps) ** power


class PolyLR:
    """Picklable poly factor for LambdaLR (its state is saved in checkpoints)."""

    def __init__(self, total_steps: int, power: float = 0.9):
        self.total_steps = int(total_steps)
        self.power = float(power)

    def __call__(self, step: int) -> float:
        return poly_lr_factor(step, self.total_steps, self.power)


def poly_scheduler(optimizer: torch.optim.Optimizer, total_steps: int,
                   power: float = 0.9) -> torch.optim.lr_scheduler.LambdaLR:
    """Poly decay of every param group's initial lr over ``total_steps`` optimizer steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, PolyLR(total_steps, power))


def batch_to_device(batch: Any, device: str | torch.device) -> Any:
    """Move every tensor inside dicts/lists/tuples to ``device``; other values unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: batch_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(batch_to_device(v, device) for v in batch)
    return batch


# --------------------------------------------------------------------------- RNG states

def _rng_states() -> dict:
    """Global RNG states in a form ``torch.load(weights_only=True)`` accepts (no ndarrays)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                        "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(_as_tuples(states["python"]))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value: Any) -> Any:
    """random.setstate needs tuples; a round trip through a checkpoint may give lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


def _seed_globals(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- checkpoints

def _read_torch_file(path: Path, what: str) -> dict:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(path, f"{what} not found") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not our file"
        raise PipelineError(path, f"not a readable {what} ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise PipelineError(path, f"not a {what} (no metadata)")
    return data


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """``torch.save`` to a temporary name, renamed into place when complete."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_resume_state(path: Path, run: dict, log: logging.Logger) -> dict | None:
    """The checkpoint at ``path`` if it belongs to this run, else None (fresh start)."""
    if not path.exists():
        return None
    state = _read_torch_file(path, "training checkpoint")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise PipelineError(path, f"not a training checkpoint of this pipeline (format {state.get('format')!r})")
    if state.get("run") != run:
        log.warning("ignoring checkpoint %s: made for other settings (%s); starting over",
                    path, _describe_mismatch(state.get("run") or {}, run))
        return None
    return state


def _describe_mismatch(saved: Mapping, expected: Mapping) -> str:
    """``key: file has X, expected Y`` for each differing key, flattened one level."""
    def flat(d: Mapping) -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, Mapping):
                out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
            else:
                out[k] = v
        return out

    saved, expected = flat(saved), flat(expected)
    diffs = [f"{k}: file has {saved.get(k)!r}, expected {expected[k]!r}"
             for k in expected if saved.get(k) != expected[k]]
    return "; ".join(diffs) or "same keys"


# --------------------------------------------------------------------------- the loop

def _format_parts(parts: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in parts.items())


def train(model: torch.nn.Module, make_batches: MakeBatches, step_fn: StepFn,
          optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None,
          epochs: int, checkpoint_path: str | os.PathLike, log: logging.Logger, seed: int,
          meta: Mapping[str, Any] | None = None, device: str | None = None,
          after_epoch: Callable[[torch.nn.Module, int], Mapping[str, Any]] | None = None) -> list[dict]:
    """Train ``model`` for ``epochs`` epochs, resuming from ``checkpoint_path`` if it exists.

    ``make_batches(epoch, rng)`` yields batch dicts (tensors are moved to the device);
    ``step_fn(model, batch)`` returns the loss tensor and a dict of floats to log
    (``loss`` is added if missing). ``scheduler`` (if any) steps after every optimizer
    step. ``device``: None chooses with :func:`pipeline.runtime.choose_device`. Returns
    the per-epoch history (mean parts, lr, seconds); it is stored in the checkpoint too.
    ``after_epoch(model, epoch)`` (optional, epoch counted from 1) runs after each epoch,
    before its checkpoint; the values it returns join the epoch's history row (e.g. a
    held-out score for checkpoint selection).
    """
    if epochs < 1:
        raise PipelineError("params.yaml", f"epochs = {epochs} must be >= 1")
    device = device or choose_device("auto")
    model.to(device)
    path = Path(checkpoint_path)
    run = {"meta": dict(meta or {}), "epochs": int(epochs), "seed": int(seed)}

    state = _load_resume_state(path, run, log)
    if state is None:
        start, history = 0, []
        _seed_globals(seed)
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        _set_rng_states(state["rng"])
        start, history = int(state["epoch"]), list(state["history"])
        log.info("resuming from %s after epoch %d/%d", path, start, epochs)

    for epoch in range(start, epochs):
        history.append(_run_epoch(model, make_batches, step_fn, optimizer, scheduler, epoch, epochs,
                                  seed, device, log))
        if after_epoch is not None:
            history[-1].update(after_epoch(model, epoch + 1))
            model.train()
        save_checkpoint(path, {
            "format": CHECKPOINT_FORMAT, "run": run, "epoch": epoch + 1, "history": history,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": _rng_states(),
        })
    return history


def _run_epoch(model, make_batches, step_fn, optimizer, scheduler, epoch, epochs, seed, device, log) -> dict:
    """One pass over ``make_batches(epoch, rng)``; returns the epoch's summary."""
    started = time.perf_counter()
    model.train()
    rng = np.random.default_rng([seed, epoch])
    batches = make_batches(epoch, rng)
    total = len(batches) if hasattr(batches, "__len__") else None
    sums: dict[str, float] = {}
    n_batches = 0
    lrs = {group.get("name") or f"group{i}": group["lr"] for i, group in enumerate(optimizer.param_groups)}
    for batch in progress(batches, desc=f"epoch {epoch + 1}/{epochs}", total=total):
        loss, parts = step_fn(model, batch_to_device(batch, device))
        if not torch.isfinite(loss.detach()).all():
            raise FloatingPointError(f"loss is {float(loss)} at epoch {epoch + 1}, batch {n_batches + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n_batches += 1
        for key, value in {"loss": float(loss.detach()), **parts}.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    if n_batches == 0:
        raise PipelineError("training data", f"epoch {epoch + 1} has no batches "
                            "(fewer training samples than the batch size?)")
    means = {k: v / n_batches for k, v in sums.items()}
    seconds = time.perf_counter() - started
    log.info("epoch %d/%d %s lr=%s batches=%d time=%.1fs", epoch + 1, epochs, _format_parts(means),
             "/".join(f"{lr:.3g}" for lr in lrs.values()), n_batches, seconds)
    return {"epoch": epoch + 1, **means, "lr": lrs, "batches": n_batches, "seconds": round(seconds, 3)}


def checkpoint_path_for(out: str | os.PathLike) -> Path:
    """Checkpoint file of the model file ``out`` of every training stage: ``<out stem>.checkpoint.pt``."""
    out = Path(out)
    return out.with_name(out.stem + ".checkpoint.pt")


def train_and_save(model: torch.nn.Module, make_batches: MakeBatches, step_fn: StepFn,
                   optimizer: torch.optim.Optimizer, scheduler, epochs: int, out: str | os.PathLike,
                   history_path: str | os.PathLike, log: logging.Logger, seed: int, meta: Mapping,
                   device: str | torch.device = "cpu", model_meta: Mapping | None = None,
                   after_epoch: Callable[[torch.nn.Module, int], Mapping[str, Any]] | None = None,
                   before_save: Callable[[torch.nn.Module, list[dict]], None] | None = None) -> list[dict]:
    """The end of a training stage: :func:`train` with its checkpoint next to ``out``, then
    the model file (contiguous CPU weights), ``history.tsv``, and the checkpoint removed.

    ``meta`` identifies the run (a checkpoint with other meta is not resumed); ``model_meta``,
    when given, is what the model file records instead (e.g. without the hashes of inputs).
    ``after_epoch``: see :func:`train`; ``before_save(model, history)`` may change the weights
    before they are written (e.g. load the epoch a held-out score selected).
    """
    from pipeline.io import write_text

    checkpoint = checkpoint_path_for(out)
    history = train(model, make_batches, step_fn, optimizer, scheduler, epochs, checkpoint, log, seed,
                    meta=dict(meta), device=device, after_epoch=after_epoch)
    if before_save is not None:
        before_save(model, history)
    saved_meta = dict(meta if model_meta is None else model_meta)
    save_model(out, model.cpu().to(memory_format=torch.contiguous_format), saved_meta)
    write_text(history_path, history_tsv(history))
    checkpoint.unlink(missing_ok=True)
    log.info("wrote %s and %s (final loss %.4f)", out, history_path, history[-1]["loss"])
    return history


HISTORY_FIXED = ("phase", "epoch", "lr", "batches", "seconds")


def history_tsv(history: Sequence[Mapping]) -> str:
    """``history.tsv`` text of every training stage: one row per epoch of :func:`train`.

    Columns: ``phase`` (only when rows carry one, e.g. P-Net pre-training / fine-tuning),
    ``epoch``, every loss term seen in the order first seen (blank where a row lacks it),
    ``lr_<group>`` per optimiser param group (its lr at the epoch's start; groups are
    named by their ``name`` key), ``batches`` and ``seconds``. ``epoch`` and ``loss`` are
    the columns dvc.yaml plots.
    """
    def named_lrs(row: Mapping) -> dict:
        lrs = row.get("lr") or {}
        # checkpoints written before the groups were named store a plain list
        return dict(lrs) if isinstance(lrs, Mapping) else {f"group{i}": lr for i, lr in enumerate(lrs)}

    with_phase = any("phase" in row for row in history)
    keys = list(dict.fromkeys(k for row in history for k in row if k not in HISTORY_FIXED))
    groups = list(dict.fromkeys(name for row in history for name in named_lrs(row)))
    header = (["phase"] if with_phase else []) + ["epoch", *keys, *[f"lr_{g}" for g in groups], "batches", "seconds"]

    def cell(value) -> str:
        if value is None:
            return ""
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    lines = ["\t".join(header)]
    for row in history:
        lrs = named_lrs(row)
        values = ([row.get("phase")] if with_phase else []) + [row.get("epoch"), *[row.get(k) for k in keys],
                                                                *[lrs.get(g) for g in groups], row.get("batches"),
                                                                row.get("seconds")]
        lines.append("\t".join(cell(v) for v in values))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- model files

def save_model(path: str | os.PathLike, model: torch.nn.Module, meta: Mapping[str, Any]) -> None:
    """Write the weights and ``meta`` (what they fit) atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": MODEL_FORMAT, "meta": dict(meta), "state_dict": model.state_dict()}, tmp)


def load_model(path: str | os.PathLike, model: torch.nn.Module,
               expected_meta: Mapping[str, Any] | None = None) -> dict:
    """Load weights saved by :func:`save_model` into ``model``; returns the file's meta.

    Every key of ``expected_meta`` must equal the file's value (e.g. another backbone or
    number of classes raises a one-line PipelineError naming the file and the mismatch).
    """
    path = Path(path)
    data = _read_torch_file(path, "model file")
    if data.get("format") != MODEL_FORMAT or "state_dict" not in data:
        raise PipelineError(path, f"not a model file of this pipeline (format {data.get('format')!r})")
    meta = dict(data.get("meta") or {})
    expected = dict(expected_meta or {})
    if any(meta.get(k) != v for k, v in expected.items()):
        raise PipelineError(path, f"made for another model ({_describe_mismatch(meta, expected)})")
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise PipelineError(path, f"weights do not fit the model ({first})") from None
    return meta


def read_model_meta(path: str | os.PathLike) -> dict:
    """The meta of a model file of :func:`save_model` (to build the model before
    :func:`load_model`); a file of another kind is a one-line PipelineError."""
    data = _read_torch_file(Path(path), "model file")
    if data.get("format") != MODEL_FORMAT or "state_dict" not in data:
        raise PipelineError(path, f"not a model file of this pipeline (format {data.get('format')!r})")
    return dict(data.get("meta") or {})


def count_steps(n_samples: int, batch_size: int, drop_last: bool = True) -> int:
    """Optimizer steps per epoch for ``n_samples`` in batches (for the poly schedule)."""
    return n_samples // batch_size if drop_last else math.ceil(n_samples / batch_size)


# --------------------------------------------------------------------------- params

SGD_TRAIN_KEYS = ("crop", "scale_range", "batch_size", "epochs", "lr", "momentum", "weight_decay")


def train_config(params: dict, key: str, keys: Sequence[str] = SGD_TRAIN_KEYS, *,
                 lr_keys: Sequence[str] = ("lr",), min_batch: int = 1, max_lr: float | None = None) -> dict:
    """A training section (``key``, e.g. ``boundary.train``) with every key of ``keys`` present
    and in range: the one training-config check of every training stage (one line naming
    the key). Checks what the schema cannot: scale_range order, positive learning rates."""
    from pipeline.config import check_range, section

    cfg = {k: section(params, f"{key}.{k}") for k in keys}
    low, high = cfg["scale_range"]
    if not 0 < low <= high:
        raise PipelineError("params.yaml", f"{key}.scale_range = {cfg['scale_range']} must be "
                            "[low, high] with 0 < low <= high")
    check_range(cfg["crop"], f"{key}.crop", 1)
    check_range(cfg["batch_size"], f"{key}.batch_size", min_batch)
    for lr in lr_keys:
        check_range(cfg[lr], f"{key}.{lr}", 0, max_lr, low_open=True)
    if "momentum" in cfg:
        check_range(cfg["momentum"], f"{key}.momentum", 0, 1, high_open=True)
    if "weight_decay" in cfg:
        check_range(cfg["weight_decay"], f"{key}.weight_decay", 0)
    return cfg
