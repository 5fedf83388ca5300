"""The default `python -m parity check` case (1.0x, 224 px, batch 4, graph mode), as a user runs it: it passes.

In a file of its own (the suite's slowest test, about 5 minutes here): the test workers take whole files
(`--dist loadfile`), so this one can run beside test_verdicts.py instead of after it.
"""
from __future__ import annotations

import subprocess

import pytest


@pytest.mark.slow
def test_default_check_case_passes(python_exe, repo_root, cli_env):
    done = subprocess.run([python_exe, "-m", "parity", "check"], cwd=repo_root, env=cli_env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1.0x/224px/26cls/b4/graph" in done.stdout and done.stdout.rstrip().endswith("PASS")
    assert "FAIL" not in done.stdout
