"""DVC stage: reports/summary.md and PNG charts, every result beside the lecture's."""

import argparse
import json
from pathlib import Path

from _params import load_params, run_stage

from rnnlab.report import data_sources, write_report


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
    summary = write_report(load_params(), args.metrics, args.plots, args.out,
                           data_sources(jena=args.jena, imdb=args.imdb), fidelity)
    print(f"report: {summary} and {len(list(args.out.glob('*.png')))} charts")


if __name__ == "__main__":
    run_stage(main)
