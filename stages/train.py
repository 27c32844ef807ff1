"""DVC stage: train one model variant (``models.<variant>`` in params.yaml), log to MLflow."""

import argparse
import sys
from pathlib import Path

from rnnlab.data.imdb import ImdbParams
from rnnlab.data.jena import JenaParams
from rnnlab.lecture.experiment import Outputs, train_variant
from rnnlab.nn.schema import load_models, variant_spec
from rnnlab.training.params import TrainParams
from rnnlab.training.seeds import RunParams

from _params import read_params, run_stage

DATA_PARAMS = {"jena": JenaParams, "imdb": ImdbParams}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--windows", type=Path, required=True,
                        help="the window spec: windows_jena's output, or IMDB's sequence spec")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    args = parser.parse_args()
    params = read_params()
    spec = variant_spec(load_models(params.at("models"), "params.yaml: models"),
                        args.variant)
    train_variant(args.variant, spec, common=params.top(RunParams),
                  train=params.section("train", TrainParams),
                  data=params.section(spec.dataset, DATA_PARAMS[spec.dataset]),
                  prepared=args.prepared, windows=args.windows,
                  outputs=Outputs(metrics=args.metrics, plots=args.plots, model=args.model),
                  progress=sys.stderr.isatty())


if __name__ == "__main__":
    run_stage(main)
