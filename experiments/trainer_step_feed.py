"""Does the trainer's data pipeline slow its training step? Fixed batch vs pipeline-fed, blocks alternating.

    flock /tmp/heavy.lock python experiments/trainer_step_feed.py --data_path D --pretrained W [--rounds 3] \
        [--block 6] [-- TRAINER FLAGS]

Builds the trainer's own objects for the given flags (by default the fine-tuning
default: frozen BatchNorm, backbone LR scale, replayable dropout, its loss and optimizer)
with the trainer's own `build_run` (ms_impl/trainer/run.py), then times blocks of `--block` steps: on one batch
held in memory, and fed by the stage-2 training pipeline (decode, augment, batch, its
workers running alongside). Prints img/s per block. Stage 1 (the head on cached
features) is skipped: the speed of a step does not depend on the head's weights.
Used for issue 13 (docs/benchmarks.md, End to end).
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", required=True)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block", type=int, default=6, help="steps per timed block")
    parser.add_argument("trainer_flags", nargs="*", help="more flags for ms_impl/train.py (after --)")
    args = parser.parse_args()
    os.environ.setdefault("GLOG_v", "3")
    from ms_impl.trainer import dataset
    from ms_impl.trainer.run import build_config, build_run, start_devices

    cfg = build_config(["--device", "CPU", "--data_path", args.data_path, "--pretrained", args.pretrained,
                         "--output_dir", os.path.join("runs", "trainer_step_feed")] + args.trainer_flags)
    run = build_run(cfg, start_devices(cfg))
    data, network, step = run.data, run.network, run.train_step()
    print(f"freeze_bn {cfg.freeze_bn}, freeze_layers {cfg.freeze_layers}, num_workers {cfg.num_workers}, batch {cfg.batch_size}, train_whole_prob "
          f"{cfg.train_whole_prob}", flush=True)
    epoch = 0
    batches = dataset.train_dataset(data.train, cfg, data.image_size, epoch).create_tuple_iterator(num_epochs=1)
    fixed = next(batches)
    for _ in range(2):  # graph compilation and warm-up
        step(*fixed).asnumpy()

    def pipeline_batch():
        nonlocal batches, epoch
        try:
            return next(batches)
        except StopIteration:
            epoch += 1
            batches = dataset.train_dataset(data.train, cfg, data.image_size, epoch).create_tuple_iterator(num_epochs=1)
            return next(batches)

    dropout = network.head.dropout
    global_step = 0
    for _ in range(args.rounds):
        rates = []
        for feed in (lambda: fixed, pipeline_batch):
            start = time.perf_counter()
            for _ in range(args.block):
                if hasattr(dropout, "draw"):  # the trainer's host-side dropout mask, as train_one_epoch draws it
                    dropout.draw(cfg.seed, global_step)
                step(*feed()).asnumpy()
                global_step += 1
            rates.append(args.block * cfg.batch_size / (time.perf_counter() - start))
        print(f"fixed batch {rates[0]:.1f} img/s, pipeline-fed {rates[1]:.1f} img/s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
