"""Jena data bench: our parse/normalize and batch gather vs the lecture's code, same run.

Run by hand (not part of the tests):   ./dev.sh bench   or   python bench/bench_jena.py
Uses a full-size GENERATED file (420,551 rows; no real Jena copy is available offline),
cached in bench/.cache/. Prints medians and ratios measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rnnlab.data.jena import normalize_jena
from rnnlab.data.synthetic import FULL_JENA_ROWS, write_jena_csv
from rnnlab.data.windows import JenaWindows, make_window_spec

CACHE = Path(__file__).parent / ".cache"
SPLITS = {"train": (0, 200000), "val": (200001, 300000), "test": (300001, None)}


def lecture_loader(path: Path) -> np.ndarray:
    """The lecture's loader: read, split lines, float() every field, z-score on 200,000 rows."""
    with open(path) as f:
        data = f.read()
    lines = data.split("\n")
    header = lines[0].split(",")
    lines = lines[1:]
    float_data = np.zeros((len(lines), len(header) - 1))
    for i, line in enumerate(lines):
        values = [float(x) for x in line.split(",")[1:]]
        float_data[i, :] = values
    mean = float_data[:200000].mean(axis=0)
    float_data -= mean
    std = float_data[:200000].std(axis=0)
    float_data /= std
    return float_data


def lecture_batch(data, rows, lookback=1440, delay=144, step=6):
    """The body of the lecture's generator for one batch of target rows."""
    samples = np.zeros((len(rows), lookback // step, data.shape[-1]))
    targets = np.zeros((len(rows),))
    for j, _ in enumerate(rows):
        indices = range(rows[j] - lookback, rows[j], step)
        samples[j] = data[indices]
        targets[j] = data[rows[j] + delay][1]
    return samples, targets


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


MEMORY_PROBE = r"""
import json, sys, tracemalloc
import numpy as np
from rnnlab.data.jena import load_features
from rnnlab.lecture.naive import naive_mae
from rnnlab.data.windows import load_spec, make_window_spec, save_spec
prepared, out, stage = sys.argv[1], sys.argv[2], sys.argv[3]
def vm(key):  # VmRSS / VmHWM (peak) of this process in bytes; exec resets VmHWM, unlike ru_maxrss
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
base = vm("VmRSS")
tracemalloc.start()
features, stats = load_features(prepared)            # memory-mapped, as the stages do
if stage == "windows":
    spec = make_window_spec(n_rows=stats.n_rows, lookback=1440, step=6, delay=144,
                            target_index=stats.target_index,
                            splits={"train": (0, 200000), "val": (200001, 300000),
                                    "test": (300001, None)})
    save_spec(spec, out)
else:
    spec = load_spec(out)
    maes = [naive_mae(features, spec, s) for s in ("val", "test")]
peak_py = tracemalloc.get_traced_memory()[1]
peak_rss = vm("VmHWM")
print(json.dumps({"tracemalloc_peak": peak_py, "rss_growth": max(0, peak_rss - base),
                  "matrix": int(features.nbytes)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=500)
    args = parser.parse_args()

    CACHE.mkdir(exist_ok=True)
    csv = CACHE / f"jena_generated_{FULL_JENA_ROWS}.csv"
    if not csv.exists():
        print(f"generating {csv} ...", flush=True)
        write_jena_csv(csv, FULL_JENA_ROWS, seed=0)
    print(f"data: GENERATED Jena-format file, {FULL_JENA_ROWS:,} rows, "
          f"{csv.stat().st_size:,} bytes (not the real Jena data)\n")

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared"
        # (a) parse + normalize, interleaved so both see the same machine state.
        ours, theirs = [], []
        for _ in range(args.repeats):
            theirs.append(timed(lecture_loader, csv))
            ours.append(timed(lambda: normalize_jena(csv, prepared, train_rows=(0, 200000),
                                                     target="T (degC)", wind_sentinel_fill=0.0)))
        a_ours, a_theirs = statistics.median(ours), statistics.median(theirs)
        print(f"(a) parse+normalize  lecture loader {a_theirs:7.3f} s   rnnlab (polars, "
              f"writes .npy too) {a_ours:7.3f} s   speed-up {a_theirs / a_ours:5.1f}x")

        # (b) one training batch of 128 windows, lookback 1440, step 6.
        float64 = lecture_loader(csv)
        features = np.load(prepared / "features.npy")
        spec = make_window_spec(n_rows=len(features), lookback=1440, step=6, delay=144,
                                target_index=1, splits=SPLITS)
        windows = JenaWindows(features, spec, "train")
        rng = np.random.default_rng(0)
        for _ in range(20):  # warm-up: allocator, page faults, torch's thread pool
            windows.batch(rng.integers(1440, 200000, 128))
        ours, theirs = [], []
        for _ in range(args.batches):
            rows = rng.integers(1440, 200000, 128)
            theirs.append(timed(lecture_batch, float64, rows))
            ours.append(timed(windows.batch, rows))  # returns torch tensors, ready to train on
        b_ours, b_theirs = statistics.median(ours), statistics.median(theirs)
        print(f"(b) batch of 128     lecture generator {b_theirs * 1e3:6.2f} ms   rnnlab gather "
              f"{b_ours * 1e3:6.3f} ms   speed-up {b_theirs / b_ours:5.1f}x")

        # (c) peak memory of the windows and naive stages' work, each in a fresh process.
        out = Path(tmp) / "windows"
        for stage in ("windows", "naive"):
            res = json.loads(subprocess.run(
                [sys.executable, "-c", MEMORY_PROBE, str(prepared), str(out), stage],
                capture_output=True, text=True, check=True).stdout)
            m = res["matrix"]
            print(f"(c) {stage:7s} stage   matrix {m / 2**20:6.1f} MiB   python-heap peak "
                  f"{res['tracemalloc_peak'] / 2**20:6.2f} MiB ({res['tracemalloc_peak'] / m:4.2f}x)"
                  f"   RSS growth {res['rss_growth'] / 2**20:6.1f} MiB "
                  f"({res['rss_growth'] / m:4.2f}x, mapped pages included)")


if __name__ == "__main__":
    main()
