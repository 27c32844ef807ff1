"""DVC stage: the naive persistence baseline's MAE on val and test, to DVC and MLflow."""

import argparse
from pathlib import Path

from rnnlab.lecture.naive import run_naive

from _params import read_params, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prepared", type=Path)
    parser.add_argument("windows", type=Path)
    parser.add_argument("metrics", type=Path)
    args = parser.parse_args()
    run_naive(args.prepared, args.windows, args.metrics, seed=read_params().value("seed", int))


if __name__ == "__main__":
    run_stage(main)
