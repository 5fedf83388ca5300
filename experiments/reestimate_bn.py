"""BatchNorm statistics re-estimated on a data folder's train photos (AdaBN), written as torchvision-layout weights.

    python experiments/reestimate_bn.py --data_path FOLD --pretrained W --output W_fold.pth [--flip]
    python ms_impl/train.py --device CPU --data_path FOLD --pretrained W_fold.pth ...   # then train as usual

The PyTorch twin with the pretrained backbone runs once over the train split's eval crops (and their mirror images
with --flip) in train mode without gradients, every BatchNorm's running mean and variance reset and accumulated as
the plain average over all batches (PyTorch's momentum=None), so each layer's statistics are those of the photos
it will see. Only the statistics change; the weights are the pretrained ones. Used for issue 12 (the result is in
experiments/finetune_results.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--pretrained", required=True, help="torchvision-layout backbone (.pth)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--flip", action="store_true", help="also the mirror image of every crop")
    args = parser.parse_args()
    import torch

    from ms_impl.trainer.run import build_config
    from ms_impl.trainer import dataset
    from pt_impl.mobilenetv2 import MobileNetV2

    cfg = build_config(["--device", "CPU", "--data_path", args.data_path, "--output_dir", str(args.output.parent)])
    images = dataset.scan_split(dataset.resolve_data(cfg)[0], "train", [c.name for c in cfg.classes])
    pretrained = torch.load(args.pretrained, weights_only=True)
    model = MobileNetV2(num_classes=len(cfg.classes))
    model.load_state_dict(pretrained, strict=False)  # the backbone; the head is not used
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    seen = 0
    with torch.no_grad():
        for batch, _ in dataset.eval_dataset(images, cfg.image_size, 32, cfg.num_workers).create_tuple_iterator():
            x = torch.from_numpy(batch.asnumpy())
            for view in ((x, torch.flip(x, dims=[3])) if args.flip else (x,)):
                model.features(view)
                seen += len(view)
    state = model.state_dict()
    torch.save({k: (state[k] if not k.endswith("num_batches_tracked") else v) for k, v in pretrained.items()}, args.output)
    print(f"{args.output}: BatchNorm statistics of {seen} crops of {args.data_path}/train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
