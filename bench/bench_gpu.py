"""The CUDA path, on a lent GPU machine: its tests, one default epoch of every variant, and
the GRU's recurrent-dropout loop with CUDA graphs against without.

    PYTHONPATH=src python bench/bench_gpu.py --jena DIR [--epochs 2] [--out FILE]

``DIR`` holds ``jena`` and ``jena_windows``: a clone's ``data/prepared/`` after
``dvc repro windows_jena`` (the GPU machine has neither the raw data nor polars, which
parses it). IMDB inputs are random word ids with the real shapes (20,000 / 5,000 / 25,000
reviews of 500 ids, vocabulary 10,002): no copy of the reviews travels there, and a step
costs the same whatever the ids.

1. ``pytest --noconftest tests/test_cuda.py`` (the CUDA tests; skipped on a CPU-only CI).
2. For every torch variant of params.yaml, with its params as they are: ``fit`` for
   ``--epochs`` epochs of the default length, each epoch's seconds (training and the
   validation pass), the final validation + test evaluation, the variant's peak GPU memory
   (the graphs of the variants before it freed), and the variant's default stage
   extrapolated from those parts: first epoch + (epochs - 1) x the last measured epoch +
   the final evaluation, once per seed. ``--no-epochs`` skips this part.
3. For the variants with recurrent dropout: ms per training step with the CUDA-graphed
   loops and with the TorchScript loops launched step by step (``_CudaGraphed.enabled``
   off: what runs without graphs), 20 steps per round after 3 warm-up steps, in rounds of
   alternating order; the median of each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rnnlab.data.imdb import FILES  # noqa: E402
from rnnlab.nn import recurrent  # noqa: E402
from rnnlab.nn.models import build_model  # noqa: E402
from rnnlab.tools.params import ARCHITECTURES, load_params  # noqa: E402
from rnnlab.training.engine import TrainConfig, fit, seed_everything  # noqa: E402
from rnnlab.training.tasks import ImdbTask, build_task  # noqa: E402

IMDB_COUNTS = {"train": 20_000, "val": 5_000, "test": 25_000}


def run_tests() -> dict:
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--noconftest", "-p",
                           "no:cacheprovider", str(ROOT / "tests/test_cuda.py")],
                          cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    print(proc.stdout, proc.stderr[-2000:], sep="\n", flush=True)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return {"returncode": proc.returncode, "summary": summary,
            "seconds": round(time.perf_counter() - began, 1)}


def random_imdb(root: Path, maxlen: int, vocab: int) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in IMDB_COUNTS.items():
        x = rng.integers(2, vocab, size=(n, maxlen), dtype=np.int32)
        np.save(root / FILES["x"].format(split=split), x)
        np.save(root / FILES["x_reversed"].format(split=split), x[:, ::-1].copy())
        np.save(root / FILES["y"].format(split=split), rng.integers(0, 2, n).astype(np.int8))
    return root


def make_task(params, spec, jena: Path, imdb: Path):
    if spec.dataset == "jena":
        data = build_task(params, spec, jena / "jena", jena / "jena_windows")
        return data.task, data.steps_per_epoch
    task = ImdbTask(imdb, batch_size=params.imdb.batch_size, reverse=spec.reverse,
                    eval_batch_size=params.train.eval_batch_size,
                    vocab_size=params.imdb.max_features + 2)
    return task, params.train.imdb_steps_per_epoch


def clear_graphs() -> None:
    """Each variant starts without the graphs (and their memory) of the ones before it."""
    for graphed in (recurrent._gru_forward_graphed, recurrent._gru_backward_graphed):
        graphed.graphs.clear()
    torch.cuda.empty_cache()


def time_variant(params, name: str, jena: Path, imdb: Path, epochs: int, device) -> dict:
    clear_graphs()
    spec = params.variant(name)
    task, steps = make_task(params, spec, jena, imdb)
    seed_everything(params.seed)
    model = build_model(spec, n_features=task.n_inputs, timesteps=task.timesteps,
                        init=params.train.init)
    n = min(epochs, spec.epochs)
    config = TrainConfig(epochs=n, steps_per_epoch=steps, seed=params.seed,
                         clip_norm=params.train.clip_norm,
                         max_eval_batches=params.train.max_eval_batches)
    torch.cuda.reset_peak_memory_stats(device)
    torch.cuda.synchronize(device)
    began = time.perf_counter()
    result = fit(model, task, config, device, progress=False, desc=name)
    torch.cuda.synchronize(device)
    total = time.perf_counter() - began
    seconds = [row["seconds"] for row in result.history]
    final = total - sum(seconds)
    stage = (seconds[0] + (spec.epochs - 1) * seconds[-1] + final) * len(params.seed_list)
    row = {"variant": name, "epochs_timed": n, "epoch_seconds": [round(s, 2) for s in seconds],
           "final_eval_seconds": round(final, 2), "default_epochs": spec.epochs,
           "seeds": len(params.seed_list), "stage_seconds_extrapolated": round(stage, 1),
           "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
           "val": {k: round(v, 4) for k, v in result.val.items()}}
    print(json.dumps(row), flush=True)
    return row


def step_times(params, name: str, jena: Path, device, rounds: int = 3, steps: int = 20) -> dict:
    """ms per training step, graphs on and off, alternating which goes first."""
    clear_graphs()
    spec = params.variant(name)
    task, _ = make_task(params, spec, jena, Path())
    seed_everything(params.seed)
    model = build_model(spec, n_features=task.n_inputs, timesteps=task.timesteps,
                        init=params.train.init).to(device).train()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    batches = [(x.to(device), y.to(device))
               for x, y in task.train_batches(1, steps + 3, params.seed)]

    def train(batch_list):
        for x, y in batch_list:
            opt.zero_grad(set_to_none=True)
            task.loss(model(x), y).backward()
            opt.step()

    saved = recurrent._CudaGraphed.enabled
    times: dict[str, list[float]] = {"graphs": [], "step_by_step": []}
    try:
        for mode in times:                       # warm-up (and capture) for both
            recurrent._CudaGraphed.enabled = mode == "graphs"
            train(batches[:3])
        for r in range(rounds):
            for mode in (list(times) if r % 2 == 0 else list(times)[::-1]):
                recurrent._CudaGraphed.enabled = mode == "graphs"
                torch.cuda.synchronize(device)
                began = time.perf_counter()
                train(batches[3:])
                torch.cuda.synchronize(device)
                times[mode].append((time.perf_counter() - began) / steps * 1e3)
    finally:
        recurrent._CudaGraphed.enabled = saved
    row = {"variant": name, **{f"{m}_ms": round(statistics.median(t), 2) for m, t in times.items()},
           "rounds": rounds, "steps": steps}
    row["speedup"] = round(row["step_by_step_ms"] / row["graphs_ms"], 2)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jena", type=Path, required=True,
                        help="a folder holding jena/ and jena_windows/ (data/prepared)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--variants", nargs="*", help="default: every torch variant")
    parser.add_argument("--no-tests", action="store_true")
    parser.add_argument("--no-epochs", action="store_true",
                        help="skip the default epochs: tests and graphs against step by step")
    parser.add_argument("--eval-batch-size", type=int,
                        help="instead of train.eval_batch_size (validation and test batches)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device here")
    device = torch.device("cuda")
    params = load_params(ROOT / "params.yaml")
    if args.eval_batch_size:
        params = dataclasses.replace(params, train=dataclasses.replace(
            params.train, eval_batch_size=args.eval_batch_size))
    report: dict = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(device),
                    "cudnn": torch.backends.cudnn.version(),
                    "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                             "cudnn": torch.backends.cudnn.allow_tf32},
                    "eval_batch_size": params.train.eval_batch_size}
    print(json.dumps(report), flush=True)
    if not args.no_tests:
        report["tests"] = run_tests()
    names = args.variants or [n for n, m in params.models.items() if ARCHITECTURES[m.arch].torch]
    with tempfile.TemporaryDirectory() as tmp:
        imdb = random_imdb(Path(tmp) / "imdb", params.imdb.maxlen, params.imdb.max_features + 2)
        report["variants"] = []
        for name in ([] if args.no_epochs else names):
            try:
                report["variants"].append(time_variant(params, name, args.jena, imdb,
                                                       args.epochs, device))
            except Exception as e:  # noqa: BLE001 - report it and go on with the others
                print(f"{name}: {type(e).__name__}: {e}", flush=True)
                report["variants"].append({"variant": name, "error": f"{type(e).__name__}: {e}"})
    report["graphs_vs_step_by_step"] = []
    for name in names:
        spec = params.variant(name)
        if spec.recurrent_dropout > 0:
            try:
                report["graphs_vs_step_by_step"].append(step_times(params, name, args.jena,
                                                                   device))
            except Exception as e:  # noqa: BLE001
                print(f"{name} (graphs): {type(e).__name__}: {e}", flush=True)
    for half in ("jena", "imdb"):
        rows = [r for r in report["variants"]
                if "error" not in r and params.variant(r["variant"]).dataset == half]
        report[f"{half}_training_stages_seconds"] = round(
            sum(r["stage_seconds_extrapolated"] for r in rows), 1)
    print(json.dumps({k: v for k, v in report.items() if k.endswith("_seconds")}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
