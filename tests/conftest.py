"""Shared fixtures: a real HTTP server on 127.0.0.1 and generated Jena files."""

from __future__ import annotations

import threading
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


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    server = LoopbackServer(root)
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture(scope="session")
def small_jena_zip(tmp_path_factory) -> tuple[Path, str]:
    """A 5,000-row Jena-format zip and the md5 of its CSV."""
    path = tmp_path_factory.mktemp("jena") / "jena_climate_2009_2016.csv.zip"
    md5 = write_jena_zip(path, rows=5000, seed=7)
    return path, md5


def leftovers(directory: Path) -> list[str]:
    """Every file left under ``directory`` (temp files included)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
