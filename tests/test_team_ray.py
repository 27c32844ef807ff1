"""Sweeps on Ray (`python -m rnnlab.tools.raysweep`) on a real local Ray cluster: a head and one
more worker node on loopback, a bare git repository as the shared git remote, a
local-directory DVC remote and an MLflow tracking server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from _project import SMALL_JENA, TRAIN_CAPS, env_for_tools, project_copy, set_params, sh
from _servers import mlflow_server, need_postgres, postgres_cluster

SRC = Path(__file__).resolve().parents[1] / "src"
# Ray 2.60 turns token authentication on for a new cluster when ~/.ray/auth_token exists
# (a local `ray.init()` writes one), and a node joining with `--address` then fails
# (InvalidAuthToken): the test cluster says what it wants whatever the machine holds.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """End ``proc`` (started in a session of its own) and whatever is left in its session:
    by process id, never by name, so other Ray clusters on this machine stay up."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == proc.pid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@contextmanager
def ray_cluster():
    """`ray start --head` with 1 CPU and one more node (`ray start --address`) with 1 CPU,
    on loopback, in a temp dir of their own; yields the head's address. Each `ray start
    --block` holds its node's processes in its own session: `stop` ends exactly those."""
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = env_for_tools() | RAY_ENV
    common = ["--num-cpus", "1", "--object-store-memory", str(80 * 2**20), "--block",
              "--temp-dir", str(temp), "--node-ip-address", "127.0.0.1",
              "--disable-usage-stats"]
    ray = str(Path(sys.executable).parent / "ray")
    nodes = []

    def start(*args: str) -> None:
        log = open(temp / f"node{len(nodes)}.log", "w")
        ports = ["--dashboard-agent-listen-port", str(free_port())]
        nodes.append(subprocess.Popen([ray, "start", *args, *common, *ports], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))

    def wait_started() -> None:      # `ray start` prints this once its node is up
        log = temp / f"node{len(nodes) - 1}.log"
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert nodes[-1].poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

    # The Ray Client server (on 10001 unless told) comes with `ray[client]` only; the team
    # extra's plain `ray` has none, and refuses the option.
    from ray._private.utils import get_ray_client_dependency_error
    client = [] if get_ray_client_dependency_error() else [
        "--ray-client-server-port", str(free_port())]
    try:
        start("--head", "--port", str(port), "--include-dashboard=false",
              "--dashboard-port", str(free_port()), *client)
        wait_started()
        start("--address", address)
        wait_started()
        yield address
    finally:
        for node in reversed(nodes):
            stop(node)
        shutil.rmtree(temp, ignore_errors=True)


def sweep(repo: Path, address: str, tracking: str, *args: str) -> subprocess.CompletedProcess:
    return sh(repo, sys.executable, "-m", "rnnlab.tools.raysweep", "--address", address, *args,
              check=False, env=RAY_ENV | {"MLFLOW_TRACKING_URI": tracking, "PYTHONPATH": str(SRC)})


def shared_project(base: Path, small_jena_zip) -> Path:
    """A project copy on tiny params, committed and pushed to a bare repository
    (``base/shared.git``) with its data stages' dvc.lock, and a local-directory DVC remote
    (``base/dvc-remote``) that holds their outputs and run records; the data's source is
    then deleted, so that pulling is the only way to it."""
    repo = project_copy(base / "first")
    source = base / "jena.zip"
    shutil.copy(small_jena_zip[0], source)
    set_params(repo, data__jena__url=source.as_uri(), data__jena__md5=small_jena_zip[1],
               **TRAIN_CAPS, **{f"jena__{k}": v for k, v in SMALL_JENA.items()})
    sh(base, "git", "init", "-q", "--bare", "shared.git")
    sh(repo, "git", "init", "-q", "-b", "main")
    sh(repo, "dvc", "remote", "add", "-d", "shared", str(base / "dvc-remote"))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny params, the shared DVC remote")
    sh(repo, "git", "remote", "add", "origin", str(base / "shared.git"))
    sh(repo, "git", "push", "-q", "origin", "main")
    sh(base / "shared.git", "git", "symbolic-ref", "HEAD", "refs/heads/main")
    sh(repo, "dvc", "repro", "windows_jena")
    # dvc.lock goes to the git remote, as the team workflow does (docs/teams.md): the
    # downloads' outs are persist: true, so no run-cache record restores them; a point
    # pulls them as dvc.lock records them.
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "the data stages' lock")
    sh(repo, "git", "push", "-q", "origin", "main")
    sh(repo, "dvc", "push", "--run-cache")
    source.unlink()
    return repo


def table(out: str) -> list[list[str]]:
    """The rows of the sweep's summary table, split on spaces."""
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("point  params")) + 1
    rows = []
    for line in lines[first:]:
        if not line.split()[:1] or not line.split()[0].isdigit() or "  " not in line:
            break
        rows.append(line.split())
    return rows


