"""The trainer's fine-tuning step against the PyTorch twin, step by step, on real photos with BatchNorm frozen.

    flock /tmp/heavy.lock python experiments/frozen_bn_steps.py --data_path D --pretrained W \
        [--freeze_layers 14] [--lr 0.005] [--backbone_lr_scale 0.2] [--steps 12]

Both twins start from the same pretrained backbone and the same (random) head, BatchNorm on its moving statistics
(MindSpore: the trainer's --freeze_bn network, GRAPH mode, our kernels; PyTorch: eval mode), the first N feature
layers fixed, momentum SGD without weight decay at a constant LR (backbone at the given multiple), the same
batches of eval crops in turn. Prints both losses per step and the relative difference of features.18's weights at
the end. Used for issue 12: when a larger backbone LR diverges with frozen statistics, this shows whether the
twins diverge alike (the landscape) or MindSpore alone (a bug).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--pretrained", required=True, help="torchvision-layout backbone (.pth)")
    parser.add_argument("--freeze_layers", type=int, default=14)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--backbone_lr_scale", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
    import mindspore as ms
    import torch

    from ms_impl.loss import smoothed_cross_entropy
    from ms_impl.trainer.run import build_config, build_network, build_optimizer
    from ms_impl.trainer import dataset
    from ms_impl.trainer.train_step import build_train_step
    from pt_impl.loss import smoothed_cross_entropy as torch_cross_entropy
    from pt_impl.mobilenetv2 import MobileNetV2

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = build_config(["--device", "CPU", "--data_path", args.data_path, "--pretrained", args.pretrained,
                        "--freeze_layers", str(args.freeze_layers), "--freeze_bn", "true", "--weight_decay", "0",
                        "--backbone_lr_scale", str(args.backbone_lr_scale), "--output_dir", "unused"])
    network = build_network(cfg)
    network.head.dropout.keep_mask.set_data(ms.Tensor(np.ones(network.head.dropout.keep_mask.shape, np.float32)))
    images = dataset.scan_split(dataset.resolve_data(cfg)[0], "train", [c.name for c in cfg.classes])
    batches = [(x.asnumpy(), y.asnumpy().astype(np.int32)) for x, y in
               dataset.eval_dataset(images, cfg.image_size, cfg.batch_size, cfg.num_workers).create_tuple_iterator()]
    batches = batches[:args.batches]

    model = MobileNetV2(num_classes=len(cfg.classes))
    model.load_state_dict(torch.load(args.pretrained, weights_only=True), strict=False)
    with torch.no_grad():
        model.classifier[1].weight.copy_(torch.from_numpy(network.head.dense.weight.asnumpy()))
        model.classifier[1].bias.copy_(torch.from_numpy(network.head.dense.bias.asnumpy()))
    model.eval()
    for layer in model.features[:args.freeze_layers]:
        layer.requires_grad_(False)
    head = list(model.classifier.parameters())
    backbone = [p for p in model.features.parameters() if p.requires_grad]
    torch_optimizer = torch.optim.SGD([{"params": backbone, "lr": args.lr * args.backbone_lr_scale},
                                       {"params": head, "lr": args.lr}], momentum=cfg.momentum)
    step = build_train_step(network, smoothed_cross_entropy(cfg.label_smoothing),
                            build_optimizer(cfg, network, np.full(args.steps, args.lr, np.float32)), cfg.freeze_layers)
    criterion = torch_cross_entropy(cfg.label_smoothing)
    for k in range(args.steps):
        x, y = batches[k % len(batches)]
        ms_loss = float(step(ms.Tensor(x), ms.Tensor(y)).asnumpy())
        torch_optimizer.zero_grad()
        loss = criterion(model(torch.from_numpy(x)), torch.from_numpy(y.astype(np.int64)))
        loss.backward()
        torch_optimizer.step()
        print(f"step {k}: MindSpore {ms_loss:.4f}  PyTorch {loss.item():.4f}", flush=True)
    ms_weight = network.backbone.features[18].features[0].weight.asnumpy()
    torch_weight = model.features[18][0].weight.detach().numpy()
    print(f"features.18 conv weight, relative difference: {np.linalg.norm(ms_weight - torch_weight) / np.linalg.norm(ms_weight):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
