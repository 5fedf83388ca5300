"""The experiments keep working through refactors: each script imports, and every project name it imports,
at the top or lazily inside a function, still exists where it looks for it (a moved function fails here,
not in the middle of an hour-long measurement)."""
from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "experiments").glob("*.py"))
PROJECT = ("ms_impl", "pt_impl", "parity")


def project_imports(path: Path):
    """(module, [names]) of every import of a project module anywhere in the file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT:
            yield node.module, [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PROJECT:
                    yield alias.name, []


def test_every_script_is_listed_in_the_readme():
    listed = (REPO / "experiments" / "README.md").read_text(encoding="utf-8")
    assert SCRIPTS and all(script.name in listed for script in SCRIPTS), \
        [script.name for script in SCRIPTS if script.name not in listed]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_imports_and_its_project_names_exist(script):
    if 'if __name__ == "__main__":' in script.read_text(encoding="utf-8"):  # else its top level is the experiment
        spec = importlib.util.spec_from_file_location(f"experiment_{script.stem}", script)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))  # top level only: main() is not run
    for module_name, names in project_imports(script):
        module = importlib.import_module(module_name)
        for name in names:
            if not hasattr(module, name):
                importlib.import_module(f"{module_name}.{name}")  # a submodule, or ModuleNotFoundError
