"""What an entry point (a stage's ``run_stage``, a tool's ``main``, the test session) sets up
for the whole process, once: the environment MLflow reads and the log filters. Nothing
here runs at import; ``configure_process`` does it, and only where the user set nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# A tracking server's waits: at most 3 tries of 5 s each, 2 s of back-off between the
# last two; a server that never answers fails a stage after about 17 s, a refused port at
# once (MLflow's defaults: 120 s a request, 7 retries, back-off factor 2, about 250 s for
# a refused port). Values the user set win. MLflow reads them at each request.
HTTP_WAIT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
                      "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                      "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


class _QuietSqlErrors(logging.Filter):
    """MLflow logs every SQLAlchemy error with its traceback before raising it; the error
    is raised anyway (and becomes one ``TrackingError`` line when it is a known one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SQLAlchemy database error")


_QUIET = _QuietSqlErrors()


def configure_process() -> None:
    """No telemetry, short tracking-server waits (values the user set win), and the two
    log filters. Idempotent."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name, value in HTTP_WAIT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    sql = logging.getLogger("mlflow.store.db.utils")
    if _QUIET not in sql.filters:
        sql.addFilter(_QUIET)
    # urllib3 logs each retry with the full URL (credentials included) and the socket error.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def this_python_first(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with this interpreter's folder first on ``PATH``,
    for a child that runs ``dvc`` and, through the stages' ``cmd``, ``python``: both are
    then this Python's, with rnnlab installed, even where its venv is not activated
    (``.venv/bin/python -m rnnlab.tools.demo``)."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent),
                                              env.get("PATH")) if p)
    return env


@contextmanager
def output_for_a_reader_that_may_stop() -> Iterator[None]:
    """A tool's printing, flushed at the end: a reader gone early (``| head`` read what it
    wanted) ends the tool quietly with SIGPIPE's status, 141, not a BrokenPipeError."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)


def why_port_taken(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port``, or None: bound here as uvicorn binds
    (IPv6 where the host holds ``:``, else IPv4; ``SO_REUSEADDR``) and let go."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
    return None
