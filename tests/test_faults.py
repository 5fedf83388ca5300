"""Nothing lost under faults (issue 14): one test (at least) per failure class.

Every case asserts the exit status, the single `error:` line naming the file
or option, that no traceback was printed, and that nothing the user had was
removed or left half-written. Read-only and full file systems are small tmpfs
mounts when the tests run as root (root ignores permission bits), a folder
made read-only otherwise; a full file system needs root (skipped otherwise).
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from parity.core.files import WriteError, atomic_write_bytes
from tests.helpers import no_temporaries, one_error_line, snapshot

# PyNative: these tests are about files, locks and signals, not the compiled step (graph mode is
# tested in test_train_cli.py); a tiny run starts in half the time without graph compilation.
TINY = ["--device", "CPU", "--width-mult", "0.35", "--synthetic-image-size", "32", "--batch-size", "16",
        "--synthetic-train-per-class", "2", "--synthetic-val-per-class", "1", "--num-workers", "2", "--mode", "pynative"]


# ---------------------------------------------------------------- helpers


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
    return result.returncode == 0


def _unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture()
def readonly_dir(tmp_path):
    """An empty folder nothing can be written into (a read-only tmpfs as root, mode 0555 otherwise)."""
    folder = tmp_path / "readonly"
    if os.geteuid() == 0:
        if not _mount_tmpfs(folder, "size=1m") or subprocess.run(
                ["mount", "-o", "remount,ro", str(folder)], capture_output=True).returncode != 0:
            _unmount(folder)
            pytest.skip("running as root without permission to mount a read-only tmpfs: no read-only folder possible")
        yield folder
        _unmount(folder)
    else:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.fixture()
def small_fs(tmp_path):
    """A 1.5 MB file system (tmpfs): writing more than that fails with ENOSPC."""
    folder = tmp_path / "small"
    if os.geteuid() != 0 or not _mount_tmpfs(folder, "size=1536k"):
        pytest.skip("a full file system needs a small tmpfs, which only root can mount here")
    yield folder
    _unmount(folder)


@pytest.fixture(scope="module")
def torch_checkpoint(tmp_path_factory) -> Path:
    """A 0.35x, 26-class MobileNetV2 in torchvision layout (random weights)."""
    import torch

    from pt_impl.mobilenetv2 import MobileNetV2

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "net.pth"
    torch.save(MobileNetV2(26, 0.35).state_dict(), path)
    return path


def nan_checkpoint(source: Path, target: Path) -> str:
    """`source` with a NaN in one tensor, written to `target` (.pth); returns the tensor's name."""
    import torch

    state = torch.load(source, weights_only=True)
    name = "features.3.conv.1.0.weight"
    state[name][0, 0, 0, 0] = float("nan")
    torch.save(state, target)
    return name


def synthetic_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.getbasetemp() / "synthetic-faults")


@pytest.fixture()
def train(tmp_path_factory, capsys):
    """The trainer in this process: (exit status, stderr)."""
    from ms_impl.train import main as train_main

    cache = synthetic_cache(tmp_path_factory)

    def run(*args: str):
        code = train_main(TINY + ["--synthetic-cache-dir", cache, *args])
        return code, capsys.readouterr().err

    return run


