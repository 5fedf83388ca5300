"""The package layering, checked on the source: every import, lazy ones inside functions included.

Rules (see parity/__init__.py and docs/design.md):
- `parity.core` imports no twin (`ms_impl`, `pt_impl`) and no harness module, and neither torch nor
  mindspore when it is imported (only inside the functions that read or write their files);
- a twin never imports the other twin, nor the harness;
- the MindSpore twin's model files (its kernels included) never import the trainer or a command-line tool;
- the trainer engine never imports a command-line tool;
- the harness and the experiments never import a command-line tool, MindSpore's or the harness's own
  (they use the modules under them); an entry point imports only the tool it runs;
- no import cycle among the project's modules and the experiment scripts, and no project module imports
  an experiment;
- no module imports another module's private (underscore) name.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ms_impl", "pt_impl", "parity")
MS_TWIN = [f"ms_impl.{m}" for m in ("mobilenetv2", "loss", "optim", "transforms", "weights", "export_model", "fast_conv")]
MS_TOOLS = {f"ms_impl.{m}" for m in ("train", "eval", "predict", "export", "datatools", "bench_distributed")}
HARNESS = ("parity.harness", "parity.convert", "parity.__main__")
# The command-line modules: a `main` that parses argv and exits, the console scripts' targets.
CLI_MODULES = MS_TOOLS | {"parity.__main__", "parity.convert", "parity.harness.convert_cli"}
ENTRY_POINTS = {"parity.convert": "parity.harness.convert_cli"}  # `python -m parity.convert` runs convert_cli
FRAMEWORKS = ("torch", "mindspore")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> Dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports_of(path: Path) -> List[Tuple[str, List[str], int]]:
    """(imported module, names imported from it, line) for every import statement anywhere in the file."""
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, [alias.name for alias in node.names], node.lineno))
    return found


def within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def edges():
    """(importer, imported module or submodule, line) with `from pkg import module` resolved to the module."""
    modules = all_modules()
    for importer, path in modules.items():
        for target, names, line in imports_of(path):
            if not within(target, PACKAGES):
                continue
            yield importer, target, names, line
            for name in names:
                if f"{target}.{name}" in modules:
                    yield importer, f"{target}.{name}", [], line


def violations(rule) -> List[str]:
    return sorted({f"{importer}:{line} imports {target}" for importer, target, _, line in edges()
                   if rule(importer, target)})


def test_the_walk_sees_lazy_imports():
    # parity.harness.compare imports the twins only inside functions: the walk must find them.
    targets = {t for i, t, _, _ in edges() if i == "parity.harness.compare"}
    assert "ms_impl.mobilenetv2" in targets and "pt_impl.mobilenetv2" in targets


def test_parity_core_imports_no_twin_and_no_harness():
    assert violations(lambda i, t: within(i, ["parity.core"]) and within(t, ["ms_impl", "pt_impl", *HARNESS])) == []


def test_twins_import_neither_each_other_nor_the_harness():
    assert violations(lambda i, t: within(i, ["ms_impl"]) and within(t, ["pt_impl", *HARNESS])) == []
    assert violations(lambda i, t: within(i, ["pt_impl"]) and within(t, ["ms_impl", *HARNESS])) == []


def test_model_files_import_no_trainer_and_no_tool():
    assert violations(lambda i, t: within(i, MS_TWIN) and within(t, ["ms_impl.trainer", *MS_TOOLS])) == []


def test_trainer_engine_imports_no_command_line_tool():
    assert violations(lambda i, t: within(i, ["ms_impl.trainer"]) and t in MS_TOOLS) == []


def experiment_imports() -> List[str]:
    """'experiments/x.py:line imports module' for every project module the experiment scripts import."""
    modules = all_modules()
    found = []
    for path in sorted((REPO / "experiments").glob("*.py")):
        for target, names, line in imports_of(path):
            for module in [target] + [f"{target}.{name}" for name in names if f"{target}.{name}" in modules]:
                found.append((f"experiments/{path.name}:{line}", module))
    return [f"{where} imports {module}" for where, module in found]


def test_harness_imports_no_command_line_tool():
    assert violations(lambda i, t: within(i, HARNESS) and t in CLI_MODULES and ENTRY_POINTS.get(i) != t) == []


def test_no_module_imports_a_command_line_tool_but_its_entry_point():
    assert violations(lambda i, t: t in CLI_MODULES and t != i and ENTRY_POINTS.get(i) != t) == []


def test_experiments_import_no_command_line_tool():
    assert [line for line in experiment_imports() if line.rpartition(" imports ")[2] in CLI_MODULES] == []


def import_time_imports(path: Path) -> List[Tuple[str, int]]:
    """(module, line) of every import that runs when the file is imported: not inside a function."""
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and not child.level:
                found.append((child.module or "", child.lineno))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def test_the_import_time_walk_skips_function_bodies(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\nif os:\n    import torch\nclass A:\n    import mindspore\n"
                      "def f():\n    import torch.nn\n", encoding="utf-8")
    assert import_time_imports(source) == [("os", 1), ("torch", 3), ("mindspore", 5)]


def test_parity_core_imports_no_framework_when_imported():
    found = sorted(f"{name}:{line} imports {module}" for name, path in all_modules().items()
                   if within(name, ["parity.core"])
                   for module, line in import_time_imports(path) if within(module, FRAMEWORKS))
    assert found == []


def test_the_experiment_walk_sees_their_imports():
    assert any(line.endswith(" imports ms_impl.fast_conv") for line in experiment_imports())


def module_graph() -> Dict[str, set]:
    """Module -> the project modules it imports (`from package import module` counts as the module)."""
    modules = all_modules()
    graph: Dict[str, set] = {name: set() for name in modules}
    for importer, path in modules.items():
        for target, names, _ in imports_of(path):
            submodules = [f"{target}.{name}" for name in names if f"{target}.{name}" in modules]
            for module in submodules or ([target] if target in modules else []):
                if module != importer:
                    graph[importer].add(module)
    return graph


def import_cycles(graph: Dict[str, set]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_the_cycle_search_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_project_modules():
    assert import_cycles(module_graph()) == []


def experiment_graph() -> Dict[str, set]:
    """The module graph with the experiment scripts added (`experiments.<name>`); they import each other by
    bare name (`from cv_frozen import make_folds`, the scripts' folder is on sys.path)."""
    graph = module_graph()
    modules = all_modules()
    scripts = {p.stem: p for p in sorted((REPO / "experiments").glob("*.py"))}
    for stem, path in scripts.items():
        node = graph.setdefault(f"experiments.{stem}", set())
        for target, names, _ in imports_of(path):
            if target in scripts:
                node.add(f"experiments.{target}")
            submodules = [f"{target}.{name}" for name in names if f"{target}.{name}" in modules]
            node.update(submodules or ([target] if target in modules else []))
    return graph


def test_the_experiment_graph_sees_sibling_imports():
    assert "experiments.cv_frozen" in experiment_graph()["experiments.make_fold"]


def test_no_import_cycle_among_modules_and_experiments():
    assert import_cycles(experiment_graph()) == []


def test_no_project_module_imports_an_experiment():
    stems = {p.stem for p in (REPO / "experiments").glob("*.py")}
    found = sorted(f"{name}:{line} imports {target}" for name, path in all_modules().items()
                   for target, _, line in imports_of(path) if within(target, ["experiments"]) or target in stems)
    assert found == []


def test_no_module_imports_a_private_name_of_another():
    found = sorted(f"{i}:{line} imports {t}.{n}" for i, t, names, line in edges() for n in names
                   if n.startswith("_") and not n.startswith("__"))
    assert found == []


@pytest.mark.parametrize("package", ["ms_impl", "ms_impl.trainer", "ms_impl.fast_conv", "pt_impl", "parity",
                                     "parity.core", "parity.harness"])
def test_every_package_docstring_maps_its_modules(package):
    folder = REPO / package.replace(".", "/")
    doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))) or ""
    modules = [p.stem for p in folder.glob("*.py") if p.stem != "__init__"]
    assert modules and [m for m in modules if m not in doc] == []
