"""One process of `python -m parity bench`: it hosts peers and runs one call at a time, when asked.

    python -m parity.harness.bench_worker --settings JSON --inputs DIR --peers ms,pt-cl   (bench.py starts it)
    python -m parity.harness.bench_worker --settings JSON --inputs DIR --prepare

`--prepare` writes the inputs every peer shares into DIR: the batch (`batch.npz`: images, labels), the
weights in the torchvision layout (`weights.npz`), and the ONNX export of those weights (`bench.onnx`,
or `onnx_error.txt` with the reason it failed). Otherwise the worker reads one request per line on stdin,
`<peer> <run>`, runs it once and answers one JSON line on its own channel (the stdout it started with;
anything a library prints goes to stderr): {"seconds": s} or {"failed": "reason"}. Runs: `eval`,
`train`, `layer-fwd:<i>`, `layer-bwd:<i>`, `describe` (answers {"describe": versions}) (the i-th case of `layer_cases`), `data` (one epoch of the
trainer's data pipeline; answers {"seconds", "images", "workers"}). A peer's objects are built on its
first request, outside the time reported; the first call itself (graph compilation, torch.compile)
is inside it, as bench.py reports it apart.

Only the frameworks a hosted peer needs are imported: a PyTorch peer's process never imports
MindSpore, and ONNX Runtime's and OpenVINO's import neither.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Tuple

import numpy as np

from parity.core import converter as convert
from parity.core import spec as mbv2_spec
from parity.core.cli import run_cli
from parity.core.files import one_line

# Peer ids (bench.py maps them to the names it prints).
PT_NCHW, PT_CHANNELS_LAST, PT_COMPILED = "pt-nchw", "pt-cl", "pt-compiled"
ORT, OPENVINO, MS_TWIN, MS_OWN_KERNELS, MS_UNFOLDED, DATA = "ort", "ov", "ms", "ms-own", "ms-unfolded", "data"
PEERS = (PT_NCHW, PT_CHANNELS_LAST, PT_COMPILED, ORT, OPENVINO, MS_TWIN, MS_OWN_KERNELS, MS_UNFOLDED, DATA)
LR_STEPS = 1000  # the constant learning-rate schedule is longer than any bench run


# bench.py's options the peers need (batch, image_size, width, num_classes, threads, fast_conv, mode,
# compile_backend, weights, data_path), passed as JSON.
Settings = SimpleNamespace


# ---- shared inputs -------------------------------------------------------------------------------------

def prepare(settings: Settings, folder: Path) -> None:
    """The batch, the weights (torchvision layout) and their ONNX export, written into `folder`."""
    import torch

    from pt_impl import weights as pt_weights
    from pt_impl.mobilenetv2 import MobileNetV2 as PtNet

    rng = np.random.default_rng(0)
    images = rng.standard_normal((settings.batch, 3, settings.image_size, settings.image_size), dtype=np.float32)
    labels = rng.integers(0, settings.num_classes, size=settings.batch)
    np.savez(folder / "batch.npz", images=images, labels=labels)
    net = PtNet(num_classes=settings.num_classes, width_mult=settings.width)
    if settings.weights:
        ckpt = convert.read_checkpoint(settings.weights)
        tensors = convert.convert(ckpt, "torchvision", drop_head=ckpt.num_classes != settings.num_classes).tensors
        pt_weights.load_into(net, tensors, strict=False)
    else:
        # The init with BatchNorm running statistics of this batch, as a trained network's would be (eval
        # mode is then well scaled). Every peer carries these same weights: PyTorch's oneDNN kernels run
        # several times slower on some values than on others, so peers with inits of their own, or
        # weights drifted apart by training, would not be compared on equal terms.
        batch_norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for bn in batch_norms:
            bn.momentum = 1.0
        net.train()
        with torch.no_grad():
            net(torch.from_numpy(images))
        for bn in batch_norms:
            bn.momentum = mbv2_spec.BN_MOMENTUM_TORCH
    state = pt_weights.state_of(net)
    np.savez(folder / "weights.npz", **state)
    try:
        _export_onnx(settings, state, folder / "bench.onnx")
    except Exception as exc:  # optional peer: its row says why
        (folder / "onnx_error.txt").write_text(one_line(exc), encoding="utf-8")


def _ms_tensors(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    source = convert.checkpoint_from_state(dict(state), "torchvision", source="PyTorch twin")
    return convert.convert(source, "ms-official").tensors


def _export_onnx(settings: Settings, state: Dict[str, np.ndarray], path: Path) -> None:
    """The project's ONNX export (ms_impl/export_model.py) of these weights: the MindSpore twin on its own layers."""
    from ms_impl import weights as ms_weights
    from ms_impl.export_model import export_model
    from ms_impl.mobilenetv2 import MobileNetV2 as MsNet

    _start_mindspore(settings)
    net = MsNet(num_classes=settings.num_classes, width_mult=settings.width, fast_conv="off")
    ms_weights.load_into(net, _ms_tensors(state), strict=True)
    net.set_train(False)
    export_model(net, str(path), "ONNX", settings.image_size, settings.batch)


