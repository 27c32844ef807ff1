"""The ``train`` section of params.yaml: the training engine's settings, for every variant.
Torch-free, so reading it costs a stage nothing."""

from __future__ import annotations

from dataclasses import dataclass

from rnnlab.core.config import ConfigError, at_least, show

# train.init: the initial weights of every torch model (rnnlab.nn.models.initialize).
INITS = ("keras", "torch")
# train.threads (and OMP_NUM_THREADS): past a few hundred nothing runs faster, and torch
# takes a C int (2**40 failed with a traceback once training had started).
MAX_THREADS = 1024


@dataclass(frozen=True)
class TrainParams:
    """The training engine, for every variant."""
    steps_per_epoch: int | None               # Jena; null = a full pass over the windows
    imdb_steps_per_epoch: int | None = None   # IMDB; null = a full pass
    max_epochs: int | None = None             # cap over every variant's epochs; null = none
    max_eval_batches: int | None = None       # cap on val/test batches; null = all
    clip_norm: float | None = None
    eval_batch_size: int = 128                # val/test batches (no gradients)
    threads: int | str = "auto"               # CPU threads: auto (measured) or a number
    init: str = "keras"                       # initial weights: keras (the lecture's) or torch

    def validate(self, where: str) -> None:
        if self.init not in INITS:
            raise ConfigError(f"{where}.init: {show(self.init)}; choose {' or '.join(INITS)}")
        if self.threads != "auto" and (isinstance(self.threads, str)
                                       or not 1 <= self.threads <= MAX_THREADS):
            raise ConfigError(f"{where}.threads: must be auto or a number of threads from 1 "
                              f"to {MAX_THREADS}, got {show(self.threads)}")
        at_least(where, "eval_batch_size", self.eval_batch_size, 1)
        for name in ("steps_per_epoch", "imdb_steps_per_epoch"):
            at_least(where, name, getattr(self, name), 1, null="a full pass")
        for name in ("max_epochs", "max_eval_batches"):
            at_least(where, name, getattr(self, name), 1, null="no cap")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ConfigError(f"{where}.clip_norm: must be > 0 or null, got {show(self.clip_norm)}")
