"""A team's set-up, for real: a throwaway PostgreSQL cluster, `mlflow server` on it with
artifacts served through it, a tiny `dvc repro` and a 2-worker queued sweep logging to it;
a local SQLite store copied into it; two clones sharing a DVC remote and a bare git remote.

One module-scoped project (a few cheap stages: the Jena data, `naive`, `gradients`,
`train@dense`, `train@gru_dropout`, the IMDB data, `train@imdb_dense`, `report`) serves
every test; PostgreSQL is queried directly (psycopg2) as well as through MLflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from _project import TRAIN_CAPS, run_queue, set_params, sh, small_project
from _servers import group_commands, mlflow_server, need_postgres, postgres_cluster
from conftest import serving

VARIANTS = {"dense": "jena", "gru_dropout": "jena", "imdb_dense": "imdb"}


@dataclass
class Team:
    repo: Path            # the first clone, `dvc repro`ed with the server as its store
    url: str              # MLFLOW_TRACKING_URI
    backend: str          # the server's PostgreSQL URI
    artifacts: Path       # the server's --artifacts-destination
    repro_s: float


@pytest.fixture(scope="module")
def team(tmp_path_factory, small_jena_zip):
    need_postgres()
    base = tmp_path_factory.mktemp("team")
    with postgres_cluster(base) as backend, \
            mlflow_server(backend, base / "artifacts") as url, \
            serving(base / "served") as data_server:
        repo = small_project(base / "first", data_server, small_jena_zip)
        models = yaml.safe_load((repo / "params.yaml").read_text())["models"]
        set_params(repo, **TRAIN_CAPS, models={k: models[k] for k in VARIANTS})
        sh(repo, "git", "commit", "-qam", "a few cheap variants")
        started = time.monotonic()
        sh(repo, "dvc", "repro", env={"MLFLOW_TRACKING_URI": url})
        yield Team(repo, url, backend, base / "artifacts", time.monotonic() - started)


def query(backend: str, sql: str, *args) -> list[tuple]:
    import psycopg2

    dsn = backend.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        rows = cur.fetchall()
    conn.close()
    return rows


def server_runs(backend: str) -> dict[str, dict]:
    """Every active run in PostgreSQL: {run id: its experiment, name, status, artifact uri,
    params, tags, latest metrics}."""
    runs = {run_id: {"experiment": exp, "name": name, "status": status, "artifact_uri": uri}
            for run_id, exp, name, status, uri in query(
                backend, "SELECT r.run_uuid, e.name, r.name, r.status, r.artifact_uri FROM runs r "
                         "JOIN experiments e ON e.experiment_id = r.experiment_id "
                         "WHERE r.lifecycle_stage = 'active'")}
    for table, field in (("params", "params"), ("tags", "tags"), ("latest_metrics", "metrics")):
        for run in runs.values():
            run[field] = {}
        for run_id, key, value in query(backend, f"SELECT run_uuid, key, value FROM {table}"):
            if run_id in runs:
                runs[run_id][field][key] = value
    return runs


def test_repro_and_queued_sweep_log_to_the_server(team):
    """Every stage and both queue workers log to the server: every run FINISHED in
    PostgreSQL with its params, metrics, tags, and its artifacts in the server's folder."""
    repo = team.repo
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "tiny results")
    sh(repo, "dvc", "exp", "run", "--queue", "-S", "models.gru_dropout.dropout=0.1,0.3",
       "train@gru_dropout")
    status = run_queue(repo, env={"MLFLOW_TRACKING_URI": team.url})
    assert status.count("Success") == 2, status
    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json").stdout)
    sweep = {rev["name"]: rev["data"] for baseline in shown
             for exp in baseline.get("experiments") or [] for rev in exp["revs"]}
    assert len(sweep) == 2

    runs = server_runs(team.backend)
    by_variant: dict[str, list[dict]] = {}
    for run in runs.values():
        by_variant.setdefault(run["tags"]["variant"], []).append(run)
    assert sorted(by_variant) == sorted(["naive", "gradients", *VARIANTS])
    # the sweep's points are named apart: "<variant> (<experiment>)"
    assert sorted(r["name"] for r in by_variant["gru_dropout"]) == sorted(
        ["gru_dropout", *(f"gru_dropout ({name})" for name in sweep)])
    assert {r["status"] for r in runs.values()} == {"FINISHED"}
    assert len(runs) == 3 + len(VARIANTS) + 1        # the sweep's two gru_dropout runs
    kinds = dict(query(team.backend, "SELECT e.name, t.value FROM experiment_tags t JOIN "
                       "experiments e ON e.experiment_id = t.experiment_id "
                       "WHERE t.key = 'mlflow.experimentKind'"))
    assert kinds == {"rnnlab-jena": "custom_model_development",
                     "rnnlab-imdb": "custom_model_development"}

    from mlflow.tracking import MlflowClient
    client = MlflowClient(team.url)
    head_runs = [r for r in runs.values() if r["tags"]["dvc_exp_name"] == "workspace"]
    assert len(head_runs) == 3 + len(VARIANTS) - 1
    for run in runs.values():
        name, tags = run["tags"]["variant"], run["tags"]
        exp_name = tags["dvc_exp_name"]
        assert tags["mlflow.runName"] == (name if exp_name == "workspace"
                                          else f"{name} ({exp_name})")
        assert run["experiment"] == ("rnnlab-imdb" if name.startswith("imdb") else "rnnlab-jena")
        assert tags["seed"] == "1337" and len(tags["git_commit"]) == 40
        run_id = run["artifact_uri"].split("/")[-2]
        # artifacts went through the server into its destination folder
        assert run["artifact_uri"].startswith("mlflow-artifacts:/"), run["artifact_uri"]
        folder = team.artifacts / run["artifact_uri"][len("mlflow-artifacts:/"):]
        if name in VARIANTS:
            assert tags["dataset"] == VARIANTS[name]
            assert run["params"]["train.epochs"] == "1"
            assert {"loss_curves.png", f"{name}.json"} <= {p.name for p in folder.iterdir()}
            logged = json.loads((folder / f"{name}.json").read_text())
            key = "val_accuracy" if VARIANTS[name] == "imdb" else "val_mae"
            assert float(run["metrics"][key]) == pytest.approx(logged[key])
            history = client.get_metric_history(run_id, f"epoch/{key}")
            assert [m.step for m in history] == [1]
        else:
            assert f"{name}.json" in {p.name for p in folder.iterdir()}
        if tags["dvc_exp_name"] == "workspace":      # the first clone's own results
            metrics = json.loads((repo / f"metrics/{name}.json").read_text())
            assert metrics["mlflow_run_id"] == run_id
    # the sweep's runs: one per DVC experiment, with the point's params and metrics
    swept = [r for r in runs.values() if r["tags"]["dvc_exp_name"] != "workspace"]
    assert {r["tags"]["dvc_exp_name"] for r in swept} == set(sweep)
    for run in swept:
        data = sweep[run["tags"]["dvc_exp_name"]]
        dropout = data["params"]["params.yaml"]["data"]["models"]["gru_dropout"]["dropout"]
        metrics = data["metrics"]["metrics/gru_dropout.json"]["data"]
        assert run["name"] == f"gru_dropout ({run['tags']['dvc_exp_name']})"
        assert run["params"]["model.dropout"] == str(dropout)
        assert run["params"]["threads"] == "1"
        assert float(run["metrics"]["val_mae"]) == pytest.approx(metrics["val_mae"])
    # the torch models went through the server too (MLflow 3 logs them beside the runs)
    models = list(team.artifacts.glob("*/models/*/artifacts/data/model.pth"))
    assert len(models) == len(VARIANTS) + 2          # every variant's, the sweep's two
    assert not list((repo / ".dvc" / "tmp").rglob("mlflow.db")) and not (repo / "mlflow.db").exists()


