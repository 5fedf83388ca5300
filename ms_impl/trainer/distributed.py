"""Data-parallel training with MindSpore's own launcher, `msrun`.

    msrun --worker_num=2 --local_worker_num=2 --master_addr=127.0.0.1 --master_port=8118 \
          --join=True --cluster_time_out=60 --log_dir=runs/dp2/msrun_logs \
          ms_impl/train.py --output-dir runs/dp2

msrun starts one scheduler process and `local_worker_num` worker processes,
each running the same script with the cluster described in environment
variables (checked with MindSpore 2.10): every process gets MS_ROLE (MS_SCHED
or MS_WORKER), MS_SCHED_HOST, MS_SCHED_PORT, MS_WORKER_NUM, MS_TOPO_TIMEOUT
(= --cluster_time_out) and RANK_SIZE; workers also get MS_NODE_ID, RANK_ID and
DEVICE_ID. `mindspore.communication.init()` builds the cluster from them. The
scheduler process only coordinates: it never returns from `init()` (it exits
there when the job ends), so everything a script does before `init()` also
runs in the scheduler and must be cheap and side-effect free.

Gradient exchange is MindSpore's: with `ParallelMode.DATA_PARALLEL` and
`gradients_mean=True`, `nn.TrainOneStepCell` inserts a `DistributedGradReducer`
that all-reduces and averages the gradients, so every rank applies the same
update. What this module adds around it:
- `init_distributed`: detect msrun, init, set data-parallel mode, or fail in one line;
- `all_reduce_sum`: global eval counts (exact for integers);
- `average_batchnorm_statistics`: BatchNorm moving statistics are per rank
  (batch statistics of its own shard); averaging them makes replicas identical;
- `check_replicas_identical`: prove that ranks hold the same weights (`ms_impl.weights.digest`).

On CPU MindSpore's collective library (mccl) all-reduces float32 and float16 only.
"""
from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

import numpy as np

from ms_impl.trainer.device import unusable_device
from ms_impl.trainer.errors import UsageError
from ms_impl.weights import digest as parameters_digest
from parity.core.files import one_line

__all__ = [
    "DistributedContext", "MSRUN_ENV", "launched_by_msrun", "init_distributed",
    "all_reduce_sum", "average_batchnorm_statistics",
    "check_replicas_identical", "raise_if_any_rank_failed", "any_rank", "replicated_state", "global_batch_size",
    "is_collective_failure", "SINGLE_PROCESS",
]

# Set by msrun for every process it starts (scheduler and workers).
MSRUN_ENV = ("MS_ROLE", "MS_SCHED_HOST", "MS_SCHED_PORT", "MS_WORKER_NUM")
ROLE_SCHEDULER = "MS_SCHED"
ROLE_WORKER = "MS_WORKER"
DEFAULT_TOPO_TIMEOUT_S = 600  # msrun's --cluster_time_out default

