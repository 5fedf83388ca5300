"""The frozen-backbone feature cache: reused when nothing changed, rebuilt on any change, never stale."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tests.helpers import COLOURS, IMAGE_SIZE, calibrated_backbone_net, write_dataset, write_image


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import mindspore as ms

    ms.set_device("CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    root = tmp_path_factory.mktemp("cache")
    data = write_dataset(str(root / "data"), per_class=3, splits=("train",))
    files = [p for p, _ in data["train"]]
    labels = [l for _, l in data["train"]]
    return {"root": root, "files": files, "labels": labels, "net": calibrated_backbone_net(files)}


@pytest.fixture()
def counted(monkeypatch):
    """Counts real extractions (the function still runs)."""
    from ms_impl.trainer import feature_cache

    calls = []
    real = feature_cache.extract_features

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(feature_cache, "extract_features", counting)
    return calls


def load(setup, cache_dir, files=None, settings=None, backbone=None):
    from ms_impl.trainer.feature_cache import FeatureSettings, load_or_extract

    return load_or_extract(str(cache_dir), backbone or setup["net"].backbone, files or setup["files"], setup["labels"],
                           settings or FeatureSettings(IMAGE_SIZE), batch_size=4, progress=False)


def test_reused_when_nothing_changed(setup, counted, tmp_path):
    first = load(setup, tmp_path)
    second = load(setup, tmp_path)
    assert (first.reused, second.reused) == (False, True)
    assert len(counted) == 1
    np.testing.assert_array_equal(first.features, second.features)
    np.testing.assert_array_equal(second.labels, setup["labels"])
    assert first.features.shape == (len(setup["files"]), setup["net"].num_features)
    assert [n for n in os.listdir(tmp_path) if not n.startswith("features-")] == []  # no temp files left


def test_rebuilt_when_a_file_changes_size_or_mtime(setup, counted, tmp_path):
    import shutil

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    files = [shutil.copy(f, data_dir / f"{i}.jpg") for i, f in enumerate(setup["files"])]
    cache = tmp_path / "cache"
    before = load(setup, cache, files=files)
    # new content (a different colour of image 0), hence new size and mtime
    stat = os.stat(files[0])
    write_image(files[0], list(COLOURS.values())[2], seed=99)
    os.utime(files[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    after = load(setup, cache, files=files)
    assert not after.reused and after.key != before.key
    assert not np.array_equal(after.features[0], before.features[0])
    np.testing.assert_array_equal(after.features[1:], before.features[1:])
    # only the mtime changes (same bytes): still a new key, the cache cannot know the bytes are equal
    os.utime(files[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 20_000_000))
    assert not load(setup, cache, files=files).reused
    assert load(setup, cache, files=files).reused
    assert len(counted) == 3


def test_rebuilt_when_files_or_labels_change(setup, tmp_path):
    from ms_impl.trainer.feature_cache import FeatureSettings, cache_key, weights_hash

    h = weights_hash(setup["net"].backbone)
    files, labels, settings = setup["files"], setup["labels"], FeatureSettings(IMAGE_SIZE)
    base = cache_key(files, labels, settings, h)
    assert cache_key(files[:-1], labels[:-1], settings, h) != base
    assert cache_key(files[::-1], labels[::-1], settings, h) != base
    assert cache_key(files, labels[:-1] + [0 if labels[-1] else 1], settings, h) != base
    assert cache_key(files, labels, settings, h) == base


def test_rebuilt_when_image_size_or_views_change(setup, counted, tmp_path):
    from ms_impl.trainer.feature_cache import FeatureSettings

    a = load(setup, tmp_path, settings=FeatureSettings(IMAGE_SIZE))
    b = load(setup, tmp_path, settings=FeatureSettings(IMAGE_SIZE + 8))
    assert not b.reused and b.key != a.key
    # augmentation settings only count when augmented views are used
    assert load(setup, tmp_path, settings=FeatureSettings(IMAGE_SIZE, color_jitter=0.1)).reused
    views = load(setup, tmp_path, settings=FeatureSettings(IMAGE_SIZE, feature_views=2, seed=1))
    assert not views.reused and views.features.shape[0] == 2 * len(setup["files"])
    np.testing.assert_array_equal(views.labels, np.tile(setup["labels"], 2))
    other_seed = load(setup, tmp_path, settings=FeatureSettings(IMAGE_SIZE, feature_views=2, seed=2))
    other_jitter = load(setup, tmp_path, settings=FeatureSettings(IMAGE_SIZE, feature_views=2, seed=1, color_jitter=0.1))
    assert not other_seed.reused and not other_jitter.reused
    assert len({a.key, b.key, views.key, other_seed.key, other_jitter.key}) == 5
    assert len(counted) == 5


def test_augmented_views_differ_and_are_reproducible(setup, tmp_path):
    from ms_impl.trainer.feature_cache import FeatureSettings

    settings = FeatureSettings(IMAGE_SIZE, feature_views=2, seed=7)
    n = len(setup["files"])
    first = load(setup, tmp_path / "a", settings=settings)
    again = load(setup, tmp_path / "b", settings=settings)  # a fresh cache dir: extracted anew
    assert not again.reused
    np.testing.assert_array_equal(first.features, again.features)
    assert not np.allclose(first.features[:n], first.features[n:])  # two different augmented views


def test_rebuilt_when_backbone_weights_change(setup, counted, tmp_path):
    import mindspore as ms

    from ms_impl.mobilenetv2 import MobileNetV2

    net = MobileNetV2(num_classes=3, width_mult=0.35)
    ms.load_param_into_net(net, {p.name: ms.Parameter(p.data.copy(), name=p.name) for p in setup["net"].get_parameters()})
    a = load(setup, tmp_path, backbone=net.backbone)
    assert load(setup, tmp_path, backbone=net.backbone).reused
    # a BatchNorm statistic counts as a weight too
    mean = net.backbone.features[18].features[1].moving_mean
    mean.set_data(ms.Tensor(mean.asnumpy() + 0.5))
    b = load(setup, tmp_path, backbone=net.backbone)
    assert not b.reused and b.key != a.key and not np.allclose(a.features, b.features)
    # the head is not part of the key: training it does not invalidate the features
    net.head.dense.weight.set_data(ms.Tensor(np.ones(net.head.dense.weight.shape, np.float32)))
    assert load(setup, tmp_path, backbone=net.backbone).reused
    assert len(counted) == 2


def test_a_stale_or_broken_cache_file_is_never_used(setup, counted, tmp_path):
    first = load(setup, tmp_path)
    # a file under the right name whose stored key is another one (e.g. copied from elsewhere)
    with np.load(first.path) as data:
        np.savez(first.path, features=data["features"] + 1, labels=data["labels"], key=np.asarray("0" * 64))
    second = load(setup, tmp_path)
    assert not second.reused
    np.testing.assert_array_equal(second.features, first.features)
    # a truncated file (a crash of an older writer, a full disk)
    with open(first.path, "r+b") as handle:
        handle.truncate(100)
    third = load(setup, tmp_path)
    assert not third.reused
    np.testing.assert_array_equal(third.features, first.features)
    assert len(counted) == 3


def test_bad_image_is_named(setup, tmp_path):
    from ms_impl.trainer.feature_cache import FeatureSettings

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    files = setup["files"][:2] + [str(bad)]
    with pytest.raises(ValueError, match="bad.jpg: cannot decode image"):
        load(setup, tmp_path / "c", files=files + setup["files"][3:])
    with pytest.raises(ValueError, match="bad.jpg: cannot decode image"):
        load(setup, tmp_path / "c", files=files + setup["files"][3:], settings=FeatureSettings(IMAGE_SIZE, feature_views=2))
    with pytest.raises(ValueError, match="missing.jpg: cannot read image file"):
        load(setup, tmp_path / "c", files=setup["files"][:-1] + [str(tmp_path / "missing.jpg")])
    assert not any(n.endswith(".npz") for n in os.listdir(tmp_path / "c"))


def test_mirror_images_are_cached_under_their_own_key(setup, counted, tmp_path):
    from PIL import Image

    from ms_impl.trainer.feature_cache import FeatureSettings

    files = []
    for i, (left, right) in enumerate([((220, 30, 30), (30, 30, 220)), ((30, 200, 40), (240, 240, 240)), ((10, 10, 10), (200, 200, 30))]):
        pixels = np.zeros((40, 40, 3), np.uint8)
        pixels[:, :20], pixels[:, 20:] = left, right  # not mirror-symmetric
        files.append(str(tmp_path / f"two-tone-{i}.png"))
        Image.fromarray(pixels).save(files[-1])
    labels = setup["labels"][:3]
    backbone = setup["net"].backbone

    def features(hflip, folder):
        from ms_impl.trainer.feature_cache import load_or_extract

        return load_or_extract(str(folder), backbone, files, labels, FeatureSettings(IMAGE_SIZE, hflip=hflip), batch_size=4, progress=False)

    plain, mirrored, again = features(False, tmp_path / "c"), features(True, tmp_path / "c"), features(True, tmp_path / "c")
    assert (plain.reused, mirrored.reused, again.reused) == (False, False, True) and mirrored.key != plain.key
    assert not np.allclose(plain.features, mirrored.features, atol=1e-4)
