"""The MLflow store: one absolute SQLite file, safe under parallel queue workers; a store
that cannot be used is one line; a killed run is marked KILLED by the next attempt."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

from rnnlab.tracking.store import (
    TrackingError,
    _digest,
    _lock_path,
    experiment_id,
    flatten,
    store_errors,
    tracked_run,
    tracking_uri,
)

from _project import ROOT, env_for_tools

WORKER = """
import sys
from pathlib import Path
from rnnlab.tracking.store import tracked_run
root, n = Path(sys.argv[1]), int(sys.argv[2])
with tracked_run(experiment="rnnlab-jena", run_name=f"worker{n}", params={"jena": {"n": n}},
                 tags={"variant": f"worker{n}", "seed": n}, root=root) as run:
    for step in range(1, 6):
        run.log_metrics({"val_loss": 1.0 / (step + n)}, step=step)
print(run.id)
"""


def test_default_store_is_absolute_at_the_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(Path(".")) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(Path(".")) == "http://127.0.0.1:5999"


def test_flatten_writes_params_as_params_yaml_does():
    """Lists (and the typed configs' tuples) as flow lists, None as null, booleans as
    true/false: what params.yaml says, not Python's (300001, None) and True."""
    assert flatten({"jena": {"lookback": 1440, "test_rows": (300001, None), "target": "T (degC)"},
                    "model": {"reverse": True, "bidirectional": False, "units": [32, 64],
                              "activations": ("tanh", "relu"), "dropout": 0.2},
                    "seeds": [], "clip_norm": None, "seed": 3}) == {
        "jena.lookback": "1440", "jena.test_rows": "[300001, null]", "jena.target": "T (degC)",
        "model.reverse": "true", "model.bidirectional": "false", "model.units": "[32, 64]",
        "model.activations": "[tanh, relu]", "model.dropout": "0.2", "seeds": "[]",
        "clip_norm": "null", "seed": "3"}


def test_runs_of_a_dvc_experiment_carry_its_name(with_store, tmp_path, monkeypatch):
    """Under `dvc exp run` (DVC_EXP_NAME set) a run is named `<variant> (<experiment>)`, so
    the points of a sweep differ in MLflow's runs list; under `dvc repro`, `<variant>`. Its
    params read as params.yaml writes them; a one-epoch loss chart has the tick 1 alone."""
    from matplotlib.figure import Figure
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = Path(shutil.copytree(with_store, tmp_path / "stage"))
    client = MlflowClient(tracking_uri(root))
    ticks: list[list[str]] = []
    savefig = Figure.savefig

    def record(fig, *args, **kwargs):
        fig.canvas.draw()
        (ax,) = fig.axes
        low, high = ax.get_xlim()
        ticks.append([t.get_text() for t in ax.get_xticklabels()
                      if low <= t.get_position()[0] <= high])
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    names = {}
    for exp_name in ("tidal-mews", None):
        if exp_name:
            monkeypatch.setenv("DVC_EXP_NAME", exp_name)
        else:
            monkeypatch.delenv("DVC_EXP_NAME", raising=False)
        with tracked_run(experiment="rnnlab-jena", run_name="gru_dropout", tags={},
                         params={"jena": {"test_rows": (300001, None)},
                                 "model": {"reverse": False}}, root=root) as run:
            run.log_loss_curves([{"epoch": 1, "train_loss": 0.3, "val_loss": 0.29}], "gru")
        names[exp_name] = client.get_run(run.id)
    assert names["tidal-mews"].info.run_name == "gru_dropout (tidal-mews)"
    assert names["tidal-mews"].data.tags["dvc_exp_name"] == "tidal-mews"
    assert names[None].info.run_name == "gru_dropout"
    assert names[None].data.tags["dvc_exp_name"] == "workspace"
    assert names[None].data.params == {"jena.test_rows": "[300001, null]",
                                       "model.reverse": "false"}
    assert ticks == [["1"], ["1"]]


def test_parallel_workers_on_a_fresh_store_lose_no_run(tmp_path):
    """Six processes start at once on a store that does not exist yet (as `dvc queue start
    -j N` does on a fresh clone): every run lands, finished, with all its metrics."""
    from mlflow.tracking import MlflowClient

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), str(n)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for n in range(6)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (_out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    ids = {out.strip().splitlines()[-1] for out, _ in outputs}

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiments = [e for e in client.search_experiments() if e.name == "rnnlab-jena"]
    assert len(experiments) == 1, "one experiment, not one per worker"
    assert experiments[0].artifact_location == (tmp_path / "mlruns").as_uri()
    runs = client.search_runs([experiments[0].experiment_id])
    assert {r.info.run_id for r in runs} == ids and len(runs) == 6
    for run in runs:
        assert run.info.status == "FINISHED"
        n = int(run.data.tags["seed"])
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2, 3, 4, 5]
        assert run.data.params["jena.n"] == str(n)


