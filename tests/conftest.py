"""Shared fixtures: a real HTTP server on 127.0.0.1 and generated Jena files."""

from __future__ import annotations

import os
import shutil
import threading
from collections import defaultdict
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from rnnlab.data.synthetic import write_jena_zip


class LoopbackServer:
    """Serves files from ``root`` on 127.0.0.1, with misbehaving routes for tests.

    /<name>             the file (404 if absent)
    /truncated/<name>   announces the full Content-Length, sends half, closes
    /flaky/<name>       503 on the first two requests of each name, then the file
    /drip/<name>        headers at once (full Content-Length), then one byte every
                        ``drip_interval`` seconds: slow enough to hang a download unbounded
    /redirect/<key>     302 to ``redirects[key]`` (any URL: ftp://, file://, ...)
    /auth/<name>        401 unless the request carries ``auth`` (an Authorization header)
    """

    def __init__(self, root: Path):
        self.root = root
        self.hits: dict[str, int] = defaultdict(int)
        self.drip_interval = 2.0
        self.redirects: dict[str, str] = {}
        self.auth: str | None = None
        self.seen_auth: list[str | None] = []
        self.stopping = threading.Event()    # ends the drips at shutdown
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.hits[self.path] += 1
                kind, _, name = self.path.lstrip("/").rpartition("/")
                server.seen_auth.append(self.headers.get("Authorization"))
                if kind == "redirect":
                    self.send_response(302)
                    self.send_header("Location", server.redirects[name])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if kind == "auth" and self.headers.get("Authorization") != server.auth:
                    self.send_error(401, "Unauthorized")
                    return
                path = server.root / name
                if not path.is_file():
                    self.send_error(404, "Not Found")
                    return
                if kind == "flaky" and server.hits[self.path] <= 2:
                    self.send_error(503, "Service Unavailable")
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if kind == "drip":
                    try:
                        for i in range(len(body)):
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            if server.stopping.wait(server.drip_interval):
                                break
                    except OSError:   # the client gave up: what the tests want
                        pass
                    self.close_connection = True
                    return
                if kind == "truncated":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                       kwargs={"poll_interval": 0.05})  # a quick shutdown

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"


@contextmanager
def serving(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    server = LoopbackServer(root)
    server.thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.httpd.shutdown()
        server.httpd.server_close()


@pytest.fixture
def http_server(tmp_path):
    with serving(tmp_path / "served") as server:
        yield server


@pytest.fixture(scope="session")
def small_jena_zip(tmp_path_factory) -> tuple[Path, str]:
    """A 5,000-row Jena-format zip and the md5 of its CSV."""
    path = tmp_path_factory.mktemp("jena") / "jena_climate_2009_2016.csv.zip"
    md5 = write_jena_zip(path, rows=5000, seed=7)
    return path, md5


# The lanes (pyproject's markers): the modules that run real DVC pipelines, the team's
# servers, a browser or a GPU carry theirs; every other test is ``fast``, the inner loop
# (`./dev.sh test -m fast`). The whole suite, every lane, is what CI runs.
LANES = {"test_pipeline": "e2e", "test_dvc_graph": "e2e", "test_demo": "e2e",
         "test_leaderboard": "e2e", "test_xdist_groups": "e2e", "test_keras_parity": "e2e",
         "test_team_ray": "team", "test_team_server": "team", "test_browser": "browser",
         "test_cuda": "gpu"}
PIPELINE_FIXTURES = {"tiny_pipeline", "pipeline_copy"}


# The order the workers take the modules in (``./dev.sh test`` passes pytest-xdist
# ``--no-loadscope-reorder``, which keeps this order): the longest first, so that no worker
# starts one in the last minutes while the other idles; the tiny pipeline's first reader
# starts its build at once, and the team's modules keep the other worker busy meanwhile.
# From `./dev.sh test --durations=0` on 2026-12-07 (seconds on a busy two-core machine).
FIRST = ("test_browser",        # 385, the tiny pipeline's build (~170) included
         "test_team_ray",       # 172
         "test_team_server",    # 150
         "test_pipeline",       # 159
         "test_leaderboard",    # 76
         "test_tracking",       # 52
         "test_persistent",     # 43
         "test_fused")          # 28


@pytest.hookimpl(tryfirst=True)      # before pytest-xdist's own hook reads the marks
def pytest_collection_modifyitems(config, items):
    """Each test's lane (``LANES``; a test that reads the tiny pipeline is ``e2e``), and
    which tests share a worker under ``-n 2 --dist loadgroup``: a module's tests stay
    together, so a module-scoped fixture is built once (the tiny pipeline is built once for
    every worker by ``tiny_pipeline`` itself), and the modules come in ``FIRST``'s order."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        lane = LANES.get(item.path.stem) or ("e2e" if fixtures & PIPELINE_FIXTURES else "fast")
        item.add_marker(getattr(pytest.mark, lane))
        item.add_marker(pytest.mark.xdist_group(item.path.stem))
    rank = {name: n for n, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(FIRST)))   # stable


def leftovers(directory: Path) -> list[str]:
    """Every file left under ``directory`` (temp files included)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())



