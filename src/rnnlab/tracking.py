"""The one module that talks to MLflow; the rest of rnnlab calls ``tracked_run``.

Default store (shared conventions): ``sqlite:///<repository root>/mlflow.db`` with
artifacts under ``<repository root>/mlruns/``, for ``dvc repro``, ``dvc exp run`` and
queued experiments alike. ``MLFLOW_TRACKING_URI`` overrides it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:          # Windows: no flock; start parallel workers on an existing store
    fcntl = None

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


# MLflow 3 calls an experiment's kind a tag; the UI offers "custom_model_development" (model
# training: the runs list and its charts) and "genai_development" (traces, evaluations).
# MLflow 3.17's UI reads the view from the URL (``?workflowType=machine_learning``) or the
# browser's last choice rather than this tag (see ``runs_url``); the tag is what the UI
# itself writes when a user sets an experiment's type, and what other versions read.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
EXPERIMENTS = ("rnnlab-jena", "rnnlab-imdb")     # one per data set (conventions)


def tracking_uri(root: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve()}/mlflow.db"


def _lock_path(uri: str) -> Path | None:
    """``<db>.lock`` beside a SQLite store; None for a server (it serializes by itself)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    return db.with_name(db.name + ".lock")


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on a SQLite store while it is created or migrated.

    MLflow creates a fresh SQLite store by running its schema migrations; two processes
    doing that at once (``dvc queue start -j 2`` on a new clone) fail with errors such as
    ``duplicate column name`` or ``table _alembic_tmp_experiments already exists``. Runs
    written after that are ordinary SQLite transactions and need no lock.
    """
    path = _lock_path(uri)
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def experiment_id(name: str, root: Path) -> str:
    """The id of experiment ``name`` in the store, created (once, under the lock) if new."""
    import mlflow

    root = Path(root).resolve()
    uri = tracking_uri(root)
    default_store = uri == f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):
        exp = mlflow.get_experiment_by_name(name)
        if exp is not None:
            if exp.tags.get(KIND_TAG) != KIND:      # made before rnnlab set the kind
                mlflow.MlflowClient(uri).set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
            return exp.experiment_id
        # The artifact location is fixed at creation: make it absolute, at the real root.
        # rnnlab's experiments are made together, in one order, so that a new store's ids
        # are always the same (rnnlab-jena 1, rnnlab-imdb 2) and the README's links work.
        location = (root / "mlruns").as_uri() if default_store else None
        ids = {}
        for each in (*EXPERIMENTS, *([name] if name not in EXPERIMENTS else [])):
            exp = mlflow.get_experiment_by_name(each)
            ids[each] = exp.experiment_id if exp is not None else mlflow.create_experiment(
                each, artifact_location=location, tags={KIND_TAG: KIND})
        return ids[name]


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

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        """``data`` as the JSON artifact ``name`` (what a stage writes as its metrics file)."""
        import mlflow
        mlflow.log_dict(dict(data), name)

    def log_model(self, model, name: str = "model") -> None:
        """The trained torch module, pickled (the ``pt2`` format would fix the input length)."""
        import mlflow.pytorch
        import torch
        # pickle is chosen knowingly (see above); MLflow logs a caution about it each time.
        log = logging.getLogger("mlflow.pytorch")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            mlflow.pytorch.log_model(model, name=name, serialization_format="pickle",
                                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        finally:
            log.setLevel(level)

    def log_training_data(self, array, *, name: str, source: str, context: str = "training"
                          ) -> None:
        """Record the training matrix as the run's MLflow dataset input (digest + schema)."""
        import mlflow
        import mlflow.data
        with warnings.catch_warnings():  # file:// sources match two equivalent source kinds
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
            dataset = mlflow.data.from_numpy(array, source=source, name=name)
        mlflow.log_input(dataset, context=context)

    def log_loss_curves(self, history: list[Mapping[str, float]], title: str) -> None:
        """A PNG of train and validation loss per epoch, as the run's ``loss_curves.png``."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import mlflow
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        epochs = [row["epoch"] for row in history]
        ax.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
        ax.plot(epochs, [row["val_loss"] for row in history], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        mlflow.log_figure(fig, "loss_curves.png")
        plt.close(fig)


@contextmanager
def tracked_run(*, experiment: str, run_name: str, params: Mapping[str, Any],
                tags: Mapping[str, Any], root: Path) -> Iterator[Run]:
    """Start an MLflow run with flattened ``params`` and the conventional tags."""
    import mlflow

    root = Path(root).resolve()
    exp_id = experiment_id(experiment, root)
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
