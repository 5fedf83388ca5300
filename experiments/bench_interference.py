"""Does an engine's eval step run slower right after another engine's step than 50 ms later?

    flock /tmp/heavy.lock python experiments/bench_interference.py [--rounds 20] [--threads 2]

The bench's own workers (`python -m parity bench`: each engine in a process of its own, the same batch and
weights): OpenVINO, the MindSpore twin and ONNX Runtime, one eval step each in that order, every step either
right after the previous one (back to back, as the bench's interleaved order runs them) or after a 50 ms
pause; the two conditions alternate round by round. An engine whose threads keep spinning after its call
returns (ONNX Runtime's intra-op pool does by default) takes a core from the next engine's step. Prints each
engine's median step time in both conditions and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from parity.harness import bench  # noqa: E402
from parity.harness import bench_worker as worker  # noqa: E402

PAUSE_S = 0.05
CONDITIONS = ("back to back", f"after {PAUSE_S * 1e3:.0f} ms")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    settings = bench._parser().parse_args(["--threads", str(args.threads)])
    peers = [worker.OPENVINO, worker.MS_TWIN, worker.ORT]
    with tempfile.TemporaryDirectory(prefix="bench-interference-") as folder:
        bench._prepare_inputs(settings, folder)
        workers = bench.Workers(settings, folder, [[peer] for peer in peers])
        try:
            step = {peer: workers.timed(peer, "eval") for peer in peers}
            for peer in peers:  # warm-up, untimed
                for _ in range(3):
                    step[peer]()
            seconds = {(peer, condition): [] for peer in peers for condition in CONDITIONS}
            for round_index in range(args.rounds):
                for condition in (CONDITIONS if round_index % 2 else CONDITIONS[::-1]):
                    for peer in peers:
                        if condition != CONDITIONS[0]:
                            time.sleep(PAUSE_S)
                        seconds[(peer, condition)].append(step[peer]())
        finally:
            workers.close()
    print(f"# {args.rounds} rounds, {args.threads} threads each; median ms per eval step")
    print(f"| engine | {CONDITIONS[0]} | {CONDITIONS[1]} | ratio |")
    print("|---|---|---|---|")
    for peer in peers:
        together, apart = (1e3 * statistics.median(seconds[(peer, c)]) for c in CONDITIONS)
        print(f"| {bench.PEER_NAMES[peer]} | {together:.1f} | {apart:.1f} | {together / apart:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
