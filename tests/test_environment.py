"""environment.yml mirrors the pip pins of pyproject.toml (conda is not available here,
so consistency is checked instead of running it)."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def pip_pins():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][^\s;]*)", dep)
        assert match, f"pyproject dependency not pinned exactly: {dep}"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def conda_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pins = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for pip_dep in dep.get("pip", []):
                if "==" in pip_dep:
                    name, version = pip_dep.split("==")
                    pins[name.lower()] = version
            continue
        name, _, version = dep.partition("=")
        if name in ("python", "pip"):
            continue
        pins[CONDA_NAMES.get(name, name).lower()] = version
    return pins


def test_every_pip_pin_is_mirrored_in_environment_yml():
    pip, conda = pip_pins(), conda_pins()
    assert set(pip) == set(conda), (set(pip) ^ set(conda))
    mismatched = {k: (pip[k], conda[k]) for k in pip if pip[k] != conda[k]}
    assert not mismatched


def test_torch_is_pinned_exactly_for_the_cpu_wheel():
    assert pip_pins()["torch"] == "2.13.0"


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    for name, pinned in pip_pins().items():
        installed = version(name).split("+")[0]
        assert installed == pinned, f"{name}: installed {installed}, pinned {pinned}"
