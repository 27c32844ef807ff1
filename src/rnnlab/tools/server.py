"""A shared MLflow tracking server: PostgreSQL holds the runs, the server holds the artifacts.

    python -m rnnlab.tools.server [--port 5000] [--host 127.0.0.1] [--dir .mlflow-server]
                            [--backend-store-uri postgresql+psycopg2://user:pw@host/db]
                            [any other option of mlflow server, e.g. --allowed-hosts NAME]
    python -m rnnlab.tools.server copy --from sqlite:///path/to/mlflow.db --to http://127.0.0.1:5000

The first form runs ``mlflow server`` with a PostgreSQL backend store and artifacts served
through the server (``--serve-artifacts``, stored under ``<dir>/artifacts``), on 127.0.0.1
unless ``--host`` says otherwise, until Ctrl-C. Without ``--backend-store-uri`` it makes (once)
and starts a local PostgreSQL cluster in ``<dir>/pgdata`` on a loopback port, with the
database ``mlflow``, and stops it again on the way out. Stages, queue workers and sweeps log
to the server when ``MLFLOW_TRACKING_URI`` names it (the line it prints).

``copy`` copies the experiments, runs (params, metric histories, tags, status, times,
dataset inputs), artifacts and logged models of one store into another, skipping runs
already copied.

The driver (psycopg2) is in the ``team`` extra: ``pip install -e '.[team]'``.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rnnlab.core.errors import RnnlabError, redact
from rnnlab.core.process import configure_process, why_port_taken
from rnnlab.tracking.paths import repo_root
from rnnlab.tracking.ui import server_environment

DATABASE = "mlflow"
PG_USER = "postgres"            # the cluster's superuser (and, as root, the OS user running it)
COPIED_FROM = "rnnlab.copied_from"     # tag on a copied run: the source run's id


class ServerError(RnnlabError):
    """The tracking server or its database cannot be started."""


def say(text: str, **kwargs) -> None:
    """``print``, with the credentials of every URL in ``text`` shown as ``***@`` (a
    backend store's URI holds its password)."""
    print(redact(text), **kwargs)


# ---------------------------------------------------------------------- PostgreSQL

def pg_binary(name: str) -> str:
    """``initdb``, ``pg_ctl``...: from PATH, else Debian's layout (a fresh
    ``apt-get install postgresql`` links them nowhere else), newest version first."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: [int(x) if x.isdigit() else 0 for x in
                                       Path(p).parts[-3].split(".")], reverse=True)
    if candidates:
        return candidates[0]
    raise ServerError(f"PostgreSQL is not installed (no {name} on PATH or under "
                      "/usr/lib/postgresql/*/bin): run ./dev.sh postgres, or "
                      "apt-get install postgresql")


def _as_cluster_owner(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: as root, run them as the postgres user."""
    if os.geteuid() != 0:
        return cmd
    try:
        import pwd
        pwd.getpwnam(PG_USER)
    except KeyError:
        raise ServerError(f"running as root and there is no {PG_USER!r} user to run "
                          "PostgreSQL as (initdb refuses root): install Debian's postgresql "
                          "(./dev.sh postgres), or run as an ordinary user") from None
    return ["runuser", "-u", PG_USER, "--", *cmd]


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ServerError(redact(f"{what} failed ({proc.returncode}): {' / '.join(tail)}"))
    return proc.stdout


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_number(text: str, option: str) -> int:
    """``--port``'s text as a TCP port, 1-65535, or one ServerError line (a bind of 99999
    was a traceback)."""
    text = text.strip()
    port = int(text) if text.isdigit() and len(text) <= 5 else 0
    if not 1 <= port <= 65535:
        shown = (text if len(text) <= 20 else text[:20] + "...") or "''"
        raise ServerError(f"{option}: {shown} is not a port number; choose one from 1 to 65535")
    return port


def check_port_free(host: str, port: int, option: str) -> None:
    if why := why_port_taken(host, port):
        raise ServerError(f"port {port} on {host} is busy ({why}): stop what "
                          f"listens there, or choose another with {option}")


def init_cluster(datadir: Path) -> bool:
    """Make a PostgreSQL cluster in ``datadir`` unless one is there; True if made.

    Trust authentication for its superuser, on loopback only (``start_cluster``): a
    throwaway or single-machine database. A lab's shared database wants passwords: give its
    URI with ``--backend-store-uri`` instead.
    """
    datadir = Path(datadir).resolve()
    if (datadir / "PG_VERSION").exists():
        return False
    initdb = pg_binary("initdb")
    datadir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(datadir, PG_USER, PG_USER)
        datadir.chmod(0o700)
        reach = subprocess.run(_as_cluster_owner(["test", "-w", str(datadir)]))
        if reach.returncode != 0:
            raise ServerError(f"the {PG_USER} user cannot reach {datadir} (a folder above it "
                              "is closed to other users): choose a --dir it can reach")
    _run(_as_cluster_owner([initdb, "-D", str(datadir), "-U", PG_USER, "--auth=trust",
                            "-E", "UTF8", "--no-locale", "--no-instructions"]), "initdb")
    return True


def _running_port(datadir: Path) -> int | None:
    """The port of a postgres still running on ``datadir`` (left by a killed server)."""
    status = subprocess.run(_as_cluster_owner([pg_binary("pg_ctl"), "-D", str(datadir),
                                               "status"]), capture_output=True, text=True)
    pid_file = datadir / "postmaster.pid"
    if status.returncode != 0 or not pid_file.exists():
        return None
    lines = pid_file.read_text().splitlines()
    return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None


def pg_uri(port: int, database: str = DATABASE, host: str = "127.0.0.1") -> str:
    # psycopg2 named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3 (stack notes)
    return f"postgresql+psycopg2://{PG_USER}@{host}:{port}/{database}"


def start_cluster(datadir: Path, port: int | None = None) -> int:
    """Start the cluster in ``datadir`` on 127.0.0.1 (``port``, or a free one) and return
    its port; one already running there (a server killed earlier) is reused."""
    datadir = Path(datadir).resolve()
    running = _running_port(datadir)
    if running is not None:
        say(f"PostgreSQL already running on {datadir} (port {running}): reusing it",
            file=sys.stderr)
        return running
    if port is None:
        port = free_port()
    else:
        check_port_free("127.0.0.1", port, "--pg-port")
    # no Unix socket: TCP on loopback only, so nothing is written to /var/run/postgresql
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
    _run(_as_cluster_owner([pg_binary("pg_ctl"), "-D", str(datadir), "-l",
                            str(datadir / "rnnlab-postgres.log"), "-o", options, "-w", "-t",
                            "60", "start"]),
         f"starting PostgreSQL (log: {datadir / 'rnnlab-postgres.log'})")
    return port


def stop_cluster(datadir: Path) -> None:
    datadir = Path(datadir).resolve()
    if (datadir / "postmaster.pid").exists():
        subprocess.run(_as_cluster_owner([pg_binary("pg_ctl"), "-D", str(datadir), "-m",
                                          "fast", "-w", "stop"]), capture_output=True)


def need_driver() -> None:
    if importlib.util.find_spec("psycopg2") is None:
        raise ServerError("the PostgreSQL driver psycopg2 is not installed: install rnnlab's "
                          "`team` extra (pip install -e '.[team]')")


def create_database(port: int, database: str = DATABASE) -> None:
    """``CREATE DATABASE`` unless it exists."""
    need_driver()
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user=PG_USER, dbname="postgres")
    try:
        conn.autocommit = True           # CREATE DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{database}"')
    finally:
        conn.close()


