"""The eval forward op by op: the MindSpore twin (our kernels) against ONNX Runtime and OpenVINO, per block and kind.

    flock /tmp/heavy.lock python experiments/profile_eval_ops.py [--batch 32] [--image-size 224] [--width 1.0] \
        [--rounds 5] [--threads 2] [--save RAW.json]

The same weights and batch as `python -m parity bench` (its worker writes them, and the ONNX export, into a
temporary folder), all three engines in this one process, `--threads` threads each (ours, MindSpore's, ONNX
Runtime's intra-op pool, OpenVINO's), float32. Each round runs, one after the other:

- the twin's whole eval forward (GRAPH mode, fast_conv auto), then each stage alone (features.0 ... 18, head) on
  the previous stage's output, and inside each inverted residual block its parts alone: the hidden layers
  (expansion + depthwise in one kernel pass, or the depthwise alone in block 1), the projection, the residual add;
  every call timed up to its output's `asnumpy()` (on CPU the call returns when done; `asnumpy` copies nothing);
- ONNX Runtime's whole run without profiling, then one run of a session with `enable_profiling` (its per-node
  kernel times);
- OpenVINO's whole run (latency hint, f32), then one run of a model compiled with `PERF_COUNT` (per-layer times).

The engines' nodes are assigned to blocks and op kinds by the order of their convolutions: the network is a chain,
each engine runs its 52 convolutions (1.0x) in the network's order, whatever it fuses into them (bias, ReLU6,
residual add; OpenVINO's depthwise convolutions fused into the 1x1 before them count with 0 ms, their time in that
one's); other nodes go to the block of the convolution before them (layout reorders, an unfused add), the
pooling and the dense layer to the head. Tables: per stage, per op kind, per block (hidden layers, projection).
Figures are the median and range over the rounds, in ms per batch.
On a shared machine the load average is printed at the start and the end; compare ratios, not absolute times.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from parity.core import spec as mbv2_spec  # noqa: E402

HEAD = "head"
STEM, EXPAND, DEPTHWISE, PROJECT, LAST = "stem 3x3", "1x1 expand", "depthwise 3x3", "1x1 project", "last 1x1"
EXPAND_DEPTHWISE = "1x1 expand + depthwise in one kernel pass"
RESIDUAL, REORDER, OTHER = "residual add", "layout reorder", "other"


def conv_layout(width: float) -> List[Tuple[str, str]]:
    """(stage, op kind) of every convolution of the network, in the order it runs."""
    spec = mbv2_spec.build_spec(width)
    layout = [("features.0", STEM)]
    for index, block in enumerate(spec.blocks, start=1):
        layout += ([] if block.expand is None else [(f"features.{index}", EXPAND)]) + \
                  [(f"features.{index}", DEPTHWISE), (f"features.{index}", PROJECT)]
    return layout + [(f"features.{len(spec.blocks) + 1}", LAST)]


def assign(nodes: List[Tuple[str, float]], layout: List[Tuple[str, str]], is_conv,
           is_head) -> Dict[Tuple[str, str], float]:
    """{(stage, kind): ms} from (node type, ms) in execution order, as the module docstring says."""
    times: Dict[Tuple[str, str], float] = defaultdict(float)
    convs = -1
    for node_type, ms in nodes:
        if is_conv(node_type):
            convs += 1
            if convs >= len(layout):
                raise RuntimeError(f"more convolutions than the network has ({len(layout)})")
            key = layout[convs]
        elif is_head(node_type):
            key = (HEAD, HEAD)
        elif convs < 0:
            key = ("features.0", REORDER if "eorder" in node_type else OTHER)
        else:
            stage = layout[convs][0]
            key = (stage, RESIDUAL if node_type == "Add" else REORDER if "eorder" in node_type else OTHER)
        times[key] += ms
    if convs != len(layout) - 1:
        raise RuntimeError(f"{convs + 1} convolutions ran, the network has {len(layout)}")
    return dict(times)


# ---- ONNX Runtime ----------------------------------------------------------------------------------------

class OnnxRuntime:
    def __init__(self, onnx: Path, images: np.ndarray, threads: int, profile_prefix: str) -> None:
        import onnxruntime

        def session(profile: bool):
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            if profile:
                options.enable_profiling = True
                options.profile_file_prefix = profile_prefix
            return onnxruntime.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])

        self.plain, self.profiled = session(False), session(True)
        self.feed = {self.plain.get_inputs()[0].name: images}
        self.version = onnxruntime.__version__

    def run(self) -> float:
        start = time.perf_counter()
        self.plain.run(None, self.feed)
        return time.perf_counter() - start

    def profiled_run(self) -> None:
        self.profiled.run(None, self.feed)

    def node_times(self) -> List[List[Tuple[str, float]]]:
        """Per profiled run: (op type, ms) of every node kernel, in execution order."""
        events = json.loads(Path(self.profiled.end_profiling()).read_text(encoding="utf-8"))
        runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                      if e.get("cat") == "Session" and e["name"] == "model_run")
        nodes = sorted((e["ts"], e["args"].get("op_name", "?"), e["dur"] / 1e3) for e in events
                       if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"))
        return [[(op, ms) for ts, op, ms in nodes if start <= ts <= end] for start, end in runs]


ORT_CONV = ("Conv", "FusedConv", "NhwcFusedConv")


# ---- OpenVINO --------------------------------------------------------------------------------------------

class OpenVino:
    def __init__(self, onnx: Path, images: np.ndarray, threads: int) -> None:
        import openvino

        core = openvino.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
        self.plain = core.compile_model(core.read_model(str(onnx)), "CPU", config).create_infer_request()
        self.counted = core.compile_model(core.read_model(str(onnx)), "CPU", {**config, "PERF_COUNT": True}) \
            .create_infer_request()
        self.images = images
        self.version = openvino.__version__.split("-")[0]

    def run(self) -> float:
        start = time.perf_counter()
        self.plain.infer({0: self.images})
        return time.perf_counter() - start

    def counted_run(self) -> List[Tuple[str, float]]:
        """(node type, ms) in execution order: every executed node, and every convolution (one fused into the
        one before it, NOT_RUN, with 0 ms: its time is in that one's)."""
        self.counted.infer({0: self.images})
        return [(info.node_type, info.real_time.total_seconds() * 1e3) for info in self.counted.get_profiling_info()
                if info.status == info.Status.EXECUTED or info.node_type in OV_CONV]

    def fused_depthwise(self) -> int:
        """Depthwise convolutions the CPU plugin fused into the 1x1 convolution before them (its conv + dw fusion)."""
        return sum(1 for info in self.counted.get_profiling_info()
                   if info.node_type == "GroupConvolution" and info.status != info.Status.EXECUTED)


OV_CONV = ("Convolution", "GroupConvolution")
HEAD_TYPES = ("ReduceMean", "GlobalAveragePool", "Gemm", "MatMul", "FullyConnected", "Flatten", "Reshape")


# ---- the MindSpore twin ----------------------------------------------------------------------------------

class Twin:
    """The twin's whole forward, each stage alone, and each block's parts alone."""

    def __init__(self, settings: SimpleNamespace, folder: Path) -> None:
        import mindspore as ms
        from mindspore import nn

        from ms_impl.fast_conv import InvertedResidualFusion
        from ms_impl.fast_conv.blocks import folded_batch_norm
        from parity.harness import bench_worker as worker

        peer = worker.MindSporePeer(settings, folder, worker.MS_TWIN)
        if not peer.kernels:
            raise RuntimeError("our kernels are off here (fast_conv auto fell back): nothing to profile")
        self.ms, self.net, self.x = ms, peer.net, peer.x
        self.net.set_train(False)

        class Hidden(nn.Cell):
            """The block's layers before the projection: expansion + depthwise in one pass, or the depthwise."""

            def __init__(self, block) -> None:
                super().__init__()
                self.block = block
                self.has_expand = block.has_expand

            def construct(self, x):
                if self.has_expand:
                    return self.block.expansion_depthwise_inference(x)
                return self.block.conv[0](x)

        class Projection(nn.Cell):
            def __init__(self, block) -> None:
                super().__init__()
                self.projection, self.bn = block.conv[-2], block.conv[-1]

            def construct(self, hidden):
                weight, bias = folded_batch_norm(self.projection, self.bn)
                return self.projection.with_bias(hidden, weight, bias)

        class Add(nn.Cell):
            def construct(self, a, b):
                return a + b

        self.stages = [(f"features.{i}", cell) for i, cell in enumerate(self.net.backbone.features)] + \
            [(HEAD, self.net.head)]
        self.parts = {}
        for name, cell in self.stages:
            if isinstance(cell, InvertedResidualFusion):
                if not cell.fold_bn:
                    raise RuntimeError(f"{name} does not fold its BatchNorm: not the twin's eval path")
                self.parts[name] = (Hidden(cell), Projection(cell), Add() if cell.use_residual else None,
                                    cell.has_expand)
        for cell in [c for _, c in self.stages] + [p for parts in self.parts.values() for p in parts[:3] if p]:
            cell.set_train(False)
        # Every stage's input, once (the previous stage's output).
        self.inputs = {}
        x = self.x
        for name, cell in self.stages:
            self.inputs[name] = x
            x = cell(x)

    def _timed(self, call, *args):
        start = time.perf_counter()
        out = call(*args)
        out.asnumpy()
        return out, time.perf_counter() - start

    def run(self) -> float:
        start = time.perf_counter()
        self.net(self.x).asnumpy()
        return time.perf_counter() - start

    def stage_times(self) -> Dict[str, float]:
        return {name: self._timed(cell, self.inputs[name])[1] * 1e3 for name, cell in self.stages}

    def part_times(self) -> Dict[Tuple[str, str], float]:
        times = {}
        for name, (hidden, projection, add, has_expand) in self.parts.items():
            x = self.inputs[name]
            h, times[(name, EXPAND_DEPTHWISE if has_expand else DEPTHWISE)] = self._timed(hidden, x)
            out, times[(name, PROJECT)] = self._timed(projection, h)
            if add is not None:
                times[(name, RESIDUAL)] = self._timed(add, x, out)[1]
        return {key: seconds * 1e3 for key, seconds in times.items()}


# ---- report ----------------------------------------------------------------------------------------------

def _cell(values: List[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def _ratio(ms: List[float], other: List[float]) -> str:
    if not ms or not other:
        return "-"
    return f"{statistics.median(ms) / statistics.median(other):.2f}"


def _load() -> str:
    return "%.1f %.1f %.1f" % os.getloadavg()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, after one untimed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", default="",
                        help="also write the raw timings (every node of every round) to this JSON")
    args = parser.parse_args()
    os.environ.setdefault("GLOG_v", "3")
    os.environ["OMP_NUM_THREADS"] = os.environ["MBV2_KERNEL_THREADS"] = str(args.threads)
    settings = SimpleNamespace(batch=args.batch, image_size=args.image_size, width=args.width, num_classes=1000,
                               threads=args.threads, fast_conv="auto", mode="graph", compile_backend="inductor",
                               weights="", data_path="")
    print(f"# eval forward op by op, batch {args.batch}, {args.image_size} px, width {args.width}, {args.threads} "
          f"threads each, float32, {args.rounds} interleaved rounds; load average at start {_load()} "
          f"({os.cpu_count()} CPUs)", flush=True)
    with tempfile.TemporaryDirectory(prefix="profile-eval-") as temp:
        folder = Path(temp)
        # The bench's own inputs (batch, weights, ONNX export), written by its worker in a process of its own.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                           os.environ.get("PYTHONPATH", "")]))
        subprocess.run([sys.executable, "-m", "parity.harness.bench_worker", "--settings", json.dumps(vars(settings)),
                        "--inputs", temp, "--prepare"], check=True, env=env)
        if not (folder / "bench.onnx").is_file():
            sys.exit(f"error: ONNX export failed: {(folder / 'onnx_error.txt').read_text(encoding='utf-8')}")
        images = np.load(folder / "batch.npz")["images"]
        twin = Twin(settings, folder)
        ort = OnnxRuntime(folder / "bench.onnx", images, args.threads, str(folder / "ort"))
        try:
            ov = OpenVino(folder / "bench.onnx", images, args.threads)
        except ImportError as exc:
            print(f"# OpenVINO skipped: {exc}")
            ov = None
        print(f"# MindSpore {twin.ms.__version__} GRAPH, fast_conv auto; onnxruntime {ort.version}"
              + (f"; openvino {ov.version}" if ov else ""), flush=True)
        layout = conv_layout(args.width)
        whole: Dict[str, List[float]] = defaultdict(list)
        stages: Dict[str, Dict[str, List[float]]] = defaultdict(lambda: defaultdict(list))  # engine -> stage -> ms
        kinds: Dict[str, Dict[Tuple[str, str], List[float]]] = defaultdict(lambda: defaultdict(list))
        ov_nodes = []
        for round_index in range(args.rounds + 1):
            timed = round_index > 0
            ms_whole = twin.run()
            ms_stages, ms_parts = twin.stage_times(), twin.part_times()
            ort_whole = ort.run()
            ort.profiled_run()
            if ov:
                ov_whole = ov.run()
                counted = ov.counted_run()
            if not timed:
                continue
            whole["MindSpore"].append(ms_whole * 1e3)
            whole["ONNX Runtime"].append(ort_whole * 1e3)
            for name, ms in ms_stages.items():
                stages["MindSpore"][name].append(ms)
            for key, ms in ms_parts.items():
                kinds["MindSpore"][key].append(ms)
            for stage, kind in (layout[0], layout[-1]):  # stages of one layer
                kinds["MindSpore"][(stage, kind)].append(ms_stages[stage])
            kinds["MindSpore"][(HEAD, HEAD)].append(ms_stages[HEAD])
            if ov:
                whole["OpenVINO"].append(ov_whole * 1e3)
                ov_nodes.append(counted)
        ort_runs = ort.node_times()[1:]  # the untimed round's profile dropped
        per_engine = [("ONNX Runtime", ort_runs, ORT_CONV)] + ([("OpenVINO", ov_nodes, OV_CONV)] if ov else [])
        if args.save:
            Path(args.save).write_text(json.dumps({"ms_whole": whole["MindSpore"], "ms_stages": stages["MindSpore"],
                                                   "ms_parts": {" / ".join(k): v for k, v in kinds["MindSpore"].items()},
                                                   "ort_nodes": ort_runs, "ov_nodes": ov_nodes,
                                                   "whole": whole}), encoding="utf-8")
        fused = ov.fused_depthwise() if ov else 0
        for engine, runs, conv_types in per_engine:
            for nodes in runs:
                assigned = assign(nodes, layout, lambda t: t in conv_types, lambda t: t in HEAD_TYPES)
                per_stage: Dict[str, float] = defaultdict(float)
                for (stage, kind), ms in assigned.items():
                    per_stage[stage] += ms
                    kinds[engine][(stage, kind)].append(ms)
                for stage, ms in per_stage.items():
                    stages[engine][stage].append(ms)
        load_end = _load()

    engines = ["MindSpore", "ONNX Runtime"] + (["OpenVINO"] if ov else [])
    print("\n## Per stage, ms per batch: median (range)\n")
    print("| stage | " + " | ".join(engines) + " | " + " | ".join(f"MS / {e}" for e in engines[1:]) + " |")
    print("|---" * (2 * len(engines)) + "|")
    names = [name for name, _ in twin.stages]
    for name in names:
        print(f"| {name} | " + " | ".join(_cell(stages[e][name]) for e in engines) + " | "
              + " | ".join(_ratio(stages["MindSpore"][name], stages[e][name]) for e in engines[1:]) + " |")
    sums = {e: [sum(stages[e][name][r] for name in names if stages[e][name]) for r in range(args.rounds)]
            for e in engines}
    print("| sum of stages | " + " | ".join(_cell(sums[e]) for e in engines) + " | "
          + " | ".join(_ratio(sums["MindSpore"], sums[e]) for e in engines[1:]) + " |")
    print("| whole forward (wall, unprofiled) | " + " | ".join(_cell(whole[e]) for e in engines) + " | "
          + " | ".join(_ratio(whole["MindSpore"], whole[e]) for e in engines[1:]) + " |")

    print("\n## Per op kind, summed over the blocks, ms per batch: median (range)\n")
    print("| op kind | " + " | ".join(engines) + " | " + " | ".join(f"MS / {e}" for e in engines[1:]) + " |")
    print("|---" * (2 * len(engines)) + "|")
    expanding = {stage for stage, kind in layout if kind == EXPAND}
    first_block = layout[1][0]  # block 1: no expansion

    def summed(engine: str, wanted) -> List[float]:
        keys = [key for key in kinds[engine] if wanted(*key)]
        return [sum(kinds[engine][key][r] for key in keys) for r in range(args.rounds)] if keys else []

    rows = [
        (STEM, lambda stage, kind: stage == "features.0"),
        (f"{EXPAND} + {DEPTHWISE}, blocks with an expansion (MindSpore: one kernel pass)",
         lambda stage, kind: stage in expanding and kind in (EXPAND, DEPTHWISE, EXPAND_DEPTHWISE)),
        (f"- of which {EXPAND}", lambda stage, kind: kind == EXPAND),
        (f"- of which {DEPTHWISE}", lambda stage, kind: stage in expanding and kind == DEPTHWISE),
        (f"{DEPTHWISE}, {first_block} (no expansion)", lambda stage, kind: stage == first_block and kind == DEPTHWISE),
        (PROJECT, lambda stage, kind: kind == PROJECT),
        (f"{RESIDUAL} (-: fused into the projection)", lambda stage, kind: kind == RESIDUAL),
        (LAST, lambda stage, kind: stage == layout[-1][0]),
        (HEAD, lambda stage, kind: stage == HEAD),
        (f"{REORDER} (blocks 1-17)", lambda stage, kind: kind == REORDER and stage not in ("features.0", layout[-1][0])),
        (f"{OTHER} (blocks 1-17)", lambda stage, kind: kind == OTHER and stage not in ("features.0", layout[-1][0])),
    ]
    for label, wanted in rows:
        values = {e: summed(e, wanted) for e in engines}
        if not any(values.values()):
            continue
        print(f"| {label} | " + " | ".join(_cell(values[e]) for e in engines) + " | "
              + " | ".join(_ratio(values["MindSpore"], values[e]) for e in engines[1:]) + " |")
    print("\n## Per block: its layers before the projection (expansion + depthwise), and the projection (+ residual "
          "add), ms per batch: median\n")
    print("| block | " + " | ".join(f"{e} hidden | {e} projection" for e in engines) + " | "
          + " | ".join(f"MS / {e} hidden | MS / {e} projection" for e in engines[1:]) + " |")
    print("|---" * (1 + 4 * len(engines) - 2) + "|")
    for name in names:
        if name not in twin.parts:
            continue
        hidden = {e: summed(e, lambda stage, kind, n=name: stage == n and kind in (EXPAND, DEPTHWISE, EXPAND_DEPTHWISE))
                  for e in engines}
        projection = {e: summed(e, lambda stage, kind, n=name: stage == n and kind in (PROJECT, RESIDUAL))
                      for e in engines}
        print(f"| {name} | " + " | ".join(f"{statistics.median(hidden[e]):.1f} | {statistics.median(projection[e]):.1f}"
                                          for e in engines) + " | "
              + " | ".join(f"{_ratio(hidden['MindSpore'], hidden[e])} | {_ratio(projection['MindSpore'], projection[e])}"
                           for e in engines[1:]) + " |")
    if fused:
        print(f"\nOpenVINO ran {fused} depthwise convolutions fused into the 1x1 expansion before them (one kernel, "
              "its 'dw_1x1' convolution): their time is in the 1x1 expand row.")
    print(f"\n# load average at the end {load_end}")


if __name__ == "__main__":
    main()
