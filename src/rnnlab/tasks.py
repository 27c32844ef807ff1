"""Datasets as the training engine sees them (see ``rnnlab.train.Task``)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from rnnlab.windows import JenaWindows, WindowSpec


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
