"""The package as a stranger installs it: a wheel, installed into a fresh environment without the checkout.

The fresh venv sees the heavy dependencies (MindSpore, torch...) of the interpreter running the tests through a
.pth file instead of downloading them again; the project itself comes only from the wheel.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, TINY_TRAIN


def _run(command, cwd, env, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    print(f"$ {' '.join(map(str, command))}\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin folder, environment) of a venv holding the wheel built from this checkout."""
    root = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["GLOG_v"] = "3"
    # built from a copy: setuptools writes build/ and *.egg-info beside the sources, and a stale build/ could
    # slip old files into the wheel
    source = root / "source"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir",
                  root / "dist", source], cwd=root, env=env)
    assert built.returncode == 0, built.stderr
    wheels = list((root / "dist").glob("mbv2_twins-*.whl"))
    assert len(wheels) == 1, wheels

    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root, env=env)
    assert made.returncode == 0, made.stderr
    venv_site = next((venv / "lib").glob("python3*/site-packages"))
    # the dependencies of this interpreter; its own .pth files (an editable install of the checkout) are not read
    (venv_site / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pip = _run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--ignore-installed", "--no-index",
                wheels[0]], cwd=root, env=env)
    assert pip.returncode == 0, pip.stderr
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return venv / "bin", env


@pytest.mark.slow
def test_the_wheel_holds_the_configs_and_no_top_level_configs_package(installed, tmp_path):
    bin_dir, env = installed
    probe = _run([bin_dir / "python", "-c",
                  "import importlib.util, ms_impl, ms_impl.trainer.config as c; "
                  "print(ms_impl.__file__); print(c.DEFAULT_CONFIG['GPU']); print(importlib.util.find_spec('configs'))"],
                 cwd=tmp_path, env=env)
    assert probe.returncode == 0, probe.stderr
    package_file, gpu_config, top_level_configs = probe.stdout.split()
    venv = bin_dir.parent
    assert Path(package_file).is_relative_to(venv) and not Path(package_file).is_relative_to(REPO_ROOT)
    assert Path(gpu_config) == Path(package_file).parent / "configs" / "garbage26_gpu.yaml" and Path(gpu_config).is_file()
    assert top_level_configs == "None"  # the configs are inside the package, not a package `configs` of their own


@pytest.mark.slow
def test_the_installed_trainer_runs_from_another_folder(installed, tmp_path):
    bin_dir, env = installed
    helped = _run([bin_dir / "mbv2-train", "--help"], cwd=tmp_path, env=env)
    assert helped.returncode == 0, helped.stderr
    assert "--data-path" in helped.stdout and "--weight-decay" in helped.stdout

    run = _run([bin_dir / "mbv2-train", *TINY_TRAIN, "--epochs", "1", "--output-dir", "tiny_run",
                "--synthetic-cache-dir", tmp_path / "synthetic"], cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    out = tmp_path / "tiny_run"
    for name in ("config.yaml", "train.log", "metrics.csv", "summary.json", "checkpoints/mobilenetv2-best.ckpt"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["final"]["val_top1"] <= 1.0
    assert str(bin_dir.parent) in (out / "config.yaml").read_text()  # the class list came from the installed package


def test_every_package_of_the_checkout_is_installed():
    """setup.cfg lists the packages one by one (configs/ is mapped into ms_impl.configs): a new subpackage left
    out of that list would be missing from every wheel."""
    import configparser

    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    listed = set(setup["options"]["packages"].split())
    found = {".".join(path.parent.relative_to(REPO_ROOT).parts) for top in ("ms_impl", "pt_impl", "parity")
             for path in (REPO_ROOT / top).rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
