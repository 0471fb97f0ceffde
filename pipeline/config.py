"""params.yaml: loading, per-dataset overrides, schema validation.

params.yaml holds the paper's (VOC-scale) values as defaults. ``overrides.<dataset>``
holds the changes a dataset needs (the embedded default's small images and short
schedules live in ``overrides.embedded``). ``load_params(path, dataset)`` returns the
defaults deep-merged with that dataset's overrides, validated against
``workflow/schemas/params.schema.yaml`` (unknown or mistyped keys are errors that name
the key), plus the dataset's own entry under ``params["data"]``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "params.schema.yaml"


def deep_merge(base: dict, override: dict) -> dict:
    """Recursively merge ``override`` into a copy of ``base`` (override wins; lists replace)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        # jsonschema reports the parent; name the offending key itself.
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        if extra:
            parts.append(extra[0])
            return ".".join(parts) + ": unknown key (mistyped? see workflow/schemas/params.schema.yaml)"
    where = ".".join(parts) or "(top level)"
    return f"{where}: {error.message}"


def validate_params(raw: dict, source: str | os.PathLike = "params.yaml") -> None:
    """Validate ``raw`` (the whole file) and every dataset's merged view against the schema."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        raise PipelineError(source, _key_path(errors[0]))
    for name, override in (raw.get("overrides") or {}).items():
        if name not in raw["datasets"]:
            raise PipelineError(source, f"overrides.{name}: no dataset of that name under 'datasets'")
        merged = deep_merge(raw, override)
        errors = sorted(validator.iter_errors(merged), key=lambda e: list(e.absolute_path))
        if errors:
            raise PipelineError(source, f"overrides.{name} -> " + _key_path(errors[0]))


DATASET_DIR = "datasets"  # one file per dataset: datasets/<name>.yaml, beside params.yaml
DATASET_FILE_KEYS = ("data", "params")
# What a dataset file gets where it does not say otherwise: the params that follow the data.
DATASET_FILE_DEFAULTS = {"propagation": {"logt": "auto", "alpha": "auto"},
                         "confident_labels": {"conf_fg": "auto", "conf_bg": "auto"}}


def read_dataset_file(path: str | os.PathLike) -> tuple[str, dict, dict]:
    """``(name, data, params)`` of a dataset file ``datasets/<name>.yaml``.

    ``data`` is the dataset's entry (what ``datasets.<name>`` holds in params.yaml: root,
    classes, background, folds, ...); ``params`` its changes to the defaults (what
    ``overrides.<name>`` holds: the schedule that fits the machine, data-dependent params).
    """
    path = Path(path)
    raw = read_params_file(path)
    unknown = sorted(set(raw) - set(DATASET_FILE_KEYS))
    if unknown:
        raise PipelineError(path, f"{unknown[0]}: unknown key (a dataset file has 'data' and 'params')")
    if not isinstance(raw.get("data"), dict):
        raise PipelineError(path, "data: missing (the dataset's root, classes, background, folds, ...)")
    params = raw.get("params") or {}
    if not isinstance(params, dict):
        raise PipelineError(path, "params: must be a mapping of params.yaml sections")
    return path.stem, raw["data"], params


def with_dataset_files(raw: dict, folder: str | os.PathLike) -> dict:
    """``raw`` (params.yaml) with every ``folder/<name>.yaml`` added as ``datasets.<name>`` and
    ``overrides.<name>``, each file validated on its own (errors name the file and the key).
    A name params.yaml defines as well is an error: one dataset, one description."""
    import jsonschema

    files = sorted(Path(folder).glob("*.yaml")) if Path(folder).is_dir() else []
    if not files:
        return raw
    out = copy.deepcopy(raw)
    out.setdefault("datasets", {})
    out["overrides"] = out.get("overrides") or {}
    validator = jsonschema.Draft7Validator(yaml.safe_load(SCHEMA_PATH.read_text()))
    for path in files:
        name, data, params = read_dataset_file(path)
        if name in out["datasets"]:
            raise PipelineError(path, f"dataset '{name}' is also defined under 'datasets' in params.yaml; "
                                "keep one of the two")
        params = deep_merge(DATASET_FILE_DEFAULTS, params)
        single = deep_merge(raw, params)
        single.setdefault("datasets", {})[name] = data
        single.pop("overrides", None)
        errors = sorted(validator.iter_errors(single), key=lambda e: list(e.absolute_path))
        if errors:
            problem = _key_path(errors[0])
            problem = problem.replace(f"datasets.{name}.", "data.", 1) if problem.startswith(f"datasets.{name}.") \
                else "params." + problem
            raise PipelineError(path, problem)
        out["datasets"][name] = data
        out["overrides"][name] = params
    return out


def read_params_file(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(path, "params file not found") from None
    except yaml.YAMLError as err:
        raise PipelineError(path, f"not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise PipelineError(path, "must be a YAML mapping of sections")
    return raw


def resolve_params(raw: dict, dataset: str | None = None, source: str | os.PathLike = "params.yaml") -> dict:
    """Merge the defaults with ``overrides[dataset]``; attach the dataset entry as ``data``."""
    dataset = dataset or raw.get("dataset")
    datasets = raw.get("datasets") or {}
    if dataset not in datasets:
        raise PipelineError(source, f"dataset '{dataset}' is not defined under 'datasets' "
                            f"(known: {', '.join(sorted(datasets))})")
    merged = deep_merge(raw, (raw.get("overrides") or {}).get(dataset, {}))
    merged.pop("overrides", None)
    merged["dataset"] = dataset
    merged["data"] = copy.deepcopy(datasets[dataset])
    merged["data"]["name"] = dataset
    return merged


def load_params(path: str | os.PathLike = "params.yaml", dataset: str | None = None) -> dict:
    """The params a stage runs with: the file (with the dataset files beside it, if any: the
    workflow's effective params already hold them), validated, resolved for ``dataset``."""
    raw = with_dataset_files(read_params_file(path), Path(path).parent / DATASET_DIR)
    validate_params(raw, path)
    return resolve_params(raw, dataset, path)


def section(params: dict, dotted: str) -> Any:
    """``section(p, 'cam.train')`` -> p['cam']['train'], with a one-line error if missing."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise PipelineError("params.yaml", f"missing key '{dotted}'")
        node = node[part]
    return node


def params_hash(obj: Any) -> str:
    """Short stable hash of a params (sub)tree, logged by every stage."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def check_range(value: float, key: str, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Range check for a params value, raising one line that names the key."""
    bad = False
    if low is not None:
        bad |= value <= low if low_open else value < low
    if high is not None:
        bad |= value >= high if high_open else value > high
    if bad:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise PipelineError("params.yaml", f"{key} = {value} is out of range "
                            f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}")
