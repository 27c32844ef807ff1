"""The MLflow UI over the project's store, on 127.0.0.1.

    python -m rnnlab.ui [--port 5000]        (or: ./dev.sh ui)

The store is the one every stage logs to (``rnnlab.tracking``): ``sqlite:///<root>/mlflow.db``
with artifacts under ``<root>/mlruns``, or ``MLFLOW_TRACKING_URI`` when set.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rnnlab.errors import redact
from rnnlab.paths import repo_root
from rnnlab.tracking import TrackingError, store_errors, store_lock, tracking_uri


def ui_command(root: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    root = Path(root).resolve()
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(root),
            "--default-artifact-root", (root / "mlruns").as_uri(),
            "--host", host, "--port", str(port), "--workers", "1"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rnnlab.ui", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 5000)))
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only)")
    args = parser.parse_args(argv)
    root = repo_root()
    uri = tracking_uri(root)
    try:
        with store_errors(uri), store_lock(uri):   # the UI may be the store's first user:
            from mlflow.tracking import MlflowClient     # create it safely
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except TrackingError as e:
        sys.exit(f"error: {e}")
    command = ui_command(root, args.port, args.host)
    print(f"MLflow UI over {redact(uri)} on http://{args.host}:{args.port} (Ctrl-C stops it)",
          flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
