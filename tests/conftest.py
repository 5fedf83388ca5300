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
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MBV2_KERNEL_THREADS")  # torch/oneDNN, MKL, our kernels


def _one_share_of_the_cpus() -> None:
    """Each pytest-xdist worker (and every process it starts) uses its share of the CPUs, not all of them.

    With two workers on two cores and every library sizing its thread pool to the whole machine, the
    threads of both workers' processes take turns on the cores (and spin while they wait): a parity case
    ran 2.5x slower beside another than with one thread each. Set before torch and MindSpore are imported
    (they read these once); a value the caller set is kept."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 2:
        return
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(max(1, cpus // workers)))


_one_share_of_the_cpus()


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
