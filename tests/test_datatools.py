"""Data tools CLI: check (duplicates, leakage, label conflicts), split, report (PNG + text), per-channel mean/std."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
from pathlib import Path

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


# ---------------------------------------------------------------- check and split on generated photos


def photo(seed: int, size=(160, 120)) -> Image.Image:
    """A smooth random 'photo': a 6x8 grid of random colours, bicubic-upscaled (distinct seeds are >> 8 bits apart)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)


def altered_copies(image: Image.Image):
    """The copies a scraped folder holds: resized, re-encoded as JPEG q=60, 5% cropped (2.5% off each side)."""
    width, height = image.size
    encoded = io.BytesIO()
    image.save(encoded, "JPEG", quality=60)
    dx, dy = round(width * 0.025), round(height * 0.025)
    return {"resized": image.resize((width * 3 // 5, height * 3 // 5), Image.BILINEAR),
            "jpeg60": Image.open(io.BytesIO(encoded.getvalue())).convert("RGB"),
            "cropped": image.crop((dx, dy, width - dx, height - dy))}


def make_class_folders(root: Path, counts, first_seed: int = 0) -> int:
    """root/<class>/<i>.png with distinct photos; returns the next unused seed."""
    seed = first_seed
    for class_name, count in counts.items():
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            photo(seed).save(root / class_name / f"{class_name}_{i:02d}.png")
            seed += 1
    return seed


def tree_fingerprint(root: Path):
    """Every file's relative path, bytes digest, mode and mtime: equal before and after means untouched."""
    result = {}
    for path in sorted(root.rglob("*")):
        info = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        result[str(path.relative_to(root))] = (digest, info.st_mode, info.st_mtime_ns)
    return result


def read_manifest(dst: Path):
    with open(dst / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_perceptual_hash_finds_altered_copies_and_separates_distinct_photos():
    from ms_impl.trainer.photos import DEFAULT_THRESHOLD, pairwise_distances, perceptual_hash

    originals = [photo(seed) for seed in range(12)]
    hashes = np.stack([perceptual_hash(image) for image in originals])
    distinct = pairwise_distances(hashes)[np.triu_indices(len(originals), 1)]
    assert distinct.min() > 2 * DEFAULT_THRESHOLD
    for image, own in zip(originals, hashes):
        for name, copy in altered_copies(image).items():
            distance = pairwise_distances(np.stack([own, perceptual_hash(copy)]))[0, 1]
            assert distance <= DEFAULT_THRESHOLD, (name, distance)


def test_split_is_stratified_and_deterministic(tmp_path):
    from ms_impl import datatools

    src = tmp_path / "photos"
    make_class_folders(src, {"cat": 10, "dog": 20, "eel": 5})
    assert datatools.main(["split", str(src), str(tmp_path / "a"), "--val", "0.2", "--seed", "3"]) == 0
    assert datatools.main(["split", str(src), str(tmp_path / "b"), "--val", "0.2", "--seed", "3"]) == 0
    assert datatools.main(["split", str(src), str(tmp_path / "c"), "--val", "0.2", "--seed", "4"]) == 0
    rows = read_manifest(tmp_path / "a")
    assert rows == read_manifest(tmp_path / "b")  # same seed, same split
    assert [r["split"] for r in rows] != [r["split"] for r in read_manifest(tmp_path / "c")]
    for class_name, total in {"cat": 10, "dog": 20, "eel": 5}.items():
        val = {r["file"] for r in rows if r["class"] == class_name and r["split"] == "val"}
        assert len(val) == round(0.2 * total)
        on_disk = {f"val/{class_name}/{n}" for n in os.listdir(tmp_path / "a" / "val" / class_name)}
        assert on_disk == val
        assert len(os.listdir(tmp_path / "a" / "train" / class_name)) == total - len(val)
    assert set(rows[0]) == {"file", "class", "split", "group", "sha256", "source"}


def test_split_keeps_copies_together_leaves_corrupt_files_out_and_never_touches_the_source(tmp_path, capsys):
    from ms_impl import datatools

    src = tmp_path / "photos"
    make_class_folders(src, {"cat": 12, "dog": 12})
    original = photo(1000)
    original.save(src / "cat" / "original.png")
    for name, copy in altered_copies(original).items():
        copy.save(src / "cat" / f"copy_{name}.jpg", quality=95)
    (src / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (src / "dog" / "notes.txt").write_text("not a photo")
    before = tree_fingerprint(src)

    for seed in range(4):
        dst = tmp_path / f"split{seed}"
        assert datatools.main(["split", str(src), str(dst), "--val", "0.3", "--seed", str(seed)]) == 0
        rows = {Path(r["source"]).name: r for r in read_manifest(dst)}
        family = [rows[n] for n in ("original.png", "copy_resized.jpg", "copy_jpeg60.jpg", "copy_cropped.jpg")]
        assert len({r["split"] for r in family}) == 1 and len({r["group"] for r in family}) == 1 and family[0]["group"]
        assert rows["broken.jpg"]["split"] == "excluded" and rows["notes.txt"]["split"] == "excluded"
        assert not any(n in ("broken.jpg", "notes.txt") for n in os.listdir(dst / "train" / "dog") + os.listdir(dst / "val" / "dog"))
        placed = dst / rows["original.png"]["file"]
        assert os.path.samefile(placed, src / "cat" / "original.png")  # a hard link by default
    out = capsys.readouterr().out
    assert "broken.jpg" in out and "left out (unreadable): 2" in out

    copied = tmp_path / "copied"
    assert datatools.main(["split", str(src), str(copied), "--copy"]) == 0
    rows = [r for r in read_manifest(copied) if r["file"]]
    assert all(not os.path.samefile(copied / r["file"], src / r["source"]) for r in rows)
    assert all(hashlib.sha256((copied / r["file"]).read_bytes()).hexdigest() == r["sha256"] for r in rows)
    assert tree_fingerprint(src) == before  # nothing in the source changed, byte for byte


def test_split_resplits_a_train_val_tree_and_refuses_to_overwrite(tmp_path, capsys):
    from ms_impl import datatools

    src = tmp_path / "tree"
    seed = make_class_folders(src / "train", {"cat": 8, "dog": 8})
    make_class_folders(src / "val", {"cat": 2, "dog": 2}, first_seed=seed)  # names cat_00.png... again, other photos
    dst = tmp_path / "resplit"
    assert datatools.main(["split", str(src), str(dst), "--val", "0.25"]) == 0
    rows = read_manifest(dst)
    assert len(rows) == 20 and len({r["file"] for r in rows}) == 20
    assert len(os.listdir(dst / "val" / "cat")) + len(os.listdir(dst / "train" / "cat")) == 10
    capsys.readouterr()

    marker = dst / "train" / "cat" / "keep.txt"
    marker.write_text("mine")
    assert datatools.main(["split", str(src), str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err and marker.exists()
    assert datatools.main(["split", str(src), str(dst), "--force"]) == 0
    assert not marker.exists() and len(read_manifest(dst)) == 20
    moved = list(tmp_path.glob("resplit.old-*"))  # the earlier split, kept whole with what the user added
    assert len(moved) == 1 and (moved[0] / "train" / "cat" / "keep.txt").read_text() == "mine"
    for bad in (["split", str(src), str(src / "train" / "out")],  # inside SRC
                ["split", str(src), str(tmp_path / "x"), "--val", "1.5"],
                ["split", str(tmp_path / "missing"), str(tmp_path / "y")]):
        assert datatools.main(bad) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("error: ")
    assert not (src / "train" / "out").exists() and not (tmp_path / "x").exists()


def test_check_finds_leakage_and_label_conflicts(tmp_path, capsys):
    from ms_impl import datatools

    root = tmp_path / "data"
    seed = make_class_folders(root / "train", {"cat": 4, "dog": 4})
    make_class_folders(root / "val", {"cat": 2, "dog": 2}, first_seed=seed)
    assert datatools.main(["check", str(root), "--json", str(tmp_path / "clean.json")]) == 0
    clean = json.loads((tmp_path / "clean.json").read_text())
    assert clean["counts"]["groups"] == 0 and clean["balance"] == {"train": {"cat": 4, "dog": 4}, "val": {"cat": 2, "dog": 2}}
    assert "result: no train/val leakage" in capsys.readouterr().out

    # leakage: a resized copy of a training photo in val; a within-class exact duplicate is reported but not an error
    altered_copies(Image.open(root / "train" / "cat" / "cat_00.png").convert("RGB"))["resized"].save(root / "val" / "cat" / "leak.png")
    (root / "train" / "dog" / "dup.png").write_bytes((root / "train" / "dog" / "dog_00.png").read_bytes())
    assert datatools.main(["check", str(root), "--json", str(tmp_path / "leak.json")]) == 1
    found = json.loads((tmp_path / "leak.json").read_text())
    assert found["counts"]["leakage"] == 1 and found["counts"]["label_conflicts"] == 0
    assert found["counts"]["within_class"] == 1 and found["exact_duplicates"] == [["train/dog/dog_00.png", "train/dog/dup.png"]]
    leak = [g for g in found["groups"] if g["kind"] == "train/val leakage"][0]
    assert sorted(leak["files"]) == ["train/cat/cat_00.png", "val/cat/leak.png"]
    assert "result: 1 leakage group(s) (exit 1)" in capsys.readouterr().out

    # a label conflict in a folder-per-class layout: the same photo re-encoded under another class
    flat = tmp_path / "flat"
    make_class_folders(flat, {"cat": 3, "dog": 3})
    altered_copies(Image.open(flat / "cat" / "cat_01.png").convert("RGB"))["jpeg60"].save(flat / "dog" / "mislabelled.jpg")
    assert datatools.main(["check", str(flat)]) == 1
    out = capsys.readouterr().out
    assert "[label conflict] group 1" in out and "dog/mislabelled.jpg" in out

    # --json never overwrites without --force
    assert datatools.main(["check", str(flat), "--json", str(tmp_path / "clean.json")]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_check_exit_codes_from_the_command_line(tmp_path, python_exe, repo_root, cli_env):
    root = tmp_path / "data"
    make_class_folders(root / "train", {"cat": 3, "dog": 3})
    make_class_folders(root / "val", {"cat": 1, "dog": 1}, first_seed=50)
    assert run(python_exe, repo_root, cli_env, "check", root).returncode == 0
    (root / "val" / "dog" / "leak.png").write_bytes((root / "train" / "cat" / "cat_00.png").read_bytes())
    proc = run(python_exe, repo_root, cli_env, "check", root)
    assert proc.returncode == 1 and "label conflict + train/val leakage" in proc.stdout
    for bad in ((tmp_path / "missing",), (root, "--threshold", "99")):
        proc = run(python_exe, repo_root, cli_env, "check", *bad)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1


def test_report_draws_duplicate_groups(tmp_path, capsys):
    from ms_impl import datatools

    root = tmp_path / "data"
    make_class_folders(root, {"cat": 3, "dog": 3})
    assert datatools.main(["report", str(root), "--output", str(tmp_path / "plain")]) == 0
    altered_copies(Image.open(root / "cat" / "cat_00.png").convert("RGB"))["cropped"].save(root / "cat" / "crop.png")
    assert datatools.main(["report", str(root), "--output", str(tmp_path / "dups")]) == 0
    text = (tmp_path / "dups" / "report.txt").read_text()
    assert "duplicate groups (exact or perceptual distance <= 8): 1" in text and "cat/crop.png" in text
    with Image.open(tmp_path / "plain" / "report.png") as plain, Image.open(tmp_path / "dups" / "report.png") as dups:
        assert dups.size[0] == plain.size[0] and dups.size[1] > plain.size[1] + 100  # one row of thumbnails
