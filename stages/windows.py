"""DVC stage: the split ranges of target rows under the window convention (no window copies)."""

import argparse
from pathlib import Path

from rnnlab.data.jena import JenaParams, JenaStats
from rnnlab.data.windows import SPLITS, make_window_spec, save_spec

from _params import read_params, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prepared", type=Path, help="the normalize stage's output directory")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    jena = read_params().section("jena", JenaParams)
    stats = JenaStats.load(args.prepared)
    spec = make_window_spec(n_rows=stats.n_rows, lookback=jena.lookback, step=jena.step,
                            delay=jena.delay, target_index=stats.target_index,
                            splits=jena.splits)
    save_spec(spec, args.out_dir)
    counts = ", ".join(f"{s} {spec.count(s):,}" for s in SPLITS)
    print(f"windows: {spec.timesteps} steps x {len(stats.columns)} features; {counts}")


if __name__ == "__main__":
    run_stage(main)
