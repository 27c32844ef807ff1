"""What the MLflow store holds, per DVC experiment.

    python -m rnnlab.runs            (or: ./dev.sh runs)

One line per ``dvc_exp_name`` tag (``workspace`` for plain ``dvc repro``) and MLflow
experiment, with the number of runs, how many finished, and the variants; then the total.
The UI shows the same runs with the search ``tags.dvc_exp_name = '<name>'``.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from rnnlab.errors import redact
from rnnlab.paths import repo_root
from rnnlab.tracking import TrackingError, store_errors, store_lock, tracking_uri

EXPERIMENTS = ("rnnlab-jena", "rnnlab-imdb")


def summarize(uri: str) -> list[tuple[str, str, int, int, list[str]]]:
    """(dvc_exp_name, MLflow experiment, runs, finished runs, variants) per group."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for name in EXPERIMENTS:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            continue
        for run in client.search_runs([exp.experiment_id], max_results=50_000):
            groups[run.data.tags.get("dvc_exp_name", "?"), name].append(run)
    return [(dvc_exp, exp, len(runs), sum(r.info.status == "FINISHED" for r in runs),
             sorted({r.data.tags.get("variant", r.info.run_name) for r in runs}))
            for (dvc_exp, exp), runs in sorted(groups.items())]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rnnlab.runs",
                                     description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    uri = tracking_uri(repo_root())
    try:
        with store_errors(uri), store_lock(uri):
            rows = summarize(uri)
    except TrackingError as e:
        sys.exit(f"error: {e}")
    print(f"store: {redact(uri)}")
    print(f"{'dvc experiment':<24} {'MLflow experiment':<17} {'runs':>5} {'finished':>8}  variants")
    for dvc_exp, exp, n, done, variants in rows:
        print(f"{dvc_exp:<24} {exp:<17} {n:>5} {done:>8}  {', '.join(variants)}")
    print(f"{'total':<24} {'':<17} {sum(r[2] for r in rows):>5} {sum(r[3] for r in rows):>8}")


if __name__ == "__main__":
    main()
