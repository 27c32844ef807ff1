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
    train = params.section("train", TrainParams)
    # The quick-look caps of a training run shorten this stage too (QUICK_LOOK).
    caps = {f"train.{k}": v for k in ("max_epochs", "max_eval_batches")
            if (v := getattr(train, k)) is not None}
    run_gradient_study(params.section("gradients", GradientsParams), args.prepared, args.windows,
                       outputs, seed=params.value("seed", int),
                       batch_size=params.section("jena", JenaParams).batch_size,
                       clip_norm=train.clip_norm, caps=caps)


if __name__ == "__main__":
    run_stage(main)
