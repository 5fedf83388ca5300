"""Shared fixtures. Every fixture is generated here; nothing is downloaded.

Fast lane: `python -m pytest -m "not slow"` skips the tests marked slow (every test that
starts a subprocess or msrun, or trains for more than a few seconds). Shared helpers
that are not fixtures live in tests/helpers.py; no test module imports another.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def cli_env() -> dict:
    """Environment for CLI subprocesses: the checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("GLOG_v", "3")  # MindSpore: errors only
    return env


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


@pytest.fixture()
def ms_pynative():
    """MindSpore in PYNATIVE mode on CPU (fast to start; graph mode is tested where it matters)."""
    import mindspore as ms

    ms.set_device("CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield ms


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory) -> str:
    """One cache folder for the embedded synthetic sets of the session (keyed by their parameters)."""
    return str(tmp_path_factory.mktemp("synthetic"))
