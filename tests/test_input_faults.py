"""Nothing lost, bad input in one line: one test per class of fault (see test_faults.py for the earlier classes).

- `datatools split --force` replaces an earlier split only, and moves it aside;
- special files (FIFO, socket) in a folder a tool walks are skipped unopened, one warning each;
- over-long paths to any path option: one `error:` line, exit 2;
- every option of `python -m parity check|diff|bench` is range-checked: one line, exit 2;
- `datatools check` on a folder without a readable photo: exit 2, one line;
- a resumed run's config.yaml does not keep `resume: auto`.

Each asserts the exit status, the single `error:` line naming the file or option, no traceback, and that
nothing the user had was removed.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_TRAIN, one_error_line, snapshot, write_class_csv, write_dataset, write_image

LONG = "/tmp/" + "x" * 10_000  # ENAMETOOLONG wherever the system first sees it


def photo_folders(root: Path, per_class: int = 4) -> Path:
    """root/<class>/*.jpg, two classes of distinct colours."""
    for label, colour in enumerate(((200, 30, 30), (30, 40, 200))):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            write_image(str(folder / f"{i}.jpg"), colour, seed=100 * label + i)
    return root


# ---------------------------------------------------------------- datatools split --force


def test_split_force_refuses_a_folder_it_did_not_write_and_moves_an_earlier_split_aside(tmp_path, capsys):
    from ms_impl import datatools

    photos = photo_folders(tmp_path / "photos")
    mine = tmp_path / "d"
    mine.mkdir()
    (mine / "thesis.txt").write_text("four years of work")
    (mine / "manifest.csv").write_text("not,our,header\n")  # a manifest.csv, but not one this tool wrote
    before = snapshot(tmp_path)
    assert datatools.main(["split", str(photos), str(mine), "--force"]) == 2
    one_error_line(capsys.readouterr().err, str(mine), "not a split written by this tool")
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["d", "photos"]

    split = tmp_path / "split"
    assert datatools.main(["split", str(photos), str(split), "--val", "0.25"]) == 0
    (split / "train" / "class0" / "notes.txt").write_text("added later")
    earlier = snapshot(split)
    capsys.readouterr()
    assert datatools.main(["split", str(photos), str(split), "--val", "0.5", "--force"]) == 0
    out = capsys.readouterr().out
    moved = list(tmp_path.glob("split.old-*"))
    assert len(moved) == 1 and snapshot(moved[0]) == earlier  # kept whole, byte for byte, with what was added
    assert f"moved to {moved[0]}" in out
    assert (split / "manifest.csv").is_file() and not (split / "train" / "class0" / "notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_split_force_fills_an_empty_folder_without_moving_it_aside(tmp_path, capsys):
    from ms_impl import datatools

    photos = photo_folders(tmp_path / "photos")
    (tmp_path / "empty").mkdir()
    assert datatools.main(["split", str(photos), str(tmp_path / "empty"), "--force"]) == 0
    assert (tmp_path / "empty" / "manifest.csv").is_file() and "moved to" not in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "photos"]


@pytest.mark.parametrize("fault", ["disk full", "Ctrl+C"])
def test_split_stopped_midway_leaves_the_destination_as_it_was(tmp_path, capsys, monkeypatch, fault):
    from ms_impl import datatools

    photos = photo_folders(tmp_path / "photos")
    earlier = tmp_path / "earlier"
    assert datatools.main(["split", str(photos), str(earlier)]) == 0
    before, names = snapshot(tmp_path), sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    place, placed = datatools._place, []

    def place_then_fail(source, target, copy):  # the third file does not fit (or the user presses Ctrl+C)
        if len(placed) == 2:
            raise OSError(28, "No space left on device") if fault == "disk full" else KeyboardInterrupt()
        placed.append(target)
        return place(source, target, copy)

    monkeypatch.setattr(datatools, "_place", place_then_fail)
    for dst, extra in ((earlier, ["--force"]), (tmp_path / "new", [])):
        placed.clear()
        code = datatools.main(["split", str(photos), str(dst), *extra])
        if fault == "disk full":
            assert code == 2
            one_error_line(capsys.readouterr().err, str(dst), "cannot write", "no space left on device")
        else:
            assert code == 130 and "interrupted (SIGINT)" in capsys.readouterr().err
        # the earlier split in place and whole, nothing moved aside, no new folder, no staging folder
        assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == names


# ---------------------------------------------------------------- special files in walked folders


def plant_special_files(folder: Path) -> list:
    """A FIFO and a socket with image names in `folder`; opening the FIFO for reading blocks forever."""
    fifo, sock_path = folder / "pipe.jpg", folder / "socket.png"
    os.mkfifo(fifo)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    listener.close()  # the socket file stays
    return [fifo, sock_path]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_every_tool_skips_fifos_and_sockets_unopened_with_one_warning_each(tmp_path, cli_env, repo_root):
    data = tmp_path / "data"
    write_dataset(str(data), per_class=6)
    classes = write_class_csv(str(tmp_path / "classes.csv"))
    special = plant_special_files(data / "train" / "Red Thing") + plant_special_files(data / "val" / "Blue Thing")
    val_special = special[2:]
    out = tmp_path / "run"

    def run(args, timeout=300):
        # a tool that opened a FIFO would block here until the timeout
        result = subprocess.run([sys.executable, *map(str, args)], cwd=repo_root, env=cli_env, capture_output=True,
                                text=True, timeout=timeout)
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        return result

    def warned_once_each(stderr: str, paths) -> None:
        for path in paths:
            lines = [line for line in stderr.splitlines() if str(path) in line]
            assert len(lines) == 1 and "not a regular file" in lines[0], (path, stderr[-3000:])

    trained = run(["ms_impl/train.py", *TINY_TRAIN, "--data_path", data, "--classes_file", classes, "--image_size", "32",
                   "--epochs", "1", "--output_dir", out, "--mode", "pynative"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    warned_once_each(trained.stderr, special)
    checkpoint = out / "checkpoints" / "mobilenetv2-last.ckpt"

    evaluated = run(["ms_impl/eval.py", "--checkpoint", checkpoint, "--data_path", data, "--classes_file", classes,
                     "--image_size", "32", "--width_mult", "0.35", "--mode", "pynative"])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    warned_once_each(evaluated.stderr, val_special)

    predicted = run(["ms_impl/predict.py", "--checkpoint", checkpoint, "--config", classes, "--image_size", "32", data])
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    warned_once_each(predicted.stderr, special)
    assert predicted.stdout.count(": ") >= 36  # every photo (3 classes x 6 x 2 splits) predicted
    named = run(["ms_impl/predict.py", "--checkpoint", checkpoint, "--config", classes, special[0]])
    assert named.returncode == 2 and "a FIFO, not a regular file" in named.stderr

    checked = run(["-m", "ms_impl.datatools", "check", data])
    assert checked.returncode in (0, 1), checked.stderr[-3000:]
    warned_once_each(checked.stderr, special)
    assert "36 files" in checked.stdout
    assert all(path.exists() for path in special)


# ---------------------------------------------------------------- over-long paths


def exit_status(main, argv) -> int:
    """A tool's exit status, also where its argument parser exits (SystemExit) instead of returning."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def long_path_cases(tmp_path: Path, checkpoint: Path):
    """(tool's main, argv, the option the error line names)."""
    from ms_impl import datatools, eval as eval_tool, export, predict
    from ms_impl.train import main as train_main
    from parity.harness import convert_cli, diff

    data = photo_folders(tmp_path / "photos")
    train = TINY_TRAIN + ["--synthetic_cache_dir", str(tmp_path / "synthetic"), "--output_dir", str(tmp_path / "run")]
    return [
        (datatools.main, ["check", LONG], "data_dir"),
        (datatools.main, ["check", str(data), "--json", LONG], "--json"),
        (datatools.main, ["split", LONG, str(tmp_path / "d")], "src"),
        (datatools.main, ["split", str(data), LONG], "dst"),
        (datatools.main, ["report", str(data), "--output", LONG], "--output"),
        (datatools.main, ["stats", LONG], "data_dir"),
        (train_main, train + ["--data_path", LONG], "--data-path"),  # named as --help shows it
        (train_main, train + ["--output_dir", LONG], "--output-dir"),
        (train_main, train + ["--resume", LONG], "--resume"),
        (train_main, train + ["--pretrained", LONG], "--pretrained"),
        (train_main, train + ["--config", LONG], "--config"),
        (train_main, train + ["--output_dir", str(tmp_path / ("y" * 300))], "--output-dir"),  # one name too long
        (eval_tool.main, ["--checkpoint", LONG], "--checkpoint"),
        (eval_tool.main, ["--checkpoint", str(checkpoint), "--report_dir", LONG], "--report-dir"),
        (predict.main, ["--checkpoint", LONG, str(data)], "--checkpoint"),
        (export.main, ["--checkpoint", str(checkpoint), "--format", "ONNX", "--output", LONG + ".onnx"], "--output"),
        (convert_cli.main, [LONG, str(tmp_path / "out.ckpt")], LONG[:40]),
        (convert_cli.main, [str(checkpoint), LONG + ".ckpt"], LONG[:40]),
        (diff.main, [LONG, str(checkpoint)], "reference"),
    ]


def test_overlong_paths_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    checkpoint = tmp_path / "net.ckpt"
    checkpoint.write_bytes(b"not read: the other option fails first")
    monkeypatch.chdir(tmp_path)  # nothing may be dropped into the current folder either
    cases = long_path_cases(tmp_path, checkpoint)
    before = snapshot(tmp_path)
    for main, argv, option in cases:
        assert exit_status(main, argv) == 2, (option, capsys.readouterr().err[-2000:])
        line = one_error_line(capsys.readouterr().err, option)
        assert "too long" in line.lower() and len(line) < 600, line  # the path itself is shortened in the line
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- parity check|diff|bench options


@pytest.mark.parametrize("tool, argv, option", [
    ("check", ["--seed", "-5"], "--seed"),
    ("check", ["--seed", "x"], "--seed"),
    ("check", ["--width", "nan"], "--width"),
    ("check", ["--width", "0"], "--width"),
    ("check", ["--image-size", "8"], "--image-size"),
    ("check", ["--batch", "0"], "--batch"),
    ("check", ["--steps", "-1"], "--steps"),
    ("check", ["--num-classes", "0"], "--num-classes"),
    ("check", ["--mode", "eager"], "--mode"),
    ("diff", ["a.ckpt", "b.ckpt", "--seed", "-5"], "--seed"),
    ("diff", ["a.ckpt", "b.ckpt", "--atol", "nan"], "--atol"),
    ("diff", ["a.ckpt", "b.ckpt", "--rtol", "-1"], "--rtol"),
    ("diff", ["a.ckpt", "b.ckpt", "--batch", "0"], "--batch"),
    ("diff", ["a.ckpt", "b.ckpt", "--image-size", "100000"], "--image-size"),
    ("bench", ["--threads", "-1"], "--threads"),
    ("bench", ["--width", "inf"], "--width"),
    ("bench", ["--num-classes", "0"], "--num-classes"),
    ("bench", ["--warmup", "-1"], "--warmup"),
    ("bench", ["--steps", "0"], "--steps"),
    ("bench", ["--data-path", "/no/such/folder"], "--data-path"),
])
def test_parity_options_are_range_checked_in_one_line(tool, argv, option, tmp_path, capsys, monkeypatch):
    from parity.__main__ import main as parity_main

    monkeypatch.chdir(tmp_path)
    assert parity_main([tool, *argv]) == 2
    captured = capsys.readouterr()
    one_error_line(captured.err, option)
    assert captured.out == "" and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- datatools check without a readable photo


@pytest.mark.parametrize("command", [["check"], ["report", "--output", "REPORT"], ["split", "DST"]])
def test_datatools_refuses_a_folder_without_a_readable_photo(command, tmp_path, capsys):
    from ms_impl import datatools

    root = tmp_path / "notes"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "readme.txt").write_text("not a photo")
        (root / name / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0 no image data")
    before = snapshot(tmp_path)
    argv = [command[0], str(root)] + [str(tmp_path / part) if part.isupper() else part for part in command[1:]]
    if command[0] == "check":
        argv += ["--json", str(tmp_path / "findings.json")]
    assert datatools.main(argv) == 2
    captured = capsys.readouterr()
    one_error_line(captured.err, str(root), "no readable photo")
    assert "no leakage" not in captured.out
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


# ---------------------------------------------------------------- a resumed run's saved config


@pytest.mark.slow
def test_a_resumed_runs_config_does_not_resume_by_itself(tmp_path, capsys):
    from ms_impl.train import main as train_main

    out = tmp_path / "run"
    args = TINY_TRAIN + ["--synthetic_cache_dir", str(tmp_path / "synthetic"), "--output_dir", str(out), "--epochs", "1",
                         "--mode", "pynative"]
    assert train_main(args) == 0, capsys.readouterr().err[-3000:]
    assert train_main(args + ["--resume", "auto", "--force", "true"]) == 0, capsys.readouterr().err[-3000:]
    saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert saved["resume"] == "" and saved["force"] is False  # how it was started is not how it trains
    capsys.readouterr()
    before = snapshot(out)
    assert train_main(["--config", str(out / "config.yaml")]) == 2
    one_error_line(capsys.readouterr().err, str(out), "already holds a run", "--resume auto")
    assert snapshot(out) == before
    assert train_main(["--config", str(out / "config.yaml"), "--resume", "auto"]) == 0  # resumes when asked to
