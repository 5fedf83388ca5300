"""The tools' one error contract (`parity.core.cli.run_cli`), and that no tool writes it again.

- `run_cli` itself: a UserError is one `error:` line and exit 2 (or its own code), a path no
  system call accepts one line and exit 2, Ctrl+C one line and 130, anything else keeps its traceback;
- every console script and every `python -m`/script entry point runs through `run_cli`;
- no other module hands Ctrl+C over, leaves after one, catches KeyboardInterrupt or turns path
  errors into lines itself (a seventh hand-written wrapper fails here);
- every exception class of the project is a `UserError` (the tools report it as one line), or
  is listed below with the reason it is not.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import configparser
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from parity.core import cli, interrupts
from parity.core.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ms_impl", "pt_impl", "parity")
# The modules that implement the contract: run_cli, the Ctrl+C machinery, the path-error helpers.
CONTRACT_MODULES = {"parity.core.cli", "parity.core.interrupts", "parity.core.files"}
# Modules that catch KeyboardInterrupt under run_cli, and why.
OWN_CTRL_C_LINE = {
    "ms_impl.train": "its line says where the run stopped (setup or before any step was saved); run_cli still "
                     "leaves through interrupts.after_ctrl_c for the 130 it returns",
}
# Exception classes that are not bad input, and what the tools do with them instead.
NOT_USER_ERRORS = {
    "ms_impl.trainer.loop.TrainingDiverged": "exit 1 with the last good checkpoint named (train.py)",
    "ms_impl.trainer.loop.Interrupted": "SIGINT/SIGTERM during training: a resumable checkpoint, exit 130/143",
    "ms_impl.fast_conv.build.FastConvUnavailable": "the kernels do not build here: the standard operators are used",
}
# The error types the tools turned into `error:` lines before run_cli, by their old names.
TOOL_ERRORS = [("parity.core.files", "WriteError"), ("parity.core.converter", "ConversionError"),
               ("ms_impl.trainer.errors", "UsageError"), ("ms_impl.datatools", "InputError"),
               ("ms_impl.trainer.model_io", "CheckpointError"), ("ms_impl.trainer.pretrained", "PretrainedError"),
               ("parity.harness.bench", "BadInput")]


# ---------------------------------------------------------------- run_cli itself


@pytest.fixture
def handed_over(monkeypatch) -> List[str]:
    """What happened, in order: 'hand_over' when run_cli hands Ctrl+C over, 'body' when the body starts."""
    events: List[str] = []
    monkeypatch.setattr(interrupts, "hand_over", lambda: events.append("hand_over"))
    return events


def test_a_user_error_is_one_line_and_exit_2(capsys, handed_over):
    def body() -> int:
        handed_over.append("body")
        raise UserError("--data-path /nowhere: no such folder")

    assert cli.run_cli(body) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: --data-path /nowhere: no such folder\n" and captured.out == ""
    assert handed_over == ["hand_over", "body"]  # Ctrl+C is the tool's before its body runs


def test_a_user_error_may_carry_its_own_exit_code(capsys, handed_over):
    class Refused(UserError):
        exit_code = 3

    def body() -> int:
        raise Refused("x.ckpt: refused")

    assert cli.run_cli(body) == 3
    assert capsys.readouterr().err == "error: x.ckpt: refused\n"


def test_the_body_exit_code_passes_through(capsys, handed_over):
    assert cli.run_cli(lambda: 1) == 1
    assert cli.run_cli(lambda: None) == 0
    assert capsys.readouterr().err == ""


def test_a_path_no_system_call_accepts_is_one_line_and_exit_2(capsys, handed_over, tmp_path):
    long_name = str(tmp_path / ("n" * 300))

    def body() -> int:
        open(long_name, "rb")  # ENAMETOOLONG: the name is longer than any file system takes
        return 0

    assert cli.run_cli(body) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {str(tmp_path)}") and err.rstrip().endswith(": file name too long")
    assert len(err.splitlines()) == 1


def test_any_other_error_keeps_its_traceback(handed_over, tmp_path):
    with pytest.raises(FileNotFoundError):  # an OSError about the file, not the path: a bug or a race, not input
        cli.run_cli(lambda: open(tmp_path / "missing", "rb"))

    def bug() -> int:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        cli.run_cli(bug)


def test_ctrl_c_is_one_line_and_130(capsys, handed_over):
    def interrupted() -> int:
        raise KeyboardInterrupt

    assert cli.run_cli(interrupted) == interrupts.EXIT_SIGINT == 130
    assert capsys.readouterr().err == "error: interrupted (SIGINT); no partial file was left\n"
    assert cli.run_cli(interrupted, interrupted="error: interrupted (SIGINT): stopped") == 130
    assert capsys.readouterr().err == "error: interrupted (SIGINT): stopped\n"


def test_a_body_that_handles_its_own_ctrl_c_leaves_the_same_way(monkeypatch, handed_over):
    left: List[int] = []
    monkeypatch.setattr(interrupts, "after_ctrl_c", lambda code=130: left.append(code) or code)
    assert cli.run_cli(lambda: 130) == 130 and left == [130]
    assert cli.run_cli(lambda: 143) == 143 and left == [130]  # SIGTERM: the process ends normally


# ---------------------------------------------------------------- every tool runs through it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> Dict[str, Path]:
    found = {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}
    found.update({f"experiments.{p.stem}": p for p in sorted((REPO / "experiments").glob("*.py"))})
    return found


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def call_name(call: ast.Call) -> str:
    """`f(...)` and `x.f(...)` both give 'f'; '' for any other call."""
    if isinstance(call.func, ast.Name):
        return call.func.id
    return call.func.attr if isinstance(call.func, ast.Attribute) else ""


def called_names(node: ast.AST) -> List[str]:
    """The name of every function called under `node`."""
    return [call_name(n) for n in ast.walk(node) if isinstance(n, ast.Call)]


def find_function(module: str, name: str) -> Tuple[str, Optional[ast.FunctionDef]]:
    """(module, definition) of `name` as seen from `module`, following one `from x import name`."""
    tree = parse(project_modules()[module])
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return module, node
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and any(a.name == name for a in node.names):
            return find_function(node.module, name)
    return module, None


def runs_through_run_cli(module: str, function: str) -> bool:
    """`function` of `module` calls run_cli, or run_command (the harness's parse-then-run_cli)."""
    _, definition = find_function(module, function)
    return definition is not None and bool({"run_cli", "run_command"} & set(called_names(definition)))


def console_scripts() -> Dict[str, Tuple[str, str]]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg", encoding="utf-8")
    scripts = {}
    for line in config["options.entry_points"]["console_scripts"].strip().splitlines():
        name, _, target = (part.strip() for part in line.partition("="))
        module, _, function = target.partition(":")
        scripts[name] = (module, function)
    return scripts


def main_guards() -> Dict[str, ast.If]:
    """Module -> its `if __name__ == "__main__":` block, for every project module that has one."""
    guards = {}
    for module, path in project_modules().items():
        if module.startswith("experiments."):
            continue  # research scripts, not tools: tests/test_experiments.py covers them
        for node in parse(path).body:
            if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                    and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"):
                guards[module] = node
    return guards


def test_the_harness_command_runner_is_run_cli():
    assert "run_cli" in called_names(find_function("parity.harness.command", "run_command")[1])


def test_every_console_script_runs_through_run_cli():
    scripts = console_scripts()
    assert {"mbv2-train", "mbv2-eval", "mbv2-predict", "mbv2-export", "mbv2-datatools", "mbv2-convert",
            "mbv2-parity"} <= set(scripts)
    assert sorted(name for name, (module, function) in scripts.items()
                  if not runs_through_run_cli(module, function)) == []


def test_every_main_guard_runs_through_run_cli():
    guards = main_guards()
    assert {"ms_impl.train", "ms_impl.eval", "parity.__main__", "parity.convert"} <= set(guards)
    bypassing = []
    for module, guard in guards.items():
        names = called_names(guard)
        if "run_cli" in names:  # `sys.exit(run_cli(main))`
            continue
        entry = [n for n in names if n not in ("exit", "int")]
        if not entry or not all(runs_through_run_cli(module, n) for n in entry):
            bypassing.append(module)
    assert bypassing == []


# ---------------------------------------------------------------- nobody writes it again

def hand_written_contract(module: str, tree: ast.Module) -> List[str]:
    """Where `tree` does run_cli's job itself: hands Ctrl+C over or leaves after one, turns a path
    error into a line, or catches KeyboardInterrupt."""
    if module in CONTRACT_MODULES:
        return []
    found = [f"{module}:{node.lineno} calls {call_name(node)}" for node in ast.walk(tree) if isinstance(node, ast.Call)
             and call_name(node) in ("hand_over", "after_ctrl_c", "is_path_error", "path_error_line")]
    if module not in OWN_CTRL_C_LINE:
        for node in ast.walk(tree):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
                if any(isinstance(c, ast.Name) and c.id == "KeyboardInterrupt" for c in caught):
                    found.append(f"{module}:{node.lineno} catches {ast.unparse(node.type)}")
    return sorted(found, key=lambda line: int(line.split(" ", 1)[0].rpartition(":")[2]))


SEVENTH_TOOL = '''
def main(argv=None):
    args = parser.parse_args(argv)
    interrupts.hand_over()
    try:
        return run(args)
    except (UsageError, WriteError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if not is_path_error(exc):
            raise
        print(f"error: {path_error_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (SIGINT)", file=sys.stderr)
        return interrupts.after_ctrl_c()
'''


def test_the_check_finds_a_hand_written_wrapper():
    found = hand_written_contract("ms_impl.seventh_tool", ast.parse(SEVENTH_TOOL))
    assert [line.split(" ", 1)[1] for line in found] == [
        "calls hand_over", "calls is_path_error", "calls path_error_line", "catches KeyboardInterrupt",
        "calls after_ctrl_c"]


def test_no_module_writes_the_contract_itself():
    found = [line for module, path in project_modules().items() for line in hand_written_contract(module, parse(path))]
    assert found == []


# ---------------------------------------------------------------- every error a user can fix is a UserError


def exception_classes() -> Dict[str, List[str]]:
    """'module.Class' -> its base names, for every class of the project derived from an exception."""
    exceptions = {name for name in dir(builtins) if isinstance(getattr(builtins, name), type)
                  and issubclass(getattr(builtins, name), BaseException)}
    classes = {}
    for module, path in project_modules().items():
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.ClassDef):
                classes[f"{module}.{node.name}"] = [ast.unparse(b).rpartition(".")[2] for b in node.bases]
    found: Dict[str, List[str]] = {}
    while True:  # a class derived from a project exception class is one too
        known = exceptions | {name.rpartition(".")[2] for name in found}
        more = {name: bases for name, bases in classes.items() if name not in found and set(bases) & known}
        if not more:
            return found
        found.update(more)


