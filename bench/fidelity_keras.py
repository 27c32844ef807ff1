"""One training run of the lecture's Keras model on rnnlab's prepared data (bench_fidelity).

    python bench/fidelity_keras.py JOB.json      # a Python with keras (the `bench` extra)

Prints one JSON line: the best epoch's validation and test figures, per-epoch history and
the wall time. ``JOB.json`` (written by bench/bench_fidelity.py) names the variant, the
seed, the prepared data and the budget. The model is ``keras_lecture.lecture_model``
compiled as the lecture does (RMSprop with Keras' defaults; ``mae`` or binary
cross-entropy with accuracy), trained by ``model.fit`` on exactly the batches rnnlab's
engine draws for the same seed (``rnnlab.data.windows.shuffled_batches``, which needs only
NumPy), and kept at its best validation epoch as rnnlab keeps its own (lowest MAE, highest
accuracy, the first on ties). Validation and test are then predicted in full and scored
here in float64, as rnnlab scores its own.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
import keras  # noqa: E402  (keras_lecture chose the TensorFlow backend)
import tensorflow as tf  # noqa: E402
from keras_lecture import lecture_model, multi_hot  # noqa: E402

from rnnlab.data.windows import shuffled_batches  # noqa: E402  (NumPy only)


class Data:
    """One split's examples: ``take(rows)`` -> (x, y) as the model reads them."""

    def __init__(self, job: dict, split: str):
        self.job = job
        if job["dataset"] == "imdb":
            key = "x_{}_reversed.npy" if job["reverse"] else "x_{}.npy"
            self.x = np.load(Path(job["prepared"]) / key.format(split))
            self.y = np.load(Path(job["prepared"]) / f"y_{split}.npy").astype("float32")
            self.rows = np.arange(len(self.y))
        else:
            w = job["windows"]
            self.features = np.load(Path(job["prepared"]) / "features.npy")
            self.offsets = np.arange(-w["lookback"], 0, w["step"], dtype=np.int64)
            if job["reverse"]:
                self.offsets = self.offsets[::-1].copy()
            start, stop = w[split]
            self.rows = np.arange(start, stop, dtype=np.int64)
            self.delay, self.target = w["delay"], w["target_index"]

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.job["dataset"] == "imdb":
            x = self.x[rows]
            return (multi_hot(x) if self.job["variant"] == "imdb_dense" else x), self.y[rows]
        x = self.features[rows[:, None] + self.offsets[None, :]]
        return x, self.features[rows + self.delay, self.target]


class TrainBatches(keras.utils.PyDataset):
    """rnnlab's training batches for (seed, epoch), the epoch advanced by fit's callback."""

    def __init__(self, data: Data, job: dict):
        super().__init__()
        self.data, self.job, self.epoch = data, job, 1
        self._draw()

    def _draw(self) -> None:
        self.batches = list(shuffled_batches(self.data.rows, self.epoch, self.job["steps"],
                                             self.job["batch_size"], self.job["seed"]))

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        return self.data.take(self.batches[i])

    def next_epoch(self) -> None:
        self.epoch += 1
        self._draw()


class EvalBatches(keras.utils.PyDataset):
    """Every example of a split once, in order (at most ``max_batches`` batches)."""

    def __init__(self, data: Data, job: dict):
        super().__init__()
        self.data, self.size = data, job["eval_batch_size"]
        n = -(-len(data.rows) // self.size)
        self.n = n if job["max_eval_batches"] is None else min(n, job["max_eval_batches"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.data.take(self.data.rows[i * self.size:(i + 1) * self.size])

    def targets(self) -> np.ndarray:
        return np.concatenate([self[i][1] for i in range(self.n)])


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula, ties given their average rank."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        ranks[order[start:start + count]] = start + (count + 1) / 2
    pos = labels == 1
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def score(job: dict, out: np.ndarray, y: np.ndarray) -> dict[str, float]:
    out, y = out.reshape(-1).astype(np.float64), y.astype(np.float64)
    if job["dataset"] == "jena":
        mae = float(np.abs(out - y).mean())
        return {"mae": mae, "mae_degc": mae * job["target_std"]}
    p = np.clip(out, 1e-12, 1 - 1e-12)
    loss = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    return {"accuracy": float(((out > 0.5) == (y == 1)).mean()), "auc": auc(out, y),
            "loss": loss}


class KeepBest(keras.callbacks.Callback):
    """rnnlab's rule: the first epoch with the best validation figure is the one kept."""

    def __init__(self, train: TrainBatches, key: str, mode: str):
        super().__init__()
        self.train, self.key, self.sign = train, key, 1.0 if mode == "min" else -1.0
        self.best, self.best_epoch, self.weights, self.history = None, 0, None, []
        self.began = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        value = float(logs[self.key])
        self.history.append({"epoch": epoch + 1, "train_loss": float(logs["loss"]),
                             "val": value, "seconds": time.perf_counter() - self.began})
        self.began = time.perf_counter()
        if self.best is None or self.sign * value < self.sign * self.best:
            self.best, self.best_epoch, self.weights = value, epoch + 1, self.model.get_weights()
        self.train.next_epoch()


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    tf.config.threading.set_intra_op_parallelism_threads(job["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(job["threads"])
    keras.utils.set_random_seed(job["seed"])
    model, loss = lecture_model(job["variant"])
    jena = job["dataset"] == "jena"
    model.compile(optimizer=keras.optimizers.RMSprop(), loss=loss,
                  metrics=[] if jena else ["accuracy"])
    train = TrainBatches(Data(job, "train"), job)
    val, test = (EvalBatches(Data(job, split), job) for split in ("val", "test"))
    keep = KeepBest(train, "val_loss" if jena else "val_accuracy", "min" if jena else "max")
    began = time.perf_counter()
    model.fit(train, epochs=job["epochs"], validation_data=val, callbacks=[keep], verbose=0)
    model.set_weights(keep.weights)
    result = {split: score(job, model.predict(data, verbose=0), data.targets())
              for split, data in (("val", val), ("test", test))}
    print(json.dumps({"best_epoch": keep.best_epoch, "history": keep.history,
                      "val": result["val"], "test": result["test"],
                      "seconds": time.perf_counter() - began,
                      "versions": {"keras": keras.__version__, "tensorflow": tf.__version__}}))


if __name__ == "__main__":
    main()
