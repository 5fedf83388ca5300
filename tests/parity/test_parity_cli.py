"""`python -m parity check`: the table and the exit codes (issue 5)."""
from __future__ import annotations

import subprocess

import pytest


def _check(args, cli_env, python_exe, repo_root):
    return subprocess.run([python_exe, "-m", "parity", "check", *args], cwd=repo_root, env=cli_env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_check_prints_table_and_passes(cli_env, python_exe, repo_root):
    done = _check(["--width", "0.35", "--image-size", "64", "--batch", "2", "--mode", "pynative", "--steps", "2"],
                  cli_env, python_exe, repo_root)
    assert done.returncode == 0, done.stdout + done.stderr
    for row in ("eval logits", "train-mode forward", "gradients, whole net", "BN stats after 1 forward",
                "weights after 2 steps", "loss MindSpore vs reference", "LR schedule", "preprocessing"):
        assert row in done.stdout
    assert "FAIL" not in done.stdout and done.stdout.rstrip().endswith("PASS")


@pytest.mark.slow
def test_check_rejects_bad_arguments(cli_env, python_exe, repo_root):
    done = _check(["--mode", "eager"], cli_env, python_exe, repo_root)
    assert done.returncode == 2 and "--mode" in done.stderr
    done = _check(["--image-size", "8"], cli_env, python_exe, repo_root)
    assert done.returncode == 2 and "image-size" in done.stderr
