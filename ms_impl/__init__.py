"""MobileNetV2 in MindSpore: the twin of `pt_impl`, file for file, plus the trainer and its command-line tools.

The twin (mirrors `pt_impl/`):
    mobilenetv2   MobileNetV2Backbone, MobileNetV2Head, MobileNetV2 (official MindSpore parameter names)
    loss          label-smoothed cross entropy
    optim         Momentum with weight decay on conv/dense weights only
    transforms    train/eval preprocessing (mindspore.dataset ops)
    weights       the one way to load a name->array dict into a Cell, and the weight digest
    fast_conv     our CPU kernels (kernels/*.cc: 3x3 and 1x1 convolutions, BatchNorm + ReLU6), built on first use,
                  and the twin's blocks on them (BatchNorm folded, layers fused)
    export_model  writing a network to MINDIR or ONNX (the export command line and the harness use it)

Command-line tools (run as `python ms_impl/<tool>.py` or `python -m ms_impl.<tool>`):
    train, eval, predict, export, datatools, bench_distributed

The engine behind them is the `ms_impl.trainer` subpackage.
"""
