"""`python -m parity diff`: the first stage where two checkpoints or two frameworks part ways (issue 16)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest
import torch

from parity.core import converter as cv
from parity.harness import compare, convert_cli, diff
from pt_impl import mobilenetv2 as pt_model
from pt_impl import weights as pt_weights

WIDTH = 0.35  # small nets and 64 px inputs: each diff runs in seconds on 2 cores
SIZE = ["--image-size", "64"]
STAGES = [f"features.{i}" for i in range(19)] + ["pool", "logits"]


def random_net_state(width: float = WIDTH, num_classes: int = 26, seed: int = 0) -> Dict[str, np.ndarray]:
    """A PyTorch twin with random weights, BN statistics and affine (never the identity init), as numpy."""
    torch.manual_seed(seed)
    net = pt_model.MobileNetV2(num_classes, width)
    generator = torch.Generator().manual_seed(seed + 1)
    batch_norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for module in batch_norms:
            module.momentum = None  # one batch sets the statistics: activations stay O(1) through the net
        net.train()(torch.randn(4, 3, 64, 64, generator=generator))
        for module in batch_norms:
            n = module.num_features
            module.running_var.mul_(torch.rand(n, generator=generator) * 0.45 + 0.8)
            module.weight.copy_(torch.rand(n, generator=generator) * 0.6 + 0.6)
            module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
        dense = net.classifier[1]
        dense.weight.copy_(torch.randn(dense.weight.shape, generator=generator) / dense.in_features ** 0.5)
    return pt_weights.state_of(net)


@pytest.fixture(scope="module")
def base() -> cv.Checkpoint:
    return cv.checkpoint_from_state(random_net_state(), "torchvision", source="generated")


def changed(ckpt: cv.Checkpoint, prefix: str, which: Callable[[str, np.ndarray], bool],
            how: Callable[[np.ndarray], np.ndarray]) -> cv.Checkpoint:
    """A copy with the tensors under `prefix` that `which` selects replaced by `how(tensor)`."""
    tensors = {name: (how(value) if name.startswith(prefix + ".") and which(name, value) else value)
               for name, value in ckpt.tensors.items()}
    assert any(tensors[name] is not value for name, value in ckpt.tensors.items())
    return cv.Checkpoint(tensors, ckpt.layout, ckpt.width_mult, ckpt.num_classes, dict(ckpt.metadata))


def conv_weights(name: str, value: np.ndarray) -> bool:
    return value.ndim == 4


def save(ckpt: cv.Checkpoint, path: Path) -> Path:
    layout = "torchvision" if path.suffix == ".pth" else "ms-official"
    cv.write_checkpoint(cv.convert(ckpt, layout), path)
    return path


def run_diff(capsys, *argv) -> tuple:
    code = diff.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def report_of(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- agreement

def test_same_file_compares_the_two_frameworks_and_agrees(tmp_path, capsys, base):
    pth = save(base, tmp_path / "net.pth")
    code, out, err = run_diff(capsys, pth, pth, *SIZE, "--json", tmp_path / "r.json", "--plot", tmp_path / "r.png")
    assert code == 0, out + err
    report = report_of(tmp_path / "r.json")
    assert report["reference"]["twin"] == "torch" and report["candidate"]["twin"] == "mindspore"
    assert report["mode"] == "eval" and report["first_divergent"] is None
    assert [row["name"] for row in report["rows"]] == STAGES
    for row in report["rows"]:
        assert row["pass"] and row["noise_ratio"] <= diff.tolerances.NOISE_MULTIPLE and row["cosine"] > 0.99999
        assert set(row) >= {"name", "max_abs", "max_rel", "cosine", "within_1e-3", "pass", "error_vs_float64",
                            "float32_noise", "noise_ratio"}
    # the comparison means something: the two frameworks do not agree bit for bit, and outputs are O(1)
    assert any(row["max_abs"] > 0 for row in report["rows"])
    assert out.rstrip().splitlines()[-1].startswith("all stages agree")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_identical_weights_in_one_framework_are_bit_exact(tmp_path, capsys, base):
    a, b = save(base, tmp_path / "a.ckpt"), save(base, tmp_path / "b.pth")
    code, out, _ = run_diff(capsys, a, b, *SIZE, "--framework", "ms", "--per-op", "--json", tmp_path / "r.json")
    assert code == 0, out
    rows = report_of(tmp_path / "r.json")["rows"]
    assert "features.3.conv.1.0" in [row["name"] for row in rows]  # --per-op: the depthwise conv of block 3
    assert all(row["max_abs"] == 0.0 for row in rows)


# ----------------------------------------------------------------------------- one block changed

@pytest.mark.parametrize("reference_ext,candidate_ext,framework", [
    (".pth", ".pth", "torch"), (".ckpt", ".ckpt", "mindspore"), (".pth", ".ckpt", "across")])
def test_one_block_scaled_is_named_first(tmp_path, capsys, base, reference_ext, candidate_ext, framework):
    reference = save(base, tmp_path / f"ref{reference_ext}")
    candidate = save(changed(base, "features.7", conv_weights, lambda w: w * 1.01), tmp_path / f"cand{candidate_ext}")
    code, out, _ = run_diff(capsys, reference, candidate, *SIZE, "--json", tmp_path / "r.json")
    assert code == 1, out
    report = report_of(tmp_path / "r.json")
    twins = {report["reference"]["twin"], report["candidate"]["twin"]}
    assert twins == ({"torch", "mindspore"} if framework == "across" else {framework})
    assert report["first_divergent"] == "features.7"
    assert all(row["pass"] for row in report["rows"][:7])
    assert out.rstrip().splitlines()[-1].startswith("first divergence: features.7 ")
    marked = [line for line in out.splitlines() if line.startswith(">>")]
    assert len(marked) == 1 and marked[0].split()[1] == "features.7"


def test_per_op_names_the_first_changed_convolution(tmp_path, capsys, base):
    reference = save(base, tmp_path / "ref.pth")
    # only the projection (third conv) of block 5 changes: its expand and depthwise outputs still agree
    candidate = save(changed(base, "features.5.conv.2", conv_weights, lambda w: w * 1.01), tmp_path / "cand.pth")
    code, out, _ = run_diff(capsys, reference, candidate, *SIZE, "--per-op", "--json", tmp_path / "r.json")
    assert code == 1
    rows = {row["name"]: row for row in report_of(tmp_path / "r.json")["rows"]}
    assert report_of(tmp_path / "r.json")["first_divergent"] == "features.5.conv.2"
    assert rows["features.5.conv.1.2"]["pass"] and not rows["features.5"]["pass"]


def test_running_variance_changed_in_one_stage_is_named_in_eval_mode(tmp_path, capsys, base):
    reference = save(base, tmp_path / "ref.pth")
    candidate = save(changed(base, "features.11.conv.1.1", lambda name, v: name.endswith("running_var"),
                             lambda v: v * 1.05), tmp_path / "cand.ckpt")
    code, out, _ = run_diff(capsys, reference, candidate, *SIZE, "--json", tmp_path / "r.json")
    assert code == 1, out
    assert report_of(tmp_path / "r.json")["first_divergent"] == "features.11"


@pytest.mark.slow  # a forward and 20 per-stage backward passes in each framework
def test_train_mode_names_the_first_failing_gradient(tmp_path, capsys, base):
    rng = np.random.default_rng(0)
    reference = save(base, tmp_path / "ref.pth")
    candidate = save(changed(base, "features.9", conv_weights,
                             lambda w: w * (1 + 0.02 * rng.standard_normal(w.shape)).astype(np.float32)),
                     tmp_path / "cand.ckpt")
    code, out, _ = run_diff(capsys, reference, candidate, *SIZE, "--mode", "train", "--json", tmp_path / "r.json")
    assert code == 1, out
    report = report_of(tmp_path / "r.json")
    assert report["mode"] == "train" and report["first_divergent"] == "features.9"
    gradients = [row for row in report["rows"] if row["kind"] == "gradient"]
    assert [row["stage"] for row in gradients] == [f"features.{i}" for i in range(19)] + ["classifier"]
    assert report["first_divergent_gradient"] == "features.9 (grad)"
    # each stage is fed the reference's input and upstream gradient: only block 9's gradients differ
    assert [row["stage"] for row in gradients if not row["pass"]] == ["features.9"]
    assert "first failing gradient: features.9" in out.rstrip().splitlines()[-1]


@pytest.mark.slow  # a forward and 20 per-stage backward passes in each framework
def test_train_mode_on_identical_weights_across_frameworks_passes(tmp_path, capsys, base):
    pth = save(base, tmp_path / "net.pth")
    code, out, _ = run_diff(capsys, pth, pth, *SIZE, "--mode", "train", "--json", tmp_path / "r.json")
    assert code == 0, out
    report = report_of(tmp_path / "r.json")
    assert report["first_divergent"] is None and report["first_divergent_gradient"] is None
    assert {row["kind"] for row in report["rows"]} == {"output", "gradient"}


def test_backbone_only_stops_at_pool_and_says_so(tmp_path, capsys, base):
    backbone = save(cv.convert(base, "torchvision", drop_head=True), tmp_path / "backbone.pth")
    code, out, _ = run_diff(capsys, backbone, backbone, *SIZE, "--json", tmp_path / "r.json")
    assert code == 0, out
    report = report_of(tmp_path / "r.json")
    assert [row["name"] for row in report["rows"]] == STAGES[:-1]
    assert any("logits not compared" in note for note in report["notes"]) and "logits not compared" in out


def test_image_input_goes_through_each_twins_pipeline(tmp_path, capsys, base):
    pth = save(base, tmp_path / "net.pth")
    image = tmp_path / "photo.jpg"
    image.write_bytes(compare.make_jpeg(90, 120, np.random.default_rng(0)))
    code, out, _ = run_diff(capsys, pth, pth, *SIZE, "--image", image, "--json", tmp_path / "r.json")
    assert code == 0, out
    rows = report_of(tmp_path / "r.json")["rows"]
    assert rows[0]["name"] == "input" and rows[1]["shape"][0] == 1


# ----------------------------------------------------------------------------- bad input

def test_missing_file(tmp_path, capsys, base):
    pth = save(base, tmp_path / "net.pth")
    code, out, err = run_diff(capsys, pth, tmp_path / "absent.ckpt", *SIZE)
    assert code == 2 and out == ""
    assert err.strip() == f"error: {tmp_path / 'absent.ckpt'}: no such file"


def test_another_model(tmp_path, capsys, base):
    pth = save(base, tmp_path / "net.pth")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}, tmp_path / "r.pth")
    code, out, err = run_diff(capsys, pth, tmp_path / "r.pth", *SIZE)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and "not a MobileNetV2 checkpoint" in err and len(err.strip().splitlines()) == 1


def test_mismatched_widths_are_compared_up_to_where_shapes_agree(tmp_path, capsys, base):
    pth = save(base, tmp_path / "narrow.pth")
    wider = random_net_state(width=0.5)
    for name, value in base.tensors.items():  # the shared stages get the same weights: they agree
        if name.startswith(("features.0.", "features.1.")):
            assert wider[name].shape == value.shape
            wider[name] = value
    other = save(cv.checkpoint_from_state(wider, "torchvision", source="generated"), tmp_path / "wide.pth")
    code, out, err = run_diff(capsys, pth, other, *SIZE, "--json", tmp_path / "r.json")
    assert code == 2
    # 0.35x and 0.5x share the stem and block 1 (16 and 8 channels), then block 2 has 8 vs 16
    assert [row["name"] for row in report_of(tmp_path / "r.json")["rows"]] == ["features.0", "features.1"]
    assert report_of(tmp_path / "r.json")["stopped"].startswith("features.2: shapes (2, 8, 16, 16) and (2, 16, 16, 16)")
    assert "stopped at features.2" in out
    assert err.startswith("error: ") and "compared up to features.1" in err and len(err.strip().splitlines()) == 1


def test_other_class_count_compares_the_backbone_and_stops_at_logits(tmp_path, capsys, base):
    pth = save(base, tmp_path / "26.pth")
    tensors = dict(base.tensors)
    tensors["classifier.1.weight"], tensors["classifier.1.bias"] = tensors["classifier.1.weight"][:10], tensors[
        "classifier.1.bias"][:10]
    ten = save(cv.checkpoint_from_state(tensors, "torchvision", source="generated"), tmp_path / "10.pth")
    code, out, err = run_diff(capsys, pth, ten, *SIZE, "--json", tmp_path / "r.json")
    assert code == 2, out
    report = report_of(tmp_path / "r.json")
    assert [row["name"] for row in report["rows"]] == STAGES[:-1] and all(row["pass"] for row in report["rows"])
    assert report["stopped"] == "logits: shapes (2, 26) and (2, 10) differ"
    assert "compared up to pool, stopped at logits" in err


def test_existing_json_is_kept_without_force(tmp_path, capsys, base):
    pth = save(base, tmp_path / "net.pth")
    (tmp_path / "r.json").write_text("mine")
    code, out, err = run_diff(capsys, pth, pth, *SIZE, "--json", tmp_path / "r.json")
    assert code == 2 and out == "" and "already exists; pass --force" in err
    assert (tmp_path / "r.json").read_text() == "mine"


# ----------------------------------------------------------------------------- the other commands

def test_convert_verify_failure_names_the_first_diverging_stage(tmp_path, capsys, base, monkeypatch):
    source = save(base, tmp_path / "net.pth")
    real_convert = convert_cli.convert

    def broken_convert(*args, **kwargs):  # a converter bug that damages block 6 on the way
        return changed(real_convert(*args, **kwargs), "features.6", conv_weights, lambda w: w * 1.05)

    monkeypatch.setattr(convert_cli, "convert", broken_convert)
    assert convert_cli.main([str(source), str(tmp_path / "out.ckpt"), "--verify", "--verify-image-size", "64"]) == 1
    captured = capsys.readouterr()
    assert "verify: first divergence: features.6 " in captured.out
    assert not (tmp_path / "out.ckpt").exists()


def test_check_table_has_the_cosine_column():
    results = [compare.CheckResult("eval logits", 1e-6, 2e-6, 1e-4, "abs", "", 0.999999),
               compare.CheckResult("loss", 1e-7, 1e-8, 1e-5, "rel")]
    header, _, logits, loss = compare.format_table(results).splitlines()
    assert header.split()[:5] == ["check", "max", "abs", "diff", "max"] and "cosine" in header
    assert "0.99999900" in logits and " - " in loss


@pytest.mark.slow
def test_exit_codes_of_the_command(tmp_path, base, python_exe, repo_root, cli_env):
    reference = save(base, tmp_path / "ref.pth")
    candidate = save(changed(base, "features.4", conv_weights, lambda w: w * 1.01), tmp_path / "cand.pth")

    def parity_diff(*argv):
        return subprocess.run([python_exe, "-m", "parity", "diff", *map(str, argv), *SIZE], cwd=repo_root,
                              env=cli_env, capture_output=True, text=True, timeout=300)

    same, different = parity_diff(reference, reference, "--framework", "pt"), parity_diff(reference, candidate)
    bad = parity_diff(reference, tmp_path / "absent.pth")
    assert same.returncode == 0 and same.stdout.rstrip().endswith("within tolerance"), same.stderr
    assert different.returncode == 1 and "first divergence: features.4 " in different.stdout
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
