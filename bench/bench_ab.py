"""Two checkouts of rnnlab side by side: ms per training step and per evaluation batch.

Run by hand, on a quiet machine (about a minute per round on 2 cores):

    git worktree add --detach ../rnnlab-base <rev>        # the baseline, e.g. main
    python bench/bench_ab.py --baseline ../rnnlab-base [--rounds 3] [--only gru,lstm]

Each checkout runs in its own bench/speed_worker.py process (PYTHONPATH = its src/, so each
loads its own C++ recurrences, compiled once into the shared cache), with the same models,
random inputs of the real shapes and ``train.threads`` from this checkout's params.yaml.
Rounds alternate which side goes first; the medians of every step and batch are compared,
new / baseline (below 1: this checkout is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import ROOT, Worker  # noqa: E402  (bench/ is not a package)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, type=Path,
                        help="the other checkout (its src/ is imported)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="training steps per round")
    parser.add_argument("--evals", type=int, default=6, help="evaluation batches per round")
    parser.add_argument("--only", help="comma-separated variants (default: every torch one)")
    args = parser.parse_args()
    base_src = args.baseline.resolve() / "src"
    if not (base_src / "rnnlab").is_dir():
        sys.exit(f"--baseline {args.baseline}: no src/rnnlab there; give a checkout of rnnlab")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    variants = [v for v, m in params["models"].items() if m["arch"] != "tfidf_logreg"]
    if args.only:
        variants = [v for v in variants if v in args.only.split(",")]
    sides = {"baseline": Worker(sys.executable, "torch", src=base_src),
             "this": Worker(sys.executable, "torch")}
    times = {(v, s): ([], []) for v in variants for s in sides}
    for r in range(args.rounds):
        for v in variants:
            for name in (("baseline", "this") if r % 2 == 0 else ("this", "baseline")):
                answer = sides[name].ask(v, args.steps, args.evals)
                times[v, name][0].extend(answer["train"])
                times[v, name][1].extend(answer["eval"])
    print(f"{'variant':<16} {'step ms: base':>14} {'this':>7} {'ratio':>6}   "
          f"{'eval ms: base':>14} {'this':>7} {'ratio':>6}")
    for v in variants:
        (bt, be), (tt, te) = times[v, "baseline"], times[v, "this"]
        b1, t1 = statistics.median(bt) * 1e3, statistics.median(tt) * 1e3
        b2, t2 = statistics.median(be) * 1e3, statistics.median(te) * 1e3
        print(f"{v:<16} {b1:>14.1f} {t1:>7.1f} {t1 / b1:>5.2f}x   "
              f"{b2:>14.1f} {t2:>7.1f} {t2 / b2:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
