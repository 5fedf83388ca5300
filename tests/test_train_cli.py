"""The trainer end to end, as a user runs it: learning, resume, signals, bad input, device errors, eval CLI.

Tiny runs: the embedded synthetic set at 32 px, width 0.35, batch 16. The
learning and resume runs use four of the classes (a classes file of their own),
whose images the generator draws with hues a quarter turn apart: trivially
separable, yet the from-scratch network needs ~50-80 steps before it separates them.
"""
from __future__ import annotations

import csv
import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ms_impl.train import main as train_main
from tests.helpers import TINY_TRAIN, checkpoint_weights, train_cli

TINY = TINY_TRAIN + ["--synthetic-train-per-class", "8", "--synthetic-val-per-class", "4"]


FOUR_CLASSES = """classes:
  - {index: 0, name: "Old Mirror", name_zh: "旧镜子", category_zh: "干垃圾", category: "Residual waste"}
  - {index: 1, name: "Plastic Bottle", name_zh: "塑料瓶", category_zh: "可回收物", category: "Recyclable"}
  - {index: 2, name: "Banana Peel", name_zh: "香蕉皮", category_zh: "湿垃圾", category: "Kitchen waste"}
  - {index: 3, name: "Paint bucket", name_zh: "油漆桶", category_zh: "有害垃圾", category: "Hazardous waste"}
"""
EPOCHS = 30
VAL_PER_CLASS = 16


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, synthetic_cache, cli_env, repo_root):
    """An uninterrupted 30-epoch, 240-step run: the reference for learning, run files and resume. Mixup and CutMix
    are on, so the resume test also shows that an interrupted run mixes its batches as this one did. An epoch
    costs well under a second here (the graph compilation dominates), so the run is long enough to learn for sure."""
    out = tmp_path_factory.mktemp("full")
    classes = out.parent / "four_classes.yaml"
    classes.write_text(FOUR_CLASSES, encoding="utf-8")
    args = TINY + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", str(out), "--epochs", str(EPOCHS),
                   "--lr-max", "0.005", "--synthetic-train-per-class", "32",
                   "--synthetic-val-per-class", str(VAL_PER_CLASS), "--classes-file", str(classes),
                   "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0",
                   "--crop-scale-min", "0.35", "--color-jitter", "0"]  # augmented, but mildly: every seed learns
    result = train_cli(args, cli_env)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, args, result


