"""Training-step speed of every Jena variant, with nn.GRU and the lecture's Keras models.

Run by hand:  python bench/bench_models.py [--keras-python PATH] [--steps 20]
Batch (128, 240, 14), forward + backward + RMSprop step, median ms, 2 CPU threads.
The Keras half needs keras + tensorflow-cpu (``pip install -e '.[bench]'`` or another
venv via --keras-python); without them it is left out and says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from rnnlab.config import from_mapping
from rnnlab.models import ModelSpec, build_model, count_parameters
from rnnlab.recurrent import DropoutGRU

ROOT = Path(__file__).resolve().parents[1]


def time_model(model: torch.nn.Module, steps: int, warmup: int) -> tuple[float, float]:
    """Median ms of a training step and of an eval forward pass, batch (128, 240, 14)."""
    torch.manual_seed(0)
    x, y = torch.randn(128, 240, 14), torch.randn(128)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    train, evals = [], []
    for i in range(warmup + steps):
        model.train()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.l1_loss(model(x), y).backward()
        opt.step()
        train.append(time.perf_counter() - t)
        model.eval()
        t = time.perf_counter()
        with torch.no_grad():
            model(x)
        evals.append(time.perf_counter() - t)
    return statistics.median(train[warmup:]) * 1e3, statistics.median(evals[warmup:]) * 1e3


class Last(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn, self.out = rnn, torch.nn.Linear(32, 1)

    def forward(self, x):
        h = self.rnn(x)
        h = h[1][-1] if isinstance(h, tuple) else h
        return self.out(h).squeeze(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--keras-python", default=sys.executable)
    args = parser.parse_args()
    torch.set_flush_denormal(True)   # as the training engine does
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    variants = {k: from_mapping(ModelSpec, v, where=f"models.{k}")
                for k, v in params["models"].items() if v["dataset"] == "jena"}

    results = {}
    yardsticks = {"nn.GRU(14, 32)": Last(torch.nn.GRU(14, 32, batch_first=True)),
                  "DropoutGRU p=0": Last(DropoutGRU(14, 32))}
    for name, model in yardsticks.items():
        results[name] = time_model(model, args.steps, args.warmup)
    for name, spec in variants.items():
        model = build_model(spec, 14, 240)   # conv_gru: lookback 720 / step 3 = 240 too
        results[name] = time_model(model, args.steps, args.warmup) + (count_parameters(model),)
        print(f"torch {name}: {results[name][0]:.1f} ms/step", file=sys.stderr, flush=True)

    keras = {}
    probe = subprocess.run([args.keras_python, "-c", "import keras, tensorflow"],
                           capture_output=True)
    if probe.returncode == 0:
        out = subprocess.run([args.keras_python, str(ROOT / "bench" / "keras_lecture.py"),
                              ",".join(variants), str(args.steps), str(args.warmup)],
                             capture_output=True, text=True, check=True)
        keras = json.loads(out.stdout.strip().splitlines()[-1])
    else:
        print("keras/tensorflow not importable by", args.keras_python,
              "- Keras columns left out", file=sys.stderr)

    print(f"\nms per training step, batch (128, 240, 14), {torch.get_num_threads()} threads, "
          "median; one run")
    print(f"{'model':16s} {'params':>7s} {'torch':>7s} {'eval':>6s} {'keras':>7s} "
          f"{'k+XLA':>7s} {'torch/XLA':>9s}")
    for name, (train_ms, eval_ms) in ((k, results[k][:2]) for k in yardsticks):
        print(f"{name:16s} {'':>7s} {train_ms:7.1f} {eval_ms:6.1f}")
    for name in variants:
        train_ms, eval_ms, n = results[name]
        k = keras.get(name, {})
        ratio = f"{train_ms / k['xla']:9.2f}" if k else ""
        kd = f"{k['default']:7.1f} {k['xla']:7.1f}" if k else ""
        print(f"{name:16s} {n:7d} {train_ms:7.1f} {eval_ms:6.1f} {kd} {ratio}")
    print(f"\ngru_dropout / gru (ours): {results['gru_dropout'][0] / results['gru'][0]:.2f}")

    # Extrapolated wall time of a default `dvc repro` of the Jena models: per epoch,
    # steps_per_epoch training steps + one pass over the validation windows (eval batches).
    steps = params["train"]["steps_per_epoch"]
    val_batches = -(-(params["jena"]["val_rows"][1] - params["jena"]["val_rows"][0]
                      - params["jena"]["lookback"]) // params["jena"]["batch_size"])
    total = 0.0
    for name, spec in variants.items():
        train_ms, eval_ms, _ = results[name]
        epoch_s = (steps * train_ms + val_batches * eval_ms) / 1e3
        total += spec.epochs * epoch_s + 2 * val_batches * eval_ms / 1e3
        print(f"extrapolated {name}: {epoch_s:6.1f} s/epoch x {spec.epochs} epochs")
    print(f"extrapolated default Jena training, all variants: {total / 60:.0f} min "
          f"(from step times alone; batch assembly and tracking not included)")


if __name__ == "__main__":
    main()
