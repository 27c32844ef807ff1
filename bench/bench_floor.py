"""The arithmetic floor of the Jena half: its multiply-adds at a given FLOP rate.

Run by hand:  PYTHONPATH=src python bench/bench_floor.py [--gflops 480 | --measure-peak]
              [--rows 420551] [--step-ms gru=8.0,lstm=10.5,...]

``--measure-peak`` compiles and runs a loop of independent float32 FMAs on every core
(AVX-512 where the CPU has it, else AVX2; g++ is needed) and uses that rate instead of
``--gflops``. ``--step-ms`` takes measured ms per training step (bench_speed's or
bench_ab's) and prints the share of that rate each variant's step reaches.

Counts the multiply-adds of every default Jena variant in params.yaml (the recurrent and
input products of each GRU/LSTM layer and direction, the convolutions, the dense layers)
for its default budget: epochs x 500 training steps of 128 windows (forward, and the two
backward products: 3x the forward), a full validation pass per epoch and one test pass,
over the windows the windows stage makes of a file of --rows rows (params.yaml's
jena.*_rows, rnnlab.data.windows.make_window_spec). Gate nonlinearities, elementwise work,
memory traffic, data and tracking are left out, so a real run cannot get under this;
--gflops is the machine's float32 FMA rate (480: both threads of this project's 2-core
Zen 5 machine by --measure-peak on 2026-12-07, 242-252 on one; the figure of 139.7 used
before that date came from a peak loop that kept its accumulators in memory).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import yaml

from rnnlab.data.windows import SPLITS, make_window_spec
from rnnlab.nn.recurrent import GATES

ROOT = Path(__file__).resolve().parents[1]


def macs_per_window(model: dict, timesteps: int, features: int = 14) -> int:
    """Forward multiply-adds of one window through the variant's model."""
    arch, units = model["arch"], model.get("units", [32])
    if arch == "dense":
        size, total = timesteps * features, 0
        for u in units:
            total, size = total + size * u, u
        return total + size
    steps, size, total = timesteps, features, 0
    if arch == "conv_gru":                    # Conv1D k5 -> MaxPool 3 -> Conv1D k5 (32 filters)
        steps -= 4
        total += steps * features * 5 * 32
        steps = steps // 3 - 4
        total += steps * 32 * 5 * 32
        size = 32
    cell = "lstm" if arch == "lstm" else model.get("cell", "gru")
    directions = 2 if model.get("bidirectional") else 1
    for u in units:
        total += directions * steps * GATES[cell] * u * (size + u)
        size = u * directions
    return total + size


PEAK = r"""
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>
#ifdef __AVX512F__
typedef __m512 V; enum { W = 16 };
#define FMA _mm512_fmadd_ps
#define SET _mm512_set1_ps
#define ADD _mm512_add_ps
#define SUM(v) _mm512_reduce_add_ps(v)
#else
typedef __m256 V; enum { W = 8 };
#define FMA _mm256_fmadd_ps
#define SET _mm256_set1_ps
#define ADD _mm256_add_ps
static float SUM(V v) { float f[8]; _mm256_storeu_ps(f, v); float s = 0; for (float x : f) s += x; return s; }
#endif
static float run(long iters) {
  V a[16], b = SET(0.999999f), c = SET(1e-7f);
  for (int i = 0; i < 16; ++i) a[i] = SET(1.0f + i);
  // Unrolled, so that the 16 accumulators live in registers: a loop over the array kept
  // them in memory and timed the store-to-load latency (74 instead of 242 GFLOP/s a thread
  // on this project's Zen 5 machine, 2026-12-07).
  for (long n = 0; n < iters; ++n) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) a[i] = FMA(a[i], b, c);
  }
  V s = a[0];
  for (int i = 1; i < 16; ++i) s = ADD(s, a[i]);
  return SUM(s);
}
int main(int argc, char** argv) {
  int threads = atoi(argv[1]); long iters = 50000000;
  std::vector<std::thread> pool; std::vector<float> sink(threads);
  auto t0 = std::chrono::steady_clock::now();
  for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { sink[t] = run(iters); });
  for (auto& th : pool) th.join();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  printf("%.1f %g\n", 2.0 * W * 16 * iters * threads / s / 1e9, sink[0]);
}
"""


def measure_peak() -> float:
    """float32 GFLOP/s of independent FMAs on every core."""
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "peak.cpp", Path(tmp) / "peak"
        src.write_text(PEAK)
        subprocess.run(["g++", "-O2", "-march=native", "-pthread", str(src), "-o", str(exe)],
                       check=True)
        rates = {}
        for threads in sorted({1, os.cpu_count() or 1}):
            out = subprocess.run([str(exe), str(threads)], capture_output=True, text=True,
                                 check=True).stdout
            rates[threads] = float(out.split()[0])
        print("peak float32 FMA rate: " + ", ".join(
            f"{r:.1f} GFLOP/s on {t} thread{'s' if t > 1 else ''}" for t, r in rates.items()))
        return rates[max(rates)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gflops", type=float, default=480.0)
    parser.add_argument("--rows", type=int, default=420551)
    parser.add_argument("--measure-peak", action="store_true")
    parser.add_argument("--step-ms", default="",
                        help="measured ms per training step, e.g. gru=8.0,lstm=10.5")
    args = parser.parse_args()
    if args.measure_peak:
        args.gflops = measure_peak()
    measured = {k: float(v) for k, v in (kv.split("=") for kv in args.step_ms.split(",") if kv)}
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    jena, train = params["jena"], params["train"]
    batch, steps = jena["batch_size"], train["steps_per_epoch"]
    splits = {split: tuple(jena[f"{split}_rows"]) for split in SPLITS}
    share = " share of it, measured step |" if measured else ""
    print(f"| variant | epochs | GFLOP per training step | TFLOP in all | minutes at "
          f"{args.gflops:.0f} GFLOP/s |{share}\n|---|---|---|---|---|"
          + ("---|" if measured else ""))
    total = 0.0
    for name, model in params["models"].items():
        if model["dataset"] != "jena":
            continue
        lookback, step = model.get("lookback", jena["lookback"]), model.get("step", jena["step"])
        windows = make_window_spec(n_rows=args.rows, lookback=lookback, step=step,
                                   delay=jena["delay"], target_index=0, splits=splits)
        fwd = 2 * macs_per_window(model, windows.timesteps)    # FLOP per window, forward
        flop = fwd * (model["epochs"] * (steps * batch * 3 + windows.count("val"))
                      + windows.count("test"))
        minutes = flop / (args.gflops * 1e9) / 60
        total += minutes
        step_gflop = fwd * batch * 3 / 1e9
        cell = ""
        if measured:
            ms = measured.get(name)
            cell = f" {step_gflop / (ms / 1e3) / args.gflops:.0%} ({ms} ms) |" if ms else " |"
        print(f"| {name} | {model['epochs']} | {step_gflop:.2f} | "
              f"{flop / 1e12:.1f} | {minutes:.1f} |{cell}")
    print(f"| **total** | | | | **{total:.1f}** |")


if __name__ == "__main__":
    main()
