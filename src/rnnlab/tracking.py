"""The one module that talks to MLflow; the rest of rnnlab calls ``tracked_run``.

Default store (shared conventions): ``sqlite:///<repository root>/mlflow.db`` with
artifacts under ``<repository root>/mlruns/``, for ``dvc repro``, ``dvc exp run`` and
queued experiments alike. ``MLFLOW_TRACKING_URI`` overrides it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve()}/mlflow.db"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'jena': {'lookback': 1440}} -> {'jena.lookback': 1440}, as MLflow params are flat."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


class Run:
    """What training code may do with a run: log metrics and artifacts."""

    def __init__(self, run_id: str):
        self.id = run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        import mlflow
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        import mlflow
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


@contextmanager
def tracked_run(*, experiment: str, run_name: str, params: Mapping[str, Any],
                tags: Mapping[str, Any], root: Path) -> Iterator[Run]:
    """Start an MLflow run with flattened ``params`` and the conventional tags."""
    import mlflow

    root = Path(root).resolve()
    default_store = not os.environ.get("MLFLOW_TRACKING_URI")  # read before set_tracking_uri sets it
    mlflow.set_tracking_uri(tracking_uri(root))
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        # The artifact location is fixed at creation: make it absolute, at the real root.
        location = (root / "mlruns").as_uri() if default_store else None
        exp_id = mlflow.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    all_tags = {
        "git_commit": git_commit(root),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME") or "workspace",
        **tags,
    }
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name,
                          tags={k: str(v) for k, v in all_tags.items()}) as active:
        flat = flatten(params)
        mlflow.log_params({k: ("null" if v is None else v) for k, v in flat.items()})
        yield Run(active.info.run_id)
