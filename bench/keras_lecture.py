"""The lecture's Jena models in Keras 3 (TensorFlow backend), timed per training step.

Run by bench/bench_models.py in a Python that has ``keras`` and ``tensorflow-cpu``
(``pip install -e '.[bench]'``). Prints one JSON object: {model: {"default": ms, "xla": ms}}.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402


def lecture_model(name: str, timesteps: int, features: int) -> keras.Model:
    seq = [keras.Input((timesteps, features))]
    if name == "dense":
        seq += [layers.Flatten(), layers.Dense(32, activation="relu")]
    elif name in ("gru", "gru_reversed"):
        seq += [layers.GRU(32)]
    elif name == "gru_dropout":
        seq += [layers.GRU(32, dropout=0.2, recurrent_dropout=0.2)]
    elif name == "gru_stacked":
        seq += [layers.GRU(32, dropout=0.1, recurrent_dropout=0.5, return_sequences=True),
                layers.GRU(64, activation="relu", dropout=0.1, recurrent_dropout=0.5)]
    elif name == "bigru":
        seq += [layers.Bidirectional(layers.GRU(32))]
    elif name == "conv_gru":
        seq += [layers.Conv1D(32, 5, activation="relu"), layers.MaxPooling1D(3),
                layers.Conv1D(32, 5, activation="relu"),
                layers.GRU(32, dropout=0.1, recurrent_dropout=0.5)]
    elif name == "lstm":
        seq += [layers.LSTM(32)]
    else:
        raise SystemExit(f"unknown model {name}")
    return keras.Sequential(seq + [layers.Dense(1)])


class StepTimer(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        self.t = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.t)


def time_steps(name: str, jit: bool, steps: int, warmup: int) -> float:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128 * (steps + warmup), 240, 14)).astype("float32")
    y = rng.normal(size=(128 * (steps + warmup),)).astype("float32")
    model = lecture_model(name, 240, 14)
    model.compile(optimizer=keras.optimizers.RMSprop(), loss="mae", jit_compile=jit)
    timer = StepTimer()
    timer.times = []
    model.fit(x, y, batch_size=128, epochs=1, verbose=0, callbacks=[timer], shuffle=False)
    return float(np.median(timer.times[warmup:]) * 1e3)


def main() -> None:
    names = sys.argv[1].split(",")
    steps, warmup = int(sys.argv[2]), int(sys.argv[3])
    out = {}
    for name in names:
        out[name] = {"default": time_steps(name, False, steps, warmup),
                     "xla": time_steps(name, True, steps, warmup)}
        print(f"keras {name}: {out[name]}", file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
