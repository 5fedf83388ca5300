"""predict and export CLIs on a tiny model trained here (frozen backbone, head trained on cached features)."""
from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from tests.helpers import CLASS_ROWS, IMAGE_SIZE, trained_tiny_checkpoint, write_class_csv


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import mindspore as ms

    ms.set_device("CPU")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    root = tmp_path_factory.mktemp("tiny")
    ckpt, data = trained_tiny_checkpoint(str(root))
    return {"root": root, "ckpt": ckpt, "data": data, "classes": write_class_csv(str(root / "classes.csv"))}


def run_cli(python_exe, repo_root, cli_env, script, *args):
    return subprocess.run([python_exe, os.path.join("ms_impl", script), *map(str, args)], cwd=repo_root, env=cli_env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_predict_reports_known_classes_names_and_categories(tiny, python_exe, repo_root, cli_env, tmp_path):
    # the generated training images, one folder per class, plus one corrupt and one empty file
    train = tiny["data"]["train"]
    picked = [train[0], train[7], train[13]]  # one image of each class
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    proc = run_cli(python_exe, repo_root, cli_env, "predict.py", "--checkpoint", tiny["ckpt"], "--config", tiny["classes"],
                   "--image-size", IMAGE_SIZE, "--top-k", 2, "--json", *[p for p, _ in picked], bad, empty)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [p["file"] for p in out["predictions"]] == [p for p, _ in picked]
    for item, (_, label) in zip(out["predictions"], picked):
        index, name, name_zh, category_zh, category = CLASS_ROWS[label]
        best = item["top_k"][0]
        assert (best["index"], best["name"], best["name_zh"]) == (index, name, name_zh)
        # A margin, not a coin flip: the head is a convex fit on fixed features, so float32 rounding (~1e-5 in the
        # logits, any CPU) moves these probabilities by as little; here each is >= 0.995 (AVX2 and SSE4.1 alike),
        # every training image's top logit leads by >= 5.4.
        assert best["probability"] > 0.9
        assert (item["category_zh"], item["category"]) == (category_zh, category)
        assert len(item["top_k"]) == 2 and item["top_k"][0]["probability"] >= item["top_k"][1]["probability"]
    assert {e["file"]: e["error"] for e in out["errors"]} == {str(bad): "cannot decode image", str(empty): "empty file"}
    assert f"error: {bad}: cannot decode image" in proc.stderr


def test_predict_text_output(tiny, capsys):
    from ms_impl import predict

    red = tiny["data"]["train"][0][0]
    assert predict.main(["--checkpoint", tiny["ckpt"], "--config", tiny["classes"], "--image-size", str(IMAGE_SIZE), red]) == 0
    lines = capsys.readouterr().out.splitlines()
    # summed category probability, and the verdict: the folder names the true class
    assert lines[0].startswith(f"{red}: 有害垃圾 (Hazardous waste) ") and lines[0].endswith("%  [correct]")
    assert lines[1].startswith("  1. Red Thing / 红色物") and lines[1].endswith("[有害垃圾 Hazardous waste]")
    assert len(lines) == 4  # top_k 5 capped at the 3 classes


def test_predict_matches_the_model_and_reads_folders(tiny):
    import mindspore as ms
    from mindspore.dataset import transforms

    from ms_impl import predict
    from ms_impl.trainer.classes import load_classes
    from ms_impl.trainer.model_io import load_model
    from ms_impl.transforms import eval_transforms

    folder = os.path.dirname(tiny["data"]["val"][0][0])  # val/Red Thing
    net = load_model(tiny["ckpt"])
    classes = load_classes(tiny["classes"])
    files, errors = predict.collect_images([folder])
    assert len(files) == 6 and not errors
    predictions, errors = predict.predict_files(net, files, classes, IMAGE_SIZE, top_k=3)
    pipeline = transforms.Compose(eval_transforms(IMAGE_SIZE))
    batch = np.stack([pipeline(np.fromfile(f, np.uint8)) for f in files])
    expected = predict.softmax(net(ms.Tensor(batch)).asnumpy().astype(np.float64))
    for item, probs in zip(predictions, expected):
        got = {e["index"]: e["probability"] for e in item["top_k"]}
        assert got == pytest.approx({i: probs[i] for i in got}, abs=1e-6)
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_predict_bad_inputs(tiny, python_exe, repo_root, cli_env, tmp_path, capsys):
    from ms_impl import predict

    image = tiny["data"]["train"][0][0]
    garbage = tmp_path / "model.ckpt"
    garbage.write_bytes(b"this is not a checkpoint")
    proc = run_cli(python_exe, repo_root, cli_env, "predict.py", "--checkpoint", garbage, "--config", tiny["classes"], image)
    assert proc.returncode == 2
    assert proc.stdout == "" and str(garbage) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    # nothing predictable: every input is missing or unreadable
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    code = predict.main(["--checkpoint", tiny["ckpt"], "--config", tiny["classes"], "--image-size", str(IMAGE_SIZE),
                         str(bad), str(tmp_path / "missing.jpg")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert f"{bad}: cannot decode image" in captured.err and "missing.jpg: no such file or folder" in captured.err


def test_predict_refuses_class_list_of_another_size(tiny, tmp_path):
    from ms_impl import predict

    other = tmp_path / "classes.csv"
    other.write_text("index,name_en,name_zh,category_zh,category_en\n0,A,甲,干垃圾,Residual waste\n", encoding="utf-8")
    assert predict.main(["--checkpoint", tiny["ckpt"], "--config", str(other), tiny["data"]["train"][0][0]]) == 2


@pytest.mark.slow
def test_export_mindir_round_trip_and_onnx_in_onnxruntime(tiny, python_exe, repo_root, cli_env, tmp_path):
    import mindspore as ms
    import onnxruntime as ort

    from ms_impl.trainer.model_io import load_model

    net = load_model(tiny["ckpt"])
    x = np.random.default_rng(0).normal(size=(1, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    expected = net(ms.Tensor(x)).asnumpy()
    assert np.abs(expected).max() > 1.0  # a trained head: logits far from zero, so the comparison means something

    mindir = tmp_path / "tiny.mindir"
    proc = run_cli(python_exe, repo_root, cli_env, "export.py", "--checkpoint", tiny["ckpt"], "--format", "MINDIR",
                   "--image-size", IMAGE_SIZE, "--output", mindir)
    assert proc.returncode == 0, proc.stderr
    graph = ms.nn.GraphCell(ms.load(str(mindir)))
    np.testing.assert_allclose(graph(ms.Tensor(x)).asnumpy(), expected, rtol=1e-5, atol=1e-5)

    from ms_impl import export

    onnx_path = tmp_path / "tiny.onnx"
    assert export.main(["--checkpoint", tiny["ckpt"], "--format", "onnx", "--image-size", str(IMAGE_SIZE),
                        "--output", str(onnx_path)]) == 0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert sorted(os.listdir(tmp_path)) == ["tiny.mindir", "tiny.onnx"]  # no temp files left


def test_export_bad_inputs(tiny, tmp_path):
    from ms_impl import export

    existing = tmp_path / "net.mindir"
    existing.write_bytes(b"keep me")
    base = ["--checkpoint", tiny["ckpt"], "--image-size", str(IMAGE_SIZE)]
    assert export.main(base + ["--format", "MINDIR", "--output", str(existing)]) == 2
    assert existing.read_bytes() == b"keep me"  # never overwritten without --force
    assert export.main(base + ["--format", "AIR", "--output", str(tmp_path / "x.air")]) == 2
    assert export.main(base + ["--format", "TFLITE", "--output", str(tmp_path / "x.tflite")]) == 2
    garbage = tmp_path / "bad.ckpt"
    garbage.write_bytes(b"\x00" * 64)
    assert export.main(["--checkpoint", str(garbage), "--format", "ONNX", "--output", str(tmp_path / "x.onnx")]) == 2
    assert sorted(os.listdir(tmp_path)) == ["bad.ckpt", "net.mindir"]
    assert export.main(base + ["--format", "MINDIR", "--output", str(existing), "--force"]) == 0
    assert existing.read_bytes() != b"keep me"


def test_export_says_why_a_format_is_unsupported(tiny, capsys, tmp_path):
    from ms_impl import export

    assert export.main(["--checkpoint", tiny["ckpt"], "--format", "AIR", "--output", str(tmp_path / "x.air")]) == 2
    assert "AIR" in capsys.readouterr().err and "Ascend" in export.UNSUPPORTED["AIR"]


def test_predict_reads_classes_and_image_size_from_a_trainer_config(tiny, tmp_path, capsys):
    import yaml

    from ms_impl import predict
    from ms_impl.trainer.classes import load_classes

    rows = [{"index": i, "name": en, "name_zh": zh, "category_zh": cz, "category": ce} for i, en, zh, cz, ce in CLASS_ROWS]
    (tmp_path / "my_classes.yaml").write_text(yaml.safe_dump({"classes": rows}, allow_unicode=True), encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"classes_file": "my_classes.yaml", "image_size": IMAGE_SIZE}), encoding="utf-8")
    assert load_classes(str(config)) == load_classes(tiny["classes"])
    green = tiny["data"]["train"][7][0]
    assert predict.main(["--checkpoint", tiny["ckpt"], "--config", str(config), "--json", green]) == 0
    out = json.loads(capsys.readouterr().out)
    best = out["predictions"][0]["top_k"][0]
    # without --tta: the mode the checkpoint's run evaluated with (its summary.json), else none
    from ms_impl.trainer.run_folder import recorded_tta

    assert out["tta"] == (recorded_tta(tiny["ckpt"]) or "none")
    assert (best["name"], best["category"]) == ("Green Thing", "Kitchen waste")
    # the shipped default: the trainer's 26 garbage classes, in the reference order
    table = load_classes()
    assert len(table) == 26 and (table[0].name, table[0].name_zh) == ("Seashell", "贝壳")
    assert (table[25].name, table[25].category_zh, table[25].category) == ("Paint bucket", "有害垃圾", "Hazardous waste")
    assert {c.category_zh for c in table} == {"干垃圾", "可回收物", "湿垃圾", "有害垃圾"}


def test_predict_contact_sheet_marks_wrong_photos_and_keeps_an_existing_sheet(tiny, tmp_path, capsys):
    import shutil

    from PIL import Image

    from ms_impl import predict

    train_dir = os.path.dirname(os.path.dirname(tiny["data"]["train"][0][0]))  # train/<class name>/*: the truth is known
    mislabelled = tmp_path / "Green Thing"  # a red photo filed under the green class
    mislabelled.mkdir()
    shutil.copy(tiny["data"]["train"][0][0], mislabelled / "red.png")
    sheet = tmp_path / "sheet.png"
    args = ["--checkpoint", tiny["ckpt"], "--config", tiny["classes"], "--image-size", str(IMAGE_SIZE), "--top-k", "1",
            "--sheet", str(sheet), train_dir, str(mislabelled)]
    assert predict.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    headers = [line for line in out if not line.startswith("  ")]
    assert len(headers) == len(tiny["data"]["train"]) + 1
    assert [h for h in headers if h.endswith("[WRONG]")] == [h for h in headers if "red.png" in h]
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 200
    before = sheet.read_bytes()
    assert predict.main(args) == 2  # an existing sheet is kept without --force
    assert "already exists" in capsys.readouterr().err and sheet.read_bytes() == before
    assert predict.main(args + ["--force"]) == 0


def test_contact_sheet_verdicts():
    from ms_impl.trainer.contact_sheet import verdict

    sure, unsure = {"top_k": [{"probability": 0.9}]}, {"top_k": [{"probability": 0.3}]}
    assert verdict(dict(sure, correct=True), 0.5) == "correct"
    assert verdict(dict(unsure, correct=True), 0.5) == "uncertain"
    assert verdict(dict(sure, correct=False), 0.5) == "wrong"
    assert (verdict(sure, 0.5), verdict(unsure, 0.5)) == ("unknown", "uncertain")


def test_contact_sheet_captions_stay_clear_of_every_photo(tmp_path):
    """Portrait, landscape and square photos, three-line captions: no caption overlaps a photo or another caption."""
    from PIL import Image

    from ms_impl.trainer.classes import load_classes
    from ms_impl.trainer.contact_sheet import contact_sheet_figure

    classes = load_classes()
    predictions = []
    for i, size in enumerate([(120, 400), (400, 120), (300, 300), (90, 500), (500, 90), (200, 260), (260, 200),
                              (100, 450), (300, 300), (450, 100)]):
        path = tmp_path / f"photo{i}.png"
        Image.new("RGB", size, (40 * i % 255, 90, 160)).save(path)
        c = classes[i]
        predictions.append({"file": str(path), "top_k": [{"index": c.index, "name": c.name, "name_zh": c.name_zh,
                                                          "probability": 0.9}],
                            "category_zh": c.category_zh, "category": c.category, "category_probability": 0.9,
                            "correct": False, "true_index": (i + 1) % 26})  # wrong: three caption lines
    fig = contact_sheet_figure(predictions, classes, columns=4)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    photos = [ax.get_window_extent(renderer) for ax in fig.axes]
    captions = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    assert len(photos) == 10
    for i, caption in enumerate(captions):
        assert caption.y0 >= photos[i].y1  # above its own photo
        for j in range(len(photos)):
            assert not caption.overlaps(photos[j]), (i, j)
            assert j == i or not caption.overlaps(captions[j]), (i, j)


@pytest.mark.slow
def test_tools_print_no_framework_warnings(tiny, python_exe, repo_root, cli_env, tmp_path):
    """predict, export and parity check in a user's environment (no GLOG_v set): MindSpore's own warnings (such as
    its deprecation notices) stay hidden, so each tool's first line is its own."""
    env = {k: v for k, v in cli_env.items() if k != "GLOG_v"}
    missing = tmp_path / "no_such_photo.jpg"
    image = tiny["data"]["train"][0][0]
    runs = {
        "predict": run_cli(python_exe, repo_root, env, "predict.py", "--checkpoint", tiny["ckpt"], "--config",
                           tiny["classes"], "--image-size", IMAGE_SIZE, missing, image),
        "export": run_cli(python_exe, repo_root, env, "export.py", "--checkpoint", tiny["ckpt"], "--format", "ONNX",
                          "--image-size", IMAGE_SIZE, "--output", tmp_path / "tiny.onnx"),
        "parity check": subprocess.run([python_exe, "-m", "parity", "check", "--width", "0.35", "--image-size", "32",
                                        "--num-classes", "3", "--batch", "2", "--steps", "1", "--mode", "pynative"],
                                       cwd=repo_root, env=env, capture_output=True, text=True, timeout=300),
    }
    assert runs["predict"].returncode == 0 and runs["export"].returncode == 0, runs
    assert runs["parity check"].returncode in (0, 1), runs["parity check"].stderr  # its verdict, not a crash
    for name, proc in runs.items():
        output = proc.stdout + proc.stderr
        assert "deprecated" not in output.lower() and "[WARNING]" not in output, (name, output[:2000])
    assert runs["predict"].stderr.splitlines()[0] == f"error: {missing}: no such file or folder"
    assert runs["export"].stdout.startswith("export: wrote ")
    assert runs["parity check"].stdout.startswith("MobileNetV2 twins, 0.35x/32px/3cls/b2/pynative")
