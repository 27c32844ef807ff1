"""A validation pass at several sizes of forward pass: what ``train.eval_batch_size`` and
the GPU's joined passes (``engine.GPU_EVAL_ROWS``) rest on.

Run by hand, on a quiet machine (a full-size Jena validation split: 0.2-2.5 s per pass on
a 2-core CPU, about a minute for the three default variants):

    PYTHONPATH=src python bench/bench_eval.py [--jena data/prepared] [--variants gru dense]
        [--rows 128 1024 2048] [--rounds 3] [--device cpu]

``--jena`` holds ``jena/`` and ``jena_windows/`` as the pipeline prepares them (default:
the project's ``data/prepared``; a generated full-size file serves: ``rnnlab-synthetic
jena``). Each variant is built from params.yaml with its seed and untrained. Each size
is ``train.eval_batch_size`` batches joined into passes of that many rows
(``engine.evaluate(..., join=rows // batch)``): the same rows, in the same order. One
untimed pass per size first, then ``--rounds`` rounds alternating between the sizes; per
size the median seconds of a whole pass, and the largest difference in val MAE from the
first size (no layer mixes rows, so it is float32 rounding at most).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import ROOT, Data, build, timed_passes  # noqa: E402

from rnnlab.tools.params import load_params  # noqa: E402
from rnnlab.training import engine  # noqa: E402


def passes(model, task, device: torch.device, rows: list[int], rounds: int) -> dict:
    """rows -> (median seconds of a whole validation pass, |val MAE - the first size's|)"""
    joins = {n: n // task.eval_batch_size for n in rows}
    figures = {n: engine.evaluate(model, task, "val", device, None, join=j)["mae"]
               for n, j in joins.items()}        # also each size's untimed first pass
    times = timed_passes(model, task, device, None, joins, rounds)
    return {n: (times[n], abs(figures[n] - figures[rows[0]])) for n in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jena", type=Path, default=ROOT / "data" / "prepared",
                        help="the folder holding jena/ and jena_windows/ (default: the "
                             "pipeline's data/prepared)")
    parser.add_argument("--variants", nargs="+", default=["dense", "gru", "gru_dropout"])
    parser.add_argument("--rows", type=int, nargs="+", default=[128, 1024, 2048],
                        help="rows per forward pass, each a multiple of train.eval_batch_size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not (args.jena / "jena_windows").is_dir():
        parser.error(f"--jena {args.jena}: no jena_windows/ in it; run `dvc repro windows_jena` "
                     "first, or point --jena at a folder that has jena/ and jena_windows/")
    params = load_params(ROOT / "params.yaml")
    batch = params.train.eval_batch_size
    if any(n < batch or n % batch for n in args.rows):
        parser.error(f"--rows {args.rows}: each must be a multiple of train.eval_batch_size "
                     f"({batch}) in params.yaml")
    device = torch.device(args.device)
    data = Data(params, args.jena, args.jena / "imdb")
    for name in args.variants:
        if name not in params.models:
            parser.error(f"--variants {name}: not a variant of params.yaml's models")
        if params.variant(name).dataset != "jena":
            parser.error(f"--variants {name}: an IMDB variant; this bench times Jena's")
    print(f"{'variant':<14}" + "".join(f"{n:>10} rows" for n in args.rows)
          + "   largest val MAE difference")
    for name in args.variants:
        task, _ = data.task(name)
        model = build(params, name, task, device)
        result = passes(model, task, device, args.rows, args.rounds)
        print(f"{name:<14}" + "".join(f"{s:>13.3f} s" for s, _ in result.values())
              + f"   {max(d for _, d in result.values()):.1e}", flush=True)


if __name__ == "__main__":
    main()