# Integers are all-reduced as float32 in base-2**12 digits: each digit's sum
# stays below 2**24 (exact in float32) for up to 4096 ranks, counts below 2**36.
_DIGIT_BITS = 12


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job; rank 0 of 1 when not distributed."""

    rank: int = 0
    world_size: int = 1
    distributed: bool = False

    @property
    def is_main_process(self) -> bool:
        """Only this process writes checkpoints, metrics and plots."""
        return self.rank == 0

    @property
    def num_shards(self) -> int:
        """How many parts the data is split into (one per rank)."""
        return self.world_size

    @property
    def shard_id(self) -> int:
        """Which part this rank reads."""
        return self.rank

    def describe(self) -> str:
        if not self.distributed:
            return "single process"
        return f"data parallel: rank {self.rank} of {self.world_size}"


SINGLE_PROCESS = DistributedContext()


def launched_by_msrun(environ: Mapping[str, str] = os.environ) -> bool:
    """True when the process was started by msrun (or with msrun's dynamic-cluster variables set by hand)."""
    return all(environ.get(key) for key in MSRUN_ENV)


def _topo_timeout(environ: Mapping[str, str]) -> str:
    value = environ.get("MS_TOPO_TIMEOUT")
    return f"{value} s" if value else f"{DEFAULT_TOPO_TIMEOUT_S} s (msrun default)"


def _port_taken(host: str, port: int) -> bool:
    """True when another process listens on host:port (the scheduler could not bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a port left in TIME_WAIT by an earlier run is not "taken"; a listener still is.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((socket.gethostbyname(host), port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def _diagnose(role: str, host: str, port: int) -> str:
    """A likely cause of a failed cluster build, from this process's point of view."""
    if role == ROLE_SCHEDULER:
        if _port_taken(host, port):
            return f"master port {port} on {host} is already in use by another process; pick a free --master_port"
        return ("the job ended abnormally: a worker failed, was lost (its process or host stopped) or did not join "
                "in time (see the worker logs)")
    try:
        with socket.create_connection((host, port), timeout=3):
            return (f"{host}:{port} accepts connections but no MindSpore scheduler answered: the port is taken "
                    "by another program, or the scheduler failed (see scheduler.log)")
    except OSError as e:
        return f"master {host}:{port} is unreachable ({e.strerror or e}); check --master_addr/--master_port"


def init_distributed(mode: str = "auto", device: Optional[str] = None,
                     environ: Mapping[str, str] = os.environ) -> DistributedContext:
    """Join the msrun job and switch MindSpore to data parallel with mean gradients.

    `mode`: "auto" (distributed when launched by msrun), "on" (required: fail
    when the cluster variables are missing), "off" (single process even under
    msrun). `device` ('CPU', 'GPU', 'Ascend') is set first when given (the
    collective backend follows it: mccl, nccl, hccl). Call this before any
    tensor exists (HCCL requires it) and before building the network.

    Raises UsageError with one line (MindSpore's reason, the master address
    and a likely cause) when the cluster cannot be built; that takes at most
    msrun's --cluster_time_out (MS_TOPO_TIMEOUT) plus MindSpore's message
    timeout (MS_RECEIVE_MSG_TIMEOUT, 15 s).
    """
    if mode not in ("auto", "on", "off"):
        raise UsageError(f"--distributed: expected auto, on or off, got {mode!r}")
    if mode == "off" or (mode == "auto" and not launched_by_msrun(environ)):
        return SINGLE_PROCESS
    if mode == "on" and not launched_by_msrun(environ) and not environ.get("RANK_TABLE_FILE"):
        missing = ", ".join(k for k in MSRUN_ENV if not environ.get(k))
        raise UsageError(f"--distributed on: not launched by msrun ({missing} not set); "
                         "start with: msrun --worker_num=N --local_worker_num=N ... ms_impl/train.py")

    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    if device is not None:
        try:
            ms.set_device(device)
        except (RuntimeError, ValueError) as e:
            raise unusable_device(device, e) from None
    role = environ.get("MS_ROLE", ROLE_WORKER)
    host, port = environ.get("MS_SCHED_HOST", "?"), int(environ.get("MS_SCHED_PORT", "0") or 0)
    try:
        init()  # the scheduler process stays in here until the job ends, then exits
    except RuntimeError as e:
        where = f"{'scheduler' if role == ROLE_SCHEDULER else 'worker'}, master {host}:{port}, cluster_time_out {_topo_timeout(environ)}"
        cause = _diagnose(role, host, port) if port else "no master address"
        raise UsageError(f"distributed launch failed ({where}): {cause}. MindSpore RuntimeError: {one_line(e, with_type=False)}") from None

    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return DistributedContext(rank=int(get_rank()), world_size=int(get_group_size()), distributed=True)


_ALL_REDUCE = None


def _all_reduce_float32(values: np.ndarray) -> np.ndarray:
    global _ALL_REDUCE
    import mindspore as ms
    from mindspore import ops

    if _ALL_REDUCE is None:
        _ALL_REDUCE = ops.AllReduce()  # sum over the world group; runs eagerly in either mode
    return _ALL_REDUCE(ms.Tensor(np.ascontiguousarray(values, dtype=np.float32))).asnumpy()


def all_reduce_sum(values, ctx: DistributedContext) -> np.ndarray:
    """Sum of `values` over all ranks (the values themselves when not distributed).

    Integer arrays come back exact (int64); floats are summed in float32 (the
    only precision mccl reduces on CPU), e.g. a loss sum to ~1e-7 relative.
    Every rank must call it the same number of times.
    """
    array = np.asarray(values)
    if not ctx.distributed:
        return array.copy()
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.int64)
        if array.size and (array.min() < 0 or array.max() >= 2 ** (3 * _DIGIT_BITS) // ctx.world_size):
            raise ValueError("all_reduce_sum: integer counts must be in [0, 2**36 / world_size)")
        base = 1 << _DIGIT_BITS
        digits = np.stack([array // (base * base), (array // base) % base, array % base])
        summed = np.rint(_all_reduce_float32(digits)).astype(np.int64)
        return (summed[0] * base + summed[1]) * base + summed[2]
    return _all_reduce_float32(array).astype(np.float64)


def _is_batchnorm_statistic(name: str) -> bool:
    return name.endswith(("moving_mean", "moving_variance"))


def average_batchnorm_statistics(network, ctx: DistributedContext) -> None:
    """Replace every BatchNorm moving mean/variance by its mean over the ranks.

    In data parallel each rank normalises with its own shard's batch
    statistics and so accumulates its own moving averages; the learnable
    weights stay identical (averaged gradients). Averaging the statistics
    before evaluating or saving makes the replicas identical again.
    """
    if not ctx.distributed:
        return
    import mindspore as ms
    from mindspore import nn

    # Statistics a BatchNorm never updates (--freeze-bn, --freeze-layers) are alike on all ranks already: left
    # exactly as they are (a sum over ranks divided again can move them by a rounding).
    fixed = {id(p) for _, cell in network.cells_and_names() if isinstance(cell, nn.BatchNorm2d)
             and cell.use_batch_statistics is False for p in (cell.moving_mean, cell.moving_variance)}
    stats = [p for p in network.get_parameters() if _is_batchnorm_statistic(p.name) and id(p) not in fixed]
    if not stats:
        return
    flat = np.concatenate([p.asnumpy().astype(np.float32).ravel() for p in stats])
    mean = _all_reduce_float32(flat) / np.float32(ctx.world_size)
    offset = 0
    for p in stats:
        size = int(np.prod(p.shape))
        p.set_data(ms.Tensor(mean[offset:offset + size].reshape(p.shape).astype(np.float32)))
        offset += size


def replicated_state(network) -> Dict[str, object]:
    """The parameters every rank must hold identically: all weights (frozen ones too) and BatchNorm statistics.

    (Per-rank state, such as a dropout mask for the rank's own samples, is left out.)
    """
    from ms_impl.trainer.train_step import model_parameters

    return model_parameters(network)


def any_rank(flag: bool, ctx: DistributedContext) -> bool:
    """Collective: True on every rank when `flag` is True on at least one rank."""
    if not ctx.distributed:
        return flag
    return bool(all_reduce_sum(np.array([int(flag)]), ctx)[0] > 0)


def raise_if_any_rank_failed(error: Optional[UsageError], ctx: DistributedContext, what: str) -> None:
    """Collective: every rank raises when any rank hit a UsageError in `what`.

    Setup steps that may fail on some ranks only (rank 0 preparing the output
    folder, a host missing the data or the checkpoint) end here, so the
    other ranks stop with a line too instead of waiting in the first
    gradient all-reduce until msrun kills them.
    """
    if not ctx.distributed:
        if error is not None:
            raise error
        return
    failed = int(all_reduce_sum(np.array([0 if error is None else 1]), ctx)[0])
    if error is not None:
        raise error
    if failed:
        raise UsageError(f"{what} failed on {failed} other rank(s); see their worker logs")


def check_replicas_identical(named_params: Dict[str, object], ctx: DistributedContext, what: str) -> str:
    """Digest of this rank's parameters; raises UsageError on every rank when the ranks disagree.

    The first 48 bits of each rank's digest, as four 12-bit numbers d, are
    summed with their squares: W * sum(d^2) == sum(d)^2 holds exactly when all
    ranks hold the same d, and every rank reaches the same verdict.
    """
    digest = parameters_digest(named_params.items())
    if not ctx.distributed:
        return digest
    mine = np.array([int(digest[i:i + 3], 16) for i in range(0, 12, 3)], dtype=np.int64)
    sums = all_reduce_sum(np.concatenate([mine, mine * mine]), ctx)
    total, total_squares = sums[:4], sums[4:]
    if not np.array_equal(total_squares * ctx.world_size, total * total):
        raise UsageError(f"{what}: the ranks hold different weights (rank {ctx.rank} digest {digest[:16]}); "
                         "every rank must start from the same seed and the same checkpoint file")
    return digest


_COLLECTIVE_WORDS = ("allreduce", "reducescatter", "allgather", "broadcast", "collective", "communicat", "cluster",
                     "abnormalnode")


def is_collective_failure(exc: BaseException) -> bool:
    """True for MindSpore's errors when a collective cannot complete because a peer stopped: "Launch kernel failed:
    .../AllReduce-op0", or "The state of the cluster is error, ... abnormal nodes num: 1" (which one depends on
    when the loss is noticed)."""
    text = str(exc).lower().replace("_", "").replace(" ", "")
    return any(word in text for word in _COLLECTIVE_WORDS)


def global_batch_size(per_worker_batch: int, ctx: DistributedContext) -> int:
    return per_worker_batch * ctx.world_size
