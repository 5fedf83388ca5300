"""Rules of the test suite itself, checked on the source of every test module.

- No test module imports another test module: shared helpers live in tests/helpers.py,
  shared fixtures in tests/conftest.py.
- Every `docs/design.md section N` cited in the code names a section of that file.
- Every test that starts a process (subprocess, msrun, a CLI run) is marked `slow`, directly
  or through a fixture or helper of its module, so `python -m pytest -m "not slow"` is the
  fast lane.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List

import pytest

TESTS = Path(__file__).resolve().parent
TEST_MODULES = sorted(TESTS.rglob("test_*.py"))
# Calls that start a process, here or in tests/helpers.py.
SPAWNS = ("subprocess.run(", "subprocess.Popen(", "train_cli(", "msrun([")


def functions(tree: ast.Module) -> Dict[str, ast.FunctionDef]:
    return {node.name: node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def starts_a_process(name: str, source: str, defs: Dict[str, ast.FunctionDef], seen: frozenset = frozenset()) -> bool:
    """True when the function, a fixture it takes or a function of the module it calls starts a process."""
    node = defs[name]
    if any(call in ast.get_source_segment(source, node) for call in SPAWNS):
        return True
    used = {a.arg for a in node.args.args}
    used |= {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return any(starts_a_process(other, source, defs, seen | {name}) for other in used & defs.keys() - seen - {name})


def is_slow(node: ast.FunctionDef, source: str) -> bool:
    return any(ast.get_source_segment(source, d).endswith("mark.slow") for d in node.decorator_list)


@pytest.mark.parametrize("path", TEST_MODULES, ids=lambda p: str(p.relative_to(TESTS)))
def test_no_test_module_imports_another(path):
    test_names = {p.stem for p in TEST_MODULES}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported = [node.module]
        elif isinstance(node, ast.Import):
            imported = [alias.name for alias in node.names]
        else:
            continue
        for module in imported:
            assert module.rpartition(".")[2] not in test_names, f"{path.name}:{node.lineno} imports {module}"


@pytest.mark.parametrize("path", TEST_MODULES, ids=lambda p: str(p.relative_to(TESTS)))
def test_every_test_that_starts_a_process_is_marked_slow(path):
    source = path.read_text(encoding="utf-8")
    defs = functions(ast.parse(source))
    unmarked: List[str] = [f"{name} (line {node.lineno})" for name, node in defs.items()
                           if name.startswith("test_") and not is_slow(node, source)
                           and starts_a_process(name, source, defs)]
    assert not unmarked, f"{path.name}: start a process but are not @pytest.mark.slow: {', '.join(unmarked)}"


def test_the_checks_see_a_process_started_through_a_fixture():
    source = ("import pytest, subprocess\n"
              "@pytest.fixture\ndef run():\n    return subprocess" ".run(['true'])\n"  # split: this file is checked too
              "def test_a(run):\n    assert run\n"
              "@pytest.mark.slow\ndef test_b(run):\n    assert run\n"
              "def test_c():\n    assert True\n")
    defs = functions(ast.parse(source))
    assert starts_a_process("test_a", source, defs) and not is_slow(defs["test_a"], source)
    assert is_slow(defs["test_b"], source) and not starts_a_process("test_c", source, defs)


def test_design_sections_cited_in_the_code_exist():
    repo = TESTS.parent
    sections = set(re.findall(r"(?m)^## (\d+)\. ", (repo / "docs" / "design.md").read_text(encoding="utf-8")))
    cited = {}
    for path in [*repo.glob("*_impl/**/*.py"), *repo.glob("parity/**/*.py"), *repo.glob("ms_impl/kernels/*.cc")]:
        for number in re.findall(r"docs/design\.md section (\d+)", path.read_text(encoding="utf-8")):
            cited.setdefault(number, []).append(path.name)
    assert cited and not {n: files for n, files in cited.items() if n not in sections}