def test_store_lock_sits_beside_a_sqlite_store_only(tmp_path):
    assert _lock_path("http://127.0.0.1:5000") is None
    assert _lock_path(f"sqlite:///{tmp_path}/mlflow.db") == tmp_path / "mlflow.db.lock"


# --- Faults of the store (issue 13): one line naming the store and the fix, bounded waits,
# nothing written. The naive stage runs for real, in a folder of its own, on tiny data.

SECRET = "s3cr3t"


@pytest.fixture(scope="module")
def naive_dir(tmp_path_factory) -> Path:
    """A folder the naive stage can run in: params.yaml, prepared Jena data, window spec."""
    from rnnlab.data.jena import normalize_jena
    from rnnlab.data.synthetic import write_jena_csv
    from rnnlab.data.windows import make_window_spec, save_spec

    base = tmp_path_factory.mktemp("naive")
    write_jena_csv(base / "jena.csv", rows=1200, seed=3)
    stats = normalize_jena(base / "jena.csv", base / "prepared", train_rows=(0, 600),
                           target="T (degC)", wind_sentinel_fill=None)
    save_spec(make_window_spec(n_rows=stats.n_rows, lookback=60, step=6, delay=12,
                               target_index=stats.target_index,
                               splits={"train": (0, 600), "val": (601, 900),
                                       "test": (901, None)}), base / "windows")
    (base / "jena.csv").unlink()
    shutil.copy(ROOT / "params.yaml", base / "params.yaml")
    return base


@pytest.fixture(scope="module")
def with_store(naive_dir, tmp_path_factory) -> Path:
    """``naive_dir`` with a real SQLite store holding rnnlab-jena, as an earlier run left it."""
    folder = Path(shutil.copytree(naive_dir, tmp_path_factory.mktemp("store") / "stage"))
    experiment_id("rnnlab-jena", folder)
    return folder


def files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def run_naive_stage(folder: Path, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """stages/naive.py in ``folder`` (its own repository root: no .git, no .dvc)."""
    began = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "naive.py"), "prepared",
                           "windows", "metrics/naive.json"], cwd=folder,
                          env=env_for_tools() | env, capture_output=True, text=True, timeout=120)
    return proc, time.monotonic() - began


def assert_one_line_and_nothing_written(proc, folder: Path, before: set[str], *words: str):
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for word in words:
        assert word in lines[0]
    assert files(folder) == before, "the failed stage left files behind"


