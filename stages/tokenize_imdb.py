"""DVC stage: tokenize the IMDB reviews into padded id arrays, a vocabulary and a split."""

import argparse
from pathlib import Path

from rnnlab.data.imdb import ImdbParams, prepare_imdb, save_sequence_spec

from _params import read_params, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("windows_dir", type=Path, help="where the sequence spec goes")
    args = parser.parse_args()
    params = read_params()
    imdb = params.section("imdb", ImdbParams)
    stats = prepare_imdb(args.raw, args.out_dir, max_features=imdb.max_features,
                         maxlen=imdb.maxlen, val_fraction=imdb.val_fraction, seed=params.value("seed", int),
                         padding=imdb.padding, truncating=imdb.truncating)
    save_sequence_spec(stats, args.windows_dir)
    print(f"tokenize: train {stats['counts']['train']:,}, val {stats['counts']['val']:,}, "
          f"test {stats['counts']['test']:,} reviews -> {args.out_dir}")


if __name__ == "__main__":
    run_stage(main)