def test_every_exception_class_is_a_user_error_or_says_why_not():
    classes = exception_classes()
    assert "parity.core.errors.UserError" in classes and "ms_impl.trainer.loop.TrainingDiverged" in classes
    user_errors = {"UserError"}
    while True:
        more = {name.rpartition(".")[2] for name, bases in classes.items() if set(bases) & user_errors} - user_errors
        if not more:
            break
        user_errors |= more
    unclassified = sorted(name for name in classes
                          if name.rpartition(".")[2] not in user_errors and name not in NOT_USER_ERRORS
                          and name != "parity.core.errors.UserError")
    assert unclassified == []
    assert sorted(set(NOT_USER_ERRORS) - set(classes)) == []  # no stale entry


@pytest.mark.parametrize("module, name", TOOL_ERRORS)
def test_the_tools_error_types_are_user_errors(module, name):
    import importlib

    error = getattr(importlib.import_module(module), name)
    assert issubclass(error, UserError) and error.exit_code == 2


def test_checkpoint_errors_stay_value_errors():
    # as before run_cli: code that catches ValueError around a checkpoint read still does
    from ms_impl.trainer.model_io import CheckpointError
    from ms_impl.trainer.pretrained import PretrainedError

    assert issubclass(CheckpointError, ValueError) and issubclass(PretrainedError, ValueError)


def test_help_parsed_inside_the_body_still_exits_0(handed_over):
    # eval and train parse their config inside the body: --help's exit 0 passes through run_cli
    with pytest.raises(SystemExit) as stopped:
        cli.run_cli(lambda: argparse.ArgumentParser(prog="x").parse_args(["--help"]))
    assert stopped.value.code == 0
