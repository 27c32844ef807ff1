"""The MLflow store: one absolute SQLite file, safe under parallel queue workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rnnlab.tracking import _lock_path, flatten, tracking_uri

WORKER = """
import sys
from pathlib import Path
from rnnlab.tracking import tracked_run
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


def test_flatten_nested_params():
    assert flatten({"jena": {"lookback": 1440, "rows": [0, 1]}, "seed": 3}) == {
        "jena.lookback": 1440, "jena.rows": [0, 1], "seed": 3}


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
    for w, (out, err) in zip(workers, outputs):
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
