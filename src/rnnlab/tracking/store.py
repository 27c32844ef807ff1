"""The one module that talks to MLflow; the rest of rnnlab calls ``tracked_run``.

Default store (shared conventions): ``sqlite:///<repository root>/mlflow.db`` with
artifacts under ``<repository root>/mlruns/``, for ``dvc repro``, ``dvc exp run`` and
queued experiments alike. ``MLFLOW_TRACKING_URI`` overrides it.

A store that cannot be used ends the stage with one ``TrackingError`` line naming the
store and the fix, never a page of MLflow, SQLAlchemy and urllib3 traceback: a tracking
server that refuses or does not answer (MLflow's own waits, 120 s per request and 7
retries with back-off, are shortened unless the user set them: ``HTTP_WAIT_DEFAULTS``),
a read-only store or folder, a locked database, a damaged or full SQLite file, a URI that
answers with a web page (a sign-in page) rather than MLflow's API, a PostgreSQL store that
does not answer (checked with one bounded connection first: MLflow's own retries take 100 s)
or whose driver is missing.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import socket
import subprocess
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rnnlab.core.atomic import remove_if_empty, write_json
from rnnlab.core.errors import RnnlabError, redact

try:
    import fcntl
except ImportError:          # Windows: no flock; start parallel workers on an existing store
    fcntl = None  # type: ignore[assignment]  # mypy cannot type an optional module

log = logging.getLogger(__name__)


class TrackingError(RnnlabError):
    """The MLflow store cannot be reached or written."""


# MLflow 3 calls an experiment's kind a tag; the UI offers "custom_model_development" (model
# training: the runs list and its charts) and "genai_development" (traces, evaluations).
# MLflow 3.17's UI reads the view from the URL (``?workflowType=machine_learning``) or the
# browser's last choice rather than this tag (see ``runs_url``); the tag is what the UI
# itself writes when a user sets an experiment's type, and what other versions read.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
EXPERIMENTS = ("rnnlab-jena", "rnnlab-imdb")     # one per data set (conventions)


def tracking_uri(root: Path) -> str:
    """The store: ``MLFLOW_TRACKING_URI`` when set (checked: ``check_uri``), else the
    project's SQLite file ``mlflow.db`` at ``root``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        check_uri(uri)
    return with_postgres_driver(uri or f"sqlite:///{Path(root).resolve()}/mlflow.db")


# What rnnlab logs to: a database MLflow's SQLAlchemy store opens, or a tracking server.
STORE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https")
_URI_FIX = ("write a database URI (sqlite:////absolute/path/mlflow.db, "
            "postgresql://host:5432/db) or a tracking server's (http://host:5000), or "
            "unset MLFLOW_TRACKING_URI to use the project's store (mlflow.db at the "
            "repository root)")