@contextmanager
def silent_server():
    """A loopback port that accepts connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]      # nothing listens there once the socket is closed


@pytest.mark.hostile
@pytest.mark.parametrize("server", ["refused", "silent"])
def test_unreachable_tracking_server_fails_in_one_bounded_line(naive_dir, tmp_path, server):
    """MLflow's own waits (about 250 s refused, forever silent, then 118 lines) are
    shortened. The refused port runs on the defaults (HTTP_WAIT_DEFAULTS); the silent
    server on a 2 s timeout the user set, which wins (the defaults' 3 x 5 s took 20 s
    here: too long for the suite)."""
    folder = Path(shutil.copytree(naive_dir, tmp_path / "stage"))
    before = files(folder)
    env = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "2"} if server == "silent" else {}
    with (silent_server() if server == "silent" else nullcontext(closed_port())) as port:
        uri = f"http://user:{SECRET}@127.0.0.1:{port}"
        proc, seconds = run_naive_stage(folder, MLFLOW_TRACKING_URI=uri, **env)
    reason = ("the connection was refused; 3 tries" if server == "refused" else
              "no answer within MLFLOW_HTTP_REQUEST_TIMEOUT=2 s; 3 tries")
    assert_one_line_and_nothing_written(
        proc, folder, before, f"MLflow tracking server http://***@127.0.0.1:{port}", reason,
        "start the server", "unset MLFLOW_TRACKING_URI")
    assert SECRET not in proc.stderr + proc.stdout
    assert seconds < 60, f"{seconds:.0f} s: the wait is not bounded"


@pytest.mark.hostile
def test_server_waits_default_to_short_ones_unless_set():
    """An entry point's set-up shortens MLflow's waits unless the user set them; importing
    the tracking module alone changes nothing of the environment."""
    names = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
             "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_DISABLE_TELEMETRY")
    imported = subprocess.run(
        [sys.executable, "-c", "import os, rnnlab.tracking.store, rnnlab.lecture.experiment; "
         f"print([n for n in {names!r} if n in os.environ])"],
        env={k: v for k, v in env_for_tools().items() if k not in names},
        capture_output=True, text=True, timeout=60, check=True)
    assert imported.stdout.strip() == "[]"
    code = ("import os; from rnnlab.core.process import configure_process; configure_process(); "
            "print(os.environ['MLFLOW_HTTP_REQUEST_TIMEOUT'], "
            "os.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES'], "
            "os.environ['MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR'])")
    unset = subprocess.run([sys.executable, "-c", code], env=env_for_tools(),
                           capture_output=True, text=True, timeout=60, check=True)
    assert unset.stdout.split() == ["5", "2", "1"]
    mine = subprocess.run([sys.executable, "-c", code], env=env_for_tools() | {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7"},
        capture_output=True, text=True, timeout=60, check=True)
    assert mine.stdout.split() == ["60", "7", "1"]


@contextmanager
def read_only(path: Path):
    """Make ``path`` unwritable for this process for real: ``chmod a-w``, or for root (whom
    permissions do not stop) the immutable attribute, which stops root too."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i: no way to make a file read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.hostile
@pytest.mark.parametrize("what", ["file", "folder"])
def test_read_only_store_fails_in_one_line(with_store, tmp_path, what):
    """The read-only file through the real stage; the read-only folder through the library
    call the stage makes (a second stage start would cost the suite another 10 s)."""
    folder = Path(shutil.copytree(with_store, tmp_path / "stage"))
    db = folder / "mlflow.db"
    before = files(folder)
    if what == "file":
        with read_only(db):
            proc, _ = run_naive_stage(folder)
        assert_one_line_and_nothing_written(proc, folder, before, f"MLflow store {db}",
                                            "is read-only", "writable")
        return
    with read_only(folder), pytest.raises(TrackingError) as info:
        with tracked_run(experiment="rnnlab-jena", run_name="naive", params={}, tags={},
                         root=folder):
            pass
    assert str(info.value) == (
        f"MLflow store {db} cannot be written (unable to open database file): its folder "
        f"{folder} is read-only or missing, and SQLite writes a journal beside the file: make "
        "the folder writable for this user, or point MLFLOW_TRACKING_URI at a writable store")
    assert files(folder) == before


