"""DVC stage: tokenize the IMDB reviews into padded id arrays, a vocabulary and a split."""

import argparse
from pathlib import Path

from _params import ImdbConfig, load_params, run_stage, section

from rnnlab.imdb import prepare_imdb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    params = load_params()
    imdb = section(params, "imdb", ImdbConfig)
    stats = prepare_imdb(args.raw, args.out_dir, max_features=imdb.max_features,
                         maxlen=imdb.maxlen, val_fraction=imdb.val_fraction,
                         seed=params["seed"], padding=imdb.padding, truncating=imdb.truncating)
    print(f"tokenize: train {stats['counts']['train']:,}, val {stats['counts']['val']:,}, "
          f"test {stats['counts']['test']:,} reviews -> {args.out_dir}")


if __name__ == "__main__":
    run_stage(main)
