"""The README's commands, run as a user runs them: every ```bash block, in order, in a copy of the repository.

`MBV2_SMOKE=1` (which the README shows) makes each training a run of seconds. What the README expects beside the
repository is generated here at the paths it names: `my_photos/` (a folder per class) and `mobilenet_v2_imagenet.pth`
(torchvision layout; random weights stand in for the ImageNet ones). Blocks fenced ```sh need what a test cannot
have (internet, a GPU, several hosts, a new virtual environment) and are only checked to exist.
"""
from __future__ import annotations

import configparser
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO_ROOT

RUNNABLE = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
SHOWN = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__",
                                    ".pytest_cache", "rank_*", "kernel_meta")


def readme() -> str:
    return (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_is_user_documentation():
    text = readme()
    lines = text.splitlines()
    assert len(lines) <= 350
    assert "## Contents" in text and "## Quick start" in text
    for heading in re.findall(r"^- \[(.+?)\]\(#(.+?)\)", text, re.M):  # every entry of the contents leads somewhere
        assert f"## {heading[0]}" in text, heading
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b|\bissue \d+|flock ", text)
    # the test command is the one CI runs
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    quick = SHOWN.findall(text)
    assert any('pip install -e ".[test]" && python -m pytest' in block for block in quick)
    assert 'pip install -e ".[test]"' in ci and "python -m pytest\n" in ci
    assert len(RUNNABLE.findall(text)) >= 8


def _tree_digest(root: Path) -> dict:
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def _console_scripts(bin_dir: Path) -> None:
    """`mbv2-*` commands that run this checkout's copy (PYTHONPATH), whatever is installed."""
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    for line in setup["options.entry_points"]["console_scripts"].strip().splitlines():
        name, target = (part.strip() for part in line.split("="))
        module, function = target.split(":")
        script = bin_dir / name
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
        script.chmod(0o755)


def _stand_ins(root: Path) -> None:
    """A folder of photos per class (the shipped class list) and ImageNet-layout weights, where the README expects them."""
    import torch
    import yaml
    from PIL import Image

    from pt_impl.mobilenetv2 import MobileNetV2

    classes = yaml.safe_load((REPO_ROOT / "configs" / "garbage26_classes.yaml").read_text(encoding="utf-8"))["classes"]
    rng = np.random.default_rng(0)
    for c in classes:
        folder = root / "my_photos" / c["name"]
        folder.mkdir(parents=True)
        for k in range(5):
            pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # noise: no two photos look alike
            Image.fromarray(pixels).save(folder / f"IMG_{k:04d}.jpg", quality=90)
    torch.manual_seed(0)
    torch.save(MobileNetV2(num_classes=1000).state_dict(), root / "mobilenet_v2_imagenet.pth")


@pytest.mark.slow
def test_readme_commands_run_in_order(tmp_path):
    from ms_impl import fast_conv

    work = tmp_path / "repo"
    shutil.copytree(REPO_ROOT, work, ignore=NOT_COPIED)
    tracked = _tree_digest(work)
    _stand_ins(work)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _console_scripts(bin_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("GLOG_v", "PYTHONPATH", "MBV2_SMOKE")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=str(work), MBV2_SMOKE="1", XDG_CACHE_HOME=str(tmp_path / "cache"),
               MBV2_KERNEL_CACHE=str(fast_conv.cache_dir()))  # the kernels this machine built already

    blocks = RUNNABLE.findall(readme())
    for number, block in enumerate(blocks, 1):
        started = time.monotonic()
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)
        print(f"block {number} ({time.monotonic() - started:.0f} s):\n{block}")
        assert done.returncode == 0, f"README block {number} failed:\n{block}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
    # the commands leave the repository's own files as they were (no plot written over a tracked image)
    changed = [path for path, digest in _tree_digest(work).items() if path in tracked and tracked[path] != digest]
    assert changed == []
