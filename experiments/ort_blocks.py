"""Block by block: each stage of the twin's eval forward against ONNX Runtime running that stage alone.

    flock /tmp/heavy.lock python experiments/ort_blocks.py [--batch 32] [--rounds 15] [--threads 2] [--spinning]

Each stage of the twin's backbone (the stem, the 17 inverted residual blocks, the last 1x1 layer) is exported
to ONNX on its own (MindSpore's export of the stage on MindSpore's own layers, BatchNorm included, as the
project's whole-network export), and timed in ONNX Runtime (CPU execution provider, `--threads` intra-op
threads, its graph optimisations: BatchNorm folded, layouts blocked) against the same stage of the twin with
our kernels (GRAPH mode, eval: one kernel call per block, its BatchNorms folded inside), and against that
stage's kernel call alone (through ctypes, as MindSpore's AOT runtime calls it: without the graph launch a
stage called alone pays), on the previous stage's output, the same weights; calls alternate, ms per batch
median over the rounds.

ONNX Runtime's intra-op threads spin after a run by default; in one process that spin takes a core from the
next call, whoever makes it (measured with `--spinning`: the stages' kernel calls 1.56x slower in all). So
the sessions here run with `session.intra_op.allow_spinning` off unless `--spinning`: each engine is timed as it
runs alone. A stage alone pays what the whole network does not: ONNX Runtime reorders its input and output to
and from its blocked layout, the twin launches a graph; compare the stages relative to each other, and the whole
network with `python -m parity bench`.
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spinning", action="store_true", help="leave ONNX Runtime's intra-op threads spinning")
    args = parser.parse_args(argv)

    import mindspore as ms
    import onnxruntime

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    from ms_impl.fast_conv import call_entry_point, kernel_library, kernel_threads
    from ms_impl.fast_conv.blocks import InvertedResidualFusion
    from ms_impl.mobilenetv2 import MobileNetV2

    ms.set_seed(0)
    fused = MobileNetV2(num_classes=1000, fast_conv="on")
    plain = MobileNetV2(num_classes=1000, fast_conv="off")
    rng = np.random.default_rng(0)
    for name, param in fused.parameters_and_names():  # BatchNorm statistics off their init: a real fold
        if name.endswith(("moving_mean", "moving_variance", "gamma", "beta")):
            low, high = (0.5, 1.5) if name.endswith(("moving_variance", "gamma")) else (-0.2, 0.2)
            param.set_data(ms.Tensor(rng.uniform(low, high, param.shape).astype(np.float32)))
    ms.load_param_into_net(plain, {p.name: ms.Parameter(p.asnumpy(), name=p.name) for p in fused.get_parameters()})
    fused.set_train(False)
    plain.set_train(False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    if not args.spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    print(f"# batch {args.batch}, {args.image_size} px, {args.rounds} rounds alternating; onnxruntime "
          f"{onnxruntime.__version__} ({args.threads} threads, spinning {'on' if args.spinning else 'off'}), "
          f"our kernels {kernel_threads()} threads")
    library = ctypes.CDLL(str(kernel_library()))  # the copy MindSpore loaded: one thread pool

    def raw(conv, bn):
        return [conv.weight.asnumpy(), bn.gamma.asnumpy(), bn.beta.asnumpy(), bn.moving_mean.asnumpy(),
                bn.moving_variance.asnumpy(), bn.kernel_constants.asnumpy()]

    def kernel_call(stage, x_in: np.ndarray, out_shape):
        """(entry point, arrays) of the stage's one kernel call, as the twin makes it."""
        out = np.zeros(out_shape, np.float32)
        if isinstance(stage, InvertedResidualFusion):
            layers = ([] if not stage.has_expand else raw(stage.conv[0].features[0], stage.conv[0].features[1]))
            depthwise = stage.conv[1] if stage.has_expand else stage.conv[0]
            layers += raw(depthwise.features[0], depthwise.features[1]) + raw(stage.conv[-2], stage.conv[-1])
            prefix = "block_forward_bn" if stage.has_expand else "dw_block_forward_bn"
            stride = 1 if out_shape[2] == x_in.shape[2] else 2
            name = f"{prefix}_residual_s1" if stage.use_residual else f"{prefix}_s{stride}"
            return name, [x_in, *layers, out]
        conv, bn = stage.features[0], stage.features[1]  # the stem and the last 1x1: folded first (untimed)
        status, (weight, bias) = call_entry_point(library, "bn_fold", raw(conv, bn) + [
            np.zeros(conv.weight.shape, np.float32), np.zeros(conv.weight.shape[0], np.float32)], outputs=2)
        assert status == 0
        name = "dense_forward_bias_relu6_s2" if conv.weight.shape[2] == 3 else "pw_forward_bias_relu6_s1"
        return name, [x_in, weight, bias, out]

    print("| stage | input | ONNX Runtime ms | twin ms | its kernel call alone ms | twin / ORT | kernel / ORT |")
    print("|---|---|---|---|---|---|---|")
    x = ms.Tensor(rng.standard_normal((args.batch, 3, args.image_size, args.image_size)).astype(np.float32))
    totals = [0.0, 0.0, 0.0]
    with tempfile.TemporaryDirectory() as folder:
        for index, (ours, theirs) in enumerate(zip(fused.backbone.features, plain.backbone.features)):
            stem = str(Path(folder) / f"stage{index}")
            ms.export(theirs, x, file_name=stem, file_format="ONNX")
            session = onnxruntime.InferenceSession(stem + ".onnx", options, providers=["CPUExecutionProvider"])
            feed = {session.get_inputs()[0].name: x.asnumpy()}
            want = session.run(None, feed)[0]
            got = ours(x).asnumpy()
            error = float(np.abs(got - want).max() / max(1e-6, np.abs(want).max()))
            if error > 1e-4:
                raise SystemExit(f"stage {index}: the twin and ONNX Runtime differ by {error:.1e} of the scale")
            entry, arrays = kernel_call(ours, x.asnumpy(), got.shape)
            status, direct = call_entry_point(library, entry, arrays)
            if status != 0 or not np.array_equal(direct, got):
                raise SystemExit(f"stage {index}: {entry} called alone does not give the twin's output")
            times = ([], [], [])
            for _ in range(args.rounds):
                start = time.perf_counter()
                session.run(None, feed)
                times[0].append(time.perf_counter() - start)
                start = time.perf_counter()
                ours(x).asnumpy()
                times[1].append(time.perf_counter() - start)
                start = time.perf_counter()
                call_entry_point(library, entry, arrays)
                times[2].append(time.perf_counter() - start)
            medians = [1e3 * statistics.median(t) for t in times]
            totals = [total + value for total, value in zip(totals, medians)]
            ort_ms, twin_ms, kernel_ms = medians
            print(f"| features.{index} | {tuple(x.shape)[1:]} | {ort_ms:.2f} | {twin_ms:.2f} | {kernel_ms:.2f} | "
                  f"{twin_ms / ort_ms:.2f} | {kernel_ms / ort_ms:.2f} |", flush=True)
            x = ms.Tensor(got)
    print(f"| all stages | | {totals[0]:.1f} | {totals[1]:.1f} | {totals[2]:.1f} | {totals[1] / totals[0]:.2f} | "
          f"{totals[2] / totals[0]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
