"""Training-step and evaluation time of every variant: rnnlab vs the lecture's Keras code.

Run by hand, on a quiet machine (about 20 minutes on 2 cores):

    PYTHONPATH=src python bench/bench_speed.py --keras-python /path/to/venv/bin/python

In one run, in interleaved rounds (rnnlab, Keras, Keras + XLA, the order rotating from
one variant and round to the next, so machine noise hits all three alike), every variant
of both halves is timed: ms per training step (forward, backward, RMSprop) at batch 128,
and ms per evaluation batch of 128 (rnnlab: no_grad, eval mode; Keras: predict_on_batch).
Each side keeps its models between rounds (bench/speed_worker.py); rnnlab runs with its
default ``train.threads: auto``, so its thread tuner is timed too, after ``--quiet-settle``
untimed steps that take it past its first trial (once a stage in training). The same rounds then run
again beside a fixed background load (``--load``, default one busy process per core) for
the slowdown of each side, after ``--settle`` untimed rnnlab steps per variant (its thread
tuner tries another count every 200 steps: the steady state under load is what is timed). Last, each half's default run is extrapolated from the measured
parts: epochs x (steps x step + validation batches x evaluation batch) + the best epoch's
validation and test pass + a fixed per-stage cost (``--stage-seconds``, see
docs/benchmarks.md for where it comes from).

The Keras side needs ``keras`` and ``tensorflow-cpu`` (the ``bench`` extra) in the Python
given by ``--keras-python``; without them its columns are left out and it says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from rnnlab.data.windows import make_window_spec

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "bench" / "speed_worker.py")
JENA_ROWS = 420_551          # the real file's rows (and the generated full-size file's)
IMDB_TRAIN, IMDB_TEST = 25_000, 25_000


class Worker:
    def __init__(self, python: str, *args: str, src: Path = ROOT / "src") -> None:
        env = dict(os.environ, PYTHONPATH=str(src))
        self.proc = subprocess.Popen([python, WORKER, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, bufsize=1)
        self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench worker {self.proc.args} ended (exit {self.proc.wait()})")
        return json.loads(line)

    def ask(self, variant: str, steps: int, evals: int, settle: int = 0) -> dict:
        self.proc.stdin.write(json.dumps({"variant": variant, "steps": steps,
                                          "evals": evals, "settle": settle}) + "\n")
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3 if values else float("nan")


def run_phase(sides: dict, variants: list[str], rounds: int, steps: int, evals: int,
              label: str, settle: int = 0) -> dict:
    """{(side, variant): {"train": [...], "eval": [...], "threads": [...], "rss_mb": x}}"""
    names = list(sides)
    out: dict = {}
    for r in range(rounds):
        for i, variant in enumerate(variants):
            k = (r + i) % len(names)
            for side in names[k:] + names[:k]:
                worker = sides[side](variant)
                first = r == 0 and side == "rnnlab"
                reply = worker.ask(variant, steps, evals, settle if first else 0)
                slot = out.setdefault((side, variant), {"train": [], "eval": [], "threads": []})
                slot["train"] += reply["train"]
                slot["eval"] += reply["eval"]
                slot["threads"].append(reply["threads"])
                slot["rss_mb"] = reply["rss_mb"]
            row = "  ".join(f"{s} {median_ms(out[(s, variant)]['train']):7.1f}" for s in names)
            print(f"[{label} round {r + 1}/{rounds}] {variant:18s} ms/step: {row}",
                  file=sys.stderr, flush=True)
    return out


def eval_batches(params: dict, variant: str) -> dict[str, int]:
    """Validation and test batches (of train.eval_batch_size) and training steps per epoch."""
    size = params["train"]["eval_batch_size"]
    model = params["models"][variant]
    if model["dataset"] == "imdb":
        n_val = round(IMDB_TRAIN * params["imdb"]["val_fraction"])
        train = IMDB_TRAIN - n_val
        steps = params["train"]["imdb_steps_per_epoch"] or -(-train // params["imdb"]["batch_size"])
        return {"steps": steps, "val": -(-n_val // size), "test": -(-IMDB_TEST // size)}
    jena = params["jena"]
    spec = make_window_spec(n_rows=JENA_ROWS, lookback=model.get("lookback", jena["lookback"]),
                            step=model.get("step", jena["step"]), delay=jena["delay"],
                            target_index=1, splits={s: tuple(jena[f"{s}_rows"])
                                                    for s in ("train", "val", "test")})
    return {"steps": params["train"]["steps_per_epoch"],
            "val": -(-spec.count("val") // size), "test": -(-spec.count("test") // size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keras-python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15, help="training steps per round")
    parser.add_argument("--evals", type=int, default=8, help="evaluation batches per round")
    parser.add_argument("--load", type=int, default=os.cpu_count(),
                        help="busy processes in the loaded phase (0: skip it)")
    parser.add_argument("--settle", type=int, default=220,
                        help="untimed rnnlab training steps per variant when the load starts: "
                             "its thread tuner (train.threads: auto) tries another count "
                             "every 200 steps")
    parser.add_argument("--quiet-settle", type=int, default=32,
                        help="untimed rnnlab training steps per variant before the quiet "
                             "rounds: past the thread tuner's first trial (at step 12, 9 "
                             "steps at one thread, then 9 at two), a cost of once a stage")
    parser.add_argument("--only", help="comma-separated variants (default: every torch one)")
    parser.add_argument("--stage-seconds", type=float, default=10.0,
                        help="fixed cost per training stage (imports, tracking, model files)")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    variants = [v for v, m in params["models"].items() if m["arch"] != "tfidf_logreg"]
    if args.only:
        variants = [v for v in variants if v in args.only.split(",")]

    ours: dict[str, Worker] = {}       # one process per variant: its own peak RSS

    def our_worker(variant: str) -> Worker:
        if variant not in ours:
            ours[variant] = Worker(sys.executable, "torch")
        return ours[variant]

    sides = {"rnnlab": our_worker}
    keras_ok = subprocess.run([args.keras_python, "-c", "import keras, tensorflow"],
                              capture_output=True).returncode == 0
    if keras_ok:
        keras_plain, keras_xla = Worker(args.keras_python, "keras"), \
            Worker(args.keras_python, "keras", "--xla")
        sides["keras"] = lambda v: keras_plain
        sides["keras+xla"] = lambda v: keras_xla
    else:
        print(f"keras/tensorflow not importable by {args.keras_python}: Keras columns left out",
              file=sys.stderr)

    quiet = run_phase(sides, variants, args.rounds, args.steps, args.evals, "quiet",
                      settle=args.quiet_settle)
    loaded = {}
    if args.load:
        load = busy(args.load)
        try:
            loaded = run_phase(sides, variants, args.rounds, args.steps, args.evals,
                               f"{args.load} busy", settle=args.settle)
        finally:
            for p in load:
                p.kill()
    for w in list(ours.values()) + ([keras_plain, keras_xla] if keras_ok else []):
        w.close()

    names = list(sides)
    med = {key: (median_ms(v["train"]), median_ms(v["eval"])) for key, v in quiet.items()}
    print(f"\n## Quiet: ms per training step and per evaluation batch (batch 128), median of "
          f"{args.rounds} interleaved rounds x {args.steps} steps / {args.evals} batches, "
          f"{os.cpu_count()} cores\n")
    # The yardstick is the faster Keras side of each variant in this run: on the Intel
    # machine XLA was, on the AMD one plain Keras often was (its LSTMs by 30 %).
    def fastest(v: str, i: int) -> float:
        return min(med[("keras", v)][i], med[("keras+xla", v)][i])

    print("| variant | " + " | ".join(f"{s} step" for s in names)
          + (" | rnnlab / fastest Keras step" if keras_ok else "") + " | "
          + " | ".join(f"{s} eval" for s in names)
          + (" | rnnlab / fastest Keras eval" if keras_ok else "")
          + " | rnnlab threads | rnnlab peak RSS MB |")
    print("|---" * (2 * len(names) + 3 + 2 * keras_ok) + "|")
    for v in variants:
        cells = [f"{med[(s, v)][0]:.1f}" for s in names]
        if keras_ok:
            cells.append(f"**{med[('rnnlab', v)][0] / fastest(v, 0):.2f}**")
        cells += [f"{med[(s, v)][1]:.1f}" for s in names]
        if keras_ok:
            cells.append(f"{med[('rnnlab', v)][1] / fastest(v, 1):.2f}")
        cells += [f"{statistics.mean(quiet[('rnnlab', v)]['threads']):.2f}",
                  f"{quiet[('rnnlab', v)]['rss_mb']:.0f}"]
        print(f"| {v} | " + " | ".join(cells) + " |")

    if loaded:
        print(f"\n## Beside {args.load} busy process{'es' if args.load > 1 else ''}: ms per "
              "training step and the slowdown "
              "(loaded / quiet) of each side\n")
        print("| variant | " + " | ".join(f"{s} step | {s} slowdown" for s in names)
              + " | rnnlab threads |")
        print("|---" * (2 * len(names) + 2) + "|")
        for v in variants:
            cells = []
            for s in names:
                ms = median_ms(loaded[(s, v)]["train"])
                cells += [f"{ms:.1f}", f"{ms / med[(s, v)][0]:.2f}x"]
            cells.append(f"{statistics.mean(loaded[('rnnlab', v)]['threads']):.2f}")
            print(f"| {v} | " + " | ".join(cells) + " |")

    print(f"\n## Extrapolated default run (training stages; {args.stage_seconds:.0f} s fixed "
          "cost per stage)\n")
    print("| variant | epochs | steps/epoch | val batches | test batches | "
          + " | ".join(f"{s} minutes" for s in names) + " |")
    print("|---" * (5 + len(names)) + "|")
    totals = {(s, d): 0.0 for s in names for d in ("jena", "imdb")}
    for v in variants:
        n = eval_batches(params, v)
        epochs = params["models"][v]["epochs"]
        cells = []
        for s in names:
            step_ms, eval_ms = med[(s, v)]
            seconds = (epochs * (n["steps"] * step_ms + n["val"] * eval_ms)
                       + (n["val"] + n["test"]) * eval_ms) / 1e3 + args.stage_seconds
            totals[(s, params["models"][v]["dataset"])] += seconds
            cells.append(f"{seconds / 60:.1f}")
        print(f"| {v} | {epochs} | {n['steps']} | {n['val']} | {n['test']} | "
              + " | ".join(cells) + " |")
    for d in ("jena", "imdb"):
        print(f"| **{d} total** | | | | | "
              + " | ".join(f"**{totals[(s, d)] / 60:.1f}**" for s in names) + " |")


if __name__ == "__main__":
    main()
