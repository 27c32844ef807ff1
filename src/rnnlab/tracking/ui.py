"""The MLflow UI over the project's store, on 127.0.0.1.

    python -m rnnlab.tracking.ui [--port 5000]        (or: ./dev.sh ui)

The store is the one every stage logs to (``rnnlab.tracking.store``): ``sqlite:///<root>/mlflow.db``
with artifacts under ``<root>/mlruns``, or ``MLFLOW_TRACKING_URI`` when set. It prints the
link to each experiment's runs list before it starts. When ``MLFLOW_TRACKING_URI`` is a
tracking server (http or https), that server is the UI: it prints the links there and
starts nothing.

MLflow 3.17's UI opens an experiment on its GenAI overview unless the URL asks for the
model-training view (``?workflowType=machine_learning``; the browser then remembers the
choice): every link rnnlab prints carries it.

MLflow's server also starts a job runner and seven ``huey`` consumers, each a Python that
imports MLflow, for GenAI jobs rnnlab never submits: about 17 CPU-seconds and 3 s more at
every start on a 2-core machine. The UI and ``rnnlab.tools.server`` start it without them
(``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``) unless that variable is set already.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rnnlab.core.errors import RnnlabError, redact
from rnnlab.core.process import configure_process, why_port_taken
from rnnlab.tracking.paths import repo_root, require_repo_root
from rnnlab.tracking.store import EXPERIMENTS, experiment_id, tracking_uri

VIEW = "workflowType=machine_learning"      # the UI's model-training view, not GenAI's
# What an MLflow server rnnlab starts gets unless the environment says otherwise.
SERVER_DEFAULTS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


# MLflow 3.17's server imports Starlette's deprecated WSGI middleware: a warning of its own
# code at every start, two lines among the server's log that no user can act on.
QUIET_WARNINGS = "ignore:starlette.middleware.wsgi is deprecated"


def server_environment() -> dict[str, str]:
    """This process's environment with ``SERVER_DEFAULTS`` for what it lacks, and
    ``QUIET_WARNINGS`` before the user's own ``PYTHONWARNINGS`` (theirs, later, win)."""
    env = SERVER_DEFAULTS | dict(os.environ)
    env["PYTHONWARNINGS"] = ",".join(w for w in (QUIET_WARNINGS, env.get("PYTHONWARNINGS"))
                                     if w)
    return env


def runs_url(base: str, experiment: str) -> str:
    """The runs list of MLflow experiment id ``experiment``, in the model-training view."""
    return f"{base}/#/experiments/{experiment}/runs?{VIEW}"


def compare_url(base: str, run_ids: list[str], experiments: list[str]) -> str:
    """MLflow's side-by-side comparison of ``run_ids`` (of the experiment ids given), in the
    model-training view (without it a first visit gets the GenAI sidebar)."""
    return (f"{base}/#/compare-runs?runs={json.dumps(run_ids, separators=(',', ':'))}"
            f"&experiments={json.dumps(experiments, separators=(',', ':'))}&{VIEW}")


# The headline figures (docs/conventions.md): the column a sweep's runs list sorts on
# first, and whether lower is better; the second column beside it.
HEADLINE = {"rnnlab-jena": ("val_mae", True, "test_mae"),
            "rnnlab-imdb": ("val_accuracy", False, "test_accuracy")}
SHARED_VIEW_TAG = "mlflow.sharedViewState."   # MLflow's UI: one saved runs-list view per tag


def runs_view(*, search: str, metrics: list[str], params: list[str], order_by: str,
              ascending: bool) -> dict:
    """A runs-list view as MLflow 3.17's UI saves one (its *Share* button): the search, the
    sort, the columns shown (``selectedColumns``: here the metrics and params given, none of
    the default Source, Models and Dataset), and the chart view's search box set to
    ``order_by``, so that the view's charts (``compareRunsMode=CHART``) show that metric's."""
    return {"searchFilter": search, "orderByKey": f"metrics.`{order_by}`",
            "orderByAsc": ascending, "startTime": "ALL", "lifecycleFilter": "Active",
            "datasetsFilter": [], "modelVersionFilter": "All Runs",
            "selectedColumns": [f"metrics.`{m}`" for m in metrics]
                               + [f"params.`{p}`" for p in params],
            "chartsSearchFilter": order_by}


def view_key(view: dict) -> str:
    """The share key of ``view``: a digest of it, so the same view is the same tag."""
    import hashlib

    return hashlib.sha256(json.dumps(view, sort_keys=True).encode()).hexdigest()[:32]


def shared_view_url(base: str, experiment: str, key: str, *, charts: bool = False) -> str:
    """The runs list of experiment id ``experiment`` opened on the view saved under
    ``key`` (the experiment's tag ``mlflow.sharedViewState.<key>``), model-training view;
    ``charts``: its chart view (a chart per metric, every run of the list on each)."""
    mode = "&compareRunsMode=CHART" if charts else ""
    return f"{base}/#/experiments/{experiment}/runs?viewStateShareKey={key}&{VIEW}{mode}"


def ui_command(root: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    root = Path(root).resolve()
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(root),
            "--default-artifact-root", (root / "mlruns").as_uri(),
            "--host", host, "--port", str(port), "--workers", "1"]


def check_port(host: str, port: int) -> None:
    """One line unless the server can listen on ``host:port`` (``why_port_taken``). A port
    in use was MLflow's ``[Errno 98]`` amid its log, after the links to it, and exit 0."""
    fix = "choose another with --port or PORT="
    if not 1 <= port <= 65535:
        raise RnnlabError(f"--port {port} is not a port number (1 to 65535): {fix}")
    if why := why_port_taken(host, port):
        raise RnnlabError(f"port {port} on {host} cannot be listened on ({why}): stop "
                          f"what listens there, or {fix}")


def main(argv: list[str] | None = None) -> None:
    configure_process()
    parser = argparse.ArgumentParser(prog="python -m rnnlab.tracking.ui", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 5000)))
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only)")
    args = parser.parse_args(argv)
    try:
        root = repo_root()
        uri = tracking_uri(root)
        server = uri.startswith(("http://", "https://"))      # a tracking server is its own UI
        if not server:                                        # the store, mlruns and the port
            root = require_repo_root()
            check_port(args.host, args.port)
        # the links before any run; experiment_id creates the store and the experiments
        # under the store's lock (the UI may be the store's first user)
        ids = {name: experiment_id(name, root) for name in EXPERIMENTS}
    except RnnlabError as e:
        sys.exit(f"error: {e}")
    if server:
        base = uri.rstrip("/")
        print(f"MLFLOW_TRACKING_URI is a tracking server: its UI is the server itself, "
              f"{redact(base)}")
        for name, exp in ids.items():
            print(f"  {name} (experiment {exp}), runs: {redact(runs_url(base, exp))}")
        return
    command = ui_command(root, args.port, args.host)
    base = f"http://{args.host}:{args.port}"
    print(f"MLflow UI over {redact(uri)} on {base} (Ctrl-C stops it)")
    for name, exp in ids.items():
        print(f"  {name} (experiment {exp}), runs: {runs_url(base, exp)}")
    print("  one DVC experiment's runs, side by side: `./dev.sh runs --links`", flush=True)
    os.execve(command[0], command, server_environment())


if __name__ == "__main__":
    main()