def check_uri(uri: str) -> None:
    """One line for a ``MLFLOW_TRACKING_URI`` that MLflow would answer with a page of
    traceback: a plain path or ``file://`` (MLflow's file store, in maintenance mode,
    unless ``MLFLOW_ALLOW_FILE_STORE`` opts in), a scheme that is no store, a SQLite URI
    without a file, a server URI without a host or with a port past 65535."""
    if uri.lower().startswith("databricks"):         # "databricks", "databricks://profile"
        return
    where = f"MLFLOW_TRACKING_URI={redact(uri)}"
    parts = urlsplit(uri)
    scheme = parts.scheme.lower().partition("+")[0]
    if scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("1", "true"):
            return                                     # the user opted in, as MLflow asks
        raise TrackingError(f"{where} is a folder or file path: MLflow's file store is in "
                            "maintenance mode and refuses it unless MLFLOW_ALLOW_FILE_STORE="
                            f"true; {_URI_FIX}")
    if scheme not in STORE_SCHEMES:
        raise TrackingError(f"{where}: {parts.scheme}:// is not a store MLflow tracks runs "
                            f"in; {_URI_FIX}")
    if scheme == "sqlite":
        db = _sqlite_path(uri)
        if db is None or not db.name:
            raise TrackingError(f"{where} names no database file (sqlite:///mlflow.db is "
                                f"one relative to the folder a stage runs in); {_URI_FIX}")
    if scheme in ("http", "https"):
        for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                     "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
            value = os.environ.get(name, "0")
            if not value.strip().isdigit():
                raise TrackingError(f"{name}={value!r}: MLflow reads it as a whole number "
                                    f"(seconds, or a count): write e.g. {name}=5, or unset it")
        try:
            _ = parts.port          # urllib raises ValueError for a port past 65535
        except ValueError:
            raise TrackingError(f"{where}: its port is not a number from 1 to 65535; "
                                f"{_URI_FIX}") from None
        if not parts.hostname:
            raise TrackingError(f"{where} names no host ({parts.scheme}://host:port); "
                                f"{_URI_FIX}")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def with_postgres_driver(uri: str) -> str:
    """A bare ``postgresql://`` means psycopg (3) to SQLAlchemy 2.1; the ``team`` extra
    installs psycopg2, so name it when psycopg is absent (``rnnlab.tools.server`` does the
    same for the server it starts). Neither installed: the URI as it is, and
    ``check_database`` says so in one line."""
    if uri.startswith("postgresql://") and not _installed("psycopg") and _installed("psycopg2"):
        return "postgresql+psycopg2://" + uri[len("postgresql://"):]
    return uri


# libpq's connect_timeout for the check below, unless PGCONNECT_TIMEOUT or the URI sets one.
PG_CONNECT_TIMEOUT_S = 5


def check_database(uri: str) -> None:
    """One bounded connection to a PostgreSQL store before MLflow's: MLflow retries a store
    that does not answer 10 times with back-off (100 s for a refused port, then a page of
    traceback). Any other URI: nothing to do."""
    uri = with_postgres_driver(uri)
    scheme = uri.split("://", 1)[0].lower()
    if not scheme.startswith("postgresql"):
        return
    where = f"MLflow store {redact(uri)}"
    driver = scheme.partition("+")[2] or "psycopg"
    if scheme == "postgresql" and not _installed("psycopg"):    # nor psycopg2: see above
        raise TrackingError(
            f"{where} needs a PostgreSQL driver and neither psycopg (3) nor psycopg2 is "
            "installed: install rnnlab's team extra (pip install -e '.[team]': psycopg2) or "
            "psycopg, or unset MLFLOW_TRACKING_URI to use the embedded store (mlflow.db at "
            "the repository root)")
    if not _installed(driver):
        raise TrackingError(
            f"{where} names the driver {driver}, which is not installed: install it, or "
            "write postgresql+psycopg2:// (rnnlab's team extra) or postgresql+psycopg://")
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    timeout = ({} if "PGCONNECT_TIMEOUT" in os.environ or "connect_timeout" in uri
               else {"connect_timeout": PG_CONNECT_TIMEOUT_S})
    try:
        engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args=timeout)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except Exception as e:  # noqa: BLE001 (a bad URI, a refused port, a timeout, a login)
        lines = str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__]
        raise TrackingError(
            f"{where} is not answering ({redact(lines[0].strip())}): start the database "
            "server (./dev.sh server starts one) and check the URI, or unset "
            "MLFLOW_TRACKING_URI to use the embedded store (mlflow.db at the repository "
            "root)") from None


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store; None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):].split("?", 1)[0])


def _lock_path(uri: str) -> Path | None:
    """``<db>.lock`` beside a SQLite store; None for a server (it serializes by itself)."""
    db = _sqlite_path(uri)
    return None if db is None else db.with_name(db.name + ".lock")


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    link: BaseException | None = e
    while link is not None and link not in seen:
        seen.append(link)
        link = link.__cause__ or link.__context__
    return seen


_STORE_MODULES = ("mlflow", "requests", "urllib3", "sqlalchemy", "sqlite3")


