"""DVC stage: vanishing and exploding gradients, measured on Jena windows (the lecture's first topic)."""

import argparse
from pathlib import Path

from _params import load_params, run_stage

from rnnlab.gradient_study import StudyOutputs, run_gradient_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("prepared", "windows", "metrics", "vanishing", "exploding", "figure"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    args = parser.parse_args()
    outputs = StudyOutputs(metrics=args.metrics, vanishing=args.vanishing,
                           exploding=args.exploding, figure=args.figure)
    run_gradient_study(load_params(), args.prepared, args.windows, outputs)


if __name__ == "__main__":
    run_stage(main)
