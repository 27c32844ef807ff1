"""DVC stage: reports/summary.md and PNG charts, every result beside the lecture's."""

import argparse
from pathlib import Path

from _params import SourceConfig, load_params, run_stage, section

from rnnlab.imdb import CANONICAL_MD5 as IMDB_CANONICAL_MD5
from rnnlab.jena import CANONICAL_MD5 as JENA_CANONICAL_MD5
from rnnlab.report import DataSource, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    params = load_params()
    sources = {}
    for name, canonical in (("jena", JENA_CANONICAL_MD5), ("imdb", IMDB_CANONICAL_MD5)):
        source = section(params, f"data.{name}", SourceConfig)
        sources[name] = DataSource(name, source.url, source.md5, canonical)
    summary = write_report(params, args.metrics, args.plots, args.out, sources)
    print(f"report: {summary} and {len(list(args.out.glob('*.png')))} charts")


if __name__ == "__main__":
    run_stage(main)
