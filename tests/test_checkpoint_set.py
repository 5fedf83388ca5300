"""A crash at any write of an epoch's checkpoint set never leaves a finished run that is not whole.

The end of an epoch writes metrics.csv, the epoch file, `mobilenetv2-last.ckpt`,
`mobilenetv2-best.ckpt` (when top-1 improved) and, after the last epoch, summary.json,
each atomically. The test kills the trainer (SIGKILL) at each of those writes in turn,
while the write's temporary file is half written, resumes with `--resume auto`, and
compares the run folder with an uninterrupted run's: the same files, the same tensors
in every checkpoint, a summary.json that names only files that exist.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import checkpoint_weights, no_temporaries

# PyNative, 3 steps per epoch: the test is about files and kills, not speed (see test_faults.py's TINY)
TINY = ["--device", "CPU", "--width_mult", "0.35", "--synthetic_image_size", "32", "--batch_size", "16",
        "--synthetic_train_per_class", "2", "--synthetic_val_per_class", "1", "--num_workers", "2", "--mode", "pynative",
        "--epochs", "2"]
CHECKPOINT_SET = ("mobilenetv2-1_3.ckpt", "mobilenetv2-2_3.ckpt", "mobilenetv2-last.ckpt", "mobilenetv2-best.ckpt",
                  "summary.json")

# Runs the trainer with every atomic write's final rename (os.replace) watched: the destination names go to
# $WRITE_LOG; the write $HOLD_WRITE (`name#n`: the n-th write of that name) cuts its temporary file in half,
# creates $HOLD_MARKER and waits there to be killed.
WATCHED_TRAINER = r"""
import os, runpy, sys, time
from pathlib import Path

real_replace = os.replace
log, hold, marker = os.environ["WRITE_LOG"], os.environ.get("HOLD_WRITE", ""), os.environ.get("HOLD_MARKER")
counts = {}

def replace(src, dst, *args, **kwargs):
    name = Path(dst).name
    if not name.startswith("."):  # MindSpore's own rename inside the temporary file's write is not one of ours
        counts[name] = counts.get(name, 0) + 1
        with open(log, "a") as handle:
            handle.write(name + "\n")
        if f"{name}#{counts[name]}" == hold:
            data = Path(src).read_bytes()
            Path(src).write_bytes(data[: len(data) // 2])
            Path(marker).write_text(name)
            time.sleep(600)
    return real_replace(src, dst, *args, **kwargs)

os.replace = replace
sys.argv = ["ms_impl/train.py"] + sys.argv[1:]
runpy.run_path("ms_impl/train.py", run_name="__main__")
"""


def watched_run(args, tmp_path: Path, cli_env: dict, repo_root: Path, hold: str = "") -> list:
    """The trainer with its writes logged; with `hold` (`name#n`), killed (SIGKILL) during the n-th write of `name`.
    Returns the names written, in order."""
    log, marker = tmp_path / f"writes-{hold}.txt", tmp_path / f"held-{hold}"
    env = dict(cli_env, WRITE_LOG=str(log), HOLD_WRITE=hold, HOLD_MARKER=str(marker))
    process = subprocess.Popen([sys.executable, "-c", WATCHED_TRAINER, *args], cwd=repo_root, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if hold:
        deadline = time.time() + 280
        while not marker.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert marker.exists(), process.communicate(timeout=30)[1][-3000:]
        process.send_signal(signal.SIGKILL)
    _, err = process.communicate(timeout=300)
    if not hold:
        assert process.returncode == 0, err[-3000:]
    return log.read_text().split()


def run_files(out: Path) -> set:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith(".train.lock")}


def checkpoint_tensors(out: Path) -> dict:
    return {p.name: checkpoint_weights(p) for p in sorted((out / "checkpoints").glob("*.ckpt"))}


def assert_same_tensors(actual: dict, expected: dict, what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for name in expected:
        assert actual[name].keys() == expected[name].keys(), (what, name)
        for key in expected[name]:
            np.testing.assert_array_equal(actual[name][key], expected[name][key], err_msg=f"{what}: {name} {key}")


@pytest.mark.slow
def test_a_kill_at_each_write_of_the_checkpoint_set_then_resume_auto_ends_whole(tmp_path, tmp_path_factory, cli_env,
                                                                               repo_root):
    cache = str(tmp_path_factory.mktemp("synthetic"))
    reference = tmp_path / "reference"
    writes = watched_run(TINY + ["--synthetic_cache_dir", cache, "--output_dir", str(reference)], tmp_path, cli_env,
                         repo_root)
    expected_files, expected_tensors = run_files(reference), checkpoint_tensors(reference)
    assert {"checkpoints/mobilenetv2-last.ckpt", "checkpoints/mobilenetv2-best.ckpt", "summary.json"} <= expected_files
    in_set = [name for name in writes if name in CHECKPOINT_SET]  # every write of the set, in order
    assert in_set[:3] == ["mobilenetv2-1_3.ckpt", "mobilenetv2-last.ckpt", "mobilenetv2-best.ckpt"]
    assert in_set[-1] == "summary.json" and in_set.count("mobilenetv2-last.ckpt") == 2

    for index, name in enumerate(in_set):
        hold = f"{name}#{in_set[:index + 1].count(name)}"
        what = f"killed during write {hold} (after {', '.join(in_set[:index]) or 'none of the set'})"
        out = tmp_path / f"run-{index}"
        args = TINY + ["--synthetic_cache_dir", cache, "--output_dir", str(out)]
        watched_run(args, tmp_path, cli_env, repo_root, hold=hold)
        assert list(out.rglob(f".{name}.tmp-*")), what  # the killed write left its half-written temporary

        resumed = subprocess.run([sys.executable, "ms_impl/train.py", *args, "--resume", "auto"], cwd=repo_root,
                                 env=cli_env, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, (what, resumed.stderr[-3000:])
        assert "Traceback" not in resumed.stderr and "error:" not in resumed.stderr, what
        assert "half-written by a run that was killed" in resumed.stderr, what
        if name == "mobilenetv2-1_3.ckpt":  # nothing intact yet: the old files are moved aside, the run starts over
            assert "no intact checkpoint" in resumed.stderr and "was moved to" in resumed.stderr, what
        assert no_temporaries(out), what
        assert run_files(out) == expected_files, what
        assert_same_tensors(checkpoint_tensors(out), expected_tensors, what)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["epochs"] == 2 and summary["best"]["checkpoint"] == str(out / "checkpoints" / "mobilenetv2-best.ckpt")
        assert Path(summary["best"]["checkpoint"]).is_file(), what
        assert len((out / "metrics.csv").read_text().splitlines()) == 3, what
