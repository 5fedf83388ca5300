"""OpenVINO as a peer of `python -m parity bench`: it runs the same ONNX export as ONNX Runtime with the settings it
prints, is skipped with its reason where it cannot be imported, and the summary line gives the twin's ratio to it.
No time is asserted."""
from __future__ import annotations

import io
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from parity.harness import bench
from parity.harness import bench_worker as worker

TINY = dict(batch=2, image_size=32, width=0.35, num_classes=10, threads=0, fast_conv="on", mode="pynative",
            compile_backend="eager", weights="", data_path="")


def _serve(folder, peer: str, runs, **settings) -> list:
    """The worker's answers to `runs` of `peer`, served in this process."""
    answers = io.StringIO()
    worker.serve(SimpleNamespace(**{**TINY, **settings}), folder, [peer], [f"{peer} {run}\n" for run in runs], answers)
    return [json.loads(line) for line in answers.getvalue().splitlines()]


def test_openvino_that_cannot_be_imported_is_skipped_with_its_reason(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError, as where it is absent
    answers = _serve(tmp_path, worker.OPENVINO, ["describe", "eval"])
    assert len(answers) == 2
    for answer in answers:  # every run of the peer fails with the one-line reason; the bench prints it on the row
        assert set(answer) == {"failed"}
        reason = answer["failed"]
        assert reason.startswith("openvino cannot be imported") and "pip install openvino" in reason
        assert "\n" not in reason


def test_summary_line_gives_the_ratio_to_every_peer():
    batch = 32
    timings = {name: bench.Timing(steps=[batch / rate]) for name, rate in (
        (bench.PT_NCHW, 100.0), (bench.PT_CHANNELS_LAST, 150.0), (bench.ORT, 200.0), (bench.OPENVINO, 400.0),
        (bench.MS_TWIN, 300.0))}
    timings[bench.PT_COMPILED] = bench.Timing(skipped="--skip-compile")
    line = bench._ratio_line("eval forward", timings, batch)
    assert line.startswith("- eval forward: MindSpore twin ")
    assert f"2.00x the best PyTorch peer ({bench.PT_CHANNELS_LAST})" in line
    assert "1.50x ONNX Runtime" in line and "0.75x OpenVINO" in line
    # A peer that did not run has no ratio.
    timings[bench.OPENVINO] = bench.Timing(skipped="openvino cannot be imported (...)")
    line = bench._ratio_line("eval forward", timings, batch)
    assert "OpenVINO" not in line and "1.50x ONNX Runtime" in line


@pytest.mark.slow
def test_openvino_runs_the_export_with_the_settings_it_prints(ms_pynative, tmp_path):
    """The peer computes what ONNX Runtime computes on the same export, in float32, with the bench's threads."""
    import onnxruntime
    import openvino  # noqa: F401  (the `test` and `bench` extras install it)

    worker.prepare(SimpleNamespace(**TINY), tmp_path)
    assert (tmp_path / "bench.onnx").is_file(), (tmp_path / "onnx_error.txt").read_text(encoding="utf-8")
    describe, first, second = _serve(tmp_path, worker.OPENVINO, ["describe", "eval", "eval"], threads=2)
    settings = describe["describe"]
    assert settings.startswith("openvino ") and "CPU plugin" in settings and "2 threads" in settings
    assert "latency hint" in settings and "f32 precision" in settings
    assert first["seconds"] > 0 and second["seconds"] > 0
    peer = worker.OpenVinoPeer(SimpleNamespace(**{**TINY, "threads": 2}), tmp_path, worker.OPENVINO)
    session = onnxruntime.InferenceSession(str(tmp_path / "bench.onnx"), providers=["CPUExecutionProvider"])
    images = np.load(tmp_path / "batch.npz")["images"]
    want = session.run(None, {session.get_inputs()[0].name: images})[0]
    got = peer.logits()
    assert got.shape == want.shape == (TINY["batch"], TINY["num_classes"])
    # Both float32: they differ by summation order only (~1e-6 of the scale); bf16 or a wrong layout would be >1e-2.
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
    assert _serve(tmp_path, worker.OPENVINO, ["train"])[0] == {"failed": "inference only"}
