"""Data tools CLI: dataset report (PNG + text, corrupt files) and per-channel mean/std."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image


@pytest.fixture()
def dataset(tmp_path):
    """train: A (3 red 40x30 PNGs), B (2 blue 20x20 PNGs + 1 corrupt JPEG); val: A (1 red 40x30)."""
    root = tmp_path / "data"
    specs = [("train", "A", 3, (255, 0, 0), (40, 30)), ("train", "B", 2, (0, 0, 200), (20, 20)), ("val", "A", 1, (255, 0, 0), (40, 30))]
    for split, cls, n, colour, size in specs:
        folder = root / split / cls
        folder.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", size, colour).save(folder / f"{i}.png")
    (root / "train" / "B" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def run(python_exe, repo_root, cli_env, *args):
    return subprocess.run([python_exe, "-m", "ms_impl.datatools", *map(str, args)], cwd=repo_root, env=cli_env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_report_writes_png_and_text(dataset, tmp_path, python_exe, repo_root, cli_env):
    out = tmp_path / "report"
    proc = run(python_exe, repo_root, cli_env, "report", dataset, "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["report.png", "report.txt"]
    with Image.open(out / "report.png") as png:
        assert png.format == "PNG" and png.size[0] > 500
    text = (out / "report.txt").read_text(encoding="utf-8")
    assert "images: 7 files, 6 readable, 1 corrupt" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line.split() and line.split()[0] in ("A", "B", "total")}
    assert rows == {"A": ["3", "1"], "B": ["2", "0"], "total": ["5", "1"]}
    assert "min 20x20, max 40x30" in text
    assert f"{dataset / 'train' / 'B' / 'broken.jpg'}:" in text
    # never overwritten without --force
    proc = run(python_exe, repo_root, cli_env, "report", dataset, "--output", out)
    assert proc.returncode == 2 and "already exists" in proc.stderr


def test_report_bad_input(tmp_path):
    from ms_impl import datatools

    assert datatools.main(["report", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r")]) == 2
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    assert datatools.main(["report", str(tmp_path / "empty"), "--output", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_stats_per_channel_mean_and_std(dataset, python_exe, repo_root, cli_env):
    proc = run(python_exe, repo_root, cli_env, "stats", dataset, "--split", "train", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    # 3 red images of 1200 px, 2 blue of 400 px; the corrupt file is skipped and named
    red, blue = 3 * 1200, 2 * 400
    pixels = np.concatenate([np.tile([255.0, 0, 0], (red, 1)), np.tile([0, 0, 200.0], (blue, 1))])
    assert result["images"] == 5 and result["pixels"] == red + blue
    np.testing.assert_allclose(result["mean"], pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(result["std"], pixels.std(0), rtol=1e-6)
    np.testing.assert_allclose(result["mean_01"], pixels.mean(0) / 255, rtol=1e-9)
    assert [s["file"] for s in result["skipped"]] == [str(dataset / "train" / "B" / "broken.jpg")]


def test_stats_resized(dataset):
    from ms_impl import datatools

    paths = [str(dataset / "val" / "A" / "0.png")]
    result = datatools.channel_stats(paths, image_size=8)
    assert result["pixels"] == 64
    np.testing.assert_allclose(result["mean"], [255, 0, 0], atol=1e-6)
