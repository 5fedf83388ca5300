"""Trainer data and schedule: class-index mapping, unreadable files, folder errors, synthetic set, LR, weight decay."""
from __future__ import annotations

import logging
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from ms_impl.trainer import dataset
from ms_impl.trainer.errors import UsageError
from ms_impl.trainer.synthetic import ensure_synthetic_dataset

CLASSES = ["Zebra Crossing", "apple", "Old Mirror"]  # index order != sorted folder order


def _write_image(path, colour, size=24):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def _make_split(root, split="train", per_class=2):
    for index, name in enumerate(CLASSES):
        for i in range(per_class):
            _write_image(root / split / name / f"img{i}.jpg", (80 * index, 10, 10))


def test_labels_follow_the_class_list_not_folder_order(tmp_path):
    _make_split(tmp_path)
    images = dataset.scan_split(tmp_path, "train", CLASSES)
    by_folder = {p.parent.name: int(label) for p, label in zip(images.files, images.labels)}
    assert by_folder == {"Zebra Crossing": 0, "apple": 1, "Old Mirror": 2}
    assert len(images) == 6


def test_unreadable_files_are_skipped_with_one_warning_each_and_counted(tmp_path, caplog):
    _make_split(tmp_path)
    good = (tmp_path / "train" / "apple" / "img0.jpg").read_bytes()
    truncated = tmp_path / "train" / "apple" / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    notes = tmp_path / "train" / "Old Mirror" / "notes.txt"
    notes.write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="ms_impl.trainer.dataset"):
        images = dataset.scan_split(tmp_path, "train", CLASSES)
    assert len(images) == 6
    assert {p for p, _ in images.skipped} == {truncated, notes}
    per_file = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(per_file) == 2
    assert any(str(truncated) in m for m in per_file) and any(str(notes) in m for m in per_file)
    assert any("skipped 2 unreadable file(s)" in r.getMessage() for r in caplog.records)


def _no_split(root):
    pass


def _class_folder_missing(root):
    _make_split(root)
    shutil.rmtree(root / "train" / "apple")


def _class_folder_empty(root):
    _make_split(root)
    for path in (root / "train" / "Old Mirror").iterdir():
        path.unlink()


@pytest.mark.parametrize("damage, message", [
    (_no_split, "train: missing"),
    (_class_folder_missing, "train: missing class folder(s) 'apple'"),
    (_class_folder_empty, "Old Mirror: class folder has no readable images"),
])
def test_folder_problems_name_the_folder(tmp_path, damage, message):
    damage(tmp_path)
    with pytest.raises(UsageError, match=re.escape(message)):
        dataset.scan_split(tmp_path, "train", CLASSES)


def test_workers_never_exceed_cores(monkeypatch):
    monkeypatch.setattr(dataset.os, "cpu_count", lambda: 2)
    assert dataset.worker_count(8) == 2
    assert dataset.worker_count(1) == 1


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = dataset.epoch_order(50, seed=3, epoch=1)
    assert np.array_equal(a, dataset.epoch_order(50, seed=3, epoch=1))
    assert sorted(a) == list(range(50))
    assert not np.array_equal(a, dataset.epoch_order(50, seed=3, epoch=2))


def test_synthetic_set_is_deterministic_cached_and_class_dependent(tmp_path):
    first = ensure_synthetic_dataset(CLASSES, 16, 2, 1, seed=0, cache_dir=tmp_path / "a")
    second = ensure_synthetic_dataset(CLASSES, 16, 2, 1, seed=0, cache_dir=tmp_path / "b")
    files = sorted(p.relative_to(first) for p in first.rglob("*.jpg"))
    assert len(files) == 3 * (2 + 1)
    assert files == sorted(p.relative_to(second) for p in second.rglob("*.jpg"))
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    mtime = (first / files[0]).stat().st_mtime_ns
    assert ensure_synthetic_dataset(CLASSES, 16, 2, 1, seed=0, cache_dir=tmp_path / "a") == first
    assert (first / files[0]).stat().st_mtime_ns == mtime  # reused, not redrawn
    means = [np.asarray(Image.open(first / "train" / c / "0000.jpg"), np.float32).mean((0, 1)) for c in CLASSES]
    assert min(np.abs(means[i] - means[j]).max() for i in range(3) for j in range(i + 1, 3)) > 20


def test_lr_schedule_follows_the_official_formula():
    from ms_impl.trainer.config import load_config
    from ms_impl.trainer.run import build_lr_schedule

    cfg = load_config(["--epochs", "4", "--warmup-epochs", "1", "--lr-init", "0.01", "--lr-max", "0.1", "--lr-end", "0.001"])
    lr = build_lr_schedule(cfg, steps_per_epoch=5)
    warmup, total = 5, 20
    expected = [0.01 + 0.09 * i / warmup if i < warmup else
                0.001 + 0.099 * (1 + np.cos(np.pi * (i - warmup) / (total - warmup))) / 2 for i in range(total)]
    np.testing.assert_allclose(lr, expected, rtol=1e-6)
    assert lr.dtype == np.float32 and lr.shape == (20,)


def test_weight_decay_only_on_conv_and_dense_weights(ms_pynative):
    """One step with zero gradients moves exactly the decayed tensors: w <- w - lr * wd * w."""
    from ms_impl.trainer.config import load_config
    from ms_impl.trainer.run import build_network, build_optimizer

    ms = ms_pynative
    cfg = load_config(["--width-mult", "0.35", "--weight-decay", "0.01", "--dropout", "0"])
    network = build_network(cfg)
    params = network.trainable_params()
    for p in params:  # BN gamma/beta start at 1/0: give every tensor non-trivial values
        p.set_data(ms.Tensor(np.random.default_rng(0).uniform(0.5, 1.5, p.shape).astype(np.float32)))
    before = {p.name: p.asnumpy().copy() for p in params}
    optimizer = build_optimizer(cfg, network, np.full(4, 0.5, np.float32))
    optimizer(tuple(ms.ops.zeros_like(p) for p in optimizer.parameters))  # gradients in the optimizer's order
    moved = set()
    for p in params:
        after = p.asnumpy()
        if not np.array_equal(after, before[p.name]):
            np.testing.assert_allclose(after, before[p.name] * (1 - 0.5 * 0.01), rtol=1e-6)
            moved.add(p.name)
    expected = {p.name for p in params if p.name.endswith(".weight") and len(p.shape) >= 2}
    assert moved == expected
    assert "dense.weight" in moved and "features.0.features.0.weight" in moved
    assert not any(n.endswith((".gamma", ".beta", ".bias")) for n in moved)
