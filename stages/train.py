"""DVC stage: train one model variant (``models.<variant>`` in params.yaml), log to MLflow."""

import argparse
import sys
from pathlib import Path

from _params import load_params, run_stage

from rnnlab.experiment import Outputs, train_variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--windows", type=Path, help="the windows_jena output (Jena variants)")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    args = parser.parse_args()
    train_variant(load_params(), args.variant, prepared=args.prepared, windows=args.windows,
                  outputs=Outputs(metrics=args.metrics, plots=args.plots, model=args.model),
                  progress=sys.stderr.isatty())


if __name__ == "__main__":
    run_stage(main)
