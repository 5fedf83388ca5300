"""How close the kernels' register tile comes to the CPU's floating-point peak, by depth of the product.

Compiles two small C++ programs with the kernels' own flags (ms_impl/fast_conv/build.py, `-march` from
$MBV2_KERNEL_MARCH as there) against ms_impl/kernels/common.h, and runs them:

- the FMA peak: 12 independent chains of vector fused multiply-adds, one process per core at once
  (GFLOP/s per core and their sum: the ceiling of every product);
- the register tile (`tile_product`, MR x 2 vectors) over packed panels in a loop of 6 row panels x 12
  column tiles, each tile stored, on one core, for depths from 16 to 960 (GFLOP/s and the share of the
  one-core peak).

    python experiments/tile_speed.py
    python experiments/tile_speed.py --cores 1
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ms_impl.fast_conv.build import KERNEL_DIR, _compiler, compiler_flags, kernel_march

PEAK = r"""
#include "common.h"
#include <chrono>
#include <cstdio>
using namespace mbv2;
int main() {
  vecf acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = vecf{} + 0.001f * i;
  const float b_value = 0.9999f, c_value = 0.0001f;
  const vecf b = splat(&b_value), c = splat(&c_value);
  const long iterations = 200000000L / (VEC / 8);
  const auto start = std::chrono::steady_clock::now();
  for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = acc[i] * b + c;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  float sink = 0;
  for (int i = 0; i < 12; ++i) sink += acc[i][0];
  std::printf("%.1f %g\n", iterations * 12.0 * VEC * 2 / seconds / 1e9, sink);
}
"""

TILE = r"""
#include "common.h"
#include <chrono>
#include <cstdio>
using namespace mbv2;
int main() {
  for (int depth : {16, 24, 32, 64, 96, 144, 192, 384, 576, 960}) {
    const int row_panels = 6, tiles = 12;
    std::vector<float> a(depth * MR * row_panels, 0.01f), b(depth * NR * tiles, 0.02f), out(MR * NR * tiles * row_panels);
    const long reps = 400000000L / (depth * tiles * row_panels);
    const auto start = std::chrono::steady_clock::now();
    for (long i = 0; i < reps; ++i)
      for (int mb = 0; mb < row_panels; ++mb)
        for (int t = 0; t < tiles; ++t) {
          Tile tile;
          tile_product(a.data() + mb * depth * MR, b.data() + t * depth * NR, depth, tile);
          float* o = out.data() + (mb * tiles + t) * MR * NR;
          for (int r = 0; r < MR; ++r) {
            store(o + r * NR, tile.acc[r][0]);
            store(o + r * NR + VEC, tile.acc[r][1]);
          }
        }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%d %.1f %g\n", depth, reps * double(row_panels) * tiles * 2 * MR * NR * depth / seconds / 1e9, out[5]);
  }
}
"""


def build(source: str, folder: Path, name: str) -> Path:
    path, binary = folder / f"{name}.cc", folder / name
    path.write_text(source, encoding="utf-8")
    flags = [f for f in compiler_flags(kernel_march()) if f not in ("-shared", "-fPIC", "-fvisibility=hidden")]
    subprocess.run([_compiler(), *flags, f"-I{KERNEL_DIR}", str(path), "-o", str(binary)], check=True)
    return binary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)),
                        help="processes running the peak loop at once (default: the CPUs this process may use)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        peak_binary, tile_binary = build(PEAK, Path(folder), "peak"), build(TILE, Path(folder), "tile")
        alone = float(subprocess.run([str(peak_binary)], capture_output=True, text=True, check=True).stdout.split()[0])
        together = [subprocess.Popen([str(peak_binary)], stdout=subprocess.PIPE, text=True) for _ in range(args.cores)]
        rates = [float(process.communicate()[0].split()[0]) for process in together]
        print(f"# -march={kernel_march()}; FMA peak: one core alone {alone:.1f} GFLOP/s; {args.cores} cores at once "
              + " + ".join(f"{rate:.1f}" for rate in rates) + f" = {sum(rates):.1f} GFLOP/s")
        print("| depth | register tile, one core, GFLOP/s | share of the one-core peak |")
        print("|---|---|---|")
        for line in subprocess.run([str(tile_binary)], capture_output=True, text=True, check=True).stdout.splitlines():
            depth, rate, _ = line.split()
            print(f"| {depth} | {float(rate):.1f} | {100 * float(rate) / alone:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
