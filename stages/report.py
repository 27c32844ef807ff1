"""DVC stage: reports/summary.md and PNG charts, every result beside the lecture's."""

import argparse
import json
from pathlib import Path

from rnnlab.data.imdb import ImdbParams
from rnnlab.data.jena import JenaParams
from rnnlab.lecture.report import ReportParams, data_sources, write_report
from rnnlab.nn.schema import load_models
from rnnlab.training.params import TrainParams
from rnnlab.training.seeds import RunParams

from _params import read_params, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True)
    parser.add_argument("--jena", type=Path, required=True, help="the prepared Jena data")
    parser.add_argument("--imdb", type=Path, required=True, help="the prepared IMDB data")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fidelity", type=Path,
                        help="bench/bench_fidelity.py's summary: the lecture's Keras code's "
                             "figures on the same data, shown beside ours where they match")
    args = parser.parse_args()
    fidelity = json.loads(args.fidelity.read_text()) if args.fidelity else None
    params = read_params()
    report = ReportParams(run=params.top(RunParams), jena=params.section("jena", JenaParams),
                          imdb=params.section("imdb", ImdbParams),
                          train=params.section("train", TrainParams),
                          models=load_models(params.at("models"), "params.yaml: models"),
                          distance=params.value("gradients.distance", int))
    summary = write_report(report, args.metrics, args.plots, args.out,
                           data_sources(jena=args.jena, imdb=args.imdb), fidelity)
    print(f"report: {summary} and {len(list(args.out.glob('*.png')))} charts")


if __name__ == "__main__":
    run_stage(main)
