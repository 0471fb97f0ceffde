"""What every stage does around its work: logging, seeding, device choice, progress.

Stage logs go to stderr (snakemake redirects them to the rule's log file). Each stage
logs its inputs, the hash of the params it uses, the device and its wall time
(``stage_run``). Progress bars show on a terminal only; training loops additionally log
one line per epoch so log files stay readable.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import time
from typing import Iterable, Iterator, TypeVar

import numpy as np

from pipeline.config import params_hash

T = TypeVar("T")


def get_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(f"pipeline.{name}")
    if not logging.getLogger("pipeline").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
        root = logging.getLogger("pipeline")
        root.addHandler(handler)
        root.setLevel(os.environ.get("PIPELINE_LOG_LEVEL", "INFO"))
    return logger


@contextlib.contextmanager
def stage_run(name: str, inputs: dict, params: object, device: str = "cpu") -> Iterator[logging.Logger]:
    log = get_logger(name)
    log.info("start inputs=%s params_hash=%s device=%s", inputs, params_hash(params), device)
    start = time.perf_counter()
    yield log
    log.info("done wall_time=%.1fs", time.perf_counter() - start)


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """tqdm on a terminal, a plain iterator in logs."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, disable=not sys.stderr.isatty(), leave=False)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
        # Deterministic kernels where torch has them; CPU runs are then byte-reproducible.
        torch.use_deterministic_algorithms(True, warn_only=True)
        # ...but not its debugging aid that NaN-fills every new tensor: ~40% of a CPU
        # training step in aten::fill_, and no kernel reads that memory.
        torch.utils.deterministic.fill_uninitialized_memory = False
    except ImportError:
        pass


def choose_device(requested: str = "auto", gpus: int | None = None) -> str:
    """cuda when available and the rule was given a GPU (or none is specified), else cpu.

    snakemake never sets CUDA_VISIBLE_DEVICES for local runs, so the stage decides:
    ``requested`` comes from params (auto|cpu|cuda), ``gpus`` from the rule's resources.
    """
    import torch

    if requested == "cpu" or gpus == 0:
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        from pipeline.errors import PipelineError

        raise PipelineError("params.yaml", "device = cuda but no CUDA device is available")
    return "cpu"


def set_threads(threads: int | None) -> None:
    """Honour the rule's ``threads`` so parallel snakemake jobs do not oversubscribe cores."""
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
