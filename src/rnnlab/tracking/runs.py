"""What the MLflow store holds, per DVC experiment.

    python -m rnnlab.tracking.runs            (or: ./dev.sh runs)

One line per ``dvc_exp_name`` tag (``workspace`` for plain ``dvc repro``) and MLflow
experiment, with the number of runs, how many finished, and the variants; then the total.
The UI shows the same runs with the search ``tags.dvc_exp_name = '<name>'``;
``--links`` adds, under each line, the UI's comparison of its latest run of each variant.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from rnnlab.core.errors import redact
from rnnlab.core.process import configure_process
from rnnlab.tracking.paths import repo_root
from rnnlab.tracking.store import EXPERIMENTS, TrackingError, store_errors, store_lock, tracking_uri
from rnnlab.tracking.ui import compare_url


def summarize(uri: str) -> list[tuple[str, str, int, int, list[str], list[str], str]]:
    """(dvc_exp_name, MLflow experiment, runs, finished runs, variants, the latest run id of
    each variant, the MLflow experiment id) per group."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    groups: dict[tuple[str, str], list] = defaultdict(list)
    ids: dict[str, str] = {}
    for name in EXPERIMENTS:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            continue
        ids[name] = exp.experiment_id
        for run in client.search_runs([exp.experiment_id], max_results=50_000,
                                      order_by=["attributes.start_time DESC"]):
            groups[run.data.tags.get("dvc_exp_name", "?"), name].append(run)
    rows = []
    for (dvc_exp, exp_name), runs in sorted(groups.items()):
        latest: dict[str, str] = {}           # newest first: the first run of each variant
        for r in runs:
            latest.setdefault(r.data.tags.get("variant", r.info.run_name), r.info.run_id)
        rows.append((dvc_exp, exp_name, len(runs),
                     sum(r.info.status == "FINISHED" for r in runs),
                     sorted(latest), [latest[v] for v in sorted(latest)], ids[exp_name]))
    return rows


def main(argv: list[str] | None = None) -> None:
    configure_process()
    parser = argparse.ArgumentParser(prog="python -m rnnlab.tracking.runs",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--links", nargs="?", const="http://127.0.0.1:5000", metavar="BASE",
                        help="print the UI's comparison link of each line (BASE: where "
                             "./dev.sh ui serves it, default %(const)s)")
    args = parser.parse_args(argv)
    uri = tracking_uri(repo_root())
    try:
        with store_errors(uri), store_lock(uri):
            rows = summarize(uri)
    except TrackingError as e:
        sys.exit(f"error: {e}")
    print(f"store: {redact(uri)}")
    print(f"{'dvc experiment':<24} {'MLflow experiment':<17} {'runs':>5} {'finished':>8}  variants")
    for dvc_exp, exp, n, done, variants, run_ids, exp_id in rows:
        print(f"{dvc_exp:<24} {exp:<17} {n:>5} {done:>8}  {', '.join(variants)}")
        if args.links:
            print(f"  compare: {compare_url(args.links, run_ids, [exp_id])}")
    print(f"{'total':<24} {'':<17} {sum(r[2] for r in rows):>5} {sum(r[3] for r in rows):>8}")


if __name__ == "__main__":
    main()