def fake_run(out: Path) -> Dict[str, str]:
    """A folder holding a previous run's files; returns its snapshot."""
    (out / "checkpoints").mkdir(parents=True)
    (out / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n")
    (out / "summary.json").write_text('{"final": {"val_top1": 0.9}}\n')
    (out / "checkpoints" / "mobilenetv2-last.ckpt").write_bytes(os.urandom(4096))
    (out / "checkpoints" / "mobilenetv2-1_3.ckpt").write_bytes(os.urandom(4096))
    return snapshot(out)


# ---------------------------------------------------------------- 1. --force never destroys the old run


def test_force_with_a_bad_input_leaves_the_old_run_untouched(tmp_path, train):
    out = tmp_path / "run"
    before = fake_run(out)
    code, err = train("--output-dir", str(out), "--force", "true", "--data-path", str(tmp_path / "typo"))
    assert code == 2
    one_error_line(err, "typo", "--data-path not found")
    assert snapshot(out) == before
    assert not list(tmp_path.glob("run.old-*"))


@pytest.mark.slow
def test_force_moves_the_old_run_aside_and_starts_over(tmp_path, train):
    out = tmp_path / "run"
    before = fake_run(out)
    code, err = train("--output-dir", str(out), "--force", "true", "--epochs", "1")
    assert code == 0, err
    moved = list(tmp_path.glob("run.old-*"))
    assert len(moved) == 1 and snapshot(moved[0]) == before  # every old file kept, byte for byte
    assert "was moved to" in err and str(moved[0]) in err
    assert len((out / "metrics.csv").read_text().splitlines()) == 2 and (out / "checkpoints" / "mobilenetv2-last.ckpt").is_file()


# ---------------------------------------------------------------- 2. resuming (a crash at each checkpoint write: test_checkpoint_set.py)

@pytest.mark.slow
def test_resume_with_other_training_settings_is_refused_and_the_run_kept(tmp_path, train):
    """A resumed run continues the same trajectory: an option that shapes it (the LR, the augmentation, mixing)
    differing from the checkpoint's is refused naming both values, before anything changes; options that only say
    where the run executes or how it is finally evaluated may change."""
    out = tmp_path / "run"
    code, err = train("--output-dir", str(out), "--epochs", "2", "--lr-max", "0.1", "--mixup-alpha", "0.2")
    assert code == 0, err
    for name in ("mobilenetv2-2_3.ckpt", "mobilenetv2-last.ckpt", "mobilenetv2-best.ckpt"):
        (out / "checkpoints" / name).unlink()  # epoch 1 of 2 is the newest checkpoint
    epoch1 = out / "checkpoints" / "mobilenetv2-1_3.ckpt"
    before = snapshot(out)
    for changed, needle in ((["--resume", "auto", "--lr-max", "0.05"], "lr_max 0.1 in the checkpoint vs 0.05 now"),
                            (["--resume", "auto", "--mixup-alpha", "0"], "mixup_alpha 0.2 in the checkpoint vs 0.0 now"),
                            (["--resume", str(epoch1), "--crop-scale-min", "0.5"],
                             "crop_scale_min 0.08 in the checkpoint vs 0.5 now")):
        code, err = train("--output-dir", str(out), "--epochs", "2", "--lr-max", "0.1", "--mixup-alpha", "0.2", *changed)
        assert code == 2, err
        # the line says how to resume: the run's own config and the same --resume
        how = f"--config {out / 'config.yaml'} --resume {changed[1]}"
        one_error_line(err, str(epoch1), "another run's settings", needle, how)
        assert snapshot(out) == before
    # the run's config.yaml, as the line says, resumes it; where it runs and the final evaluation may change
    code, err = train("--config", str(out / "config.yaml"), "--resume", "auto", "--tta", "flip", "--num-workers", "1")
    assert code == 0, err
    assert f"resumed from {epoch1}: epoch 1, step 0" in err
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


# ---------------------------------------------------------------- 3. one trainer per run folder

HOLD_LOCK = """
import sys, time
from ms_impl.trainer.run_folder import RunLock
lock = RunLock(sys.argv[1]).acquire()  # held while this object lives
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_second_trainer_on_the_same_folder_is_refused_naming_the_holder(tmp_path, train, cli_env, repo_root):
    import socket

    from ms_impl.trainer.run_folder import RunLock

    out = tmp_path / "run"
    before = fake_run(out)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], cwd=repo_root, env=cli_env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = train("--output-dir", str(out), "--resume", "auto")
        assert code == 2
        one_error_line(err, str(out), "in use by another training run", f"pid {holder.pid} on host {socket.gethostname()}")
        assert snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale, taken over, and said so
    lock = RunLock(out).acquire()
    lock.release()
    assert snapshot(out) == before


# ---------------------------------------------------------------- 4. non-finite weights


def test_convert_refuses_nonfinite_weights_unless_allowed(torch_checkpoint, tmp_path, capsys):
    from parity.harness import convert_cli

    bad = tmp_path / "nan.pth"
    name = nan_checkpoint(torch_checkpoint, bad)
    dst = tmp_path / "out.ckpt"
    assert convert_cli.main([str(bad), str(dst)]) == 2
    one_error_line(capsys.readouterr().err, str(bad), name, "1 NaN")
    assert not dst.exists() and no_temporaries(tmp_path)
    assert convert_cli.main([str(bad), str(dst), "--allow-nonfinite"]) == 0
    assert dst.is_file()


def test_predict_and_pretrained_refuse_nonfinite_weights(torch_checkpoint, tmp_path, train, capsys):
    from ms_impl import predict
    from PIL import Image

    bad = tmp_path / "nan.pth"
    name = nan_checkpoint(torch_checkpoint, bad)
    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image)
    assert predict.main(["--checkpoint", str(bad), str(image)]) == 2
    one_error_line(capsys.readouterr().err, str(bad), name)

    out = tmp_path / "run"
    code, err = train("--output-dir", str(out), "--pretrained", str(bad))
    assert code == 2
    one_error_line(err, "--pretrained", str(bad), name)
    assert not out.exists()  # a setup error leaves no run folder behind


def test_nonfinite_parameter_names_the_first_bad_weight(ms_pynative):
    import mindspore as ms

    from ms_impl.mobilenetv2 import MobileNetV2
    from ms_impl.weights import nonfinite_parameter

    net = MobileNetV2(4, 0.35)
    assert nonfinite_parameter(net) is None
    param = dict((p.name, p) for p in net.get_parameters())["dense.bias"]
    values = param.asnumpy()
    values[1] = np.inf
    param.set_data(ms.Tensor(values))
    assert nonfinite_parameter(net) == "dense.bias (0 NaN, 1 Inf of 4 values)"


@pytest.mark.slow
def test_a_diverging_run_stops_naming_the_bad_weight_or_loss(tmp_path, train):
    out = tmp_path / "run"
    code, err = train("--output-dir", str(out), "--epochs", "3", "--lr-max", "1e6", "--warmup-epochs", "0")
    assert code == 1, err
    line = one_error_line(err, "training diverged")
    assert "not finite" in line or "loss is" in line
    for ckpt in (out / "checkpoints").glob("*.ckpt"):  # whatever was saved is finite
        from parity.core.converter import check_finite, read_checkpoint

        check_finite(read_checkpoint(ckpt))


# ---------------------------------------------------------------- 5. images PIL reads but MindSpore's Decode does not


def _image_zoo(folder: Path) -> Dict[str, Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    picture = Image.new("RGB", (36, 36), (30, 190, 40))
    files = {"webp_as_jpg": folder / "a.jpg", "gif": folder / "b.gif", "tiff": folder / "c.tif"}
    picture.save(files["webp_as_jpg"], format="WEBP")
    picture.save(files["gif"], format="GIF")
    picture.save(files["tiff"], format="TIFF")
    return files


def test_webp_and_gif_reach_the_pipeline_as_images_it_decodes(tmp_path, monkeypatch):
    import mindspore.dataset.vision as vision

    from ms_impl.trainer.images import native_format, pipeline_bytes

    monkeypatch.chdir(tmp_path)
    for kind, path in _image_zoo(tmp_path / "zoo").items():
        encoded = pipeline_bytes(path)
        assert native_format(encoded[:8].tobytes()), kind
        decoded = vision.Decode()(encoded)
        assert decoded.shape == (36, 36, 3) and abs(int(decoded[..., 1].mean()) - 190) <= 3, kind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo"]  # no ./unsupported_image.* dropped


@pytest.mark.slow
def test_training_and_predict_read_webp_and_gif_files_and_drop_nothing_in_the_cwd(tmp_path, tmp_path_factory,
                                                                                   train, monkeypatch, capsys):
    from ms_impl import predict
    from ms_impl.trainer.config import load_config
    from ms_impl.trainer.synthetic import ensure_synthetic_dataset

    names = [c.name for c in load_config([]).classes]
    data = tmp_path / "data"
    source = ensure_synthetic_dataset(names, 32, 2, 1, cache_dir=tmp_path_factory.getbasetemp() / "synthetic-faults")
    subprocess.run(["cp", "-r", str(source), str(data)], check=True)
    zoo = _image_zoo(data / "train" / "Seashell")
    _image_zoo(data / "val" / "Lighter")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "run"
    code, err = train("--output-dir", str(out), "--data-path", str(data), "--image-size", "32", "--epochs", "1")
    assert code == 0, err[-3000:]
    assert "Traceback" not in err and json.loads((out / "summary.json").read_text())["train_images"] == 52 + 3
    assert predict.main(["--checkpoint", str(out / "checkpoints" / "mobilenetv2-last.ckpt"), "--image-size", "32",
                         *map(str, zoo.values())]) == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]) == 3
    assert list(cwd.iterdir()) == []


def test_a_file_that_vanishes_or_breaks_mid_run_is_skipped_with_a_warning(tmp_path, caplog):
    from types import SimpleNamespace

    from ms_impl.trainer import dataset
    from ms_impl.trainer.config import load_config
    from ms_impl.trainer.synthetic import ensure_synthetic_dataset

    names = [c.name for c in load_config([]).classes][:2]
    data = ensure_synthetic_dataset(names, 32, 3, 1, cache_dir=tmp_path)
    images = dataset.scan_split(data, "train", names)
    images.files[0].unlink()  # vanished
    images.files[4].write_bytes(b"not an image any more")  # rewritten
    cfg = SimpleNamespace(seed=0, crop_scale_min=0.5, color_jitter=0.0, hflip_prob=0.5, train_whole_prob=0.5, train_augment=True,
                          num_workers=1, batch_size=2)
    batches = list(dataset.train_dataset(images, cfg, 32, epoch=0).create_tuple_iterator(output_numpy=True, num_epochs=1))
    assert len(batches) == 3 and all(b[0].shape == (2, 3, 32, 32) for b in batches)
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert str(images.files[0]) in warned and str(images.files[4]) in warned


# ---------------------------------------------------------------- 6. one line instead of a traceback


@pytest.mark.slow
def test_unwritable_destinations_are_one_line(torch_checkpoint, readonly_dir, tmp_path, capsys):
    from ms_impl import datatools
    from parity.harness import convert_cli

    assert convert_cli.main([str(torch_checkpoint), str(readonly_dir / "x.ckpt")]) == 2
    one_error_line(capsys.readouterr().err, str(readonly_dir / "x.ckpt"))
    folder = tmp_path / "a_folder.ckpt"
    folder.mkdir()
    assert convert_cli.main([str(torch_checkpoint), str(folder)]) == 2
    one_error_line(capsys.readouterr().err, str(folder), "is a folder")

    data = tmp_path / "data" / "Seashell"
    data.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (20, 20)).save(data / "a.png")
    assert datatools.main(["report", str(tmp_path / "data"), "--output", str(readonly_dir / "report")]) == 2
    one_error_line(capsys.readouterr().err, str(readonly_dir / "report"))
    assert list(readonly_dir.iterdir()) == []


@pytest.mark.slow
def test_eval_and_export_refuse_unwritable_outputs_before_working(torch_checkpoint, readonly_dir, tmp_path, capsys):
    from ms_impl import eval as eval_cli
    from ms_impl import export

    assert eval_cli.main(["--checkpoint", str(tmp_path / "none.ckpt"), "--report-dir", str(readonly_dir / "r")]) == 2
    one_error_line(capsys.readouterr().err, str(readonly_dir / "r"))
    assert export.main(["--checkpoint", str(torch_checkpoint), "--format", "MINDIR",
                        "--output", str(readonly_dir / "net.mindir")]) == 2
    one_error_line(capsys.readouterr().err, str(readonly_dir / "net.mindir"))
    assert export.main(["--checkpoint", str(torch_checkpoint), "--format", "MINDIR", "--output", str(tmp_path)]) == 2
    one_error_line(capsys.readouterr().err, str(tmp_path), "is a folder")
    assert list(readonly_dir.iterdir()) == []


def test_decompression_bomb_and_unreadable_folder_in_datatools(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from ms_impl import datatools

    data = tmp_path / "data"
    (data / "Seashell").mkdir(parents=True)
    Image.new("RGB", (20, 20), (1, 2, 3)).save(data / "Seashell" / "ok.png")
    Image.new("1", (20000, 20000)).save(data / "Seashell" / "bomb.png")  # 400 Mpx: above PIL's bomb limit
    assert datatools.main(["stats", str(data), "--json"]) == 0
    captured = capsys.readouterr()
    stats = json.loads(captured.out)
    assert "Traceback" not in captured.err and stats["images"] == 1
    assert [Path(item["file"]).name for item in stats["skipped"]] == ["bomb.png"]

    locked = data / "Lighter"
    locked.mkdir()
    real_listdir = os.listdir

    def listdir(path="."):  # an unreadable folder, whatever user the tests run as
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    assert datatools.main(["stats", str(data)]) == 2
    one_error_line(capsys.readouterr().err, str(locked), "Permission denied")


def test_trainer_setup_errors_are_one_line(tmp_path, train, monkeypatch):
    from ms_impl.trainer import run as run_module

    out = tmp_path / "run"
    cases = [
        (["--seed", "-1"], ["--seed", "-1"]),
        (["--epochs", "1000000000000"], ["--epochs"]),
        (["--output-dir", ""], ["--output-dir"]),
    ]
    for args, needles in cases:
        code, err = train("--output-dir", str(out), *args)
        assert code == 2, (args, err)
        one_error_line(err, *needles)
    # a --config file lacking keys is read over the base file: it needs only the keys it changes
    from ms_impl.trainer.run import build_config

    config = tmp_path / "partial.yaml"
    config.write_text("device: CPU\nepochs: 3\n")
    partial = build_config(["--config", str(config), "--output-dir", str(out)])
    assert partial.epochs == 3 and partial.classes_file and len(partial.classes) == 26
    # and a key it misspells is one line naming the file and the key
    config.write_text("device: CPU\nepoch: 3\n")
    code, err = train("--output-dir", str(out), "--config", str(config))
    assert code == 2
    one_error_line(err, str(config), "epoch")

    # an unreadable class folder
    from ms_impl.trainer.config import load_config
    from ms_impl.trainer.synthetic import ensure_synthetic_dataset

    ensure_synthetic_dataset([c.name for c in load_config([]).classes], 32, 1, 1, cache_dir=tmp_path / "s")
    source = next((tmp_path / "s").iterdir())
    locked = source / "train" / "Broom"
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    code, err = train("--output-dir", str(out), "--data-path", str(source), "--image-size", "32")
    monkeypatch.undo()
    assert code == 2
    one_error_line(err, str(locked), "Permission denied")

    # Ctrl+C during setup: 130, one line, no run folder left behind
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "build_network", interrupted)  # build_run's second step
    code, err = train("--output-dir", str(out))
    assert code == 130
    one_error_line(err, "interrupted (SIGINT) during setup")
    assert not out.exists()


def sigint_blocked(pid: int) -> bool:
    """The process's main thread blocks SIGINT: the trainer's Ctrl+C watcher is in place (Linux /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    blocked = next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:"))
    return bool(int(blocked, 16) & (1 << (signal.SIGINT - 1)))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the signal mask from /proc (Linux)")
@pytest.mark.parametrize("delay", [0.0, 2.5])
def test_ctrl_c_while_the_trainer_starts_is_one_line_and_exit_130(delay, tmp_path, cli_env, repo_root):
    """A real SIGINT early: during the trainer's imports (once inside `import mindspore`, whose half-imported
    state used to abort the interpreter's shutdown) or its setup. Wherever it lands before the first step:
    one line, 130, no traceback, no run folder. (Before the trainer's first line runs, Python itself has
    not handed Ctrl+C to anyone: the signal is sent once the watcher is in place, then `delay` later.)"""
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "ms_impl/train.py", *TINY, "--output-dir", str(out)], cwd=repo_root,
                               env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               # a terminal's Ctrl+C reaches a process whose SIGINT is not ignored (a background job's is)
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not sigint_blocked(process.pid) and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    if "interrupted by SIGINT: continue with --resume auto" in err:  # this machine was fast: training had begun
        assert process.returncode == 130 and "Traceback" not in err
        return
    assert process.returncode == 130, err[-3000:]
    line = one_error_line(err)
    assert any(where in line for where in ("while starting; nothing was read or written", "during setup", "before any step")), line
    assert not out.exists() or "before any step" in line


# ---------------------------------------------------------------- 7. full disk: one line, no partial file


def test_atomic_writes_remove_their_temporary_on_any_error(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    class Boom(Exception):
        pass

    from parity.core.files import atomic_path

    for error in (OSError(errno.ENOSPC, "No space left on device"), RuntimeError("write failed: No space left on device"),
                  Boom("writer bug")):
        with pytest.raises((WriteError, Boom)) as raised:
            with atomic_path(target) as temp:
                temp.write_bytes(b"half")
                raise error
        if not isinstance(error, Boom):
            assert str(raised.value) == f"{target}: cannot write (no space left on device)"
        assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def test_atomic_folder_replaces_only_an_empty_folder_unless_given_a_place_aside(tmp_path, monkeypatch):
    from parity.core.files import atomic_folder

    def build(path, text, **kwargs):
        with atomic_folder(path, **kwargs) as staging:
            (staging / "a.txt").write_text(text)

    target = tmp_path / "set"
    build(target, "first")  # new
    (tmp_path / "empty").mkdir()
    build(tmp_path / "empty", "filled")  # an empty folder is replaced
    build(target, "second")  # a folder with content is another process's copy: kept
    assert (target / "a.txt").read_text() == "first" and (tmp_path / "empty" / "a.txt").read_text() == "filled"
    build(target, "third", aside=tmp_path / "set.old")  # with a place aside: moved there
    assert (target / "a.txt").read_text() == "third" and (tmp_path / "set.old" / "a.txt").read_text() == "first"

    with pytest.raises(WriteError) as raised:
        with atomic_folder(target, aside=tmp_path / "set.old2") as staging:
            (staging / "a.txt").write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(raised.value) == f"{target}: cannot write (no space left on device)"
    rename = os.rename

    def refuse_the_new_folder(source, destination):  # the second rename fails: the earlier folder goes back
        if ".tmp-" in str(source):
            raise OSError(errno.EIO, "Input/output error")
        rename(source, destination)

    monkeypatch.setattr(os, "rename", refuse_the_new_folder)
    with pytest.raises(WriteError, match="input/output error"):
        build(target, "fourth", aside=tmp_path / "set.old2")
    assert (target / "a.txt").read_text() == "third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "set", "set.old"]  # no staging folder, no set.old2


@pytest.mark.slow
def test_convert_on_a_full_disk_is_one_line_and_leaves_nothing(torch_checkpoint, small_fs, cli_env, repo_root):
    atomic_write_bytes(small_fs / "filler", os.urandom(700 * 1024))  # the 1.7 MB checkpoint no longer fits
    dst = small_fs / "net.ckpt"
    result = subprocess.run([sys.executable, "-m", "parity.convert", str(torch_checkpoint), str(dst)], cwd=repo_root,
                            env=cli_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    one_error_line(result.stderr, str(dst), "no space left on device")
    assert sorted(p.name for p in small_fs.iterdir()) == ["filler"]


@pytest.mark.slow
def test_training_on_a_full_disk_is_one_line_and_leaves_no_partial_file(small_fs, tmp_path_factory, cli_env, repo_root):
    out = small_fs / "run"
    args = TINY + ["--synthetic-cache-dir", synthetic_cache(tmp_path_factory), "--output-dir", str(out), "--epochs", "2"]
    result = subprocess.run([sys.executable, "ms_impl/train.py", *args], cwd=repo_root, env=cli_env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    one_error_line(result.stderr, str(out), "no space left on device")
    assert no_temporaries(small_fs)


# ---------------------------------------------------------------- 8. surprising option values


def test_export_refuses_a_name_of_the_other_format(torch_checkpoint, tmp_path, capsys):
    from ms_impl import export

    output = tmp_path / "x.onnx"
    assert export.main(["--checkpoint", str(torch_checkpoint), "--format", "MINDIR", "--output", str(output)]) == 2
    one_error_line(capsys.readouterr().err, str(output), "--format ONNX")
    assert not output.exists()


def test_a_setup_error_leaves_no_empty_run_folder(tmp_path, train):
    out = tmp_path / "new" / "run"
    code, err = train("--output-dir", str(out), "--data-path", str(tmp_path / "typo"))
    assert code == 2
    one_error_line(err, "typo")
    assert not out.exists()


# ---------------------------------------------------------------- 9. half-precision checkpoints


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_checkpoints_convert_to_float32_or_keep_their_dtype(dtype, torch_checkpoint, tmp_path, capsys):
    import torch
    from safetensors import safe_open

    from parity.core.converter import read_checkpoint
    from parity.harness import convert_cli

    state = torch.load(torch_checkpoint, weights_only=True)
    half = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in state.items()}
    src = tmp_path / f"{dtype}.pth"
    torch.save(half, src)
    expected = {k: v.float().numpy() for k, v in half.items() if v.is_floating_point()}

    assert convert_cli.main([str(src), str(tmp_path / "fp32.ckpt")]) == 0, capsys.readouterr().err
    converted = read_checkpoint(tmp_path / "fp32.ckpt")
    assert not converted.dtypes and all(v.dtype == np.float32 for v in converted.tensors.values())

    assert convert_cli.main([str(src), str(tmp_path / "kept.safetensors"), "--to-layout", "torchvision",
                             "--keep-dtype"]) == 0, capsys.readouterr().err
    with safe_open(str(tmp_path / "kept.safetensors"), framework="pt") as handle:
        kinds = {str(handle.get_tensor(k).dtype) for k in handle.keys() if not k.endswith("num_batches_tracked")}
    assert kinds == {f"torch.{dtype}"}
    kept = read_checkpoint(tmp_path / "kept.safetensors")
    for name, value in expected.items():
        np.testing.assert_array_equal(kept.tensors[name].astype(np.float32), value, err_msg=name)
