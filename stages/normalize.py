"""DVC stage: parse the Jena CSV, z-score it with training statistics, write .npy + stats."""

import argparse
from pathlib import Path

from rnnlab.data.jena import JenaParams, normalize_jena

from _params import read_params, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("csv", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    jena = read_params().section("jena", JenaParams)
    stats = normalize_jena(args.csv, args.out_dir, train_rows=jena.train_rows,
                           target=jena.target, wind_sentinel_fill=jena.wind_sentinel_fill)
    print(f"normalize: {stats.n_rows:,} rows x {len(stats.columns)} features -> "
          f"{args.out_dir} (target std {stats.target_std:.4f})")


if __name__ == "__main__":
    run_stage(main)
