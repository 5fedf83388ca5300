"""Train MobileNetV2 (MindSpore) on the 26-class garbage set: `python ms_impl/train.py --device CPU`.

    python ms_impl/train.py --device CPU                     # embedded synthetic set, a few minutes
    python ms_impl/train.py --device GPU --data-path DIR     # DIR/{train,val}/<class name>/*.jpg
    python ms_impl/train.py --device CPU --resume auto       # continue the run in output_dir
    msrun --worker_num=2 --local_worker_num=2 --master_port=8118 --join=True \
          --cluster_time_out=60 --log_dir=runs/dp2/msrun_logs \
          ms_impl/train.py --device CPU --output-dir runs/dp2   # data parallel, 2 workers

Config: configs/garbage26_<device>.yaml over the defaults of ms_impl/trainer/schema.py (or
--config FILE, e.g. a run's saved config.yaml); every key can be overridden
with --key value, booleans also as bare flags (--force); --help lists them all. Per epoch: train (progress bar with loss, lr,
img/s), evaluate on val, append metrics.csv, save checkpoints. At the end:
per-class table, confusion matrix, curves and summary.json in output_dir.
SIGINT/SIGTERM saves a resumable checkpoint before exiting.

Under msrun (see ms_impl/trainer/distributed.py) every worker runs this script:
batch_size is per worker, each rank reads its shard of every epoch,
gradients are averaged by MindSpore, evaluation counts are summed over the
ranks, and only rank 0 writes files.

Exit status: 0 done, 1 training diverged (non-finite loss or weights), 2 bad
input (or an unwritable/full output folder), 3 another msrun worker was lost
(resumable with --resume auto), 130/143 interrupted by SIGINT/SIGTERM
(resumable with --resume auto). One `error:` line each.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: put the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from parity.core import interrupts  # noqa: E402  first: before the imports that take a while or start threads
from parity.core.options import framework_log_level  # noqa: E402

interrupts.watch_sigint(__name__, "mbv2-train")  # Ctrl+C stays SIGINT in the trainer process
framework_log_level()  # MindSpore's own log: errors only unless --verbose (before mindspore is imported)

import logging  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import List, Optional  # noqa: E402

from ms_impl.trainer import checkpoint  # noqa: E402
from ms_impl.trainer import distributed as dist  # noqa: E402
from ms_impl.trainer.errors import UsageError  # noqa: E402
from ms_impl.trainer.logs import buffer_setup_log, close_run_log, setup_logging  # noqa: E402
from ms_impl.trainer.loop import (EXIT_DIVERGED, EXIT_SIGINT, EXIT_WORKER_LOST, Interrupted,  # noqa: E402
                                  TrainingDiverged, check_output_dir, log_plan, prepare_output_dir, save_run_config,
                                  train, train_frozen, train_head_first, write_final_report)
from ms_impl.trainer.recipes import describe as describe_recipe  # noqa: E402
from ms_impl.trainer.run import build_config, build_run, checkpoint_dir, network_params, resume_path, start_devices  # noqa: E402
from ms_impl.trainer.run_folder import RunLock, holds_run  # noqa: E402
from parity.core.cli import run_cli  # noqa: E402
from parity.core.files import one_line  # noqa: E402

log = logging.getLogger("ms_impl.train")

__all__ = ["main", "run_training"]

# ---------------------------------------------------------------- entry point


def main(argv: Optional[List[str]] = None) -> int:
    # run_cli: a UserError or a path no system call accepts is one `error:` line and exit 2, and it hands
    # Ctrl+C over: from here on the trainer handles it (one line, the run folder settled)
    return run_cli(lambda: _run_and_close_log(argv))


def _run_and_close_log(argv: Optional[List[str]]) -> int:
    try:
        return run_training(argv)
    finally:
        close_run_log()  # a later run in this process must not write into this run's train.log


def run_training(argv: Optional[List[str]] = None) -> int:
    setup_logging()
    close_run_log()
    started = time.perf_counter()
    cfg = None
    ctx = dist.SINGLE_PROCESS
    lock: Optional[RunLock] = None
    setup_done = False
    try:
        cfg = build_config(argv, description=__doc__.split("\n\n")[0])
        ctx = start_devices(cfg)  # under msrun: joins the job first; before any data work, so a missing GPU fails fast
        if ctx.distributed:
            setup_logging(console_prefix="" if ctx.is_main_process else f"[rank {ctx.rank}] ")
            log.info("%s (rank 0 writes all files)", ctx.describe())
        out = Path(cfg.output_dir)
        setup_error = None
        buffer = buffer_setup_log() if ctx.is_main_process else None
        try:  # a step may fail on some ranks only (rank 0's output folder, a host without the data)
            if cfg.freeze_backbone and ctx.distributed:
                raise UsageError("--freeze-backbone runs in one process (the head trains in seconds); launch it without msrun")
            if ctx.is_main_process:
                lock = RunLock(out).acquire()  # refused at once when another trainer holds the folder
                lock.remove_stale_temporaries()
            resume_from = resume_path(cfg)
            starting_over = ctx.is_main_process and resume_from is None and holds_run(out)
            if ctx.is_main_process:
                check_output_dir(cfg, starting_over)
            run = build_run(cfg, ctx, resume_from)  # every input is validated before anything in output_dir changes
            if ctx.is_main_process:
                out = prepare_output_dir(cfg, starting_over)
                setup_logging(out / "train.log")
            log.info("%s", describe_recipe(cfg))
            if cfg.smoke:
                log.info("MBV2_SMOKE: a smoke run, its figures mean nothing (%s)",
                         ", ".join(f"{key} {value}" for key, value in cfg.smoke.items()))
            if cfg.head_first_epochs and resume_from is None:  # a resumed run's checkpoint holds its trained head
                train_head_first(run)
        except UsageError as e:
            setup_error = e
        finally:
            if buffer is not None:
                logging.getLogger("ms_impl").removeHandler(buffer)
        dist.raise_if_any_rank_failed(setup_error, ctx, "setup")
        setup_done = True
        dist.check_replicas_identical(dist.replicated_state(run.network), ctx, "weights at the start")
        if ctx.is_main_process:
            save_run_config(run)
            if resume_from is not None and cfg.resume == "auto":  # a crash may have cut the last epoch's writes short
                checkpoint.complete_checkpoint_set(checkpoint_dir(cfg), resume_from, run.state, network_params(run.network),
                                                   run.optimizer, log)
        log_plan(run)
        result, rows = train_frozen(run) if cfg.freeze_backbone else train(run)
        digest = dist.check_replicas_identical(dist.replicated_state(run.network), ctx, "weights at the end")
        if ctx.distributed:
            log.info("final weights identical on all %d ranks: sha256 %s", ctx.world_size, digest)
        if ctx.is_main_process:
            write_final_report(run, result, rows, time.perf_counter() - started)
    except TrainingDiverged as e:  # bad input (UsageError, WriteError, a path too long): main's run_cli reports it
        last = checkpoint_dir(cfg) / checkpoint.LAST
        kept = f"last good checkpoint kept: {last}" if last.is_file() else "no checkpoint had been saved yet"
        print(f"error: training diverged: {e}; {kept}", file=sys.stderr)
        return EXIT_DIVERGED
    except RuntimeError as e:
        if not (ctx.distributed and setup_done and dist.is_collective_failure(e)):
            raise
        # MindSpore reports a collective that lost its peer as a kernel failure: after setup, under msrun, that is
        # another worker (or its host) gone; every completed epoch is saved
        last = checkpoint_dir(cfg) / checkpoint.LAST
        kept = ("rank 0 keeps the checkpoints" if not ctx.is_main_process
                else f"the last checkpoint is {last}" if last.is_file() else "no epoch had completed")
        print(f"error: distributed training stopped on rank {ctx.rank}: another worker or host was lost "
              f"({one_line(e)}); {kept}; start every host's launch again with --resume auto", file=sys.stderr)
        return EXIT_WORKER_LOST
    except Interrupted as e:
        print(f"interrupted by {e}: continue with --resume auto --config {Path(cfg.output_dir) / 'config.yaml'}",
              file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:  # Ctrl+C before the training loop took over the signals
        where = "during setup; nothing in the output folder was changed" if not setup_done else "before any step was saved"
        print(f"error: interrupted (SIGINT) {where}", file=sys.stderr)
        return EXIT_SIGINT
    finally:
        if lock is not None:
            lock.release(remove_created=not setup_done)  # a failed setup leaves no empty run folder behind
    return 0


if __name__ == "__main__":
    sys.exit(main())
