"""The measurement behind `parity.core.tolerances.NOISE_MULTIPLE`: candidate error / float32 noise floor, row by row.

For each checkpoint it runs every row of `python -m parity check --weights CKPT` and `python -m parity diff`
in both directions (torchvision file against its ms-official conversion, then the reverse), eval and train,
and prints each row's float32 noise floor (the PyTorch twin in float32 against float64), the candidate's error
against float64 and their ratio, then the largest ratio per checkpoint. Run it once per instruction-set setting:

    python experiments/parity_noise_floor.py --out /tmp/noise.json
    ONEDNN_MAX_CPU_ISA=AVX2 python experiments/parity_noise_floor.py --out /tmp/noise_avx2.json
    ONEDNN_MAX_CPU_ISA=SSE41 MBV2_KERNEL_MARCH=x86-64-v2 python experiments/parity_noise_floor.py ...

Checkpoints: `--imagenet PATH` (the ImageNet backbone, torchvision layout) when given, and generated ones
(`parity.harness.sample_weights`): calibrated random-init and extreme-BatchNorm nets at `--widths`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def checkpoints(folder: Path, imagenet: str, widths, image_size: int):
    from parity.core.converter import convert, read_checkpoint, write_checkpoint
    from parity.harness.sample_weights import sample_state, write_pth

    found = []
    if imagenet:
        found.append(("imagenet backbone", Path(imagenet)))
    for width in widths:
        for extreme in (False, True):
            name = f"{'extreme-BN' if extreme else 'calibrated'} {width}x"
            path = folder / f"{name.replace(' ', '_')}.pth"
            write_pth(sample_state(width, 26, seed=1, image_size=image_size, extreme=extreme), path)
            found.append((name, path))
    pairs = []
    for index, (name, pth) in enumerate(found):
        ckpt = folder / f"{index}.ckpt"  # beside the generated files, never beside the user's
        write_checkpoint(convert(read_checkpoint(pth), "ms-official"), ckpt)
        pairs.append((name, pth, ckpt))
    return pairs


def diff_rows(reference: Path, candidate: Path, mode: str, image_size: int, batch: int):
    from parity.core.converter import read_checkpoint
    from parity.harness import diff

    sides = []
    for path in (reference, candidate):
        ckpt = read_checkpoint(path)
        sides.append(diff.Side(str(path), ckpt, diff.FRAMEWORK_OF_LAYOUT[ckpt.layout]))
    diff.use_cpu_pynative()
    x = diff.random_batch(batch, image_size, 0)
    report = diff.diff_checkpoints(sides[0], sides[1], (x, x), diff.Options(mode=mode), "random batch")
    return [(r.name, r.calibration.noise, r.calibration.error, r.calibration.ratio, r.passed)
            for r in report.rows if r.calibration is not None]


def check_rows(path: Path, image_size: int, batch: int):
    from parity.harness import compare

    case = compare.case_for_weights(compare.Case(image_size=image_size, batch=batch, weights=str(path)))
    return [(r.name, r.calibration.noise, r.calibration.error, r.calibration.ratio, r.passed)
            for r in compare.run_case(case, include_case_free=False, include_preprocessing=False)
            if r.calibration is not None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imagenet", default="", help="the ImageNet backbone (torchvision layout), if at hand")
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0])
    parser.add_argument("--image-size", type=int, default=224, help="diff and check input size")
    parser.add_argument("--train-image-size", type=int, default=160, help="diff --mode train input size")
    parser.add_argument("--out", type=Path, help="all rows as JSON")
    args = parser.parse_args()
    setting = {k: os.environ.get(k, "default") for k in ("ONEDNN_MAX_CPU_ISA", "MBV2_KERNEL_MARCH")}
    print(f"settings: {setting}", flush=True)
    results = {"settings": setting, "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        for name, pth, ckpt in checkpoints(Path(folder), args.imagenet, args.widths, 96):
            runs = [("check", lambda: check_rows(pth, args.image_size, 4))]
            for mode, size in (("eval", args.image_size), ("train", args.train_image_size)):
                runs.append((f"diff {mode} pth->ckpt", lambda m=mode, s=size: diff_rows(pth, ckpt, m, s, 2)))
                runs.append((f"diff {mode} ckpt->pth", lambda m=mode, s=size: diff_rows(ckpt, pth, m, s, 2)))
            for what, run in runs:
                start = time.perf_counter()
                rows = run()
                worst = max(rows, key=lambda r: r[3])
                print(f"{name:22s} {what:20s} rows {len(rows):3d}  max ratio {worst[3]:6.2f} ({worst[0]})  "
                      f"all pass {all(r[4] for r in rows)}  {time.perf_counter() - start:.0f} s", flush=True)
                if what == "check":
                    for row in rows:
                        print(f"    {row[0]:38s} noise {row[1]:.2e}  error {row[2]:.2e}  ratio {row[3]:.2f}")
                results["runs"].append({"checkpoint": name, "run": what, "rows": rows})
    ratios = [row[3] for run in results["runs"] for row in run["rows"]]
    print(f"{len(ratios)} rows: ratio median {np.median(ratios):.2f}, 99th percentile "
          f"{np.percentile(ratios, 99):.2f}, max {max(ratios):.2f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
