"""Datasets as the training engine sees them (see ``rnnlab.training.engine.Task``), built from params.

    task = build_task(spec, jena_params, train_params, prepared, windows)  # JenaTask | ...

A task carries what the rest of a training run needs to know about its data set: the
MLflow experiment, the metric keys of ``metrics/<variant>.json``, the plot columns, the
shape of one input, the data's identity, and the params it depends on (for logging).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rnnlab.core.errors import RnnlabError
from rnnlab.data.imdb import ImdbParams, load_imdb
from rnnlab.data.imdb import data_source as imdb_data_source
from rnnlab.data.jena import JenaParams, load_features
from rnnlab.data.windows import (
    SPEC_FILE,
    JenaWindows,
    WindowSpec,
    capped_rows,
    load_spec,
    on_device,
    shuffled_batches,
    variant_spec,
)
from rnnlab.nn.schema import ARCHITECTURES, ModelSpec
from rnnlab.training.params import TrainParams
from rnnlab.training.results import roc_auc


class JenaTask:
    """Temperature 24 h ahead from windows of the normalized matrix; MAE loss and metric."""

    experiment = "rnnlab-jena"
    metric_keys = ("mae", "mae_degc")            # metrics/<variant>.json: val_mae, test_mae...
    plot_columns = ("val_mae", "val_mae_degc")   # plots/<variant>.csv beside the losses
    monitor = "mae"
    monitor_mode = "min"

    def __init__(self, features: np.ndarray, spec: WindowSpec, *, batch_size: int,
                 eval_batch_size: int | None = None, reverse: bool = False,
                 target_std: float = 1.0):
        self.windows = {split: JenaWindows(features, spec, split, reverse=reverse)
                        for split in ("train", "val", "test")}
        self.spec = spec
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.target_std = target_std
        self.n_inputs, self.timesteps = features.shape[1], spec.timesteps

    def to_device(self, device: torch.device) -> None:
        """The normalized matrix on ``device`` (one copy for the three splits): ``fit``
        does this on a GPU, where each batch is then gathered."""
        features = self.windows["train"].features.to(device)
        for windows in self.windows.values():
            windows.to(device, features)

    def train_batches(self, epoch: int, steps: int | None, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        return self.windows["train"].epoch_batches(epoch, steps, self.batch_size, seed)

    def eval_batches(self, split: str, max_batches: int | None, join: int = 1
                     ) -> Iterator[tuple[Tensor, Tensor]]:
        return self.windows[split].ordered(self.eval_batch_size, max_batches, join)

    def eval_size(self, split: str) -> int:
        return len(self.windows[split])

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return torch.nn.functional.l1_loss(output, target)

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        mae = float((outputs.double() - targets.double()).abs().mean())
        return {"loss": mae, "mae": mae, "mae_degc": mae * self.target_std}

    def training_rows(self) -> np.ndarray:
        """The rows the training windows read, (n, 14): what MLflow records as the input."""
        lo, hi = self.spec.train
        return self.windows["train"].features[lo - self.spec.lookback:hi].cpu().numpy()


class ImdbTask:
    """Sentiment of a review from its (maxlen,) word ids; binary cross-entropy on a logit."""

    experiment = "rnnlab-imdb"
    metric_keys = ("accuracy", "auc", "loss")
    plot_columns = ("val_accuracy", "val_auc")
    monitor = "accuracy"
    monitor_mode = "max"

    def __init__(self, prepared, *, batch_size: int, vocab_size: int,
                 eval_batch_size: int | None = None, reverse: bool = False):
        # The ids stay int32, as stored (all three splits: 100 MB at the lecture's sizes, not
        # 200 MB as int64); each batch becomes the int64 its embedding and multi-hot index.
        self.data = {}
        for split in ("train", "val", "test"):
            x, y = load_imdb(prepared, split, reverse=reverse)       # (n, maxlen) int32, (n,)
            self.data[split] = (torch.from_numpy(x), torch.from_numpy(y.astype(np.float32)))
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.n_inputs, self.timesteps = vocab_size, self.data["train"][0].shape[1]

    def to_device(self, device: torch.device) -> None:
        """The word ids and labels on ``device`` (100 MB at the lecture's sizes): ``fit``
        does this on a GPU, where each batch is then indexed."""
        self.data = {split: (x.to(device), y.to(device)) for split, (x, y) in self.data.items()}

    def train_batches(self, epoch: int, steps: int | None, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        x, y = self.data["train"]
        for idx in on_device(shuffled_batches(np.arange(len(y)), epoch, steps, self.batch_size,
                                              seed), x.device):
            yield x[idx].long(), y[idx]

    def eval_batches(self, split: str, max_batches: int | None, join: int = 1
                     ) -> Iterator[tuple[Tensor, Tensor]]:
        x, y = self.data[split]
        n = capped_rows(len(y), self.eval_batch_size, max_batches)
        size = self.eval_batch_size * join
        for start in range(0, n, size):
            yield x[start:min(start + size, n)].long(), y[start:min(start + size, n)]

    def eval_size(self, split: str) -> int:
        return len(self.data[split][1])

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(output, target)

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        loss = float(self.loss(outputs.double(), targets.double()))
        # in float64: a float32 mean logs 0.86592 as 0.8659200072288513
        accuracy = float(((outputs > 0).float() == targets).double().mean())
        return {"loss": loss, "accuracy": accuracy,
                "auc": roc_auc(targets.numpy() > 0.5, outputs.numpy())}

    def training_rows(self) -> np.ndarray:
        return self.data["train"][0].cpu().numpy()


class TfidfTask:
    """The IMDB texts for the scikit-learn baseline (``rnnlab.lecture.baselines.fit_tfidf``)."""

    experiment, metric_keys, plot_columns = ImdbTask.experiment, ImdbTask.metric_keys, ImdbTask.plot_columns

    def __init__(self, prepared: Path):
        self.prepared = Path(prepared)


class Prepared:
    """A task plus what a run records about its data (built by ``build_task``)."""

    def __init__(self, task, *, steps_per_epoch: int | None, data_source: str,
                 data_params: dict[str, Any], data_stats: dict[str, Any],
                 data_md5: str | None):
        self.task = task
        self.data_md5 = data_md5           # the downloaded file's: Jena's CSV, IMDB's tarball
        self.steps_per_epoch = steps_per_epoch
        self.data_source = data_source     # canonical, real (IMDB re-packed) or other
        self.data_params = data_params     # logged to MLflow as ``<dataset>.*``
        self.data_stats = data_stats       # part of the resume fingerprint


# What a data set's prepared folder and window spec hold that the other's does not.
_INPUTS = {"jena": ("features.npy", "lookback"), "imdb": ("x_train.npy", "vocab_size")}


def check_inputs(dataset: str, prepared: Path, windows: Path, stage: str) -> None:
    """``prepared`` and ``windows`` hold ``dataset``'s arrays and window spec, or one line.
    Under ``dvc repro`` they always do; a stage run by hand with the other data set's
    folders ended in a ``KeyError`` deep in the memory estimate."""
    marker, key = _INPUTS[dataset]
    fix = (f"{stage} reads data/prepared/{dataset} and data/prepared/{dataset}_windows: run "
           f"it as `dvc repro {stage}`, which passes them")
    if not (Path(prepared) / marker).is_file() or not (Path(prepared) / "stats.json").is_file():
        raise RnnlabError(f"--prepared {prepared}: no {dataset} data there (no {marker} and "
                          f"stats.json); {fix}")
    try:
        spec = json.loads((Path(windows) / SPEC_FILE).read_text())
    except (OSError, ValueError):
        spec = None
    if not isinstance(spec, dict) or key not in spec:
        raise RnnlabError(f"--windows {windows}: no {dataset} window spec there "
                          f"({SPEC_FILE} with {key!r}); {fix}")


def build_task(spec: ModelSpec, data: JenaParams | ImdbParams, train: TrainParams,
               prepared: Path, windows: Path) -> Prepared:
    """The task of variant ``spec`` over the prepared data and its window spec
    (``data/prepared/<dataset>_windows``: the windows_jena output, or IMDB's sequence spec
    from tokenize_imdb). ``data`` is the params section of the variant's data set."""
    if spec.dataset == "jena":
        assert isinstance(data, JenaParams)
        features, stats = load_features(prepared, mmap=False)             # (N, 14) float32
        window = variant_spec(load_spec(windows), spec.lookback, spec.step)
        jena_task = JenaTask(features, window, batch_size=data.batch_size,
                             eval_batch_size=train.eval_batch_size,
                             reverse=spec.reverse, target_std=stats.target_std)
        return Prepared(jena_task, steps_per_epoch=train.steps_per_epoch,
                        data_source="canonical" if stats.canonical else "other",
                        data_params=asdict(data) | {"lookback": window.lookback,
                                                           "step": window.step},
                        data_stats=asdict(stats), data_md5=stats.csv_md5)
    assert isinstance(data, ImdbParams)
    stats = json.loads((Path(prepared) / "stats.json").read_text())
    sequences = json.loads((Path(windows) / SPEC_FILE).read_text())
    task: ImdbTask | TfidfTask = (
        ImdbTask(prepared, batch_size=data.batch_size, reverse=spec.reverse,
                 eval_batch_size=train.eval_batch_size,
                 vocab_size=sequences["vocab_size"])
        if ARCHITECTURES[spec.arch].torch else TfidfTask(prepared))
    return Prepared(task, steps_per_epoch=train.imdb_steps_per_epoch,
                    data_source=imdb_data_source(stats),
                    data_params=asdict(data), data_stats=stats,
                    data_md5=stats.get("archive_md5"))