@pytest.mark.slow
def test_training_learns_and_writes_the_run_files(full_run):
    out, _, result = full_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"] == "synthetic" and "SYNTHETIC" in result.stderr
    # Learning, judged by margins that do not hang on a few images: from-scratch training is chaotic, so another
    # CPU's rounding (or another seed) gives another trajectory. The LR ends at 0 (cosine), so the last epoch is
    # settled. On 64 val images, seeds 1-7 ended at top-1 0.89-1.0 and val loss 0.38-0.53 of ln 4 (the loss of a
    # network that has learned nothing); with SSE4.1 kernels (ONEDNN_MAX_CPU_ISA), seeds 1 and 7: 0.98 and 0.88,
    # 0.38 and 0.50. A trainer that does not learn ends near chance and ln 4 (LR 1e-9: top-1 0.25, loss 1.03 ln 4;
    # training labels shuffled: 0.34, 1.00 ln 4).
    assert summary["val_images"] == summary["final"]["val_images_evaluated"] == 4 * VAL_PER_CLASS
    assert summary["final"]["val_top1"] >= 0.6  # chance is 1/4
    rows = list(csv.DictReader(open(out / "metrics.csv", encoding="utf-8")))
    assert float(rows[0]["val_loss"]) > 0.9 * math.log(4)  # the first epoch's network still guesses
    assert float(rows[-1]["val_loss"]) <= 0.75 * math.log(4), [r["val_loss"] for r in rows]
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("epoch,train_loss,val_loss,val_top1,val_top5") and len(metrics) == EPOCHS + 1
    lr = np.load(out / "lr_schedule.npy")
    assert lr.shape == (EPOCHS * summary["steps_per_epoch"],) and summary["steps_per_epoch"] == 8
    for name in ("confusion_matrix.png", "curves.png", "per_class.csv", "config.yaml", "train.log"):
        assert (out / name).stat().st_size > 0, name
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    steps = summary["steps_per_epoch"]
    # keep_checkpoint_max 3: the three newest epochs; last and best always
    assert ckpts == sorted([f"mobilenetv2-{e}_{steps}.ckpt" for e in range(EPOCHS - 2, EPOCHS + 1)]
                           + ["mobilenetv2-best.ckpt", "mobilenetv2-last.ckpt"])
    weights = checkpoint_weights(out / "checkpoints" / "mobilenetv2-last.ckpt")
    assert "features.0.features.0.weight" in weights and "dense.weight" in weights and "moments.dense.weight" in weights
    assert not any("dropout" in k or "keep_mask" in k for k in weights)  # trainer state stays out
    assert "Paint bucket" in (out / "per_class.txt").read_text()


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_resume_ends_with_the_same_weights(full_run, tmp_path, cli_env, repo_root):
    ref_out, ref_args, _ = full_run
    out = tmp_path / "interrupted"
    args = [a if a != str(ref_out) else str(out) for a in ref_args]
    process = subprocess.Popen([sys.executable, "ms_impl/train.py", *args], cwd=repo_root, env=cli_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    # interrupt in the middle of the run, once epoch 1 is on disk
    while not (out / "metrics.csv").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(2.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    # 130, not 143: MindSpore's own handlers would turn this SIGINT into a SIGTERM (parity/core/interrupts.py)
    assert process.returncode == 130, stderr[-3000:]
    assert "saved resumable checkpoint" in stderr and "interrupted by SIGINT: continue with --resume auto" in stderr
    assert len((out / "metrics.csv").read_text().splitlines()) < EPOCHS + 1  # it really stopped early

    resumed = train_cli(args + ["--resume", "auto"], cli_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"resumed from .*mobilenetv2-last\.ckpt: epoch \d+, step \d+", resumed.stderr)
    reference = checkpoint_weights(ref_out / "checkpoints" / "mobilenetv2-last.ckpt")
    final = checkpoint_weights(out / "checkpoints" / "mobilenetv2-last.ckpt")
    assert reference.keys() == final.keys()
    for name in reference:
        np.testing.assert_allclose(final[name], reference[name], rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_eval_cli_reports_the_checkpoint_accuracy(full_run, tmp_path, cli_env, repo_root):
    out, args, _ = full_run
    result = subprocess.run(
        [sys.executable, "ms_impl/eval.py", "--checkpoint", str(out / "checkpoints" / "mobilenetv2-last.ckpt"),
         "--report-dir", str(tmp_path / "report")] + args[args.index("--width-mult"):],
        cwd=repo_root, env=cli_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    evaluated = json.loads((tmp_path / "report" / "eval.json").read_text())
    assert evaluated["top1"] == pytest.approx(summary["final"]["val_top1"])
    assert "macro avg" in result.stderr and (tmp_path / "report" / "confusion_matrix.png").stat().st_size > 0
    # the garbage categories: the same figure as the run's final report, text and PNG
    assert evaluated["category_acc"] == pytest.approx(summary["final"]["val_category_acc"])
    assert (tmp_path / "report" / "category_confusion.txt").read_text() == (out / "category_confusion.txt").read_text()
    assert (tmp_path / "report" / "category_confusion.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("device", ["GPU", "Ascend"])
def test_absent_device_exits_2_before_any_data_work(device, tmp_path, cli_env):
    probe = subprocess.run([sys.executable, "-c", f"import mindspore as ms; ms.set_device('{device}'); "
                            "import numpy as np; (ms.Tensor(np.ones(1)) + 1).asnumpy()"],
                           env=cli_env, capture_output=True, text=True, timeout=120)
    if probe.returncode == 0:
        pytest.skip(f"this machine has a working {device}")
    result = train_cli(["--device", device, "--data-path", str(tmp_path / "no-such-data"),
                        "--output-dir", str(tmp_path / "out")], cli_env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: device {device} is not usable: "), result.stderr
    if "only supports one of the ['CPU']" in probe.stderr:  # a CPU-only MindSpore build: the way out is named
        assert lines[0].endswith(f"pass --device CPU (or install a MindSpore build for {device})"), lines[0]
    assert "no-such-data" not in result.stderr and not (tmp_path / "out").exists()


# ---- bad input, in-process: each fails before training starts


def _make_folder_dataset(root: Path, per_class: int = 2) -> Path:
    from ms_impl.trainer.config import load_config
    from ms_impl.trainer.synthetic import ensure_synthetic_dataset

    names = [c.name for c in load_config([]).classes]
    return ensure_synthetic_dataset(names, 32, per_class, 1, cache_dir=root)


def _run_in_process(args, capsys):
    code = train_main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", ["data_path", "train", "val", "class_folder", "empty_class", "batch", "output_dir"])
def test_bad_input_is_one_clear_error(case, tmp_path, capsys):
    data = _make_folder_dataset(tmp_path / "data")
    out = tmp_path / "out"
    args = TINY + ["--data-path", str(data), "--image-size", "32", "--output-dir", str(out)]
    if case == "data_path":
        args[args.index(str(data))] = str(tmp_path / "missing")
        expected = "missing: --data-path not found"
    elif case in ("train", "val"):
        (data / case).rename(tmp_path / "moved")
        expected = f"{data / case}: missing"
    elif case == "class_folder":
        (data / "val" / "Old Mirror").rename(tmp_path / "moved")
        expected = "missing class folder(s) 'Old Mirror'"
    elif case == "empty_class":
        for path in (data / "train" / "Eggshell").iterdir():
            path.unlink()
        expected = "Eggshell: class folder has no readable images"
    elif case == "batch":
        args += ["--batch-size", "64"]
        expected = "--batch-size 64 is larger than the training set (52 images"
    else:
        (tmp_path / "a_file").write_text("x")
        args[args.index(str(out))] = str(tmp_path / "a_file" / "out")
        expected = "output_dir is not writable"
    code, err = _run_in_process(args, capsys)
    assert code == 2
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and expected in error_lines[0], err


def test_existing_run_is_not_overwritten_without_force(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "metrics.csv").write_text("epoch\n1\n")
    code, err = _run_in_process(TINY + ["--synthetic-cache-dir", str(tmp_path / "c"), "--output-dir", str(out)], capsys)
    assert code == 2 and "already holds a run" in err
    assert (out / "metrics.csv").read_text() == "epoch\n1\n"


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    """One step per epoch; the LR heads for 1e30 after step 0: epoch 1 is saved, a later one diverges."""
    out = tmp_path / "out"
    args = TINY + ["--synthetic-cache-dir", str(tmp_path / "c"), "--output-dir", str(out), "--epochs", "3",
                   "--synthetic-train-per-class", "2", "--batch-size", "52",
                   "--warmup-epochs", "0", "--lr-max", "1e-6", "--lr-end", "1e30", "--mode", "pynative"]
    code, err = _run_in_process(args, capsys)
    assert code == 1, err
    assert re.search(r"error: training diverged: (val )?loss is (nan|inf)", err), err
    last = out / "checkpoints" / "mobilenetv2-last.ckpt"
    assert f"last good checkpoint kept: {last}" in err
    assert all(np.isfinite(v).all() for v in checkpoint_weights(last).values())
    import mindspore as ms

    saved_epoch = json.loads(ms.load_checkpoint(str(last))["train_state"])["epoch"]
    epochs_logged = len((out / "metrics.csv").read_text().splitlines()) - 1
    assert 1 <= saved_epoch == epochs_logged < 3  # stopped early; nothing after the last good epoch saved


@pytest.mark.slow
def test_in_process_runs_write_only_their_own_train_log(tmp_path, capsys, synthetic_cache):
    """Two runs in one process: the second must not write into the first's train.log."""
    logs = {}
    for name in ("first", "second"):
        out = tmp_path / name
        code, err = _run_in_process(TINY + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", str(out),
                                            "--epochs", "1", "--mode", "pynative", "--synthetic-train-per-class", "2",
                                            "--synthetic-val-per-class", "1"], capsys)
        assert code == 0, err
        logs[name] = (out / "train.log").read_text(encoding="utf-8")
        assert logs[name].count("data: SYNTHETIC") == 1
    assert (tmp_path / "first" / "train.log").read_text(encoding="utf-8") == logs["first"]
    assert str(tmp_path / "second") not in logs["first"]


@pytest.mark.slow
def test_saved_config_reproduces_the_run_config(tmp_path, capsys, synthetic_cache, monkeypatch):
    from ms_impl.trainer.run import build_config

    out = tmp_path / "run"
    args = TINY + ["--synthetic-cache-dir", synthetic_cache, "--output-dir", str(out), "--epochs", "1",
                   "--mode", "pynative", "--freeze-bn", "--dropout", "0.1", "--lr-max", "0.01",
                   "--synthetic-train-per-class", "2", "--synthetic-val-per-class", "1"]
    code, err = _run_in_process(args, capsys)
    assert code == 0, err
    saved = out / "config.yaml"
    monkeypatch.chdir(tmp_path)  # another working directory: the saved class file is absolute
    again = build_config(["--config", str(saved)])
    original = build_config(args)
    derived = ("config_path", "recipe_reason")  # the saved file names the recipe that ran, not "auto"
    assert {k: v for k, v in again.items() if k not in derived} == {k: v for k, v in original.items() if k not in derived}


def test_the_last_line_says_how_each_score_was_taken():
    from types import SimpleNamespace

    from easydict import EasyDict

    from ms_impl.trainer.loop import final_line

    result = SimpleNamespace(top1=0.954, category_acc=0.9846)
    state = SimpleNamespace(epoch=10, best_epoch=9, best_top1=0.95)
    finetune = final_line(EasyDict(tta="flip+whole", freeze_backbone=False), result, state, "runs/x")
    assert finetune == ("done: last epoch (10) with --tta flip+whole: val top-1 0.9540, category accuracy 0.9846; "
                        "mobilenetv2-best.ckpt: epoch 9, val top-1 0.9500 without TTA; run files in runs/x")
    frozen = final_line(EasyDict(tta="flip", freeze_backbone=True), result, state, "runs/x")
    assert "mobilenetv2-best.ckpt: epoch 9, val top-1 0.9500 with --tta flip;" in frozen
    scratch = final_line(EasyDict(tta="none", freeze_backbone=False), result, state, "runs/x")
    assert scratch.startswith("done: last epoch (10): val top-1 0.9540") and "TTA" not in scratch