def shown_experiments(repo: Path) -> dict[str, dict]:
    """name -> params.yaml of each experiment `dvc exp show` lists."""
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    return {rev["name"]: rev["data"]["params"]["params.yaml"]["data"]
            for baseline in shown for exp in baseline.get("experiments") or []
            for rev in exp["revs"]}


def test_sweep_on_a_two_node_ray_cluster(tmp_path, small_jena_zip):
    """A 3 x 2 grid on one Jena variant, one value of which fails the stage: the four
    good points finish and are shared (a second clone pulls and lists them, the server
    holds their four FINISHED runs), the two bad ones are reported with their logs, and
    the command exits non-zero. Rerun, the finished points are not run again; a --name
    the commit already has on the remote and a dirty workspace are refused."""
    pytest.importorskip("ray", reason="the `team` extra: pip install -e '.[team]'")
    need_postgres()
    grid = ["-S", "models.gru_dropout.dropout=0.1,0.3", "-S", "models.gru_dropout.units=[4],[8]",
            "train@gru_dropout"]
    t0 = time.monotonic()
    with ThreadPoolExecutor(1) as pool:      # the project while the servers start
        project = pool.submit(shared_project, tmp_path, small_jena_zip)
        with postgres_cluster(tmp_path) as db, \
                mlflow_server(db, tmp_path / "artifacts") as uri, ray_cluster() as address:
            repo = project.result()
            check_sweep(repo, tmp_path, address, uri, grid, t0)
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text() + "\n")
    dirty = sweep(repo, "127.0.0.1:1", "http://127.0.0.1:1", *grid)
    assert dirty.returncode == 2 and "uncommitted changes to tracked files: params.yaml" \
        in dirty.stderr, dirty.stderr


def check_sweep(repo: Path, tmp_path: Path, address: str, uri: str, grid: list[str],
                t0: float) -> None:
    from mlflow.tracking import MlflowClient

    started = time.monotonic()
    print(f"project, tracking server and Ray cluster ready in {started - t0:.1f} s")
    bad = ["-S", "models.gru_dropout.dropout=0.1,0.3,1.5", *grid[2:]]
    run = sweep(repo, address, uri, *bad)
    print(f"the 6-point sweep took {time.monotonic() - started:.1f} s\n{run.stdout}")
    out = run.stdout
    assert run.returncode == 1, out + run.stderr
    rows = table(out)
    assert [r[-3] for r in rows] == ["ok"] * 4 + ["failed"] * 2, out
    good = {r[-1]: (float(r[1].split("=")[1]), r[2].split("=")[1]) for r in rows[:4]}
    assert sorted(good.values()) == [(0.1, "[4]"), (0.1, "[8]"), (0.3, "[4]"), (0.3, "[8]")]
    assert out.count("models.gru_dropout.dropout: 1.5 is not in [0, 1)") >= 2, out
    assert "1 thread(s)" in out and "2 of 6 points failed" in out
    assert not (tmp_path / "jena.zip").exists()          # the data came from the remote

    # A second clone of the shared repository sees the four experiments.
    other = tmp_path / "second"
    sh(tmp_path, "git", "clone", "-q", str(tmp_path / "shared.git"), str(other))
    sh(other, "dvc", "exp", "pull", "origin")
    shown = shown_experiments(other)
    assert set(shown) == set(good)
    refs = dict(line.rsplit("/", 1)[1].split() for line in sh(
        other, "git", "for-each-ref", "--format=%(refname) %(objectname)",
        "refs/exps").stdout.splitlines())
    for name, (dropout, units) in good.items():
        spec = shown[name]["models"]["gru_dropout"]
        assert (spec["dropout"], spec["units"]) == (dropout, yaml.safe_load(units))
        lock = yaml.safe_load(sh(other, "git", "show", f"{refs[name]}:dvc.lock").stdout)
        (model,) = [o for o in lock["stages"]["train@gru_dropout"]["outs"]
                    if o["path"] == "models/gru_dropout.pt"]
        md5 = model["md5"]
        assert (other / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).is_file()

    # The server holds one FINISHED run per good point, with its params.
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("rnnlab-jena").experiment_id])
    assert sorted(r.data.tags["dvc_exp_name"] for r in runs) == sorted(good)
    for r in runs:
        dropout, units = good[r.data.tags["dvc_exp_name"]]
        assert r.info.status == "FINISHED" and r.data.tags["variant"] == "gru_dropout"
        assert r.data.params["model.dropout"] == str(dropout)
        assert r.data.params["model.units"] == units   # as params.yaml writes it: [8]
        assert r.data.params["threads"] == "1"

    # The same grid again: every point is on the remote, nothing runs (no Ray at all).
    again = sweep(repo, address, uri, *grid)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already on the git remote") == 4
    assert [r[-2] for r in table(again.stdout)] == ["exists"] * 4
    # --name NAME: an existing NAME-1 of the commit is another grid's, and refused.
    commit = sh(repo, "git", "rev-parse", "HEAD").stdout.strip()
    sh(tmp_path / "shared.git", "git", "update-ref",
       f"refs/exps/{commit[:2]}/{commit[2:]}/mine-1", commit)
    named = sweep(repo, address, uri, "--name", "mine", *grid)
    assert named.returncode == 2 and "experiments mine-1 of commit" in named.stderr, named.stderr
    print(f"the whole check took {time.monotonic() - t0:.1f} s")