@pytest.mark.hostile
def test_locked_store_is_one_line(with_store, tmp_path):
    """A real "database is locked" from SQLite on a real MLflow store while another
    connection holds the write lock. (A stage first waits MLflow's busy_timeout, 20 s: too
    long for the suite, so the error is raised here by a connection that does not wait.)"""
    from mlflow.tracking import MlflowClient

    folder = Path(shutil.copytree(with_store, tmp_path / "stage"))
    uri = tracking_uri(folder)
    holder = sqlite3.connect(folder / "mlflow.db", timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        sqlite3.connect(folder / "mlflow.db", timeout=0).execute("SELECT 1 FROM runs")
    except sqlite3.OperationalError as e:
        locked = e
    finally:
        holder.rollback()
        holder.close()
    assert "database is locked" in str(locked)
    with pytest.raises(TrackingError) as info:
        with store_errors(uri):
            raise locked
    assert str(info.value) == (f"MLflow store {folder / 'mlflow.db'} is locked by another "
                               "process (database is locked): let that process finish or "
                               "stop it, then rerun")
    assert MlflowClient(uri).get_experiment_by_name("rnnlab-jena")   # unlocked, it works


@pytest.mark.hostile
def test_errors_of_the_code_inside_a_run_are_not_taken_for_store_errors(tmp_path):
    with pytest.raises(PermissionError):
        with store_errors(tracking_uri(tmp_path)):
            raise PermissionError(13, "attempt to write a readonly database")


KILLED_WORKER = """
import os, signal, sys
from pathlib import Path
from rnnlab.tracking.store import tracked_run
root, name = Path(sys.argv[1]), sys.argv[2]
with tracked_run(experiment="rnnlab-jena", run_name=name, params={"epochs": 3}, tags={},
                 root=root, claim=root / "checkpoints" / f"{name}.run.json") as run:
    run.log_metrics({"epoch/val_loss": 0.5}, step=1)
    print(run.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)       # kill -9 mid-run: no chance to end the run
"""


@pytest.mark.hostile
def test_runs_killed_with_sigkill_are_marked_killed_by_the_next_attempt(with_store, tmp_path,
                                                                        monkeypatch):
    """gru is killed with kill -9 inside its run; naive starts (and sweeps gru's claim:
    a stage restored from DVC's run cache may never run again) and is killed too; naive
    runs again and marks its own predecessor. A claim whose process lives is left alone."""
    import socket

    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = Path(shutil.copytree(with_store, tmp_path / "stage"))
    claims = root / "checkpoints"
    client = MlflowClient(tracking_uri(root))

    def killed_attempt(name: str) -> str:
        proc = subprocess.run([sys.executable, "-c", KILLED_WORKER, str(root), name],
                              env=env_for_tools(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == -9, proc.stderr[-2000:]
        return proc.stdout.split()[0]

    gru = killed_attempt("gru")
    assert client.get_run(gru).info.status == "RUNNING"
    live = client.create_run(experiment_id("rnnlab-jena", root)).info.run_id
    (claims / "lstm.run.json").write_text(json.dumps({
        "run_id": live, "store": _digest(tracking_uri(root)), "pid": os.getpid(),
        "host": socket.gethostname()}))
    naive = killed_attempt("naive")
    assert client.get_run(gru).info.status == "KILLED"
    assert client.get_run(naive).info.status == "RUNNING"

    with tracked_run(experiment="rnnlab-jena", run_name="naive", params={"epochs": 3},
                     tags={}, root=root, claim=claims / "naive.run.json") as run:
        assert client.get_run(naive).info.status == "KILLED"
    new = client.get_run(run.id)
    assert new.info.status == "FINISHED" and new.data.tags["interrupted_run_id"] == naive
    assert "interrupted_run_id" not in client.get_run(naive).data.tags   # gru's was swept
    assert client.get_run(live).info.status == "RUNNING"
    assert sorted(p.name for p in claims.iterdir()) == ["lstm.run.json"]


@pytest.mark.hostile
def test_a_run_that_fails_is_failed_and_leaves_no_claim(with_store, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = Path(shutil.copytree(with_store, tmp_path / "stage"))
    claim = root / "checkpoints" / "naive.run.json"
    with pytest.raises(ZeroDivisionError):
        with tracked_run(experiment="rnnlab-jena", run_name="naive", params={}, tags={},
                         root=root, claim=claim) as run:
            assert claim.exists()
            raise ZeroDivisionError("the stage fails")
    assert MlflowClient(tracking_uri(root)).get_run(run.id).info.status == "FAILED"
    assert not (root / "checkpoints").exists()


@pytest.mark.hostile
def test_the_runs_command_on_a_refused_server_is_one_line(tmp_path, monkeypatch, capsys):
    from rnnlab.tracking import runs

    port = closed_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:{SECRET}@127.0.0.1:{port}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        runs.main([])
    assert str(info.value).startswith(f"error: MLflow tracking server http://***@127.0.0.1:{port} "
                                      "is not answering (the connection was refused")
    assert SECRET not in str(info.value) + capsys.readouterr().out


# --- Second round (hostile inputs): a damaged store, a web page for a server, PostgreSQL's
# driver and waits, a run whose end the store refuses.

@pytest.mark.hostile
def test_a_truncated_store_is_one_line_naming_the_file_and_the_fix(with_store, tmp_path,
                                                                   monkeypatch):
    """A real store cut to half its bytes (random bytes give "file is not a database"):
    SQLite's "malformed" became a page of SQLAlchemy traceback. The file is left as it is."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    folder = Path(shutil.copytree(with_store, tmp_path / "stage"))
    db = folder / "mlflow.db"
    os.truncate(db, db.stat().st_size // 2)
    cut, before = db.read_bytes(), files(folder)
    with pytest.raises(TrackingError) as info:
        with tracked_run(experiment="rnnlab-jena", run_name="naive", params={}, tags={},
                         root=folder):
            pass
    assert str(info.value) == (
        f"MLflow store {db} is damaged (database disk image is malformed): move it aside "
        f"(mv {db} {db}.damaged) and MLflow makes a new, empty one at the next run, or point "
        "MLFLOW_TRACKING_URI at a writable store")
    assert files(folder) == before and db.read_bytes() == cut


@contextmanager
def sign_in_page_server():
    """A loopback HTTP server that answers 200 with an HTML sign-in page on every path."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    page = (b"<!DOCTYPE html><html><head><title>Sign in</title></head><body><form "
            b"method='post'><input name='user'><input name='password' type='password'>"
            b"</form></body></html>")

    class SignIn(BaseHTTPRequestHandler):
        def answer(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        do_GET = do_POST = do_PATCH = do_DELETE = answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SignIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.hostile
def test_a_server_answering_with_a_sign_in_page_is_one_line(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI at a proxy's sign-in page (HTTP 200, HTML): MLflow's "not in a
    valid JSON format" traceback before; one line, at once, the password redacted."""
    with sign_in_page_server() as port:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:{SECRET}@127.0.0.1:{port}")
        began = time.monotonic()
        with pytest.raises(TrackingError) as info:
            with tracked_run(experiment="rnnlab-jena", run_name="naive", params={}, tags={},
                             root=tmp_path):
                pass
    assert str(info.value).startswith(
        f"MLflow tracking server http://***@127.0.0.1:{port} does not answer as an MLflow "
        "server (HTTP 200 with a web page, not MLflow's JSON: a sign-in page, or another "
        "service at that address): check the URI's host, port and path")
    assert "unset MLFLOW_TRACKING_URI" in str(info.value) and "\n" not in str(info.value)
    assert SECRET not in str(info.value)
    assert time.monotonic() - began < 30
    assert list(tmp_path.iterdir()) == []


@pytest.mark.hostile
@pytest.mark.parametrize("installed", [("psycopg", "psycopg2"), ("psycopg2",), ()])
def test_a_bare_postgresql_uri_gets_the_driver_that_is_installed(monkeypatch, tmp_path,
                                                                  installed):
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3: with psycopg2 alone (the team extra)
    it failed on a missing psycopg. psycopg2 is named then; neither installed: one line
    naming both, before any connection."""
    from rnnlab.tracking import store

    monkeypatch.setattr(store, "_installed", lambda module: module in installed)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"postgresql://mlflow:{SECRET}@db.example:5432/mlflow")
    uri = tracking_uri(tmp_path)
    if installed == ("psycopg2",):
        assert uri == f"postgresql+psycopg2://mlflow:{SECRET}@db.example:5432/mlflow"
        return
    assert uri == f"postgresql://mlflow:{SECRET}@db.example:5432/mlflow"
    if installed:
        return
    with pytest.raises(TrackingError) as info:
        with tracked_run(experiment="rnnlab-jena", run_name="naive", params={}, tags={},
                         root=tmp_path):
            pass
    assert str(info.value).startswith(
        "MLflow store postgresql://***@db.example:5432/mlflow needs a PostgreSQL driver and "
        "neither psycopg (3) nor psycopg2 is installed: install rnnlab's team extra")
    assert SECRET not in str(info.value)


@pytest.mark.hostile
@pytest.mark.parametrize("server", ["refused", "silent"])
def test_an_unreachable_postgresql_store_is_one_bounded_line(tmp_path, monkeypatch, server):
    """A PostgreSQL store that refuses (MLflow retried for 100 s, then a traceback) or never
    answers (PGCONNECT_TIMEOUT=2 set by the user; 5 s by default): one line within seconds."""
    pytest.importorskip("psycopg2")
    if server == "silent":
        monkeypatch.setenv("PGCONNECT_TIMEOUT", "2")
    with (silent_server() if server == "silent" else nullcontext(closed_port())) as port:
        monkeypatch.setenv("MLFLOW_TRACKING_URI",
                           f"postgresql://mlflow:{SECRET}@127.0.0.1:{port}/mlflow")
        began = time.monotonic()
        with pytest.raises(TrackingError) as info:
            with tracked_run(experiment="rnnlab-jena", run_name="naive", params={}, tags={},
                             root=tmp_path):
                pass
        seconds = time.monotonic() - began
    text = str(info.value)
    assert text.startswith(f"MLflow store postgresql+psycopg2://***@127.0.0.1:{port}/mlflow "
                           "is not answering (")
    assert ("Connection refused" if server == "refused" else "timeout expired") in text
    assert "start the database server" in text and "\n" not in text and SECRET not in text
    assert seconds < 15, f"{seconds:.0f} s: the wait is not bounded"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.hostile
def test_a_failed_run_whose_end_the_store_refuses_ends_failed_at_the_next_run(
        with_store, tmp_path, monkeypatch, caplog):
    """A disk that fills mid-training fails the stage and the store's write of the run's end
    alike: MLflow's end raised the store's error in place of the stage's, the claim went and
    the run stayed RUNNING for good. Now the stage's error is raised, the claim kept marked
    FAILED, and the next tracked run (the disk freed) ends the run FAILED."""
    import errno

    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = Path(shutil.copytree(with_store, tmp_path / "stage"))
    claim = root / "checkpoints" / "gru.run.json"
    client = MlflowClient(tracking_uri(root))

    def disk_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    with pytest.raises(OSError) as info:
        with tracked_run(experiment="rnnlab-jena", run_name="gru", params={}, tags={},
                         root=root, claim=claim) as run:
            monkeypatch.setattr(MlflowClient, "set_terminated", disk_full)
            raise OSError(errno.ENOSPC, "No space left on device", "checkpoints/gru.pt")
    assert info.value.errno == errno.ENOSPC               # the stage's error, not the store's
    monkeypatch.undo()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert client.get_run(run.id).info.status == "RUNNING"
    assert json.loads(claim.read_text())["status"] == "FAILED"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(f"MLflow run {run.id} could not be marked FAILED (MLflow store "
                              f"{root / 'mlflow.db'} cannot be written: the disk is full")
    with tracked_run(experiment="rnnlab-jena", run_name="naive", params={}, tags={},
                     root=root, claim=root / "checkpoints" / "naive.run.json"):
        pass
    assert client.get_run(run.id).info.status == "FAILED"
    assert not (root / "checkpoints").exists()


# --- Third round (hostile inputs): what the environment says about MLflow, and Ctrl-C.

@pytest.mark.hostile
def test_a_leftover_mlflow_run_id_is_refused_before_any_run_is_touched(with_store, tmp_path):
    """MLflow's start_run resumes the run MLFLOW_RUN_ID names: a stage would rename another
    variant's run and mix their figures. One line, and that run as it was."""
    from mlflow.tracking import MlflowClient

    folder = Path(shutil.copytree(with_store, tmp_path / "stage"))
    uri = f"sqlite:///{folder}/mlflow.db"
    with tracked_run(experiment="rnnlab-jena", run_name="dense", params={"a": 1},
                     tags={"variant": "dense"}, root=folder) as other:
        other.log_metrics({"val_mae": 0.3}, step=1)
    before = files(folder)
    proc, _ = run_naive_stage(folder, MLFLOW_RUN_ID=other.id, MLFLOW_TRACKING_URI=uri)
    assert_one_line_and_nothing_written(proc, folder, before, f"MLFLOW_RUN_ID={other.id}",
                                        "unset MLFLOW_RUN_ID")
    run = MlflowClient(uri).get_run(other.id)
    assert (run.info.run_name, run.data.tags["variant"]) == ("dense", "dense")
    assert set(run.data.metrics) == {"val_mae"}


@pytest.mark.hostile
@pytest.mark.parametrize(("uri", "says"), [
    ("mlflow.db", "is a folder or file path"),
    ("file:///tmp/mlruns", "is a folder or file path"),
    ("ftp://127.0.0.1/x", "ftp:// is not a store"),
    ("sqlite:///", "names no database file"),
    ("http://127.0.0.1:99999", "its port is not a number"),
    ("http:/127.0.0.1:5000", "names no host"),
])
def test_a_tracking_uri_mlflow_cannot_use_is_one_line(naive_dir, tmp_path, monkeypatch, uri,
                                                      says):
    """Each of these gave MLflow's page of traceback (the file store in maintenance mode, an
    unknown scheme, an empty SQLite path, a bad port or host). Each is one TrackingError
    line; the first also through the naive stage (exit 1, that line, nothing written)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(TrackingError) as caught:
        tracking_uri(tmp_path)
    line = str(caught.value)
    assert "\n" not in line and line.startswith(f"MLFLOW_TRACKING_URI={uri}")
    assert says in line and "unset MLFLOW_TRACKING_URI" in line
    if uri == "mlflow.db":
        folder = Path(shutil.copytree(naive_dir, tmp_path / "stage"))
        before = files(folder)
        proc, _ = run_naive_stage(folder, MLFLOW_TRACKING_URI=uri)
        assert_one_line_and_nothing_written(proc, folder, before, line)


@pytest.mark.hostile
def test_a_server_wait_that_is_no_whole_number_is_one_line(naive_dir, tmp_path):
    folder = Path(shutil.copytree(naive_dir, tmp_path / "stage"))
    before = files(folder)
    proc, _ = run_naive_stage(folder, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{closed_port()}",
                              MLFLOW_HTTP_REQUEST_TIMEOUT="5s")
    assert_one_line_and_nothing_written(proc, folder, before,
                                        "MLFLOW_HTTP_REQUEST_TIMEOUT='5s'", "whole number")


@pytest.mark.hostile
def test_ctrl_c_in_a_stage_ends_its_run_killed_in_one_line(with_store, tmp_path):
    """SIGINT while the naive stage's run is open: the run ends KILLED (not FAILED), the
    stage prints one line and exits 130, and writes no metrics file."""
    import signal

    from mlflow.tracking import MlflowClient

    folder = Path(shutil.copytree(with_store, tmp_path / "stage"))
    uri = f"sqlite:///{folder}/mlflow.db"
    # The stage's own code, with a pause inside its run so the signal lands there.
    # A shell that starts the suite in the background (`cmd &`) passes SIGINT on ignored,
    # and Python then never raises KeyboardInterrupt: the handler a terminal would give.
    code = ("import os, runpy, signal, sys, time; import rnnlab.tracking.store as s; "
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "def slow(self, *a, **k):\n"
            "    print('in-run', flush=True); time.sleep(60)\n"
            "s.Run.log_metrics = slow\n"
            f"sys.argv = ['naive.py', 'prepared', 'windows', 'metrics/naive.json']\n"
            f"sys.path.insert(0, {str(ROOT / 'stages')!r})\n"
            f"runpy.run_path({str(ROOT / 'stages' / 'naive.py')!r}, run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=folder, text=True,
                            env=env_for_tools() | {"MLFLOW_TRACKING_URI": uri},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "in-run", proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), err[-3000:]
    assert not (folder / "metrics" / "naive.json").exists()
    runs = MlflowClient(uri).search_runs([experiment_id("rnnlab-jena", folder)],
                                         filter_string="tags.variant = 'naive'")
    assert [r.info.status for r in runs] == ["KILLED"]


# --- The tools outside a repository, on a port in use, into a pipe closed early.

NOT_A_REPOSITORY = {
    "an empty folder": ((), ""),
    # what the plots tool left outside a clone before: later tools took it for a root
    "a stray .dvc": ((".dvc/tmp",), ""),
    "a git repository of something else": ((".git", "notebooks"), "notebooks"),
}


def tool(folder: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    """A console script of this venv run in ``folder``."""
    return subprocess.run([str(Path(sys.executable).parent / argv[0]), *argv[1:]], cwd=folder,
                          env=env_for_tools() | env, capture_output=True, text=True, timeout=120)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.hostile
@pytest.mark.parametrize("layout", NOT_A_REPOSITORY)
@pytest.mark.parametrize("argv", [["rnnlab-runs"], ["rnnlab-ui"], ["rnnlab-plots", "show"],
                                  ["rnnlab-demo"]], ids=lambda argv: argv[0])
def test_the_tools_outside_a_repository_refuse_in_one_line(tmp_path, argv, layout):
    """Outside a clone the tools took the folder for the repository: an empty store and
    table (exit 0), a UI over it, a `.dvc/tmp` written there, the demo's data written and
    then a traceback. One line now, nothing written."""
    folders, inner = NOT_A_REPOSITORY[layout]
    for name in folders:
        (tmp_path / name).mkdir(parents=True)
    before = listing(tmp_path)
    proc = tool(tmp_path / inner, *argv)
    where = ("above it" if layout != "a git repository of something else"
             else f"in {tmp_path}, the repository holding it")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {tmp_path / inner} is not inside an rnnlab repository (no dvc.yaml and "
        f"params.yaml {where}); run this from your clone"]
    assert proc.stdout == "" and listing(tmp_path) == before


def bare_repository(folder: Path) -> Path:
    """The files that make ``folder`` an rnnlab repository to the tools."""
    (folder / ".dvc").mkdir()
    (folder / "dvc.yaml").write_text("stages: {}\n")
    (folder / "params.yaml").write_text("seed: 1\n")
    return folder


@pytest.mark.hostile
@pytest.mark.parametrize("how", ["--port", "PORT="])
def test_the_ui_on_a_port_in_use_is_one_line(tmp_path, how):
    """A port in use printed the UI's links to it, then MLflow's `[Errno 98]` amid its INFO
    lines, and exit 0. The port is tried first now: one line, no link, no store made."""
    repo = bare_repository(tmp_path)
    before = listing(repo)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = (tool(repo, "rnnlab-ui", "--port", str(port)) if how == "--port"
                else tool(repo, "rnnlab-ui", PORT=str(port)))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: port {port} on 127.0.0.1 cannot be listened on (Address already in use): "
        "stop what listens there, or choose another with --port or PORT="]
    assert proc.stdout == "" and listing(repo) == before


def into_closed_pipe(folder: Path, *argv: str) -> subprocess.CompletedProcess:
    """A console script whose reader is gone before it writes (``| head`` that has read
    its lines, at once)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([str(Path(sys.executable).parent / argv[0]), *argv[1:]],
                              cwd=folder, env=env_for_tools(), stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)


@pytest.mark.hostile
def test_the_runs_listing_into_a_pipe_closed_early_ends_quietly(tmp_path):
    """`rnnlab-runs --links | head -3` ended in a BrokenPipeError traceback, exit 1; now it
    stops quietly, 141 as a command killed by SIGPIPE."""
    proc = into_closed_pipe(bare_repository(tmp_path), "rnnlab-runs", "--links")
    assert proc.returncode == 141, proc.stderr[-3000:]
    assert "Error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_a_sweeps_summary_says_when_its_points_ran_on_other_data(tmp_path, capsys):
    """Points of one variant and commit that differ in the data only (the demo's generated
    reviews beside the real ones) read as differing "in no param"; the data's digest is a
    tag, and the summary now names it. Points alike in both read as reruns of one setup."""
    from mlflow.tracking import MlflowClient

    from rnnlab.tracking import runs

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("rnnlab-imdb")
    for variant, point, md5 in [("imdb_lstm", "workspace", "real"), ("imdb_lstm", "demo", "gen"),
                                ("imdb_dense", "workspace", "gen"), ("imdb_dense", "demo", "gen")]:
        run = client.create_run(experiment, tags={"variant": variant, "git_commit": "abc1234",
                                                  "dvc_exp_name": point, "data_md5": md5})
        client.log_param(run.info.run_id, "imdb.maxlen", "500")
        client.set_terminated(run.info.run_id)
    found = runs.sweeps(uri)
    runs.show(uri, [], found, "")
    lines = [line for line in capsys.readouterr().out.splitlines() if "@ abc1234" in line]
    assert lines == [
        "imdb_dense @ abc1234 (rnnlab-imdb), 2 points: workspace, demo; they differ in no "
        "param nor data: reruns of one setup (a change this variant ignores)",
        "imdb_lstm @ abc1234 (rnnlab-imdb), 2 points: workspace, demo; they differ in the "
        "data (tag data_md5)"], lines