def store_problem(uri: str, e: BaseException) -> str | None:
    """One line saying why the store ``uri`` failed with ``e``, and the fix; None when
    ``e`` is not a known store failure (then it is raised as it is). Only errors raised by
    MLflow and the libraries under it count: a training error is never taken for one."""
    chain = _chain(e)
    if not any(type(x).__module__.split(".")[0] in _STORE_MODULES for x in chain):
        return None
    text = " | ".join(str(x) for x in chain)
    db = _sqlite_path(uri)
    if db is not None:
        where = f"MLflow store {db}"
        elsewhere = "or point MLFLOW_TRACKING_URI at a writable store"
        if "readonly database" in text:
            return (f"{where} is read-only (attempt to write a readonly database): make the "
                    f"file and its folder writable for this user, {elsewhere}")
        if "database is locked" in text:
            return (f"{where} is locked by another process (database is locked): let that "
                    "process finish or stop it, then rerun")
        if "unable to open database file" in text:
            return (f"{where} cannot be written (unable to open database file): its folder "
                    f"{db.parent} is read-only or missing, and SQLite writes a journal beside "
                    f"the file: make the folder writable for this user, {elsewhere}")
        if "file is not a database" in text:
            return (f"{where} is not a SQLite database (file is not a database): move it "
                    f"aside to start a new store, {elsewhere}")
        if "database disk image is malformed" in text:   # cut short, or overwritten in part
            return (f"{where} is damaged (database disk image is malformed): move it aside "
                    f"(mv {db} {db}.damaged) and MLflow makes a new, empty one at the next "
                    f"run, {elsewhere}")
        if "database or disk is full" in text:
            return (f"{where} cannot be written: the disk is full (database or disk is "
                    f"full): free space on the disk of {db.parent}, then rerun")
        return None
    if not uri.lower().startswith(("http://", "https://")):
        return None
    # A 200 (or any status) whose body is a web page: a sign-in page of a proxy in front of
    # the server, another service on the port, a path that is not the server's root.
    page = re.search(r"(?:error code (\d+).*)?Response body: '\s*<", text, re.DOTALL)
    if page or "response body was not in a valid JSON format" in text:
        status = page.group(1) if page and page.group(1) else "200"
        return (f"MLflow tracking server {redact(uri)} does not answer as an MLflow server "
                f"(HTTP {status} with a web page, not MLflow's JSON: a sign-in page, or "
                "another service at that address): check the URI's host, port and path, "
                "sign in another way (MLFLOW_TRACKING_TOKEN or the user:password of the "
                "URI), or unset MLFLOW_TRACKING_URI to use the embedded store (mlflow.db at "
                "the repository root)")
    if "Connection refused" in text:
        reason = "the connection was refused"
    elif "timed out" in text.lower() or "Timeout" in text:
        reason = (f"no answer within MLFLOW_HTTP_REQUEST_TIMEOUT="
                  f"{os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT')} s")
    elif "Max retries exceeded" in text or "ConnectionError" in text:
        reason = "the connection failed"
    else:
        return None
    tries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") or 0) + 1
    return (f"MLflow tracking server {redact(uri)} is not answering ({reason}; {tries} tries): "
            "start the server, or unset MLFLOW_TRACKING_URI to use the embedded store "
            "(mlflow.db at the repository root)")


@contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """Known store failures inside the block become one ``TrackingError`` line."""
    try:
        yield
    except RnnlabError:
        raise
    except Exception as e:  # noqa: BLE001 (MLflow, SQLAlchemy, requests and OS errors alike)
        problem = store_problem(uri, e)
        if problem is None:
            raise
        raise TrackingError(problem) from e


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on a SQLite store while it is created or migrated; check
    first that a PostgreSQL store answers (``check_database``: one bounded connection).

    MLflow creates a fresh SQLite store by running its schema migrations; two processes
    doing that at once (``dvc queue start -j 2`` on a new clone) fail with errors such as
    ``duplicate column name`` or ``table _alembic_tmp_experiments already exists``. Runs
    written after that are ordinary SQLite transactions and need no lock.
    """
    path = _lock_path(uri)
    if path is None or fcntl is None:
        check_database(uri)
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except PermissionError as e:
        raise TrackingError(
            f"MLflow store {_sqlite_path(uri)} is read-only (its lock file {path} cannot be "
            f"written: {e.strerror}): make the folder {path.parent} writable for this user, "
            "or point MLFLOW_TRACKING_URI at a writable store") from None
    with handle:
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
    user_set = "MLFLOW_TRACKING_URI" in os.environ
    mlflow.set_tracking_uri(uri)
    if not user_set:   # MLflow exports it; tracking_uri() of another root must not see it
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    with store_errors(uri), store_lock(uri):
        exp = mlflow.get_experiment_by_name(name)
        if exp is not None:
            if exp.tags.get(KIND_TAG) != KIND:      # made before rnnlab set the kind
                mlflow.MlflowClient(uri).set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
            return exp.experiment_id
        # The artifact location is fixed at creation: make it absolute, at the real root.
        # rnnlab's experiments are made together, in one order, so that a new store's ids
        # are always the same (rnnlab-jena 1, rnnlab-imdb 2) and the README's links work.
        location = (root / "mlruns").as_uri() if default_store else None
        ids = {each: _get_or_create(each, location)
               for each in (*EXPERIMENTS, *([name] if name not in EXPERIMENTS else []))}
        return ids[name]


def _get_or_create(name: str, location: str | None) -> str:
    """The experiment's id, created if new. On a tracking server there is no lock: two
    workers starting at once on a fresh server both create it, and the second gets
    RESOURCE_ALREADY_EXISTS (PostgreSQL's unique name); the first one's is as good."""
    import mlflow
    from mlflow.exceptions import MlflowException

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=location,
                                        tags={KIND_TAG: KIND})
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        exp = mlflow.get_experiment_by_name(name)
        assert exp is not None   # another process just created it
        return exp.experiment_id


def param_text(value: Any) -> str:
    """A param's value as params.yaml writes it, not as Python prints it: ``null``,
    ``true``/``false``, lists (and the tuples the typed configs hold) as flow lists
    (``[300001, null]``, ``[tanh, relu]``); numbers and strings as they are."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow_item(v) for v in value) + "]"
    if value is None or isinstance(value, bool):
        return _flow_item(value)
    return str(value)


def _flow_item(value: Any) -> str:
    import yaml

    if isinstance(value, (list, tuple)):
        return param_text(value)
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 30).removesuffix(
        "\n...\n").strip()


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'jena': {'lookback': 1440}} -> {'jena.lookback': '1440'}, as MLflow params are flat
    strings, each written as params.yaml writes it (``param_text``)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = param_text(value)
    return flat


def shown_run_name(name: str) -> str:
    """``name`` (the variant: docs/conventions.md) under plain ``dvc repro``; under
    ``dvc exp run``, which sets DVC_EXP_NAME, ``<name> (<experiment>)``: the points of a
    sweep are then told apart in MLflow's runs list, not only by the ``dvc_exp_name`` tag."""
    experiment = os.environ.get("DVC_EXP_NAME")
    return f"{name} ({experiment})" if experiment else name


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


LOCK_FILE = "requirements.lock"     # the pipeline's locked environment (./dev.sh lock)


def provenance(root: Path) -> dict[str, str]:
    """What a run came from besides its params: the commit, the lock file of the repository
    (``lock_sha256``, 16 hex digits; ``none`` without one) and the packages this process
    really has installed (``env_sha256`` over every distribution's name and version, so two
    runs with the same value ran the same packages, lock or not)."""
    lock = Path(root) / LOCK_FILE
    lock_digest = (hashlib.sha256(lock.read_bytes()).hexdigest()[:16] if lock.is_file()
                   else "none")
    return {"git_commit": git_commit(root), "lock_sha256": lock_digest,
            "env_sha256": _environment_digest()}


