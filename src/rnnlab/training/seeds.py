"""Seeds: the top-level ``seed``, ``seeds`` and ``device`` of params.yaml (``RunParams``),
seeding every generator, and several seeds of one variant folded into one result."""

from __future__ import annotations

import random
import re
import statistics
from dataclasses import dataclass
from typing import Any

from rnnlab.core.config import ConfigError, show

# NumPy's legacy seed (np.random.seed) takes 0 <= seed < 2**32; default_rng no negatives.
SEEDS = range(2**32)


@dataclass(frozen=True)
class RunParams:
    """The top level of params.yaml that every run reads: its seed(s) and device."""
    seed: int
    device: str = "auto"
    seeds: tuple[int, ...] | None = None   # train each variant once per seed; null/[] = seed

    def validate(self, where: str) -> None:
        # Checked here, before any run opens: -1 failed inside the MLflow run, in NumPy.
        named = [("seed", self.seed)] + [(f"seeds[{i}]", s) for i, s in
                                         enumerate(self.seeds or ())]
        for name, seed in named:
            if seed not in SEEDS:
                raise ConfigError(f"{where}: {name}: {show(seed)} is not a seed: seeds run "
                                  "from 0 to 4294967295 (2**32 - 1, NumPy's range); choose "
                                  "one in it")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device.strip().lower()):
            raise ConfigError(f"{where}: device: {show(self.device)} is not one of auto, cpu, "
                              "cuda, cuda:N, mps")
        if self.seeds and len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{where}: seeds: {show(self.seeds)} repeats a seed; "
                              "list each once")

    @property
    def seed_list(self) -> list[int]:
        """``seeds`` when given (each variant trains once per seed), else ``[seed]``."""
        return list(self.seeds) if self.seeds else [self.seed]


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators from one seed."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


SeedResult = tuple[int, dict[str, Any], list[dict[str, float]]]   # (seed, metrics, history)


def combine_seeds(results: list[SeedResult]) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """One seed: its metrics (plus ``n_seeds: 1``) and history. Several: the mean of every
    number, ``<metric>_std`` (n - 1) for the val/test figures, ``per_seed`` (each seed's
    val/test figures, best epoch and run id); strings (device) from the first seed; the
    history is the per-epoch mean over the epochs every seed ran."""
    if not results:
        raise ValueError("combine_seeds: no results")
    if len(results) == 1:
        _, only, only_history = results[0]
        return only | {"n_seeds": 1}, only_history
    first = results[0][1]
    metrics: dict[str, Any] = {}
    for key, value in first.items():
        if key == "mlflow_run_id" or not isinstance(value, (int, float)):
            metrics[key] = value
            continue
        values = [m[key] for _, m, _ in results]
        if isinstance(value, int) and all(v == value for v in values):
            metrics[key] = value        # the same count for every seed (n_params) stays one
            continue
        metrics[key] = float(statistics.fmean(values))
        if key.startswith(("val_", "test_")):
            metrics[f"{key}_std"] = float(statistics.stdev(values))
    metrics["n_seeds"] = len(results)
    metrics["per_seed"] = {str(s): {k: v for k, v in m.items()
                                    if k.startswith(("val_", "test_"))
                                    or k in ("best_epoch", "mlflow_run_id")}
                           for s, m, _ in results}
    n_epochs = min(len(h) for _, _, h in results)
    history = [{key: float(statistics.fmean(h[i][key] for _, _, h in results))
                for key in results[0][2][i]} for i in range(n_epochs)]
    for row in history:
        row["epoch"] = int(row["epoch"])
    return metrics, history
