"""The fine-tuning step with the first N backbone layers frozen (`--freeze_layers N`), several N interleaved.

    flock /tmp/heavy.lock python experiments/freeze_layers_step.py --data_path D --pretrained W \
        [--layers 0 4 7] [--steps 12] [-- TRAINER FLAGS]

Builds the trainer's own step (`build_run` of ms_impl/trainer/run.py: the fine-tuning default's
frozen BatchNorm, backbone LR scale, replayable dropout, loss and optimizer) once per N,
from the same pretrained weights, and times their steps in turn (N=0, N=4, ..., N=0, ...)
on one batch of the training pipeline held in memory, so load hits all alike.
Prints the median and range of img/s per N. Used for issue 13 (docs/benchmarks.md, End to end).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 4, 7], help="values of --freeze_layers to compare")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per value")
    parser.add_argument("trainer_flags", nargs="*", help="more flags for ms_impl/train.py (after --)")
    args = parser.parse_args()
    os.environ.setdefault("GLOG_v", "3")
    from ms_impl.trainer import dataset
    from ms_impl.trainer.run import build_config, build_run, start_devices

    steps, dropouts, cfg, batch = {}, {}, None, None
    for count in args.layers:
        cfg = build_config(["--device", "CPU", "--data_path", args.data_path, "--pretrained", args.pretrained,
                            "--output_dir", os.path.join("runs", "freeze_layers_step"),
                            "--freeze_layers", str(count)] + args.trainer_flags)
        run = build_run(cfg, start_devices(cfg))
        data = run.data
        steps[count] = run.train_step()
        dropouts[count] = run.network.head.dropout
        if batch is None:
            batch = next(dataset.train_dataset(data.train, cfg, data.image_size, 0).create_tuple_iterator(num_epochs=1))
        for _ in range(2):  # graph compilation and warm-up
            steps[count](*batch).asnumpy()
    rates = {count: [] for count in steps}
    for global_step in range(args.steps):
        for count, step in steps.items():
            if hasattr(dropouts[count], "draw"):  # the trainer's host-side dropout mask
                dropouts[count].draw(cfg.seed, global_step)
            start = time.perf_counter()
            step(*batch).asnumpy()
            rates[count].append(cfg.batch_size / (time.perf_counter() - start))
    for count, values in rates.items():
        print(f"--freeze_layers {count}: {statistics.median(values):.1f} img/s ({min(values):.1f}-{max(values):.1f}) "
              f"over {args.steps} interleaved steps", flush=True)


if __name__ == "__main__":
    sys.exit(main())