@contextmanager
def local_postgres(datadir: Path, port: int | None = None,
                   database: str = DATABASE) -> Iterator[str]:
    """A local cluster in ``datadir`` (made if new) running while the block runs; yields
    the SQLAlchemy URI of ``database`` in it. Stopped on the way out, failures included."""
    need_driver()
    init_cluster(datadir)
    port = start_cluster(datadir, port)
    try:
        create_database(port, database)
        yield pg_uri(port, database)
    finally:
        stop_cluster(datadir)


def with_driver(uri: str) -> str:
    """A bare ``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; name psycopg2 (the
    `team` extra's driver) when psycopg 3 is absent."""
    if uri.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + uri[len("postgresql://"):]
    return uri


# ---------------------------------------------------------------------- mlflow server

@dataclass
class Served:
    url: str
    process: subprocess.Popen


def server_command(artifacts: Path, host: str, port: int,
                   extra: tuple[str, ...] = ()) -> list[str]:
    """The backend store's URI goes in the environment (``MLFLOW_BACKEND_STORE_URI``), not
    here: a command line, password included, is visible to every user in ``ps``."""
    return [sys.executable, "-m", "mlflow", "server", "--serve-artifacts", "--artifacts-destination", Path(artifacts).resolve().as_uri(),
            "--host", host, "--port", str(port), "--workers", "1", *extra]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies (Linux), so a
    ``kill -9`` of ``rnnlab.tools.server`` does not leave an orphan server holding the port. (An
    orphan PostgreSQL is found and reused by the next start.)"""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it and its workers), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, host: str = "127.0.0.1",
                  port: int | None = None, log: Path | None = None,
                  timeout: float = 120, extra: tuple[str, ...] = ()) -> Iterator[Served]:
    """``mlflow server`` on ``backend_uri``, artifacts served from ``artifacts``, running
    while the block runs (it answers /health when the block starts); stopped on the way
    out. Its output goes to ``log`` (default: this process's); ``extra``: more options of
    ``mlflow server`` (``--allowed-hosts``...)."""
    if port is None:
        port = free_port(host)
    else:
        check_port_free(host, port, "--port")
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    env = server_environment() | {"MLFLOW_DISABLE_TELEMETRY": "true",
                                  "MLFLOW_BACKEND_STORE_URI": backend_uri}
    out = open(log, "ab") if log else None
    process = subprocess.Popen(server_command(artifacts, host, port, extra), env=env,
                               stdout=out, stderr=subprocess.STDOUT if out else None,
                               start_new_session=True,   # its own group: stopped whole
                               preexec_fn=_die_with_parent)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise ServerError(f"mlflow server exited ({process.returncode}) before it "
                                  f"answered{f'; its log: {log}' if log else ' (see above)'}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"mlflow server did not answer {url}/health in {timeout:.0f} s")
            time.sleep(0.3)
        yield Served(url, process)
    finally:
        _stop(process)
        if out:
            out.close()


def serve(args: argparse.Namespace) -> None:
    state = Path(args.dir).resolve()
    artifacts = Path(args.artifacts or state / "artifacts").resolve()
    check_port_free(args.host, args.port, "--port")
    started = time.monotonic()
    database = (_given(args.backend_store_uri) if args.backend_store_uri
                else local_postgres(state / "pgdata", args.pg_port))
    # SIGTERM as Ctrl-C: the blocks below stop the server and the cluster on the way out
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with database as backend, mlflow_server(backend, artifacts, args.host, args.port,
                                                extra=tuple(args.mlflow_options)) as served:
            shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
            say(f"MLflow tracking server on {backend}, artifacts in {artifacts}, "
                f"answering after {time.monotonic() - started:.1f} s. In each shell whose "
                "stages log to it (Ctrl-C here stops it):", flush=True)
            say(f"export MLFLOW_TRACKING_URI=http://{shown}:{args.port}", flush=True)
            if shown != args.host:
                say(f"(listening on {args.host}: other machines use "
                    f"http://<this machine's address>:{args.port})", flush=True)
            while served.process.poll() is None:
                time.sleep(0.5)
            raise ServerError(f"mlflow server exited ({served.process.returncode})")
    except KeyboardInterrupt:
        say("stopped the tracking server"
            f"{'' if args.backend_store_uri else ' and its PostgreSQL'}", file=sys.stderr)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


@contextmanager
def _given(uri: str) -> Iterator[str]:
    if uri.startswith("postgresql"):
        need_driver()
    yield with_driver(uri)


# ---------------------------------------------------------------------- copying a store

def _pages(fetch):
    token = None
    while True:
        page = fetch(token)
        yield from page
        token = page.token
        if not token:
            return


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def copy_store(source: str, dest: str, log=None) -> tuple[int, int]:
    """Copy every run of the store ``source`` into the store ``dest`` (experiments by name,
    with their tags; each run's params, whole metric histories, tags and run name, status,
    start and end times, dataset inputs, artifacts and logged models). A run whose copy is already there
    (tagged ``rnnlab.copied_from`` = its id) is skipped. Returns (copied, skipped)."""
    from mlflow.entities import Metric, Param, RunTag, ViewType
    from mlflow.tracking import MlflowClient

    log = log or say
    src, dst = MlflowClient(source), MlflowClient(dest)
    copied = skipped = 0
    for exp in _pages(lambda t: src.search_experiments(ViewType.ACTIVE_ONLY, page_token=t)):
        runs = list(_pages(lambda t, e=exp.experiment_id: src.search_runs(
            [e], max_results=1000, page_token=t)))
        if not runs:
            continue
        target = dst.get_experiment_by_name(exp.name)
        if target is None:
            dst.create_experiment(exp.name, tags=dict(exp.tags))
            target = dst.get_experiment_by_name(exp.name)
        assert target is not None   # found, or just created
        for key, value in exp.tags.items():
            if target.tags.get(key) != value:
                dst.set_experiment_tag(target.experiment_id, key, value)
        done = {r.data.tags[COPIED_FROM] for r in _pages(
            lambda t, target=target: dst.search_runs(
                [target.experiment_id], f"tags.`{COPIED_FROM}` != ''",
                                      run_view_type=ViewType.ALL, max_results=1000,
                                      page_token=t))}
        for run in sorted(runs, key=lambda r: r.info.start_time or 0):
            if run.info.run_id in done:
                skipped += 1
                continue
            new = dst.create_run(target.experiment_id, start_time=run.info.start_time,
                                 tags=dict(run.data.tags), run_name=run.info.run_name)
            new_id = new.info.run_id
            try:
                params = [Param(k, v) for k, v in run.data.params.items()]
                metrics = [Metric(m.key, m.value, m.timestamp, m.step)
                           for key in run.data.metrics
                           for m in src.get_metric_history(run.info.run_id, key)]
                for chunk in _chunks(params, 100):       # MLflow's limits per batch
                    dst.log_batch(new_id, params=chunk)
                for chunk in _chunks(metrics, 1000):
                    dst.log_batch(new_id, metrics=chunk)
                if run.inputs and run.inputs.dataset_inputs:
                    dst.log_inputs(new_id, datasets=list(run.inputs.dataset_inputs))
                if src.list_artifacts(run.info.run_id):
                    with tempfile.TemporaryDirectory() as tmp:
                        local = src.download_artifacts(run.info.run_id, "", tmp)
                        dst.log_artifacts(new_id, local)
                _copy_models(src, dst, run, new_id, target.experiment_id)
                if run.info.status != "RUNNING":
                    dst.set_terminated(new_id, run.info.status, run.info.end_time)
                # last: a run interrupted above is not taken for a finished copy
                dst.log_batch(new_id, tags=[RunTag(COPIED_FROM, run.info.run_id)])
            except BaseException:
                dst.delete_run(new_id)
                raise
            copied += 1
            log(f"copied {exp.name}/{run.info.run_name} {run.info.run_id} -> {new_id}")
    return copied, skipped


def _copy_models(src, dst, run, new_id: str, experiment_id: str) -> None:
    """MLflow 3 keeps a logged model (``mlflow.pytorch.log_model``) beside its run, not among
    the run's artifacts: copy each model the run logged, and link it as the copy's output,
    so that ``runs:/<copy>/model`` loads."""
    import mlflow.artifacts
    from mlflow.entities import LoggedModelOutput

    outputs = run.outputs.model_outputs if run.outputs else []
    for output in outputs:
        model = src.get_logged_model(output.model_id)
        new = dst.create_logged_model(experiment_id, name=model.name, source_run_id=new_id,
                                      tags=dict(model.tags), params=dict(model.params),
                                      model_type=model.model_type)
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location,
                                                        dst_path=tmp)
            dst.log_model_artifacts(new.model_id, local)
        dst.finalize_logged_model(new.model_id, model.status)
        dst.log_outputs(new_id, [LoggedModelOutput(new.model_id, output.step)])


# ---------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> None:
    configure_process()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["copy"]:
        parser = argparse.ArgumentParser(prog="python -m rnnlab.tools.server copy",
                                         description=(copy_store.__doc__ or "").split("\n")[0])
        parser.add_argument("--from", dest="source", required=True,
                            help="the store to copy, e.g. sqlite:////path/to/mlflow.db")
        parser.add_argument("--to", dest="dest", required=True,
                            help="the store to copy into, e.g. http://127.0.0.1:5000")
        args = parser.parse_args(argv[1:])
        from rnnlab.tracking.store import TrackingError, _sqlite_path, store_errors
        db = _sqlite_path(args.source)
        if db is not None and not db.is_file():   # MLflow would make a new, empty store there
            sys.exit(redact(f"error: no MLflow store at {db} (--from {args.source})"))
        started = time.monotonic()
        try:
            with store_errors(args.dest), store_errors(args.source):
                copied, skipped = copy_store(args.source, args.dest)
        except TrackingError as e:
            sys.exit(redact(f"error: {e}"))
        say(f"{copied} runs copied, {skipped} already there, "
            f"in {time.monotonic() - started:.1f} s")
        return
    parser = argparse.ArgumentParser(prog="python -m rnnlab.tools.server",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only; "
                             "0.0.0.0 for a lab)")
    parser.add_argument("--port", default=None,
                        help="the port to listen on, 1-65535 (default: $PORT, else 5000)")
    parser.add_argument("--dir", default=None,
                        help="where the local cluster (pgdata/) and the artifacts live "
                             "(default: .mlflow-server/ at the repository root)")
    parser.add_argument("--artifacts", default=None,
                        help="the artifacts destination folder (default: <dir>/artifacts)")
    parser.add_argument("--backend-store-uri", default=None,
                        help="an existing database (postgresql+psycopg2://user:pw@host:port/db) "
                             "instead of the local cluster")
    parser.add_argument("--pg-port", default=None,
                        help="the local cluster's port on 127.0.0.1 (default: a free one)")
    args, args.mlflow_options = parser.parse_known_args(argv)
    try:
        # checked before anything starts; PORT (a platform's) as --port, named as itself
        args.port = (port_number(args.port, "--port") if args.port is not None else
                     port_number(os.environ["PORT"], "PORT") if os.environ.get("PORT") else 5000)
        if args.pg_port is not None:
            args.pg_port = port_number(args.pg_port, "--pg-port")
        args.dir = args.dir or str(repo_root() / ".mlflow-server")
        serve(args)
    except ServerError as e:
        sys.exit(redact(f"error: {e}"))


if __name__ == "__main__":
    main()
