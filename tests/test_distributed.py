"""Data-parallel training launched by msrun (ms_impl/distributed.py).

The msrun tests start real jobs: msrun's scheduler plus 2 CPU worker
processes on this machine, MindSpore's own collectives (mccl) in between.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ms_impl import distributed as dist
from ms_impl.errors import UsageError

JOBS = Path(__file__).resolve().parent / "msrun_jobs"
JOB = JOBS / "tiny_data_parallel.py"
CLUSTER_TIME_OUT_S = 10
WORKERS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(cli_env: dict) -> dict:
    """msrun starts `python` from PATH: the interpreter running the tests must come first."""
    env = dict(cli_env)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def msrun_command(port: int, log_dir: Path, script_and_args: list) -> list:
    msrun = os.path.join(os.path.dirname(sys.executable), "msrun")  # installed with mindspore
    return [msrun, f"--worker_num={WORKERS}", f"--local_worker_num={WORKERS}", "--master_addr=127.0.0.1",
            f"--master_port={port}", "--join=True", f"--cluster_time_out={CLUSTER_TIME_OUT_S}",
            f"--log_dir={log_dir}", *map(str, script_and_args)]


def max_relative_difference(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-12)) for k in b)


# --- single-process behaviour of the helpers -------------------------------------------------------

def test_train_shards_of_a_step_form_the_single_process_batch():
    order = np.random.default_rng(0).permutation(23)
    per_worker, world = 3, 4
    shards = [dist.shard_train_order(order, world, r) for r in range(world)]
    assert len({len(s) for s in shards}) == 1, "every rank must run the same number of steps"
    for step in range(len(shards[0]) // per_worker):
        together = np.concatenate([s[step * per_worker:(step + 1) * per_worker] for s in shards])
        single = order[step * per_worker * world:(step + 1) * per_worker * world]
        assert sorted(together) == sorted(single)
    assert np.array_equal(dist.shard_train_order(order), order)


@pytest.mark.parametrize("num_samples,world", [(13, 2), (260, 3), (5, 8)])
def test_eval_shards_cover_every_sample_exactly_once(num_samples, world):
    shards = [dist.shard_eval_indices(num_samples, world, r) for r in range(world)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(num_samples))


def test_single_process_without_msrun_or_when_switched_off():
    assert dist.init_distributed("auto", environ={}) == dist.SINGLE_PROCESS
    msrun_env = {"MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "8118", "MS_WORKER_NUM": "2"}
    assert dist.launched_by_msrun(msrun_env)
    assert dist.init_distributed("off", environ=msrun_env) == dist.SINGLE_PROCESS
    with pytest.raises(UsageError, match="not launched by msrun"):
        dist.init_distributed("on", environ={})
    with pytest.raises(UsageError, match="expected auto, on or off"):
        dist.init_distributed("yes", environ={})


def test_digest_sees_a_single_changed_value():
    weights = {"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float32)}
    before = dist.parameters_digest(weights.items())
    assert dist.parameters_digest(reversed(list(weights.items()))) == before  # order of listing does not matter
    weights["b"][2] = np.nextafter(np.float32(1), np.float32(2))
    assert dist.parameters_digest(weights.items()) != before


def test_all_reduce_sum_is_identity_in_one_process():
    counts = np.array([3, 2**35])
    assert np.array_equal(dist.all_reduce_sum(counts, dist.SINGLE_PROCESS), counts)


# --- real msrun jobs -------------------------------------------------------------------------------

def msrun(script_and_args: list, log_dir: Path, cwd: Path, env: dict):
    return subprocess.run(msrun_command(free_port(), log_dir, script_and_args), cwd=cwd, env=job_env(env),
                          capture_output=True, text=True, timeout=400)


@pytest.mark.slow
def test_collectives_under_msrun(tmp_path, cli_env):
    result = msrun([JOBS / "collectives.py", tmp_path / "out"], tmp_path / "logs", tmp_path, cli_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(WORKERS)]
    for seen in ranks:
        assert seen["world_size"] == WORKERS
        assert seen["int_sum"] == [2 * 2**33 + 12345, 2]  # exact although far beyond float32's 24 bits
        assert seen["float_sum"] == 1.5
        assert seen["eval_images_total"] == 13 and seen["eval_index_sum"] == sum(range(13))
        assert seen["averaged_moving_means"] == [1.5]  # rank r set every moving mean to r + 1
        assert "the ranks hold different weights" in seen["mismatch"]  # a 1e-3 change on rank 1 only
    assert [r["eval_images_this_rank"] for r in ranks] == [7, 6]
    assert ranks[0]["digest_at_start"] == ranks[1]["digest_at_start"]
    assert ranks[0]["digest_after_average"] == ranks[1]["digest_after_average"]
    assert ranks[0]["setup_failure"] == "setup failed on 1 other rank(s); see their worker logs"
    assert ranks[1]["setup_failure"] == "rank 1 cannot read its data"



@pytest.fixture(scope="module")
def tiny_jobs(tmp_path_factory, cli_env):
    """The same 3-step job once as one process (global batch 8) and once as 2 msrun workers (4 each)."""
    root = tmp_path_factory.mktemp("dp")
    env = job_env(cli_env)
    single = subprocess.run([sys.executable, str(JOB), str(root / "single")], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    log_dir = root / "msrun_logs"
    parallel = subprocess.run(msrun_command(free_port(), log_dir, [JOB, root / "dp"]), cwd=root, env=env,
                              capture_output=True, text=True, timeout=400)
    assert parallel.returncode == 0, parallel.stdout[-3000:] + parallel.stderr[-3000:]
    return root, log_dir


@pytest.mark.slow
def test_two_workers_hold_identical_weights(tiny_jobs):
    root, log_dir = tiny_jobs
    ranks = [json.loads((root / "dp" / f"rank{r}.json").read_text()) for r in range(WORKERS)]
    assert [r["world_size"] for r in ranks] == [WORKERS, WORKERS]
    assert [r["per_worker_batch"] for r in ranks] == [4, 4]
    weights = [dict(np.load(root / "dp" / f"rank{r}_frozen.npz")) for r in range(WORKERS)]
    assert weights[0].keys() == weights[1].keys()
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0]), "ranks diverged"
    assert ranks[0]["frozen_digest"] == ranks[1]["frozen_digest"]
    # the digest check really compares ranks: a 1e-3 change on rank 1 is reported on both ranks
    assert [r["mismatch_reported"] for r in ranks] == [True, True]
    # msrun kept one log per worker plus the scheduler's in --log_dir
    assert sorted(p.name for p in log_dir.iterdir()) == ["scheduler.log", "worker_0.log", "worker_1.log"]


@pytest.mark.slow
def test_two_workers_match_one_process_with_the_same_global_batch(tiny_jobs):
    root, _ = tiny_jobs
    single = dict(np.load(root / "single" / "rank0_frozen.npz"))
    parallel = dict(np.load(root / "dp" / "rank0_frozen.npz"))
    assert parallel.keys() == single.keys()
    difference = max_relative_difference(parallel, single)
    print(f"max relative weight difference, 2 workers x 4 vs 1 process x 8, 3 steps: {difference:.3g}")
    assert difference < 1e-5
    start = json.loads((root / "single" / "rank0.json").read_text())["start_digest"]
    assert json.loads((root / "dp" / "rank0.json").read_text())["start_digest"] == start


@pytest.mark.slow
def test_eval_counts_are_global_and_cover_the_val_set_once(tiny_jobs):
    root, _ = tiny_jobs
    single = json.loads((root / "single" / "rank0.json").read_text())
    ranks = [json.loads((root / "dp" / f"rank{r}.json").read_text()) for r in range(WORKERS)]
    assert [r["eval_images_this_rank"] for r in ranks] == [7, 6]
    assert all(r["eval_total"] == single["eval_total"] == 13 for r in ranks)
    assert all(r["eval_correct"] == single["eval_correct"] for r in ranks)
    # the loss sum covers the same 13 images (a duplicated or missing image would shift it by ~3)
    assert all(abs(r["eval_loss_sum"] - single["eval_loss_sum"]) < 1e-4 * single["eval_loss_sum"] for r in ranks)


@pytest.mark.slow
def test_batchnorm_statistics_are_averaged_over_ranks(tiny_jobs):
    root, _ = tiny_jobs
    ranks = [json.loads((root / "dp" / f"rank{r}.json").read_text()) for r in range(WORKERS)]
    # rank r set every moving mean to r + 1 before averaging
    assert [r["averaged_moving_means"] for r in ranks] == [[1.5], [1.5]]
    assert ranks[0]["averaged_digest"] == ranks[1]["averaged_digest"]


@pytest.mark.slow
def test_port_in_use_fails_fast_with_one_clear_line(tmp_path, cli_env):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        log_dir = tmp_path / "msrun_logs"
        started = time.monotonic()
        result = subprocess.run(msrun_command(port, log_dir, [JOB, tmp_path / "out"]), cwd=tmp_path,
                                env=job_env(cli_env), capture_output=True, text=True, timeout=240)
        elapsed = time.monotonic() - started
    assert result.returncode != 0
    # bounded by --cluster_time_out plus MindSpore's 15 s message timeout, plus start-up
    assert elapsed < CLUSTER_TIME_OUT_S + 15 + 60, elapsed
    scheduler_errors = [line for line in (log_dir / "scheduler.log").read_text().splitlines() if line.startswith("error:")]
    assert len(scheduler_errors) == 1
    assert f"master port {port} on 127.0.0.1 is already in use" in scheduler_errors[0]
    assert "MindSpore RuntimeError: Failed to initialize distributed job cluster" in scheduler_errors[0]
    # msrun repeats the scheduler's error lines at the end of its own output
    assert scheduler_errors[0] in result.stdout + result.stderr
    # the first worker to give up reports in one line; msrun then kills the others (their logs may stay empty)
    worker_errors = [[line for line in (log_dir / f"worker_{rank}.log").read_text().splitlines() if line.startswith("error:")]
                     for rank in range(WORKERS)]
    assert any(len(lines) == 1 and f"master 127.0.0.1:{port}" in lines[0] for lines in worker_errors), worker_errors
    assert all(len(lines) <= 1 for lines in worker_errors)
    assert not (tmp_path / "out").exists()
