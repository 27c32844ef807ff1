"""Throwaway servers for the team tests: a PostgreSQL cluster and an MLflow tracking server
on loopback, both stopped (and the cluster deleted) on the way out, failures included.

    with postgres_cluster(tmp_path) as backend_uri:
        with mlflow_server(backend_uri, tmp_path / "artifacts") as tracking_uri:
            ...

They wrap ``rnnlab.tools.server``, the code ``python -m rnnlab.tools.server`` runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rnnlab.tools import server


def need_postgres() -> None:
    """Skip, naming the fix, where PostgreSQL or its driver is not installed."""
    try:
        server.pg_binary("initdb")
        server.need_driver()
    except server.ServerError as e:
        pytest.skip(str(e))             # names the fix: ./dev.sh postgres, or the team extra


@contextmanager
def postgres_cluster(tmp_path: Path, database: str = "mlflow") -> Iterator[str]:
    """A new cluster on a free loopback port; yields the SQLAlchemy URI of ``database``."""
    if os.geteuid() == 0:
        # the cluster runs as the postgres user, who cannot enter pytest's 0700 tmp folders
        where = Path(tempfile.mkdtemp(prefix="rnnlab-pg-"))
        where.chmod(0o755)
    else:
        where = tmp_path
    try:
        with server.local_postgres(where / "pgdata", database=database) as uri:
            yield uri
    finally:
        if where != tmp_path:
            shutil.rmtree(where, ignore_errors=True)


@contextmanager
def mlflow_server(backend_uri: str, artifacts_dir: Path,
                  log: Path | None = None) -> Iterator[str]:
    """``mlflow server`` on ``backend_uri`` with artifacts served from ``artifacts_dir``, on
    a free loopback port; yields its http URI."""
    log = log or Path(artifacts_dir).parent / "mlflow-server.log"
    with server.mlflow_server(backend_uri, artifacts_dir, log=log) as served:
        yield served.url


def group_commands(leader: int) -> list[str]:
    """The command line of every process in ``leader``'s process group."""
    return subprocess.run(["ps", "-o", "args=", "-g", str(leader)], capture_output=True,
                          text=True, check=True).stdout.splitlines()
