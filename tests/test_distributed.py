"""Data-parallel training launched by msrun (ms_impl/trainer/distributed.py, wired into ms_impl/train.py).

The msrun tests start real jobs: msrun's scheduler plus 2 CPU worker
processes on this machine, MindSpore's own collectives (mccl) in between.
Trainer runs are tiny: synthetic set at 32 px, width 0.35, 2 epochs of 6 steps.

The several-host command of the README runs as two hosts on this machine: two
network namespaces the test creates (root and iproute2's `ip` needed, skipped
otherwise), joined by a veth pair, each with its own address, one msrun launch
in each (`--worker_num 2 --local_worker_num 1`, `--node_rank` 0 and 1, the
master address host 0's). The run folder is shared storage, as the README asks.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ms_impl import weights as ms_weights
from ms_impl.trainer import distributed as dist
from ms_impl.trainer import sharding
from ms_impl.trainer.errors import UsageError
from tests.helpers import TINY_TRAIN

JOBS = Path(__file__).resolve().parent / "msrun_jobs"
CLUSTER_TIME_OUT_S = 10
WORKERS = 2
STEPS = 6  # per epoch: 104 synthetic train images // global batch 16
# BatchNorm frozen and no random augmentation, so 2 workers x 8 must train like 1 process x 16.
# Dropout stays on (p 0.2): each rank applies its rows of the global batch's mask.
TINY = TINY_TRAIN + ["--num-workers", "1", "--epochs", "2", "--lr-max", "0.05", "--freeze-bn", "--train-augment", "false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(cli_env: dict) -> dict:
    """msrun starts `python` from PATH: the interpreter running the tests must come first."""
    env = dict(cli_env)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def msrun(script_and_args: list, log_dir: Path, cwd: Path, env: dict, port: int = 0, timeout: int = 400):
    command = [os.path.join(os.path.dirname(sys.executable), "msrun"),  # installed with mindspore
               f"--worker_num={WORKERS}", f"--local_worker_num={WORKERS}", "--master_addr=127.0.0.1",
               f"--master_port={port or free_port()}", "--join=True", f"--cluster_time_out={CLUSTER_TIME_OUT_S}",
               f"--log_dir={log_dir}", *map(str, script_and_args)]
    return subprocess.run(command, cwd=cwd, env=job_env(env), capture_output=True, text=True, timeout=timeout)


def weights(path: Path) -> dict:
    """Learned state of a checkpoint: weights, BN statistics, momentum buffers (not the per-rank dropout mask)."""
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()
            if hasattr(v, "asnumpy") and not k.endswith("keep_mask")}


def max_relative_difference(a: dict, b: dict) -> float:
    """max over tensors of max|a - b| / max|b|; the floor 1e-6 on max|b| keeps ~1e-10 tensors (BN betas of
    early layers, their momentum buffers) from turning rounding noise into large ratios."""
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-6)) for k in b)


def final_digests(log_dir: Path) -> list:
    found = []
    for rank in range(WORKERS):
        text = (log_dir / f"worker_{rank}.log").read_text()
        found += re.findall(rf"final weights identical on all {WORKERS} ranks: sha256 ([0-9a-f]{{64}})", text)
    return found


# --- single-process behaviour of the helpers -------------------------------------------------------

def test_train_shards_of_a_step_form_the_single_process_batch():
    order = np.random.default_rng(0).permutation(23)
    per_worker, world = 3, 4
    shards = [sharding.shard_train_order(order, world, r) for r in range(world)]
    assert len({len(s) for s in shards}) == 1, "every rank must run the same number of steps"
    for step in range(len(shards[0]) // per_worker):
        together = np.concatenate([s[step * per_worker:(step + 1) * per_worker] for s in shards])
        assert sorted(together) == sorted(order[step * per_worker * world:(step + 1) * per_worker * world])
    assert np.array_equal(sharding.shard_train_order(order), order)


@pytest.mark.parametrize("num_samples,world", [(13, 2), (260, 3), (5, 8)])
def test_eval_shards_cover_every_sample_exactly_once(num_samples, world):
    shards = [sharding.shard_eval_indices(num_samples, world, r) for r in range(world)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(num_samples))


def test_single_process_without_msrun_or_when_switched_off():
    assert dist.init_distributed("auto", environ={}) == dist.SINGLE_PROCESS
    msrun_env = {"MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "8118", "MS_WORKER_NUM": "2"}
    assert dist.launched_by_msrun(msrun_env)
    assert dist.init_distributed("off", environ=msrun_env) == dist.SINGLE_PROCESS
    with pytest.raises(UsageError, match="not launched by msrun"):
        dist.init_distributed("on", environ={})


def test_a_lost_peer_is_told_from_other_runtime_errors():
    # MindSpore's text when host 1's worker was killed during host 0's compiled step (MindSpore 2.10, CPU)
    lost = RuntimeError("\n----\n- Kernel error:\n----\n"
                        "Launch kernel failed: Default/grad_reducer-DistributedGradReducer/AllReduce-op0\n")
    assert dist.is_collective_failure(lost)
    assert dist.is_collective_failure(RuntimeError("The state of the cluster is error, total nodes num: 2, abnormal "
                                                   "nodes num: 1\n\n----\n- C++ Call Stack:"))
    assert not dist.is_collective_failure(RuntimeError("Allocate memory failed"))


def test_digest_sees_a_single_changed_value():
    state = {"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float32)}
    before = ms_weights.digest(state.items())
    assert ms_weights.digest(reversed(list(state.items()))) == before  # listing order does not matter
    state["b"][2] = np.nextafter(np.float32(1), np.float32(2))
    assert ms_weights.digest(state.items()) != before


def test_scale_lr_applies_the_linear_rule_to_the_whole_schedule():
    from ms_impl.trainer.run import build_config, build_lr_schedule

    two = dist.DistributedContext(0, 2, True)
    plain = build_lr_schedule(build_config(["--epochs", "3"]), 5, two)
    scaled = build_lr_schedule(build_config(["--epochs", "3", "--scale-lr", "true"]), 5, two)
    np.testing.assert_allclose(scaled, 2 * plain, rtol=1e-6)
    assert np.array_equal(build_lr_schedule(build_config(["--epochs", "3", "--scale-lr", "true"]), 5, dist.SINGLE_PROCESS), plain)


# --- real msrun jobs -------------------------------------------------------------------------------

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
def single_run(tmp_path_factory, synthetic_cache, cli_env, repo_root):
    """The reference: one process, batch 16."""
    out = tmp_path_factory.mktemp("single")
    result = subprocess.run([sys.executable, "ms_impl/train.py", *TINY, "--batch-size", "16",
                             "--synthetic-cache-dir", synthetic_cache, "--output-dir", str(out)],
                            cwd=repo_root, env=cli_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory, synthetic_cache, cli_env, repo_root):
    """The same run as 2 msrun workers x batch 8; worker logs kept in the run's folder."""
    out = tmp_path_factory.mktemp("two_workers")
    result = msrun(["ms_impl/train.py", *TINY, "--batch-size", "8", "--synthetic-cache-dir", synthetic_cache,
                    "--output-dir", out], out / "msrun_logs", repo_root, cli_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_workers_end_with_identical_weights_and_one_set_of_run_files(two_worker_run):
    out = two_worker_run
    digests = final_digests(out / "msrun_logs")
    assert len(digests) == WORKERS and len(set(digests)) == 1, digests  # each rank logs its own weights' digest
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == sorted([f"mobilenetv2-1_{STEPS}.ckpt", f"mobilenetv2-2_{STEPS}.ckpt",
                                  "mobilenetv2-best.ckpt", "mobilenetv2-last.ckpt"])
    # rank 0 alone wrote the run files: each epoch logged once in train.log, nothing from rank 1
    train_log = (out / "train.log").read_text()
    assert [len(re.findall(rf"epoch {e}/2: train loss", train_log)) for e in (1, 2)] == [1, 1]
    assert "[rank 1]" not in train_log
    assert "batch 16 (8 per worker x 2 workers)" in train_log
    assert len((out / "metrics.csv").read_text().splitlines()) == 3
    assert sorted(p.name for p in (out / "msrun_logs").iterdir()) == ["scheduler.log", "worker_0.log", "worker_1.log"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["workers"], summary["batch_size_per_worker"], summary["global_batch"]) == (2, 8, 16)


@pytest.mark.slow
def test_two_workers_train_like_one_process_with_the_same_global_batch(single_run, two_worker_run):
    reference = weights(single_run / "checkpoints" / "mobilenetv2-last.ckpt")
    parallel = weights(two_worker_run / "checkpoints" / "mobilenetv2-last.ckpt")
    difference = max_relative_difference(parallel, reference)
    print(f"\nmax relative weight difference, 2 workers x 8 vs 1 process x 16, {2 * STEPS} steps: {difference:.3g}")
    # Only the summation order differs (two half-batch gradients averaged vs one batch); with BatchNorm frozen the
    # 12 steps hardly amplify it: 5.2e-7 measured (README), 19 times under the limit.
    assert difference < 1e-5


@pytest.mark.slow
def test_reported_accuracy_covers_the_whole_val_set(single_run, two_worker_run):
    single = json.loads((single_run / "summary.json").read_text())
    parallel = json.loads((two_worker_run / "summary.json").read_text())
    assert parallel["val_images"] == single["val_images"] == 52
    assert parallel["final"]["val_images_evaluated"] == 52  # 26 per rank, summed: none missing, none twice
    # Equal counts, robustly: after 12 steps the logits (~0.016) barely depend on the image and every top-2 gap is
    # 2.6e-3, so a tie would need the runs' logits to differ by ~16%, not by the ~1e-5 their weights do.
    assert parallel["final"]["val_top1"] == single["final"]["val_top1"]
    assert parallel["final"]["val_top5"] == single["final"]["val_top5"]
    assert parallel["final"]["val_loss"] == pytest.approx(single["final"]["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_distributed_resume_restores_the_same_state_on_every_rank(two_worker_run, synthetic_cache, tmp_path, cli_env, repo_root):
    """Resume the 2-worker run from its epoch-1 checkpoint: it must end where the uninterrupted run ended."""
    out = tmp_path / "resumed"
    start = two_worker_run / "checkpoints" / f"mobilenetv2-1_{STEPS}.ckpt"
    result = msrun(["ms_impl/train.py", *TINY, "--batch-size", "8", "--synthetic-cache-dir", synthetic_cache,
                    "--output-dir", out, "--resume", start], out / "msrun_logs", repo_root, cli_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for rank in range(WORKERS):  # every rank read the checkpoint (the start-of-run replica check passed too)
        log = (out / "msrun_logs" / f"worker_{rank}.log").read_text()
        assert re.search(rf"resumed from {re.escape(str(start))}: epoch 1, step 0 of {STEPS}", log), log[-2000:]
    reference = weights(two_worker_run / "checkpoints" / "mobilenetv2-last.ckpt")
    resumed = weights(out / "checkpoints" / "mobilenetv2-last.ckpt")
    assert max_relative_difference(resumed, reference) < 1e-6
    assert len(set(final_digests(out / "msrun_logs"))) == 1


@pytest.mark.slow
def test_port_in_use_fails_fast_with_one_clear_line(tmp_path, cli_env, repo_root):
    out = tmp_path / "out"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        started = time.monotonic()
        result = msrun(["ms_impl/train.py", *TINY, "--output-dir", out], tmp_path / "logs", repo_root, cli_env,
                       port=port, timeout=240)
        elapsed = time.monotonic() - started
    assert result.returncode != 0
    # bounded by --cluster_time_out plus MindSpore's 15 s message timeout, plus start-up
    assert elapsed < CLUSTER_TIME_OUT_S + 15 + 60, elapsed
    scheduler_errors = [line for line in (tmp_path / "logs" / "scheduler.log").read_text().splitlines()
                        if line.startswith("error:")]
    assert len(scheduler_errors) == 1
    assert f"master port {port} on 127.0.0.1 is already in use" in scheduler_errors[0]
    assert "MindSpore RuntimeError: Failed to initialize distributed job cluster" in scheduler_errors[0]
    assert scheduler_errors[0] in result.stdout + result.stderr  # msrun repeats the scheduler's errors at the end
    # the first worker to give up reports in one line; msrun then kills the others (their logs may stay empty)
    worker_errors = [[line for line in (tmp_path / "logs" / f"worker_{r}.log").read_text().splitlines()
                      if line.startswith("error:")] for r in range(WORKERS)]
    assert any(len(lines) == 1 and f"master 127.0.0.1:{port}" in lines[0] for lines in worker_errors), worker_errors
    assert all(len(lines) <= 1 for lines in worker_errors)
    assert not out.exists()  # nothing written: no rank got past joining the job


# --- two hosts: two network namespaces, one msrun launch in each ------------------------------------

# RFC 2544's benchmarking range, used only inside the two namespaces the test creates (never routed anywhere)
HOST_ADDRESSES = ("198.18.28.1", "198.18.28.2")

# Host 1's worker for the kill test: holds at the start of epoch 2 (epoch 1 saved), says where, waits to be killed.
HOLD_AT_EPOCH_2 = r"""
import os, runpy, sys, time
from pathlib import Path
from ms_impl.trainer import dataset

real_train_dataset = dataset.train_dataset

def train_dataset(images, cfg, image_size, epoch, *args, **kwargs):
    if epoch >= 1:
        Path(os.environ["HOLD_MARKER"]).write_text(str(os.getpid()))
        time.sleep(600)
    return real_train_dataset(images, cfg, image_size, epoch, *args, **kwargs)

dataset.train_dataset = train_dataset
sys.argv = ["ms_impl/train.py"] + sys.argv[1:]
runpy.run_path("ms_impl/train.py", run_name="__main__")
"""


@dataclass(frozen=True)
class TwoHosts:
    namespaces: tuple
    addresses: tuple = HOST_ADDRESSES

    def free_master_port(self) -> int:
        """A port free on host 0 (asked inside its namespace: the workers' own servers bind ports there too)."""
        probe = "import socket; s = socket.socket(); s.bind((%r, 0)); print(s.getsockname()[1])" % self.addresses[0]
        return int(subprocess.run(["ip", "netns", "exec", self.namespaces[0], sys.executable, "-c", probe],
                                  capture_output=True, text=True, check=True).stdout)

    def wait_until_idle(self, timeout: float = 120) -> None:
        """Until no process of an earlier job is left on either host (`ip netns pids`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = [subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
                    for ns in self.namespaces]
            if not any(left):
                return
            time.sleep(0.5)
        raise AssertionError(f"processes of an earlier job still running on the hosts: {left}")

    def launch(self, node_rank: int, script_and_args: list, log_dir: Path, cwd: Path, env: dict, port: int):
        """README's several-host msrun command on host `node_rank` (in its namespace), without waiting for it."""
        command = ["ip", "netns", "exec", self.namespaces[node_rank],
                   os.path.join(os.path.dirname(sys.executable), "msrun"), f"--worker_num={WORKERS}",
                   "--local_worker_num=1", f"--node_rank={node_rank}", f"--master_addr={self.addresses[0]}",
                   f"--master_port={port}", "--join=True", f"--cluster_time_out={CLUSTER_TIME_OUT_S}",
                   f"--log_dir={log_dir}", *map(str, script_and_args)]
        return subprocess.Popen(command, cwd=cwd, env=job_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)


@pytest.fixture(scope="module")
def two_hosts():
    """Two network namespaces joined by a veth pair, each with its own address: two hosts on this machine."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("two hosts on one machine need network namespaces, which only root can create (Linux)")
    if shutil.which("ip") is None:
        pytest.skip("two hosts on one machine need iproute2's `ip` to create network namespaces")
    tag = os.getpid() % 100_000
    namespaces, links = (f"mbv2h{tag}a", f"mbv2h{tag}b"), (f"mbv2v{tag}a", f"mbv2v{tag}b")
    commands = [["ip", "netns", "add", namespaces[0]], ["ip", "netns", "add", namespaces[1]],
                ["ip", "link", "add", links[0], "type", "veth", "peer", "name", links[1]]]
    for namespace, link, address in zip(namespaces, links, HOST_ADDRESSES):
        commands += [["ip", "link", "set", link, "netns", namespace],
                     ["ip", "-n", namespace, "addr", "add", f"{address}/30", "dev", link],
                     ["ip", "-n", namespace, "link", "set", "lo", "up"],
                     ["ip", "-n", namespace, "link", "set", link, "up"]]

    def remove() -> None:
        for namespace in namespaces:  # removes the veth pair with it
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", links[0]], capture_output=True)

    for command in commands:
        made = subprocess.run(command, capture_output=True, text=True)
        if made.returncode != 0:
            remove()
            pytest.skip(f"cannot create network namespaces here ({' '.join(command[:3])}: {made.stderr.strip()})")
    yield TwoHosts(namespaces)
    remove()


def finish(process, timeout: int = 600) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"msrun still running after {timeout} s:\n{output[-3000:]}")
    return output


def error_lines(log: Path) -> list:
    return [line for line in log.read_text().splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_two_hosts_train_like_two_local_workers_and_both_launches_exit_0(two_hosts, two_worker_run, synthetic_cache,
                                                                          tmp_path, cli_env, repo_root):
    two_hosts.wait_until_idle()
    out, port = tmp_path / "run", two_hosts.free_master_port()
    args = ["ms_impl/train.py", *TINY, "--batch_size", "8", "--synthetic_cache_dir", synthetic_cache, "--output_dir", out]
    hosts = [two_hosts.launch(rank, args, tmp_path / f"logs{rank}", repo_root, cli_env, port) for rank in (0, 1)]
    outputs = [finish(host) for host in hosts]
    for host, output in zip(hosts, outputs):
        assert host.returncode == 0, output[-3000:]
    # host 1's msrun started no scheduler of its own: the master address is not one of its addresses
    assert sorted(p.name for p in (tmp_path / "logs0").iterdir()) == ["scheduler.log", "worker_0.log"]
    assert sorted(p.name for p in (tmp_path / "logs1").iterdir()) == ["worker_1.log"]
    digests = [d for rank in (0, 1) for d in re.findall(
        rf"final weights identical on all {WORKERS} ranks: sha256 ([0-9a-f]{{64}})",
        (tmp_path / f"logs{rank}" / f"worker_{rank}.log").read_text())]
    assert len(digests) == 2 and len(set(digests)) == 1
    reference = weights(two_worker_run / "checkpoints" / "mobilenetv2-last.ckpt")
    two_host = weights(out / "checkpoints" / "mobilenetv2-last.ckpt")
    assert two_host.keys() == reference.keys()
    for name in reference:  # the same computation, the same collectives: equal, not merely close
        np.testing.assert_array_equal(two_host[name], reference[name], err_msg=name)


@pytest.mark.slow
def test_a_lost_host_stops_the_other_in_one_line_and_resume_auto_continues(two_hosts, two_worker_run, synthetic_cache,
                                                                          tmp_path, cli_env, repo_root):
    two_hosts.wait_until_idle()
    out, port = tmp_path / "run", two_hosts.free_master_port()
    trainer_args = [*TINY, "--batch_size", "8", "--synthetic_cache_dir", synthetic_cache, "--output_dir", out]
    holding = tmp_path / "hold_at_epoch_2.py"
    holding.write_text(HOLD_AT_EPOCH_2)
    marker = tmp_path / "host1-held"
    host0 = two_hosts.launch(0, ["ms_impl/train.py", *trainer_args], tmp_path / "logs0", repo_root, cli_env, port)
    host1 = two_hosts.launch(1, [holding, *trainer_args], tmp_path / "logs1", repo_root,
                             dict(cli_env, HOLD_MARKER=str(marker)), port)
    deadline = time.monotonic() + 500
    while not marker.exists() and host1.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), finish(host1, 60)[-3000:]
    os.kill(int(marker.read_text()), signal.SIGKILL)  # host 1's worker, at the start of epoch 2
    killed = time.monotonic()
    output = finish(host0, timeout=CLUSTER_TIME_OUT_S + 15 + 300)  # a hang would end the test here
    print(f"\nhost 0 stopped {time.monotonic() - killed:.0f} s after host 1's worker was killed")
    finish(host1, 120)
    assert host0.returncode != 0 and host1.returncode != 0
    worker0 = tmp_path / "logs0" / "worker_0.log"
    assert "Traceback" not in worker0.read_text(), worker0.read_text()[-3000:]
    lines = error_lines(worker0)
    assert len(lines) == 1 and "another worker or host was lost" in lines[0] and "--resume auto" in lines[0], lines
    assert lines[0] in output  # msrun shows the worker's line on host 0's console
    assert len(error_lines(tmp_path / "logs0" / "scheduler.log")) <= 1
    assert (out / "checkpoints" / f"mobilenetv2-1_{STEPS}.ckpt").is_file()

    # the same two commands with --resume auto continue from epoch 1 and end where two local workers ended
    two_hosts.wait_until_idle()
    port = two_hosts.free_master_port()
    hosts = [two_hosts.launch(rank, ["ms_impl/train.py", *trainer_args, "--resume", "auto"],
                              tmp_path / f"resumed{rank}", repo_root, cli_env, port) for rank in (0, 1)]
    outputs = [finish(host) for host in hosts]
    for rank, (host, output) in enumerate(zip(hosts, outputs)):
        assert host.returncode == 0, output[-3000:]
        log = (tmp_path / f"resumed{rank}" / f"worker_{rank}.log").read_text()
        assert re.search(rf"resumed from {re.escape(str(out / 'checkpoints'))}/\S+: epoch 1, step 0 of {STEPS}", log)
    reference = weights(two_worker_run / "checkpoints" / "mobilenetv2-last.ckpt")
    assert max_relative_difference(weights(out / "checkpoints" / "mobilenetv2-last.ckpt"), reference) < 1e-6
