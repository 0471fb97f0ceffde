"""The test suite's own layout: shared helpers live in tests/conftest.py and no test module
imports another one (sources read with ``ast``; nothing is executed)."""
from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SHARED = "conftest"


def local_modules() -> set[str]:
    """Names a file or package in tests/ can be imported by (pytest puts tests/ on sys.path)."""
    return {p.stem for p in TESTS.glob("*.py")} | {p.name for p in TESTS.iterdir() if (p / "__init__.py").is_file()}


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, top-level module) of every import, nested ones included: import statements
    (a relative one names its first dotted part, or each name it imports) and calls
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level and not node.module:
                found += [(node.lineno, alias.name) for alias in node.names]
            else:
                found.append((node.lineno, node.module.split(".")[0]))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Name) and node.func.id == "__import__")
                   or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"))):
            found.append((node.lineno, node.args[0].value.lstrip(".").split(".")[0]))
    return found


def test_imported_modules_sees_every_import_form():
    source = ("import os, test_a.sub\nfrom test_b import x\nfrom . import test_c\nfrom .test_d import y\n"
              "def f():\n    import test_e\n    importlib.import_module('test_f')\n    __import__('test_g.h')\n"
              "s = 'import test_h'\n")
    assert sorted(name for _, name in imported_modules(source)) == [
        "os", "test_a", "test_b", "test_c", "test_d", "test_e", "test_f", "test_g"]


def test_no_test_module_imports_another():
    local = local_modules()
    assert SHARED in local and Path(__file__).stem in local
    offences = [f"{path.name}:{line} imports {module}"
                for path in sorted(TESTS.glob("*.py"))
                for line, module in imported_modules(path.read_text())
                if module in local and module not in (SHARED, path.stem)]
    assert not offences, ("test modules import each other; move what they share to tests/conftest.py:\n"
                          + "\n".join(offences))


def test_no_test_module_edits_sys_path():
    """tests/ is on sys.path already: a module that touches sys.path is reaching for another."""
    offences = [f"{path.name}:{node.lineno}" for path in sorted(TESTS.glob("*.py"))
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Attribute) and node.attr == "path"
                and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert not offences, offences