@functools.cache
def _environment_digest() -> str:
    """The installed packages do not change while a stage runs: read them once per
    process, not once per seed's run."""
    from importlib import metadata

    installed = sorted({f"{d.metadata['Name']}=={d.version}".lower()
                        for d in metadata.distributions() if d.metadata["Name"]})
    return hashlib.sha256("\n".join(installed).encode()).hexdigest()[:16]


class Run:
    """What training code may do with a run: log metrics and artifacts."""

    def __init__(self, run_id: str):
        self.id = run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tag(self, key: str, value: str) -> None:
        import mlflow
        mlflow.set_tag(key, value)

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
        from mlflow.data.numpy_dataset import from_numpy  # mlflow.data.from_numpy, typed
        with warnings.catch_warnings():  # file:// sources match two equivalent source kinds
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
            dataset = from_numpy(array, source=source, name=name)
        mlflow.log_input(dataset, context=context)

    def log_loss_curves(self, history: Sequence[Mapping[str, float]], title: str) -> None:
        """A PNG of train and validation loss per epoch, as the run's ``loss_curves.png``."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import mlflow
        from matplotlib.ticker import MaxNLocator
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        epochs = [row["epoch"] for row in history]
        ax.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
        ax.plot(epochs, [row["val_loss"] for row in history], "s-", label="validation")
        # min_n_ticks=1: one epoch gets the tick 1, not 0.950, 0.975, ... 1.050
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        mlflow.log_figure(fig, "loss_curves.png")
        plt.close(fig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:                      # another user's process: alive
        return True
    return True


def _close_interrupted(claims: Path, uri: str) -> dict[Path, str]:
    """Mark KILLED every run that a dead process of this machine left claimed in the folder
    ``claims`` and that is still RUNNING in this store; remove those claims. Return
    {claim: run id} of the runs marked. A claim that its process marked FAILED (it failed
    and the store would not take the status then: a full disk) is closed FAILED, its process
    alive or not: that process is done with the run.

    The whole folder, not only the caller's claim: a stage that DVC restores from its run
    cache never runs again, and its killed attempt would otherwise stay RUNNING forever.
    """
    from mlflow.tracking import MlflowClient

    client, closed = MlflowClient(tracking_uri=uri), {}
    for claim in sorted(claims.glob("*.run.json")):
        try:
            held = json.loads(claim.read_text())
            run_id, store, pid, host = held["run_id"], held["store"], held["pid"], held["host"]
        except (OSError, ValueError, KeyError, TypeError):
            continue                     # unreadable: not ours to judge
        failed = held.get("status") == "FAILED"
        if host != socket.gethostname() or (not failed and _alive(int(pid))):
            continue                     # a live attempt, or one we cannot see
        if store != _digest(uri):
            continue                     # a run in another store: closed when it is back
        try:
            status = client.get_run(run_id).info.status
        except Exception:  # noqa: BLE001 (deleted run, foreign id: nothing to close)
            status = None
        if status == "RUNNING":
            ended = "FAILED" if failed else "KILLED"
            client.set_terminated(run_id, ended)
            log.info("MLflow run %s of an interrupted attempt (%s) marked %s", run_id,
                     claim, ended)
            closed[claim] = run_id
        claim.unlink(missing_ok=True)
    return closed


def _digest(uri: str) -> str:
    """Names the store in a claim without writing its URI (and any credentials) to disk."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def refuse_run_id(what: str) -> None:
    """MLflow's ``start_run`` resumes the run ``MLFLOW_RUN_ID`` names (any variant's) and
    would write ``what`` into it: one line instead."""
    if os.environ.get("MLFLOW_RUN_ID"):
        raise TrackingError(
            f"MLFLOW_RUN_ID={os.environ['MLFLOW_RUN_ID']} is set in the environment: MLflow "
            f"would log {what} into that existing run, renaming it and mixing their figures. "
            "Each stage opens its own run: unset MLFLOW_RUN_ID and rerun")


