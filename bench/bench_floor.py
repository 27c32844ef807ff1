"""The arithmetic floor of the Jena half: its multiply-adds at a given FLOP rate.

Run by hand:  PYTHONPATH=src python bench/bench_floor.py [--gflops 190] [--rows 420551]

Counts the multiply-adds of every default Jena variant in params.yaml (the recurrent and
input products of each GRU/LSTM layer and direction, the convolutions, the dense layers)
for its default budget: epochs x 500 training steps of 128 windows (forward, and the two
backward products: 3x the forward), a full validation pass per epoch and one test pass,
over the windows the windows stage makes of a file of --rows rows (params.yaml's
jena.*_rows, rnnlab.data.windows.make_window_spec). Gate nonlinearities, elementwise work,
memory traffic, data and tracking are left out, so a real run cannot get under this;
--gflops is the machine's float32 matrix-product rate (190: two threads of this project's
2-core machine, issue 10).
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gflops", type=float, default=190.0)
    parser.add_argument("--rows", type=int, default=420551)
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    jena, train = params["jena"], params["train"]
    batch, steps = jena["batch_size"], train["steps_per_epoch"]
    splits = {split: tuple(jena[f"{split}_rows"]) for split in SPLITS}
    print(f"| variant | epochs | GFLOP per training step | TFLOP in all | minutes at "
          f"{args.gflops:.0f} GFLOP/s |\n|---|---|---|---|---|")
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
        print(f"| {name} | {model['epochs']} | {fwd * batch * 3 / 1e9:.2f} | "
              f"{flop / 1e12:.1f} | {minutes:.1f} |")
    print(f"| **total** | | | | **{total:.1f}** |")


if __name__ == "__main__":
    main()
