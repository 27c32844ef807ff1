"""One side of bench/bench_speed.py: times training steps and evaluation batches on request.

    python bench/speed_worker.py torch            # rnnlab (PYTHONPATH=src)
    python bench/speed_worker.py keras [--xla]    # the lecture's models (keras_lecture.py)

Reads one JSON request per line on stdin, {"variant": name, "steps": n, "evals": m,
"settle": k (optional: k untimed training steps first)}, and
answers on stdout with {"train": [s...], "eval": [s...], "threads": mean, "rss_mb": peak}.
A variant's model is built, and warmed up (3 steps, 2 evaluations: XLA compiles there), on
its first request and kept, so later rounds continue its training. Inputs are random with
the real shapes: Jena batches (128, 240, 14); IMDB batches of 128 reviews of 500 word ids.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

BATCH, JENA_SHAPE, IMDB_LEN, VOCAB = 128, (240, 14), 500, 10002
WARMUP_STEPS, WARMUP_EVALS = 3, 2


def inputs(variant: str, rng: np.random.Generator):
    if variant.startswith("imdb_"):
        x = rng.integers(2, VOCAB, size=(BATCH, IMDB_LEN))
        return x, rng.integers(0, 2, size=BATCH).astype("float32")
    return rng.normal(size=(BATCH, *JENA_SHAPE)).astype("float32"), \
        rng.normal(size=BATCH).astype("float32")


class TorchSide:
    def __init__(self) -> None:
        import torch
        import yaml

        from rnnlab.core.config import from_mapping
        from rnnlab.nn.models import ModelSpec, build_model
        from rnnlab.training.threads import resolve_threads, thread_control
        self.torch = torch
        torch.set_flush_denormal(True)        # as the training engine does
        try:    # and freed buffers kept for the next step, as its fit does (where it can)
            from rnnlab.training.process import keep_freed_buffers
        except ImportError:                    # an older checkout (bench_ab's baseline)
            pass
        else:
            keep_freed_buffers()
        params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
        self.spec = lambda name: from_mapping(ModelSpec, params["models"][name], where=name)
        self.build_model = build_model
        self.threads = lambda: thread_control(resolve_threads(params["train"].get("threads", "auto")))
        self.models: dict = {}

    def setup(self, variant: str):
        torch = self.torch
        torch.manual_seed(0)
        x, y = inputs(variant, np.random.default_rng(0))
        imdb = variant.startswith("imdb_")
        model = self.build_model(self.spec(variant), VOCAB if imdb else JENA_SHAPE[1],
                                 IMDB_LEN if imdb else JENA_SHAPE[0])
        try:    # the training engine's RMSprop (foreach updates), as the pipeline's steps
            from rnnlab.training.engine import RMSprop
        except ImportError:                    # an older checkout
            RMSprop = torch.optim.RMSprop
        opt = RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
        loss = (torch.nn.functional.binary_cross_entropy_with_logits if imdb
                else torch.nn.functional.l1_loss)
        return {"model": model, "opt": opt, "loss": loss, "x": torch.from_numpy(x),
                "y": torch.from_numpy(y), "control": self.threads()}

    def train_step(self, s) -> float:
        began = time.perf_counter()
        s["model"].train()
        s["opt"].zero_grad(set_to_none=True)
        loss = s["loss"](s["model"](s["x"]), s["y"])
        loss.backward()
        s["opt"].step()
        loss.item()
        seconds = time.perf_counter() - began
        s["control"].step(seconds)
        return seconds

    def eval_batch(self, s) -> float:
        began = time.perf_counter()
        s["model"].eval()
        with self.torch.no_grad():
            s["model"](s["x"])
        return time.perf_counter() - began

    def train_steps(self, s, n: int) -> list[float]:
        return [self.train_step(s) for _ in range(n)]

    def eval_batches(self, s, n: int) -> list[float]:
        return [self.eval_batch(s) for _ in range(n)]

    def threads_used(self, s, steps: int) -> float:
        return s["control"].mean_threads(steps)


class KerasSide:
    def __init__(self, xla: bool) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from keras_lecture import VOCAB as K_VOCAB
        from keras_lecture import lecture_model
        assert K_VOCAB == VOCAB
        import keras
        self.keras, self.lecture_model, self.xla = keras, lecture_model, xla

        class BatchTimer(keras.callbacks.Callback):
            """Wall time of each batch, from its start to its end callback."""

            def __init__(self) -> None:
                super().__init__()
                self.times: list[float] = []
                self._began = 0.0

            def on_train_batch_begin(self, batch, logs=None):
                self._began = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                self.times.append(time.perf_counter() - self._began)

            on_predict_batch_begin = on_train_batch_begin
            on_predict_batch_end = on_train_batch_end

        self.timer = BatchTimer

    def setup(self, variant: str):
        self.keras.utils.set_random_seed(0)
        x, y = inputs(variant, np.random.default_rng(0))
        if variant == "imdb_dense":                      # the lecture's multi-hot input
            hot = np.zeros((BATCH, VOCAB), "float32")
            np.put_along_axis(hot, x, 1.0, axis=1)
            x = hot
        model, loss = self.lecture_model(variant)
        model.compile(optimizer=self.keras.optimizers.RMSprop(), loss=loss, jit_compile=self.xla)
        return {"model": model, "x": x, "y": y}

    # Keras is timed as the lecture runs it, inside fit() and predict(), by callbacks at
    # each batch's start and end: train_on_batch() measured 13 ms more per GRU step with XLA.
    def train_steps(self, s, n: int) -> list[float]:
        timer = self.timer()
        s["model"].fit(np.concatenate([s["x"]] * n), np.concatenate([s["y"]] * n),
                       batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
        return timer.times

    def eval_batches(self, s, n: int) -> list[float]:
        timer = self.timer()
        s["model"].predict(np.concatenate([s["x"]] * n), batch_size=BATCH, verbose=0,
                           callbacks=[timer])
        return timer.times

    def threads_used(self, s, steps: int) -> float:
        return float("nan")


def main() -> None:
    side = TorchSide() if sys.argv[1] == "torch" else KerasSide(xla="--xla" in sys.argv)
    state: dict = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        variant = request["variant"]
        if variant not in state:
            state[variant] = side.setup(variant)
            side.train_steps(state[variant], WARMUP_STEPS)
            side.eval_batches(state[variant], WARMUP_EVALS)
        s = state[variant]
        if request.get("settle"):        # untimed steps first: let a new load settle in
            side.train_steps(s, request["settle"])
        train = side.train_steps(s, request["steps"])
        evals = side.eval_batches(s, request["evals"])
        print(json.dumps({"train": train, "eval": evals,
                          "threads": side.threads_used(s, request["steps"]),
                          "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}),
              flush=True)


if __name__ == "__main__":
    main()