WORKER = """
import sys
from pathlib import Path
from rnnlab.tracking.store import experiment_id
print(experiment_id(sys.argv[2], Path(sys.argv[1])))
"""


def test_workers_creating_an_experiment_at_once_on_a_server(team, tmp_path):
    """No lock guards a server: four processes creating the same experiment at once all get
    its one id (the others' RESOURCE_ALREADY_EXISTS is taken for an answer)."""
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), "race"],
                                env={**os.environ, "MLFLOW_TRACKING_URI": team.url},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(4)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-2000:]
    ids = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert len(ids) == 1
    assert query(team.backend, "SELECT count(*) FROM experiments WHERE name = 'race'") == [(1,)]


def test_ui_on_a_server_prints_its_links_and_starts_nothing(team):
    """`./dev.sh ui` with MLFLOW_TRACKING_URI on a server: the server is the UI; the links
    to its experiments' runs lists, in the model-training view, and no second UI."""
    done = subprocess.run([sys.executable, "-m", "rnnlab.tracking.ui"], cwd=team.repo, timeout=120,
                          env={**os.environ, "MLFLOW_TRACKING_URI": team.url},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = dict(query(team.backend, "SELECT name, experiment_id FROM experiments WHERE name "
                                   "LIKE %s", "rnnlab-%"))
    assert f"its UI is the server itself, {team.url}" in done.stdout
    for name in ("rnnlab-jena", "rnnlab-imdb"):
        assert (f"{name} (experiment {ids[name]}), runs: {team.url}/#/experiments/{ids[name]}"
                f"/runs?workflowType=machine_learning") in done.stdout


def test_server_commands_fail_in_one_line(team, tmp_path):
    port = int(team.url.rsplit(":", 1)[1])
    busy = sh(team.repo, sys.executable, "-m", "rnnlab.tools.server", "--port", str(port),
              check=False)
    assert busy.returncode != 0
    assert busy.stderr.strip() == (f"error: port {port} on 127.0.0.1 is busy (Address already "
                                   "in use): stop what listens there, or choose another with "
                                   "--port")
    missing = tmp_path / "no" / "mlflow.db"
    copy = sh(tmp_path, sys.executable, "-m", "rnnlab.tools.server", "copy", "--from",
              f"sqlite:///{missing}", "--to", team.url, check=False)
    assert copy.returncode != 0 and not missing.parent.exists()
    assert copy.stderr.strip() == f"error: no MLflow store at {missing} (--from sqlite:///{missing})"


COPY_SOURCE = """
import sys
from pathlib import Path
import numpy as np
import torch
from rnnlab.tracking.store import tracked_run
root = Path(sys.argv[1])
for n, (experiment, variant) in enumerate([("rnnlab-jena", "gru"), ("rnnlab-jena", "dense"),
                                           ("rnnlab-imdb", "imdb_lstm")]):
    with tracked_run(experiment=experiment, run_name=variant, params={"model": {"units": n}},
                     tags={"variant": variant, "seed": 1337}, root=root) as run:
        for epoch in range(1, 4):
            run.log_metrics({"epoch/val_loss": 1.0 / (epoch + n)}, step=epoch)
        run.log_metrics({"val_loss": 0.25})
        run.log_dict({"val_loss": 0.25, "n": n}, f"{variant}.json")
        run.log_training_data(np.arange(12.0).reshape(4, 3) + n, name="train", source="file:///x")
        if variant == "gru":
            torch.manual_seed(0)
            run.log_model(torch.nn.Linear(3, 1))
"""


def test_copy_a_sqlite_store_into_the_server(team, tmp_path, monkeypatch):
    """`python -m rnnlab.tools.server copy` brings a local store's runs to the server whole;
    a second copy finds them there and copies nothing."""
    import mlflow.pytorch
    import torch
    from mlflow.tracking import MlflowClient

    sh(tmp_path, sys.executable, "-c", COPY_SOURCE, str(tmp_path))
    source = f"sqlite:///{tmp_path}/mlflow.db"
    src, dst = MlflowClient(source), MlflowClient(team.url)
    before = len(server_runs(team.backend))
    copy = sh(tmp_path, sys.executable, "-m", "rnnlab.tools.server", "copy", "--from", source,
              "--to", team.url)
    assert copy.stdout.splitlines()[-1].startswith("3 runs copied, 0 already there, in ")
    assert len(server_runs(team.backend)) == before + 3

    for name in ("rnnlab-jena", "rnnlab-imdb"):
        s_exp, d_exp = src.get_experiment_by_name(name), dst.get_experiment_by_name(name)
        assert d_exp.tags.items() >= s_exp.tags.items()
        for run in src.search_runs([s_exp.experiment_id]):
            (copy_run,) = dst.search_runs([d_exp.experiment_id],
                                          f"tags.`rnnlab.copied_from` = '{run.info.run_id}'")
            info, new = run.info, copy_run.info
            assert (new.run_name, new.status, new.start_time, new.end_time) == \
                (info.run_name, info.status, info.start_time, info.end_time)
            assert copy_run.data.params == run.data.params
            assert copy_run.data.metrics == run.data.metrics
            assert copy_run.data.tags.items() >= run.data.tags.items()
            for key in run.data.metrics:
                history = [(m.step, m.value, m.timestamp)
                           for m in src.get_metric_history(info.run_id, key)]
                assert sorted((m.step, m.value, m.timestamp) for m in
                              dst.get_metric_history(new.run_id, key)) == sorted(history)
            assert [d.dataset.digest for d in copy_run.inputs.dataset_inputs] == \
                [d.dataset.digest for d in run.inputs.dataset_inputs] != []
            (artifact,) = dst.list_artifacts(new.run_id)
            folder = team.artifacts / new.artifact_uri[len("mlflow-artifacts:/"):]
            assert (folder / artifact.path).read_text() == Path(
                src.download_artifacts(info.run_id, artifact.path, str(tmp_path))).read_text()
            if info.run_name == "gru":               # its logged model loads from the server
                monkeypatch.setenv("MLFLOW_TRACKING_URI", team.url)
                mlflow.set_tracking_uri(team.url)
                model = mlflow.pytorch.load_model(f"runs:/{new.run_id}/model")
                torch.manual_seed(0)
                assert torch.equal(model.weight, torch.nn.Linear(3, 1).weight)
                assert len(copy_run.outputs.model_outputs) == 1

    again = sh(tmp_path, sys.executable, "-m", "rnnlab.tools.server", "copy", "--from", source,
               "--to", team.url)
    assert again.stdout.splitlines()[-1].startswith("0 runs copied, 3 already there, in ")
    assert len(server_runs(team.backend)) == before + 3


def test_second_clone_pulls_results_instead_of_retraining(team, tmp_path):
    """The first clone pushes its results (git: params, dvc.lock, metrics; the DVC remote:
    data, models, the run-cache); a second clone pulls, and `dvc repro` runs nothing."""
    repo = team.repo
    shared_git, remote = tmp_path / "shared.git", tmp_path / "dvc-remote"
    sh(tmp_path, "git", "init", "-q", "--bare", str(shared_git))
    sh(repo, "dvc", "remote", "add", "-d", "shared", str(remote))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "results and the shared DVC remote")
    sh(repo, "dvc", "push", "--run-cache")
    sh(repo, "git", "push", "-q", str(shared_git), "HEAD:refs/heads/main")

    second = tmp_path / "second"
    sh(tmp_path, "git", "clone", "-q", "-b", "main", str(shared_git), str(second))
    started = time.monotonic()
    sh(second, "dvc", "pull", "--run-cache")
    before = len(server_runs(team.backend))
    repro = sh(second, "dvc", "repro", env={"MLFLOW_TRACKING_URI": team.url})
    elapsed = time.monotonic() - started
    assert "Running stage" not in repro.stdout, repro.stdout
    assert "Data and pipelines are up to date." in repro.stdout
    assert len(server_runs(team.backend)) == before           # no training, no new run
    names = sorted(p.name for p in (repo / "metrics").glob("*.json"))
    assert names == sorted(f"{n}.json" for n in ["naive", "gradients", *VARIANTS])
    for name in names:
        assert (second / "metrics" / name).read_text() == (repo / "metrics" / name).read_text()
    for variant in ("dense", "gru_dropout", "imdb_dense"):
        assert (second / f"models/{variant}.pt").read_bytes() == \
            (repo / f"models/{variant}.pt").read_bytes()
    assert (second / "data/prepared/jena/features.npy").read_bytes() == \
        (repo / "data/prepared/jena/features.npy").read_bytes()
    assert elapsed < team.repro_s, (elapsed, team.repro_s)
    print(f"first clone's repro {team.repro_s:.1f} s; second clone's pull + repro {elapsed:.1f} s")


