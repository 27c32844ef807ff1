"""Datasets as the training engine sees them (see ``rnnlab.train.Task``)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from rnnlab.imdb import load_imdb
from rnnlab.windows import JenaWindows, WindowSpec, shuffled_batches


class JenaTask:
    """Temperature 24 h ahead from windows of the normalized matrix; MAE loss and metric."""

    monitor = "mae"
    monitor_mode = "min"

    def __init__(self, features: np.ndarray, spec: WindowSpec, *, batch_size: int,
                 reverse: bool = False, target_std: float = 1.0):
        self.windows = {split: JenaWindows(features, spec, split, reverse=reverse)
                        for split in ("train", "val", "test")}
        self.batch_size = batch_size
        self.target_std = target_std

    def train_batches(self, epoch: int, steps: int | None, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        return self.windows["train"].epoch_batches(epoch, steps, self.batch_size, seed)

    def eval_batches(self, split: str, max_batches: int | None) -> Iterator[tuple[Tensor, Tensor]]:
        return self.windows[split].ordered(self.batch_size, max_batches)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return torch.nn.functional.l1_loss(output, target)

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        mae = float((outputs.double() - targets.double()).abs().mean())
        return {"loss": mae, "mae": mae, "mae_degc": mae * self.target_std}


class ImdbTask:
    """Sentiment of a review from its (maxlen,) word ids; binary cross-entropy on a logit."""

    monitor = "accuracy"
    monitor_mode = "max"

    def __init__(self, prepared, *, batch_size: int, reverse: bool = False):
        self.data = {}
        for split in ("train", "val", "test"):
            x, y = load_imdb(prepared, split, reverse=reverse)
            self.data[split] = (torch.from_numpy(x.astype(np.int64)),
                                torch.from_numpy(y.astype(np.float32)))
        self.batch_size = batch_size

    def train_batches(self, epoch: int, steps: int | None, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        x, y = self.data["train"]
        for rows in shuffled_batches(np.arange(len(y)), epoch, steps, self.batch_size, seed):
            idx = torch.from_numpy(rows)
            yield x[idx], y[idx]

    def eval_batches(self, split: str, max_batches: int | None) -> Iterator[tuple[Tensor, Tensor]]:
        x, y = self.data[split]
        for i, start in enumerate(range(0, len(y), self.batch_size)):
            if max_batches is not None and i >= max_batches:
                return
            yield x[start:start + self.batch_size], y[start:start + self.batch_size]

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(output, target)

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        from sklearn.metrics import roc_auc_score
        loss = float(self.loss(outputs.double(), targets.double()))
        accuracy = float(((outputs > 0).float() == targets).float().mean())
        both = len(torch.unique(targets)) == 2
        auc = float(roc_auc_score(targets.numpy(), outputs.numpy())) if both else float("nan")
        return {"loss": loss, "accuracy": accuracy, "auc": auc}
