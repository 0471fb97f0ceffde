"""The package's import rules, read from the source (ast), so a broken move fails here:

* a stage never imports another stage (IRN's thin steps): shared pieces live in the library;
* the shared library (everything outside pipeline/stages and pipeline/methods) never imports
  a stage or a method;
* a method never imports another method;
* every module under pipeline/stages and pipeline/methods/<method> that runs as
  ``python -m`` is a stage with ``main(argv)`` and the ``run_stage`` entry.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_stage(path: Path) -> bool:
    """A module run as ``python -m``: it has an ``if __name__ == "__main__":`` block."""
    tree = ast.parse(path.read_text())
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)


STAGES = {name for name, path in MODULES.items() if is_stage(path)}


def imported_modules(path: Path) -> set[str]:
    """Every pipeline module a file imports, at any depth (also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from pipeline.stages import train_cam` imports the module pipeline.stages.train_cam
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in MODULES)
    return {name for name in found if name == "pipeline" or name.startswith("pipeline.")}


def method_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "methods" else None


def is_library(module: str) -> bool:
    return not module.startswith(("pipeline.stages", "pipeline.methods"))


def test_the_rules_see_the_stages():
    assert {"pipeline.stages.train_cam", "pipeline.stages.train_seg", "pipeline.methods.retab.propagate",
            "pipeline.methods.lnet.train_pnet", "pipeline.methods.retab.report"} <= STAGES
    assert not any(is_library(name) for name in STAGES), "a library module runs as a stage"


@pytest.mark.parametrize("module", sorted(STAGES))
def test_a_stage_imports_no_other_stage(module):
    others = sorted(imported_modules(MODULES[module]) & (STAGES - {module}))
    assert not others, f"{module} imports stage(s) {others}: move the shared piece into the library"


@pytest.mark.parametrize("module", sorted(STAGES))
def test_a_stage_has_main_and_the_run_stage_entry(module):
    source = MODULES[module].read_text()
    assert "def main(argv=None)" in source and "run_stage(main)" in source


@pytest.mark.parametrize("module", sorted(name for name in MODULES if is_library(name)))
def test_the_library_imports_no_stage_and_no_method(module):
    bad = sorted(m for m in imported_modules(MODULES[module]) if not is_library(m))
    assert not bad, f"library module {module} imports {bad}"


@pytest.mark.parametrize("module", sorted(name for name in MODULES if method_of(name)))
def test_a_method_imports_no_other_method(module):
    own = method_of(module)
    bad = sorted(m for m in imported_modules(MODULES[module]) if method_of(m) not in (None, own))
    assert not bad, f"{module} imports another method's code: {bad}"


@pytest.mark.parametrize("module", sorted(name for name in MODULES if name.startswith("pipeline.stages.")))
def test_shared_stages_import_no_method(module):
    bad = sorted(m for m in imported_modules(MODULES[module]) if method_of(m))
    assert not bad, f"shared stage {module} imports method code {bad}"


def test_the_rules_catch_a_planted_cross_import(tmp_path):
    """The reader itself: a stage importing another stage inside a function is found."""
    planted = tmp_path / "planted.py"
    planted.write_text("def main(argv=None):\n    from pipeline.stages.train_seg import main as other\n")
    assert "pipeline.stages.train_seg" in imported_modules(planted)
    planted.write_text("from pipeline.stages import seg_features, evaluate\n")
    assert {"pipeline.stages.seg_features", "pipeline.stages.evaluate"} <= imported_modules(planted)