@pytest.mark.hostile
@pytest.mark.parametrize("args, env, message", [
    (["--port", "99999"], {}, "error: --port: 99999 is not a port number; choose one from 1 to "
                              "65535"),
    (["--port", "0"], {}, "error: --port: 0 is not a port number; choose one from 1 to 65535"),
    (["--pg-port", "-5"], {}, "error: --pg-port: -5 is not a port number; choose one from 1 to "
                              "65535"),
    ([], {"PORT": "http"}, "error: PORT: http is not a port number; choose one from 1 to 65535"),
], ids=["--port 99999", "--port 0", "--pg-port -5", "PORT=http"])
def test_a_port_out_of_range_is_one_line(tmp_path, args, env, message):
    """A bind of port 99999 was an OverflowError traceback, a PORT that is not a number a
    ValueError one; now one line before anything starts (no PostgreSQL needed)."""
    proc = sh(tmp_path, sys.executable, "-m", "rnnlab.tools.server", "--dir",
              str(tmp_path / "state"), *args, check=False,
              env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")} | env)
    assert proc.returncode == 1
    assert proc.stderr.strip() == message
    assert list(tmp_path.iterdir()) == []


def test_the_server_starts_without_mlflows_job_runner(team, tmp_path, monkeypatch):
    """As the UI (test_browser): `mlflow server` started by rnnlab.tools.server has no job
    runner or huey consumers (GenAI jobs): its environment says
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false, from the same ``server_environment`` as the
    UI's, where a user's own setting wins. (That the runner does start when asked, and that
    ``group_commands`` sees it, is the UI's test: a server with it costs about 25 s of CPU.)"""
    from rnnlab.tools import server
    from rnnlab.tracking.ui import server_environment

    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    with server.mlflow_server(team.backend, tmp_path / "plain", log=tmp_path / "plain.log") \
            as served:
        plain = group_commands(served.process.pid)
        environ = Path(f"/proc/{served.process.pid}/environ").read_bytes().split(b"\0")
    assert not [c for c in plain if "jobs._job_runner" in c or "huey" in c], plain
    assert [c for c in plain if "mlflow server" in c], plain
    assert b"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in environ
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")
    assert server_environment()["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"