def test_without_ray_one_line_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"      # `import ray` -> ImportError
            "from rnnlab.tools.raysweep import main; sys.exit(main(['-S', 'seed=1,2']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env=env_for_tools() | {"PYTHONPATH": str(SRC)})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "rnnlab.tools.raysweep needs Ray: pip install -e '.[team]'"


# --- credentials in a remote's URL: never printed or written (no Ray cluster needed) ------

SECRET = "hunter2"


def closed_port_url() -> str:
    """A git remote with credentials on a loopback port nothing listens on: refused at once."""
    return f"https://alice:{SECRET}@127.0.0.1:{free_port()}/team/shared.git"


@pytest.mark.hostile
def test_an_unreachable_git_remote_is_one_line_without_its_password(tmp_path):
    """git hides the password in its own text; the line used to put git's arguments, the
    URL as given, in front of it."""
    sh(tmp_path, "git", "init", "-q", "-b", "main")
    sh(tmp_path, "git", "commit", "-q", "--allow-empty", "-m", "one commit")
    url = closed_port_url()
    code = ("import sys, types; sys.modules['ray'] = types.ModuleType('ray')\n"   # no cluster
            "from rnnlab.tools.raysweep import main\n"
            f"sys.exit(main(['--git-remote', {url!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=env_for_tools() | {
                              "PYTHONPATH": str(SRC), "GIT_TERMINAL_PROMPT": "0"})
    assert proc.returncode == 2, proc.stderr
    shown = url.replace(f"alice:{SECRET}@", "***@")
    assert proc.stderr.startswith(f"error: git ls-remote {shown}: fatal: "), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert SECRET not in proc.stdout + proc.stderr


@pytest.mark.hostile
def test_a_points_log_its_tail_the_hint_and_the_log_file_hide_the_password(tmp_path,
                                                                             monkeypatch):
    """A point whose clone fails, run as a Ray task runs it (without Ray: one CPU): its log
    (the commands, with the remotes' URLs, and their output), the tail printed, the log
    file and the closing hint show ``***@``."""
    from rnnlab.tools import raysweep

    monkeypatch.setattr(raysweep, "_assigned_cpus", lambda: 1)
    url = closed_port_url()
    override = f"data.jena.url=https://bob:{SECRET}@mirror.invalid/jena.zip"
    point = {"name": "ray-12345678", "git_remote": url, "ref": None, "commit": "a" * 40,
             "dvc_remote": {"name": "shared", "url": f"s3://key:{SECRET}@bucket/dvc"},
             "targets": ["train@gru"], "overrides": [override],
             "env": {"GIT_TERMINAL_PROMPT": "0"}}
    result = raysweep.run_point(point)
    assert result["status"] == "failed"
    shown = url.replace(f"alice:{SECRET}@", "***@")
    assert result["log"][0] == f"$ git clone -q --no-checkout {shown} " + \
        result["log"][0].rsplit(" ", 1)[1]
    assert SECRET not in "\n".join(result["log"])

    # what the driver prints and writes, a worker's log or a dead worker's error alike
    logs = tmp_path / "logs"
    logs.mkdir()
    died = dict(result, log=result["log"] + [f"RayTaskError: clone of {url} lost"])
    lines = raysweep.point_report(1, 1, raysweep.Point(1, [override], point["name"]), died,
                                  logs)
    assert lines[0].startswith("[1/1] failed ray-12345678  data.jena.url=https://"
                               "***@mirror.invalid/jena.zip  ")
    assert lines[-2] == f"    | RayTaskError: clone of {shown} lost"
    raysweep.write_log(logs / "ray-12345678.log", died["log"])
    written = (logs / "ray-12345678.log").read_text()
    assert f"clone of {shown} lost" in written
    commit = "b" * 40
    assert raysweep.closing_hint(url, commit, None) == (
        f"to see them in a clone at commit bbbbbbb: dvc exp pull {shown} && dvc exp show")
    assert raysweep.closing_hint(url, commit, f"refs/rnnlab-sweeps/{commit}") == (
        f"to see them in any clone: dvc exp pull -A {shown} && dvc exp show --rev {commit}")
    assert SECRET not in "\n".join(lines) + written