@contextmanager
def tracked_run(*, experiment: str, run_name: str, params: Mapping[str, Any],
                tags: Mapping[str, Any], root: Path, claim: Path | None = None
                ) -> Iterator[Run]:
    """Start an MLflow run with flattened ``params`` and the conventional tags, named
    ``run_name`` (``<run_name> (<experiment>)`` under ``dvc exp run``: ``shown_run_name``).

    ``claim``: a small file that names the run (and this process) while the run is open,
    removed when it ends (FINISHED, or FAILED on any exception). When the store will not take
    the end (a full disk: the failure itself), the claim stays, marked FAILED, and the next
    tracked run with a claim in the folder ends the run FAILED. A process killed with
    ``kill -9`` cannot end its run and leaves the file: the next tracked run with a claim in
    the same folder marks that run KILLED if its process is gone and it is still RUNNING in
    this store; the run whose claim it takes over is tagged ``interrupted_run_id``.
    """
    import mlflow

    refuse_run_id(f"this {run_name} run")
    root = Path(root).resolve()
    uri = tracking_uri(root)
    exp_id = experiment_id(experiment, root)
    all_tags = {
        **provenance(root),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME") or "workspace",
        **tags,
    }
    if claim is not None and claim.parent.is_dir():
        with store_errors(uri):
            closed = _close_interrupted(claim.parent, uri)
        if claim in closed:
            all_tags["interrupted_run_id"] = closed[claim]
    with store_errors(uri):
        run_id = mlflow.start_run(experiment_id=exp_id, run_name=shown_run_name(run_name),
                                  tags={k: str(v) for k, v in all_tags.items()}).info.run_id
    # The run is ended here, not by MLflow's ActiveRun: its end of a failed run raises the
    # store's error in place of the stage's (a disk that filled fails both) and leaves the
    # run RUNNING, its claim gone, for good.
    ended = False
    try:
        try:
            with store_errors(uri):
                if claim is not None:
                    write_json(claim, {"run_id": run_id, "store": _digest(uri),
                                       "pid": os.getpid(), "host": socket.gethostname()})
                mlflow.log_params(flatten(params))
                yield Run(run_id)
        except BaseException as e:
            ended = _end_failed(run_id, uri, claim,
                                "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
        with store_errors(uri):
            mlflow.end_run("FINISHED")
        ended = True
    finally:
        if claim is not None and ended:     # else the claim lets the next run close it
            claim.unlink(missing_ok=True)
            remove_if_empty(claim.parent)


def _end_failed(run_id: str, uri: str, claim: Path | None, status: str = "FAILED") -> bool:
    """End the run FAILED (or ``status``: KILLED for Ctrl-C); True when the store took it.
    Never raises: the stage's own error is the one to show. When the store refuses, one
    warning, and the claim (if any) is marked FAILED in place (a rewrite inside the file's
    block needs no free space), so the next tracked run ends the run FAILED."""
    import mlflow

    try:
        mlflow.end_run(status)
        return True
    except Exception as e:  # noqa: BLE001 (whatever the store raises, the stage's error wins)
        reason = store_problem(uri, e) or redact(
            (str(e).strip().splitlines() or [type(e).__name__])[0])
    marked = False
    if claim is not None:
        try:
            held = json.loads(claim.read_text())
            with open(claim, "r+") as f:
                f.write(json.dumps({**held, "status": "FAILED"}))
                f.truncate()
            marked = True
        except (OSError, ValueError):
            pass
    if marked:
        fate = f"its claim {claim} is kept: the next tracked stage ends it FAILED"
    elif claim is not None and claim.exists():
        fate = f"its claim {claim} is kept: the next tracked stage marks it KILLED"
    else:
        fate = ("it stays RUNNING: end it by hand "
                f"(MlflowClient().set_terminated('{run_id}', 'FAILED'))")
    log.warning("MLflow run %s could not be marked %s (%s); %s", run_id, status, reason, fate)
    return False
