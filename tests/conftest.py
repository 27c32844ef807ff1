"""Shared fixtures: a real HTTP server on 127.0.0.1 and generated Jena files."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rnnlab.synthetic import write_jena_zip


class LoopbackServer:
    """Serves files from ``root`` on 127.0.0.1, with misbehaving routes for tests.

    /<name>             the file (404 if absent)
    /truncated/<name>   announces the full Content-Length, sends half, closes
    /flaky/<name>       503 on the first two requests of each name, then the file
    """

    def __init__(self, root: Path):
        self.root = root
        self.hits: dict[str, int] = defaultdict(int)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                server.hits[self.path] += 1
                kind, _, name = self.path.lstrip("/").rpartition("/")
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
                if kind == "truncated":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

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


def leftovers(directory: Path) -> list[str]:
    """Every file left under ``directory`` (temp files included)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())



@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory, small_jena_zip):
    """The whole pipeline, `dvc repro` once per session, in a fresh copy on tiny data:
    every variant for one short epoch (``TRAIN_CAPS``), the gradients stage and the report.

    Shared by several test files; tests that change it (new params, reruns, experiments)
    live in test_pipeline.py, which runs after the read-only users (test_browser.py)."""
    from _project import TRAIN_CAPS, set_params, sh, small_project

    base = tmp_path_factory.mktemp("tiny")
    with serving(base / "served") as server:
        repo = small_project(base / "clone", server, small_jena_zip)
        set_params(repo, **TRAIN_CAPS, models__conv_gru__lookback=120)
        sh(repo, "dvc", "repro")
        yield repo