def readme_example_variant() -> dict:
    """The variant the README's "Adding a variant" section shows, as a params entry."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Adding a variant", 1)[1]
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    return yaml.safe_load(block)


@contextmanager
def locked(path: Path):
    """An exclusive lock on ``path`` (created) across processes; the system frees it when
    its holder dies."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def session_folder(tmp_path_factory) -> Path:
    """The folder every worker of this pytest session shares (pytest-xdist gives each
    worker its own base folder inside it); without workers, the session's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(folder: Path, build) -> Path:
    """``build(folder / "build")``, once for every worker of the session: the first to ask
    builds under a lock while the others wait; returns the folder it built. A build that
    failed is not tried again: the next to ask fails with its error. One that died midway
    (no mark either way) is removed and built again."""
    where = folder / "build"
    with locked(folder / "build.lock"):
        if (folder / "built").exists():
            return where
        if (folder / "failed").exists():
            pytest.fail(f"building {where} failed on another worker:\n"
                        + (folder / "failed").read_text(), pytrace=False)
        shutil.rmtree(where, ignore_errors=True)
        try:
            build(where)
        except BaseException as error:
            (folder / "failed").write_text(f"{type(error).__name__}: {error}")
            raise
        (folder / "built").touch()
        return where


def relocated_copy(repo: Path, dest: Path) -> Path:
    """A copy of a built project at ``dest``, its MLflow store's paths moved with it."""
    import sqlite3

    copy = Path(shutil.copytree(repo, dest, symlinks=True))
    with sqlite3.connect(copy / "mlflow.db") as db:
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("logged_models", "artifact_location"),
                              ("datasets", "dataset_source")):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)",
                       (str(repo), str(copy)))
    return copy


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, small_jena_zip):
    """The whole pipeline, `dvc repro` once per session (for every worker: ``built_once``),
    in a fresh copy on tiny data: every variant (plus the README's example one) for one
    short epoch (``TRAIN_CAPS``), the gradients stage and the report. Each worker reads its
    own copy, so no worker's DVC or MLflow command meets another's in one repository. The
    server its params' URLs name lives only while it is built: a test that needs the data
    again takes ``small_jena_zip``. Read-only: a test that changes things takes
    ``pipeline_copy``."""
    from _project import TRAIN_CAPS, set_params, sh, small_project

    def build(where: Path) -> None:
        with serving(where / "served") as server:
            repo = small_project(where / "clone", server, small_jena_zip)
            models = yaml.safe_load((repo / "params.yaml").read_text())["models"]
            set_params(repo, **TRAIN_CAPS, models__conv_gru__lookback=120,
                       models=models | readme_example_variant())
            sh(repo, "git", "commit", "-qam", "the README's example variant")
            sh(repo, "dvc", "repro")

    shared = session_folder(tmp_path_factory) / "tiny_pipeline"
    shared.mkdir(exist_ok=True)
    built = built_once(shared, build) / "clone"
    return relocated_copy(built, tmp_path_factory.mktemp("tiny") / "clone")


@pytest.fixture
def pipeline_copy(tiny_pipeline, tmp_path):
    """A private copy of the tiny pipeline to change (the session's one stays as built);
    its MLflow store points at its own artifact folder."""
    return relocated_copy(tiny_pipeline, tmp_path / "repo")


def pytest_configure(config):
    """What every entry point sets up for the process (the stages' run_stage does the same):
    tracked runs in the tests wait on a dead tracking server as briefly as a stage does."""
    from rnnlab.core.process import configure_process

    configure_process()