def _start_mindspore(settings: Settings) -> None:
    import mindspore as ms

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE if settings.mode == "graph" else ms.PYNATIVE_MODE)
    if settings.threads > 0:
        ms.set_context(runtime_num_threads=settings.threads)


# ---- layers of the per-layer breakdown ------------------------------------------------------------------

def layer_cases(width: float, image_size: int) -> List[Tuple[str, dict]]:
    """Representative layers of the twin at this width and image size: (label, layer description)."""
    spec = mbv2_spec.build_spec(width)
    stem = spec.stem
    s = image_size
    # Block 2 (first stride-2 depthwise, at 1/2 resolution) and block 3 (stride 1, at 1/4).
    dw2, dw1 = spec.blocks[1].depthwise, spec.blocks[2].depthwise
    expand = spec.blocks[1].expand
    mid = expand.out_channels
    half = (s - 1) // 2 + 1
    return [
        (f"stem 3x3 s2 {stem.in_channels}->{stem.out_channels} @{s}",
         dict(kind="conv", cin=stem.in_channels, cout=stem.out_channels, k=3, stride=2, groups=1, size=s)),
        (f"depthwise 3x3 s2 {dw2.in_channels} @{half}",
         dict(kind="conv", cin=dw2.in_channels, cout=dw2.in_channels, k=3, stride=2, groups=dw2.in_channels,
              size=half)),
        (f"depthwise 3x3 s1 {dw1.in_channels} @{(half - 1) // 2 + 1}",
         dict(kind="conv", cin=dw1.in_channels, cout=dw1.in_channels, k=3, stride=1, groups=dw1.in_channels,
              size=(half - 1) // 2 + 1)),
        (f"pointwise 1x1 {expand.in_channels}->{mid} @{half}",
         dict(kind="conv", cin=expand.in_channels, cout=mid, k=1, stride=1, groups=1, size=half)),
        (f"BatchNorm {mid} @{half} (train)", dict(kind="bn", cin=mid, size=half)),
        (f"BatchNorm + ReLU6 {mid} @{half} (train)", dict(kind="bn_relu6", cin=mid, size=half)),
        (f"ReLU6 {mid} @{half}", dict(kind="relu6", cin=mid, size=half)),
    ]


def _layer_input(settings: Settings, index: int) -> np.ndarray:
    case = layer_cases(settings.width, settings.image_size)[index][1]
    rng = np.random.default_rng([1, index])  # the same input in every process
    return rng.standard_normal((settings.batch, case["cin"], case["size"], case["size"]), dtype=np.float32)


# ---- PyTorch -------------------------------------------------------------------------------------------

class TorchPeer:
    """The PyTorch twin in one layout, eager or compiled (`torch.compile` on channels_last)."""

    def __init__(self, settings: Settings, folder: Path, peer: str) -> None:
        import torch

        from pt_impl import weights as pt_weights
        from pt_impl.mobilenetv2 import MobileNetV2 as PtNet

        if settings.threads > 0:
            torch.set_num_threads(settings.threads)
        self.settings, self.torch = settings, torch
        self.layout = torch.contiguous_format if peer == PT_NCHW else torch.channels_last
        batch = np.load(folder / "batch.npz")
        self.x = torch.from_numpy(batch["images"]).contiguous(memory_format=self.layout)
        self.y = torch.from_numpy(batch["labels"].astype(np.int64))
        with np.load(folder / "weights.npz") as state:
            tensors = {name: state[name] for name in state.files}
        self.net = PtNet(num_classes=settings.num_classes, width_mult=settings.width)
        pt_weights.load_into(self.net, tensors, strict=True)
        self.net = self.net.to(memory_format=self.layout)
        # PyTorch at its best: its CPU eval ran 2x faster after one forward + backward in the process than
        # before any (22.9 -> 50.0 img/s, channels_last, batch 32: the memory allocator's state), so every
        # PyTorch peer starts with one, in eval mode (BatchNorm statistics untouched), gradients dropped.
        self.net.eval()
        self.net(self.x).sum().backward()
        self.net.zero_grad(set_to_none=True)
        # One compiled callable for both modes: train and eval graphs differ (BatchNorm), each compiles once.
        self.model = torch.compile(self.net, backend=settings.compile_backend) if peer == PT_COMPILED else self.net
        self._train_step: Callable[[], None] = None
        self._layers: Dict[int, tuple] = {}

    def describe(self) -> str:
        return f"torch {self.torch.__version__}"

    def eval(self) -> None:
        self.net.eval()
        with self.torch.inference_mode():
            self.model(self.x).numpy()

    def train(self) -> None:
        if self._train_step is None:
            from pt_impl.loss import smoothed_cross_entropy
            from pt_impl.optim import build_optimizer

            self.net.train()
            optimizer, _ = build_optimizer(self.net.named_parameters(), np.full(LR_STEPS, 0.01, np.float32))
            criterion = smoothed_cross_entropy(0.1)

            def step() -> None:
                optimizer.zero_grad(set_to_none=True)
                loss = criterion(self.model(self.x), self.y)
                loss.backward()
                optimizer.step()
                loss.item()
            self._train_step = step
        self._train_step()

    def _layer(self, index: int):
        if index not in self._layers:
            from torch import nn

            case = layer_cases(self.settings.width, self.settings.image_size)[index][1]
            if case["kind"] == "conv":
                layer = nn.Conv2d(case["cin"], case["cout"], case["k"], case["stride"], padding=(case["k"] - 1) // 2,
                                  groups=case["groups"], bias=False)
            elif case["kind"] == "bn":
                layer = nn.BatchNorm2d(case["cin"])
            elif case["kind"] == "bn_relu6":
                layer = nn.Sequential(nn.BatchNorm2d(case["cin"]), nn.ReLU6())
            else:
                layer = nn.ReLU6()
            x = self.torch.from_numpy(_layer_input(self.settings, index)).contiguous(memory_format=self.layout)
            self._layers[index] = (layer.to(memory_format=self.layout).train(), x.requires_grad_(True))
        return self._layers[index]

    def layer_forward(self, index: int) -> None:
        layer, x = self._layer(index)
        with self.torch.no_grad():
            layer(x).numpy()

    def layer_backward(self, index: int) -> None:
        layer, x = self._layer(index)
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).sum().backward()
        x.grad.numpy()


# ---- ONNX Runtime --------------------------------------------------------------------------------------

class OrtPeer:
    """ONNX Runtime (CPU execution provider) on the prepared export; inference only."""

    def __init__(self, settings: Settings, folder: Path, peer: str) -> None:
        error = folder / "onnx_error.txt"
        if error.exists():
            raise RuntimeError(f"ONNX export failed: {error.read_text(encoding='utf-8')}")
        import onnxruntime  # optional: pip install onnxruntime

        options = onnxruntime.SessionOptions()
        if settings.threads > 0:
            options.intra_op_num_threads = settings.threads
            options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(folder / "bench.onnx"), options,
                                                    providers=["CPUExecutionProvider"])
        self.feed = {self.session.get_inputs()[0].name: np.load(folder / "batch.npz")["images"]}
        self.version = onnxruntime.__version__

    def describe(self) -> str:
        return f"onnxruntime {self.version}, CPU execution provider"

    def eval(self) -> None:
        self.session.run(None, self.feed)

    def train(self) -> None:
        raise RuntimeError("inference only")


