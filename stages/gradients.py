"""DVC stage: vanishing and exploding gradients, measured on Jena windows (the lecture's first topic)."""

import argparse
from pathlib import Path

from rnnlab.data.jena import JenaParams
from rnnlab.lecture.gradient_study import GradientsParams, StudyOutputs, run_gradient_study
from rnnlab.training.params import TrainParams

from _params import read_params, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in ("prepared", "windows", "metrics", "vanishing", "exploding", "figure"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    args = parser.parse_args()
    outputs = StudyOutputs(metrics=args.metrics, vanishing=args.vanishing,
                           exploding=args.exploding, figure=args.figure)
    params = read_params()
    run_gradient_study(params.section("gradients", GradientsParams), args.prepared, args.windows,
                       outputs, seed=params.value("seed", int),
                       batch_size=params.section("jena", JenaParams).batch_size,
                       clip_norm=params.section("train", TrainParams).clip_norm)


if __name__ == "__main__":
    run_stage(main)
