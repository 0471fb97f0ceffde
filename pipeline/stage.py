"""What every stage does before its work, in one place: the command line every stage
shares (``--params``, ``--dataset``, ``--threads``), params loading and compute setup
(threads, device). Logging and wall time are :func:`pipeline.runtime.stage_run`; the exit
code and the one-line error are :func:`pipeline.errors.run_stage`.

A stage module reads top to bottom as::

    def main(argv=None):
        ap = stage_parser(__doc__, threads=True)
        ap.add_argument("--out", required=True)
        args = ap.parse_args(argv)
        params = load_params(args.params, args.dataset)
        device = stage_device(args, params)
        ...

    if __name__ == "__main__":
        run_stage(main)
"""
from __future__ import annotations

import argparse

from pipeline.runtime import choose_device, set_threads


# Inputs many stages read, named and described once.
SHARED_INPUTS = {
    "labels": ("--labels", "image-labels JSON (stage image_labels)"),
    "cams": ("--cams", "directory of <id>.npz CAM files (stage infer_cam)"),
}


def stage_parser(doc: str | None, *, threads: bool = False, training: bool = False, inputs: tuple[str, ...] = (),
                 dataset_default: str | None = None, params_help: str | None = None) -> argparse.ArgumentParser:
    """The parser every stage starts from: ``--params``, ``--dataset``, the required shared
    ``inputs`` it reads (keys of :data:`SHARED_INPUTS`); for stages that run torch ``--threads``
    (the rule's threads: parallel jobs must not oversubscribe); for training stages
    (``training``) also their two outputs, ``--out`` and ``--history``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help=params_help or "params file")
    ap.add_argument("--dataset", default=dataset_default, help="dataset name (default: params' dataset)")
    for name in inputs:
        flag, help_text = SHARED_INPUTS[name]
        ap.add_argument(flag, required=True, help=help_text)
    if threads or training:
        ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    if training:
        ap.add_argument("--out", required=True, help="model file to write")
        ap.add_argument("--history", required=True, help="per-epoch history TSV to write")
    return ap


def stage_device(args: argparse.Namespace, params: dict, gpus: int | None = None) -> str:
    """Honour ``--threads`` and choose the device (params ``device``: auto | cpu | cuda)."""
    set_threads(getattr(args, "threads", None))
    return choose_device(params.get("device", "auto"), gpus)