# ---- OpenVINO ------------------------------------------------------------------------------------------

class OpenVinoPeer:
    """OpenVINO (CPU plugin) on the same prepared export as ONNX Runtime; inference only. Latency hint (one
    stream: the whole batch on all its threads, as every other peer runs it), float32 inference precision
    (on CPUs with bf16 or AMX the plugin would otherwise compute in a lower precision), and --threads."""

    def __init__(self, settings: Settings, folder: Path, peer: str) -> None:
        error = folder / "onnx_error.txt"
        if error.exists():
            raise RuntimeError(f"ONNX export failed: {error.read_text(encoding='utf-8')}")
        try:
            import openvino  # optional: pip install openvino (the project's `bench` extra)
        except ImportError as exc:
            raise RuntimeError(f"openvino cannot be imported ({one_line(exc, with_type=False)}); "
                               "pip install openvino (the `bench` extra)") from exc
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if settings.threads > 0:
            config["INFERENCE_NUM_THREADS"] = settings.threads
        core = openvino.Core()
        self.compiled = core.compile_model(core.read_model(str(folder / "bench.onnx")), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.images = np.load(folder / "batch.npz")["images"]
        self.version = openvino.__version__.split("-")[0]

    def describe(self) -> str:
        # The settings as the compiled model reports them, not as asked.
        read = {name: self.compiled.get_property(name) for name in
                ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT")}
        read = {name: value.get_type_name() if hasattr(value, "get_type_name") else str(value)  # an element type: f32
                for name, value in read.items()}
        return (f"openvino {self.version}, CPU plugin, {read['INFERENCE_NUM_THREADS']} threads, "
                f"{read['NUM_STREAMS']} stream(s), {read['PERFORMANCE_HINT'].lower()} hint, "
                f"{read['INFERENCE_PRECISION_HINT']} precision")

    def logits(self) -> np.ndarray:
        return self.request.infer({0: self.images})[0]

    def eval(self) -> None:
        self.logits()

    def train(self) -> None:
        raise RuntimeError("inference only")


# ---- MindSpore -----------------------------------------------------------------------------------------

class MindSporePeer:
    """The MindSpore twin: with `--fast-conv` as asked (ms), on MindSpore's own kernels (ms-own), or with
    the eval BatchNorm folding off (ms-unfolded)."""

    def __init__(self, settings: Settings, folder: Path, peer: str) -> None:
        import mindspore as ms

        from ms_impl import weights as ms_weights
        from ms_impl.fast_conv import ConvBNReLUFusion, InvertedResidualFusion, resolve_fast_conv
        from ms_impl.mobilenetv2 import MobileNetV2 as MsNet

        _start_mindspore(settings)
        self.settings, self.ms = settings, ms
        self.fast_conv = "off" if peer == MS_OWN_KERNELS else settings.fast_conv
        if peer == MS_OWN_KERNELS and not resolve_fast_conv(settings.fast_conv):
            raise RuntimeError("the twin above runs on them")
        batch = np.load(folder / "batch.npz")
        self.x, self.y = ms.Tensor(batch["images"]), ms.Tensor(batch["labels"].astype(np.int32))
        with np.load(folder / "weights.npz") as state:
            tensors = _ms_tensors({name: state[name] for name in state.files})
        self.net = MsNet(num_classes=settings.num_classes, width_mult=settings.width, fast_conv=self.fast_conv)
        ms_weights.load_into(self.net, tensors, strict=True)
        if peer == MS_UNFOLDED:
            folding = [cell for _, cell in self.net.cells_and_names()
                       if isinstance(cell, (ConvBNReLUFusion, InvertedResidualFusion)) and cell.fold_bn]
            if not folding:
                raise RuntimeError("nothing folded (kernels off)")
            for cell in folding:
                cell.fold_bn = False
        self.unfolded = peer == MS_UNFOLDED
        self.kernels = resolve_fast_conv(self.fast_conv)
        self._train_step = None
        self._layers: Dict[int, tuple] = {}

    def describe(self) -> str:
        return (f"mindspore {self.ms.__version__} ({self.settings.mode}), fast_conv={self.fast_conv} "
                f"(kernels {'on' if self.kernels else 'off'})")

    def eval(self) -> None:
        self.net.set_train(False)
        self.net(self.x).asnumpy()

    def train(self) -> None:
        if self.unfolded:
            raise RuntimeError("training with batch statistics never folds")
        if self._train_step is None:
            from mindspore import nn

            from ms_impl.loss import smoothed_cross_entropy
            from ms_impl.optim import build_optimizer

            self.net.set_train(True)
            optimizer = build_optimizer(self.net.trainable_params(), np.full(LR_STEPS, 0.01, np.float32))
            self._train_step = nn.TrainOneStepCell(nn.WithLossCell(self.net, smoothed_cross_entropy(0.1)), optimizer)
            self._train_step.set_train(True)
        self._train_step(self.x, self.y).asnumpy()

    def _layer(self, index: int):
        if index not in self._layers:
            case = layer_cases(self.settings.width, self.settings.image_size)[index][1]
            layer = _ms_layer(case, self.fast_conv)
            layer.set_train(True)
            weights = layer.trainable_params()
            grad = self.ms.value_and_grad(_SumOfOutput(layer), grad_position=0, weights=weights if weights else None)
            self._layers[index] = (layer, grad, self.ms.Tensor(_layer_input(self.settings, index)))
        return self._layers[index]

    def layer_forward(self, index: int) -> None:
        layer, _, x = self._layer(index)
        layer(x).asnumpy()

    def layer_backward(self, index: int) -> None:
        _, grad, x = self._layer(index)
        _, grads = grad(x)
        (grads[0] if isinstance(grads, tuple) else grads).asnumpy()


def _ms_layer(case: dict, fast_conv: str):
    from mindspore import nn

    from ms_impl.fast_conv import conv2d
    from ms_impl.mobilenetv2 import batch_norm

    if case["kind"] == "conv":
        return conv2d(case["cin"], case["cout"], case["k"], case["stride"], case["groups"], "HeNormal", fast_conv)
    if case["kind"] == "bn":
        return batch_norm(case["cin"], fast_conv)
    if case["kind"] == "bn_relu6":
        return _BatchNormReLU6(batch_norm(case["cin"], fast_conv))
    return nn.ReLU6()


def _BatchNormReLU6(bn):  # noqa: N802 (a Cell factory: the class is defined once MindSpore is imported)
    """BN + ReLU6 as the twin's ConvBNReLU computes them: one fused kernel with our BatchNorm, else two ops."""
    from mindspore import nn

    from ms_impl.fast_conv import FastBatchNorm2d

    class BatchNormReLU6(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.bn = bn
            self.relu6 = nn.ReLU6()
            self.fused = isinstance(bn, FastBatchNorm2d)

        def construct(self, x):
            if self.fused:
                return self.bn.relu6(x)
            return self.relu6(self.bn(x))

    return BatchNormReLU6()


def _SumOfOutput(layer):  # noqa: N802 (a Cell factory)
    """A Cell computing layer(x).sum(): what the breakdown differentiates (graph mode compiles Cells)."""
    from mindspore import nn

    class SumOfOutput(nn.Cell):
        def __init__(self) -> None:
            super().__init__()
            self.layer = layer

        def construct(self, x):
            return self.layer(x).sum()

    return SumOfOutput()


# ---- the trainer's data pipeline -----------------------------------------------------------------------

def data_pipeline(settings: Settings) -> dict:
    """One epoch of the trainer's training pipeline (decode, augment, batch), no network attached."""
    from ms_impl.trainer import dataset
    from ms_impl.trainer.config import load_config

    cfg = load_config(["--device", "CPU", "--data_path", settings.data_path, "--batch_size", str(settings.batch)])
    train = dataset.scan_split(settings.data_path, "train", [c.name for c in cfg.classes])
    batches = dataset.train_dataset(train, cfg, settings.image_size, epoch=0)
    images = 0
    start = time.perf_counter()
    for image, _ in batches.create_tuple_iterator(output_numpy=True, num_epochs=1):
        images += image.shape[0]
    return {"seconds": time.perf_counter() - start, "images": images,
            "workers": dataset.worker_count(cfg.num_workers)}


# ---- the request loop ----------------------------------------------------------------------------------

PEER_CLASSES = {PT_NCHW: TorchPeer, PT_CHANNELS_LAST: TorchPeer, PT_COMPILED: TorchPeer, ORT: OrtPeer,
                OPENVINO: OpenVinoPeer, MS_TWIN: MindSporePeer, MS_OWN_KERNELS: MindSporePeer,
                MS_UNFOLDED: MindSporePeer}


def serve(settings: Settings, folder: Path, peers: List[str], requests, answers) -> None:
    """Answers requests until stdin closes: each run once, timed; a peer that cannot be built fails every run."""
    hosted: Dict[str, object] = {}
    for line in requests:
        peer, _, run = line.strip().partition(" ")
        try:
            if peer not in peers:
                raise ValueError(f"peer {peer!r} is not hosted here ({', '.join(peers)})")
            if peer == DATA:
                answer = data_pipeline(settings)
            else:
                if peer not in hosted:
                    hosted[peer] = PEER_CLASSES[peer](settings, folder, peer)
                target = hosted[peer]
                kind, _, index = run.partition(":")
                if run == "describe":
                    answers.write(json.dumps({"describe": target.describe()}) + "\n")
                    answers.flush()
                    continue
                call = {"eval": lambda: target.eval(), "train": lambda: target.train(),
                        "layer-fwd": lambda: target.layer_forward(int(index)),
                        "layer-bwd": lambda: target.layer_backward(int(index))}[kind]
                start = time.perf_counter()
                call()
                answer = {"seconds": time.perf_counter() - start}
        except Exception as exc:  # reported on the peer's row, the bench goes on
            answer = {"failed": one_line(exc, with_type=False)}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", required=True, help="bench options as JSON")
    parser.add_argument("--inputs", required=True, help="folder of the shared inputs")
    parser.add_argument("--peers", default="", help="comma-separated peer ids hosted here: " + ", ".join(PEERS))
    parser.add_argument("--prepare", action="store_true", help="write the shared inputs and exit")
    args = parser.parse_args()
    settings = Settings(**json.loads(args.settings))
    if settings.threads > 0:  # before any framework starts its thread pools
        for name in ("OMP_NUM_THREADS", "MBV2_KERNEL_THREADS"):
            os.environ[name] = str(settings.threads)
    os.environ.setdefault("GLOG_v", "3")
    folder = Path(args.inputs)
    if args.prepare:
        try:
            prepare(settings, folder)
        except convert.ConversionError as exc:  # the user's --weights: one line, exit 2 (bench.py passes it on)
            print(f"error: --weights: {one_line(exc, with_type=False)}", file=sys.stderr)
            return 2
        return 0
    # Answers go to the stdout this process started with; whatever a library prints goes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(settings, folder, [p for p in args.peers.split(",") if p], sys.stdin, answers)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
