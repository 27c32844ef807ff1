"""DVC stage: download a data set (checksummed, bounded, atomic) to the path dvc.yaml gives."""

import argparse
import sys
from pathlib import Path

from rnnlab.data.download import SourceParams, download_dataset

from _params import read_params, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", choices=["jena", "imdb"])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    source = read_params().section(f"data.{args.dataset}", SourceParams)
    print(download_dataset(args.dataset, source.url, args.out, md5=source.md5,
                           deadline_s=source.deadline_s, min_rate_kb_s=source.min_rate_kb_s,
                           max_mb=source.max_mb, progress=sys.stderr.isatty()))


if __name__ == "__main__":
    run_stage(main)
