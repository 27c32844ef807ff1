"""Fidelity, side by side: the lecture's Keras code and rnnlab train the same variants on
the same prepared data, with several seeds each; a table of both sides' figures.

Run by hand (hours on 2 cores for the full IMDB budget; see docs/benchmarks.md):

    PYTHONPATH=src python bench/bench_fidelity.py --root CLONE --keras-python .venv-keras/bin/python \\
        --variants imdb_lstm imdb_bilstm --seeds 1337 1338 1339

``--root`` is a checkout where ``dvc repro`` prepared the data (``data/prepared/imdb``,
``data/prepared/jena`` and ``data/prepared/jena_windows``); its ``params.yaml`` gives each
variant's architecture, lookback, epochs and batch size. Both sides then train each
(variant, seed) on exactly the same batches in the same order (rnnlab's
``shuffled_batches`` for that seed and epoch, which bench/fidelity_keras.py imports), keep
the best validation epoch by the same rule, and score validation and test in full in
float64. What differs is what is compared: the framework, its initial draws and dropout
masks, its arithmetic. rnnlab runs its real engine (``rnnlab.training.engine.fit``, fused kernels,
the ``train.init`` of params.yaml) without MLflow; Keras runs ``model.fit`` on the
lecture's model (bench/keras_lecture.py).

Jena's default budget (20-40 epochs x 500 steps) does not fit an afternoon on 2 cores for
both sides and several seeds: ``--jena-epochs`` and ``--jena-steps`` cap it (default 5 x
200, said in the table), and ``--max-eval-batches`` caps evaluation. IMDB runs its full
default budget (10 epochs, full passes) unless ``--imdb-epochs`` says otherwise.

Each finished run is appended to ``--out`` (JSON lines) at once, and runs already there
are skipped: a long sweep can stop and go on. The order interleaves the sides and rotates
over variants, so a stopped run leaves both sides with comparable seeds. ``--table``
prints the markdown table from ``--out`` without training; ``--summary FILE`` writes the
per-variant means the report stage shows beside the lecture's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from rnnlab.lecture.report import data_digest, run_setup

ROOT = Path(__file__).resolve().parents[1]
KERAS_WORKER = ROOT / "bench" / "fidelity_keras.py"
JENA = ("dense", "gru", "gru_dropout", "gru_stacked", "gru_reversed", "bigru", "conv_gru", "lstm")
OURS = {"ours": "keras2", "ours_rmsprop3": "keras3"}   # rnnlab's sides: their RMSprop form
IMDB = ("imdb_dense", "imdb_simplernn", "imdb_lstm", "imdb_lstm_reversed", "imdb_bilstm")


def budget(args, params, spec) -> dict:
    """Epochs, steps per epoch and the evaluation cap of one variant's runs."""
    if spec.dataset == "jena":
        return {"epochs": min(spec.epochs, args.jena_epochs or spec.epochs),
                "steps": args.jena_steps or params.train.steps_per_epoch,
                "max_eval_batches": args.max_eval_batches}
    return {"epochs": min(spec.epochs, args.imdb_epochs or spec.epochs),
            "steps": params.train.imdb_steps_per_epoch, "max_eval_batches": args.max_eval_batches}


def data_label(root: Path, dataset: str) -> str:
    """Where the prepared data came from: the report shows a figure only beside its own."""
    from rnnlab.data.imdb import data_source
    from rnnlab.data.jena import JenaStats

    prepared = root / "data" / "prepared" / dataset
    if dataset == "imdb":
        return data_source(json.loads((prepared / "stats.json").read_text()))
    return "canonical" if JenaStats.load(prepared).canonical else "other"


def run_ours(job: dict, params, threads: int, rmsprop: str = "keras2") -> dict:
    import torch

    from rnnlab.nn.models import build_model
    from rnnlab.nn.recurrent import prepare_native
    from rnnlab.training.engine import TrainConfig, fit, seed_everything
    from rnnlab.training.tasks import build_task

    torch.set_num_threads(threads)
    spec = params.variant(job["variant"])
    data = build_task(spec, getattr(params, spec.dataset), params.train,
                      Path(job["prepared"]), Path(job["windows_dir"]))
    config = TrainConfig(epochs=job["epochs"], steps_per_epoch=job["steps"], seed=job["seed"],
                         max_eval_batches=job["max_eval_batches"], rmsprop=rmsprop)
    seed_everything(job["seed"])
    model = build_model(spec, n_features=data.task.n_inputs, timesteps=data.task.timesteps,
                        init=params.train.init)
    device = torch.device("cpu")
    prepare_native(model, device)
    began = time.perf_counter()
    result = fit(model, data.task, config, device, progress=False, desc=job["variant"])
    keys = data.task.metric_keys
    return {"best_epoch": result.best_epoch, "val": {k: result.val[k] for k in keys},
            "test": {k: result.test[k] for k in keys}, "seconds": time.perf_counter() - began,
            "history": [{"epoch": r["epoch"], "train_loss": r["train_loss"],
                         "val": r[f"val_{data.task.monitor}"], "seconds": r["seconds"]}
                        for r in result.history],
            "versions": {"torch": torch.__version__, "init": params.train.init}}


