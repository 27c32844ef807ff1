"""IMDB training-step speed: our LSTM, bidirectional LSTM and SimpleRNN vs the lecture's Keras.

Run by hand:  python bench/bench_imdb.py [--keras-python PATH] [--steps 10]
Batch (128, 500) of word ids from a 10,000-word vocabulary, Embedding 32 -> cell 32 ->
Dense 1, forward + backward + RMSprop step, median ms, in one run. The Keras half needs
keras + tensorflow-cpu (``pip install -e '.[bench]'`` or --keras-python).
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
from rnnlab.models import ModelSpec, build_model

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("imdb_simplernn", "imdb_lstm", "imdb_bilstm")

KERAS = r"""
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np, keras
from keras import layers
steps, warmup = int(sys.argv[1]), int(sys.argv[2])
cells = {"imdb_simplernn": lambda: layers.SimpleRNN(32), "imdb_lstm": lambda: layers.LSTM(32),
         "imdb_bilstm": lambda: layers.Bidirectional(layers.LSTM(32))}
rng = np.random.default_rng(0)
x = rng.integers(1, 10000, size=(128 * (steps + warmup), 500))
y = rng.integers(0, 2, size=(128 * (steps + warmup),)).astype("float32")
out = {}
class T(keras.callbacks.Callback):
    def on_train_batch_begin(self, b, logs=None): self.t = time.perf_counter()
    def on_train_batch_end(self, b, logs=None): self.times.append(time.perf_counter() - self.t)
for name, cell in cells.items():
    out[name] = {}
    for jit in (False, True):
        model = keras.Sequential([keras.Input((500,)), layers.Embedding(10000, 32), cell(),
                                  layers.Dense(1, activation="sigmoid")])
        model.compile(optimizer=keras.optimizers.RMSprop(), loss="binary_crossentropy",
                      jit_compile=jit)
        timer = T(); timer.times = []
        model.fit(x, y, batch_size=128, epochs=1, verbose=0, callbacks=[timer], shuffle=False)
        out[name]["xla" if jit else "default"] = float(np.median(timer.times[warmup:]) * 1e3)
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--keras-python", default=sys.executable)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    x = torch.randint(1, 10000, (128, 500))
    y = torch.randint(0, 2, (128,)).float()
    ours = {}
    for name in VARIANTS:
        model = build_model(from_mapping(ModelSpec, params["models"][name], where=name), 10002, 500)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
        times = []
        for _ in range(args.warmup + args.steps):
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
            opt.step()
            times.append(time.perf_counter() - t)
        ours[name] = statistics.median(times[args.warmup:]) * 1e3
        print(f"torch {name}: {ours[name]:.1f} ms/step", file=sys.stderr, flush=True)
    keras = {}
    if subprocess.run([args.keras_python, "-c", "import keras, tensorflow"],
                      capture_output=True).returncode == 0:
        out = subprocess.run([args.keras_python, "-c", KERAS, str(args.steps), str(args.warmup)],
                             capture_output=True, text=True, check=True)
        keras = json.loads(out.stdout.strip().splitlines()[-1])
    else:
        print("keras/tensorflow not importable: Keras columns left out", file=sys.stderr)
    print(f"\nms per training step, batch (128, 500), {torch.get_num_threads()} threads, median")
    print(f"{'model':16s} {'rnnlab':>7s} {'keras':>7s} {'k+XLA':>7s} {'rnnlab/XLA':>10s}")
    for name in VARIANTS:
        k = keras.get(name)
        extra = f"{k['default']:7.1f} {k['xla']:7.1f} {ours[name] / k['xla']:10.2f}" if k else ""
        print(f"{name:16s} {ours[name]:7.1f} {extra}")


if __name__ == "__main__":
    main()
