"""The lecture's common-sense baseline: tomorrow's temperature equals the last one seen."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from rnnlab.data.windows import WindowSpec

log = logging.getLogger(__name__)


def naive_mae(features: np.ndarray, spec: WindowSpec, split: str) -> float:
    """Mean |y - y_hat| over every window of ``split``, in normalized units.

    y_hat = features[r + offsets[-1], target] (the last input row, ``r - step`` when
    ``step`` divides ``lookback``); y = features[r + delay, target]. Only the target
    column is read: two (n,) gathers, never a (n, T, 14) tensor.
    """
    rows = spec.rows(split)                                   # (n,)
    column = features[:, spec.target_index]                   # (N,) view, or mmap column
    last = np.asarray(column[rows + spec.offsets[-1]], dtype=np.float64)
    target = np.asarray(column[rows + spec.delay], dtype=np.float64)
    return float(np.abs(target - last).mean())


def run_naive(prepared: Path, windows: Path, metrics_path: Path, *, seed: int) -> dict:
    """The naive stage: val/test MAE to ``metrics_path`` and an MLflow run ``naive``."""
    from rnnlab.core.atomic import write_json
    from rnnlab.data.jena import load_features
    from rnnlab.data.windows import load_spec
    from rnnlab.lecture.finite import refuse_non_finite
    from rnnlab.tracking.paths import repo_root
    from rnnlab.tracking.store import tracked_run
    from rnnlab.training.checkpoints import CHECKPOINTS

    features, stats = load_features(prepared)       # memory-mapped
    spec = load_spec(windows)
    metrics: dict[str, Any] = {}    # the figures, then the run's details (device, run id)
    for split in ("val", "test"):
        mae = naive_mae(features, spec, split)
        metrics[f"{split}_mae"] = mae
        metrics[f"{split}_mae_degc"] = mae * stats.target_std
    # normalize_jena refuses values that are not finite: a NaN here is prepared data changed
    # after it ran. Refused before the MLflow run starts: no run, no file.
    refuse_non_finite("naive", metrics, output=metrics_path, advice=lambda key: (
        f"the prepared Jena data ({prepared}) holds values that are not finite; prepare it "
        "again: dvc repro -f normalize_jena windows_jena naive"))
    tags = {"variant": "naive", "dataset": "jena", "seed": seed, "data_md5": stats.csv_md5,
            "data_source": "canonical" if stats.canonical else "other"}
    window = {k: getattr(spec, k) for k in ("lookback", "step", "delay")}
    run_params = {"jena": window | {"train_rows": stats.train_rows, "target": stats.target},
                  "seed": seed}
    with tracked_run(experiment="rnnlab-jena", run_name="naive", params=run_params,
                     tags=tags, root=repo_root(), claim=CHECKPOINTS / "naive.run.json") as run:
        run.log_metrics(metrics)
        metrics |= {"n_params": 0, "n_val_windows": spec.count("val"),
                    "n_test_windows": spec.count("test"), "device": "cpu",
                    "mlflow_run_id": run.id}
        write_json(metrics_path, metrics)
        run.log_artifact(metrics_path)
    log.info("naive: val MAE %.4f (%.2f degC), test MAE %.4f (%.2f degC)%s",
             metrics["val_mae"], metrics["val_mae_degc"], metrics["test_mae"],
             metrics["test_mae_degc"],
             "" if stats.canonical else "  [data is not the canonical Jena file: not "
                                        "comparable with the lecture's 0.29 / 2.57 degC]")
    return metrics