def run_keras(job: dict, python: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.json"
        path.write_text(json.dumps(job))
        env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]), TF_CPP_MIN_LOG_LEVEL="3")
        proc = subprocess.run([python, str(KERAS_WORKER), str(path)], capture_output=True,
                              text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"Keras run {job['variant']} seed {job['seed']} failed "
                         f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def done_runs(out: Path) -> list[dict]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one seed)."""
    m = sum(values) / len(values)
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return m, var ** 0.5


def layout_of(run: dict) -> str | None:
    """The stored order a run saw: its ``layout``; a row written before that field has the
    setup's data digest, which then took the order into account too."""
    return run.get("layout") or run["setup"].get("data")


def summarize(runs: list[dict]) -> dict:
    """Per (variant, budget, stored order): each side's mean ± std of the figures, over its
    seeds; a (side, seed) recorded twice counts once (the first)."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    seen: set[tuple] = set()
    for run in runs:
        key = (run["variant"], json.dumps(run["setup"], sort_keys=True), layout_of(run))
        if (key, run["side"], run["seed"]) in seen:
            continue
        seen.add((key, run["side"], run["seed"]))
        groups.setdefault(key, {}).setdefault(run["side"], []).append(run)
    summary = []
    for (variant, setup, layout), sides in sorted(groups.items(), key=lambda g: str(g[0])):
        some = next(iter(sides.values()))[0]
        row = {"variant": variant, "setup": json.loads(setup), "layout": layout,
               "data": some["data"],
               "dates": sorted({r["date"] for rs in sides.values() for r in rs})}
        for side, side_runs in sides.items():
            figures = {}
            for split in ("val", "test"):
                for k in side_runs[0][split]:
                    m, s = mean_std([r[split][k] for r in side_runs])
                    figures[f"{split}_{k}"], figures[f"{split}_{k}_std"] = m, s
            row[side] = figures | {"seeds": sorted(r["seed"] for r in side_runs),
                                   "minutes": statistics.fmean(r["seconds"] for r in side_runs) / 60}
        summary.append(row)
    return {"runs": len(runs), "rows": summary}


def spread_units(ours: dict, keras: dict, key: str) -> str:
    """(ours - Keras) over the pooled seed std of the two sides: how many spreads apart."""
    if len(ours["seeds"]) < 2 or len(keras["seeds"]) < 2:
        return "–"                               # no spread from one seed
    pooled = ((ours[f"{key}_std"] ** 2 + keras[f"{key}_std"] ** 2) / 2) ** 0.5
    diff = ours[key] - keras[key]
    return f"{diff / pooled:+.1f}" if pooled > 0 else "–"


def spread(side: dict, key: str) -> str:
    """mean ± std over the seeds; the mean alone for one seed."""
    if len(side["seeds"]) < 2:
        return f"{side[key]:.3f}"
    return f"{side[key]:.3f} ± {side[key + '_std']:.3f}"


def table(summary: dict) -> str:
    lines = []
    for dataset, _key, keys in (("jena", "mae_degc", ("val_mae_degc", "test_mae_degc")),
                               ("imdb", "accuracy", ("val_accuracy", "test_accuracy"))):
        rows = [(r, side) for r in summary["rows"] for side in OURS
                if (r["variant"] in IMDB) == (dataset == "imdb") and side in r and "keras" in r]
        if not rows:
            continue
        lines += ["| variant | budget | seeds | split | rnnlab | lecture's Keras | "
                  "difference | in seed spreads |", "|---|---|---|---|---|---|---|---|"]
        for r, side in rows:
            o, k, setup = r[side], r["keras"], r["setup"]
            steps = "full passes" if setup["steps"] is None else f"{setup['steps']} steps"
            seeds = f"{len(o['seeds'])} / {len(k['seeds'])}"
            name = r["variant"] + (" (rnnlab with Keras 3's RMSprop)" if side != "ours" else "")
            for metric in keys:
                split = metric.split("_")[0]
                lines.append(
                    f"| {name} | {setup['epochs']} epochs x {steps} | {seeds} | {split} | "
                    f"{spread(o, metric)} | {spread(k, metric)} | "
                    f"{o[metric] - k[metric]:+.3f} | {spread_units(o, k, metric)} |")
        lines.append("")
    return "\n".join(lines) or "(no variant has runs on both sides yet)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="a checkout with data/prepared/ (default: this one)")
    parser.add_argument("--keras-python", default=os.environ.get("RNNLAB_KERAS_PYTHON"),
                        help="a Python with keras and tensorflow-cpu (default $RNNLAB_KERAS_PYTHON)")
    parser.add_argument("--variants", nargs="+", default=list(IMDB))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1337, 1338, 1339])
    parser.add_argument("--threads", type=int, default=1,
                        help="threads per side (default 1: leaves a core for other work)")
    parser.add_argument("--jena-epochs", type=int, default=5)
    parser.add_argument("--jena-steps", type=int, default=200)
    parser.add_argument("--imdb-epochs", type=int)
    parser.add_argument("--max-eval-batches", type=int)
    parser.add_argument("--sides", nargs="+", default=["ours", "keras"], choices=[*OURS, "keras"],
                        help="ours_rmsprop3: rnnlab with Keras 3's RMSprop (sqrt(v + eps), "
                             "train.py's Keras3RMSprop) instead of the book's")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / ".cache" / "fidelity.jsonl")
    parser.add_argument("--table", action="store_true", help="print the table from --out only")
    parser.add_argument("--summary", type=Path, help="write the per-variant means here (JSON)")
    args = parser.parse_args()

    if not args.table:
        from rnnlab.tools.params import load_params

        params = load_params(args.root / "params.yaml")
        if "keras" in args.sides and not args.keras_python:
            raise SystemExit("no --keras-python (or RNNLAB_KERAS_PYTHON): `./dev.sh keras` "
                             "makes .venv-keras with the lecture's Keras")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # A run counts as done for the same setup and the same stored order of the data
        # (``layout_of``): the pairs' sides must see the same batches.
        have = {(r["side"], r["variant"], r["seed"], json.dumps(r["setup"], sort_keys=True),
                 layout_of(r)) for r in done_runs(args.out)}
        pairs = [(seed, variant) for seed in args.seeds for variant in args.variants]
        plan = [(seed, variant, side) for k, (seed, variant) in enumerate(pairs)   # which
                for side in (args.sides if k % 2 == 0 else args.sides[::-1])]     # side first
        stats = {ds: json.loads((args.root / "data" / "prepared" / ds / "stats.json").read_text())
                 for ds in {params.variant(v).dataset for v in args.variants}}
        digests = {ds: data_digest(s) for ds, s in stats.items()}
        layouts = {ds: data_digest(s, ordered=True) for ds, s in stats.items()}
        for i, (seed, variant, side) in enumerate(plan):
            spec = params.variant(variant)
            prepared = args.root / "data" / "prepared" / spec.dataset
            windows_dir = args.root / "data" / "prepared" / f"{spec.dataset}_windows"
            job = {"variant": variant, "seed": seed, "threads": args.threads,
                   "dataset": spec.dataset, "prepared": str(prepared),
                   "windows_dir": str(windows_dir), "reverse": spec.reverse,
                   "batch_size": getattr(params, spec.dataset).batch_size,
                   "eval_batch_size": params.train.eval_batch_size, **budget(args, params, spec)}
            job["setup"] = run_setup(params, spec, digests[spec.dataset]) | {
                k: job[k] for k in ("epochs", "steps", "max_eval_batches")}
            if job["max_eval_batches"] is not None:   # capped: the first batches, in order
                job["setup"]["data"] = layouts[spec.dataset]
            if (side, variant, seed, json.dumps(job["setup"], sort_keys=True),
                    layouts[spec.dataset]) in have:
                continue
            if spec.dataset == "jena":
                from rnnlab.data.jena import JenaStats
                from rnnlab.data.windows import load_spec, variant_spec

                w = variant_spec(load_spec(windows_dir), spec.lookback, spec.step)
                job["windows"] = asdict(w)
                job["target_std"] = JenaStats.load(prepared).target_std
            print(f"[{i + 1}/{len(plan)}] {side} {variant} seed {seed}: {job['epochs']} epochs",
                  file=sys.stderr, flush=True)
            result = run_keras(job, args.keras_python) if side == "keras" else \
                run_ours(job, params, args.threads, OURS[side])
            row = {"side": side, "variant": variant, "seed": seed, "setup": job["setup"],
                   "layout": layouts[spec.dataset],
                   "threads": args.threads, "data": data_label(args.root, spec.dataset),
                   "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"), **result}
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            shown = ", ".join(f"{s}_{k} {v:.4f}" for s in ("val", "test")
                              for k, v in result[s].items())
            print(f"    {shown}; best epoch {result['best_epoch']}, "
                  f"{result['seconds'] / 60:.1f} min", file=sys.stderr, flush=True)

    summary = summarize(done_runs(args.out))
    print(table(summary))
    if args.summary:
        from rnnlab.core.atomic import write_json

        write_json(args.summary, summary)


if __name__ == "__main__":
    main()
