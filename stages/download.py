"""DVC stage: download a data set (checksummed, atomic) to the path dvc.yaml gives."""

import argparse
from pathlib import Path

from _params import SourceConfig, load_params, run_stage, section

from rnnlab.download import download_csv
from rnnlab.errors import ChecksumError, DownloadError
from rnnlab.imdb import download_imdb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", choices=["jena", "imdb"])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    source = section(load_params(), f"data.{args.dataset}", SourceConfig)
    try:
        if args.dataset == "jena":
            download_csv(source.url, args.out, md5=source.md5)
        else:
            download_imdb(source.url, args.out, md5=source.md5)
    except ChecksumError as e:
        raise ChecksumError(f"{e} (params.yaml: data.{args.dataset}.md5)") from e
    except DownloadError as e:
        raise DownloadError(f"{e}. Offline? Point params.yaml: data.{args.dataset}.url at a "
                            "local copy (README, 'Data without the internet')") from e
    print(f"download: {source.url} -> {args.out} (md5 verified)")


if __name__ == "__main__":
    run_stage(main)
