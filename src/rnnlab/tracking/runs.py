"""What the MLflow store holds, per DVC experiment.

    python -m rnnlab.tracking.runs            (or: ./dev.sh runs)

One line per ``dvc_exp_name`` tag (``workspace`` for plain ``dvc repro``) and MLflow
experiment, with the number of runs, how many finished, and the variants; then the total.
The UI shows the same runs with the search ``tags.dvc_exp_name = '<name>'``;
``--links`` adds, under each line, the UI's comparison of its latest run of each variant,
and then one block per sweep: a variant run in several DVC experiments of one commit (a
sweep's points; the workspace's own run when it was made at that commit), with the
comparison of its latest run in each of them, a link to the runs list showing just those
runs, sorted on the headline figure (Jena's ``val_mae``, IMDB's ``val_accuracy``) with it,
the test figure and the params that differ between the points as columns, and one to the
same list's charts, filtered on the headline figure (its curve per epoch, its final value
per run). That list is a view saved in the store the way the UI's *Share* button saves one
(an experiment tag ``mlflow.sharedViewState.<key>``): ``--links`` writes those tags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from typing import Any

from rnnlab.core.errors import RnnlabError, redact
from rnnlab.core.process import configure_process, output_for_a_reader_that_may_stop
from rnnlab.tracking.paths import repo_root, require_repo_root
from rnnlab.tracking.store import EXPERIMENTS, store_errors, store_lock, tracking_uri
from rnnlab.tracking.ui import (
    HEADLINE,
    SHARED_VIEW_TAG,
    compare_url,
    runs_view,
    shared_view_url,
    view_key,
)


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


def sweeps(uri: str) -> list[dict]:
    """Per MLflow experiment, variant and commit (the ``git_commit`` tag) run in at least two
    DVC experiments: the points (DVC experiment names, ``workspace`` first), the latest run
    id in each, the params whose values differ between those runs, and the runs-list view
    that shows them. ``gradients`` is no model and has no headline figure: left out."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    out = []
    for name in EXPERIMENTS:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            continue
        groups: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
        for run in client.search_runs([exp.experiment_id], max_results=50_000,
                                      order_by=["attributes.start_time DESC"]):
            tags = run.data.tags
            variant = tags.get("variant", run.info.run_name)
            if variant == "gradients" or "git_commit" not in tags:
                continue
            groups[variant, tags["git_commit"]].setdefault(tags.get("dvc_exp_name", "?"), run)
        headline, lower, second = HEADLINE[name]
        for (variant, commit), latest in sorted(groups.items()):
            if len(latest) < 2:
                continue
            points = sorted(latest, key=lambda n: (n != "workspace", n))
            runs = [latest[p] for p in points]
            keys = sorted({k for r in runs for k in r.data.params})
            differ = [k for k in keys if k not in ("threads", "threads_source")   # speed only
                      and len({r.data.params.get(k) for r in runs}) > 1]
            view = runs_view(search=f"tags.variant = '{variant}' and "
                                    f"tags.git_commit = '{commit}'",
                             metrics=[headline, second], params=differ, order_by=headline,
                             ascending=lower)
            out.append({"experiment": name, "experiment_id": exp.experiment_id,
                        "variant": variant, "commit": commit, "points": points,
                        "run_ids": [r.info.run_id for r in runs],
                        "params": differ, "view": view,
                        # the data is no param: its digest is a tag (a demo's generated
                        # reviews beside the real ones, the same params)
                        "data_differs": len({r.data.tags.get("data_md5") for r in runs}) > 1})
    return out


def save_views(uri: str, found: list[dict]) -> None:
    """Each sweep's runs-list view as the experiment tag the UI reads it from (the same
    view, the same tag: rerunning ``--links`` adds nothing)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    for sweep in found:
        client.set_experiment_tag(sweep["experiment_id"],
                                  SHARED_VIEW_TAG + view_key(sweep["view"]),
                                  json.dumps(sweep["view"]))


def show(uri: str, rows: list, found: list[dict], links: str) -> None:
    """The listing, printed once the store is read and its lock let go: a reader that
    stops early (``| head``) cuts nothing but the output."""
    print(f"store: {redact(uri)}")
    print(f"{'dvc experiment':<24} {'MLflow experiment':<17} {'runs':>5} {'finished':>8}  variants")
    for dvc_exp, exp, n, done, variants, run_ids, exp_id in rows:
        print(f"{dvc_exp:<24} {exp:<17} {n:>5} {done:>8}  {', '.join(variants)}")
        if links:
            print(f"  compare: {compare_url(links, run_ids, [exp_id])}")
    print(f"{'total':<24} {'':<17} {sum(r[2] for r in rows):>5} {sum(r[3] for r in rows):>8}")
    if found:
        print("\nsweeps: a variant run in several DVC experiments of one commit, its latest "
              "run in each")
    for sweep in found:
        differ = ", ".join(sweep["params"] + (["the data (tag data_md5)"]
                                              if sweep.get("data_differs") else []))
        differ = differ or "no param nor data: reruns of one setup (a change this variant ignores)"
        print(f"{sweep['variant']} @ {sweep['commit'][:7]} ({sweep['experiment']}), "
              f"{len(sweep['points'])} points: {', '.join(sweep['points'])}; they differ in "
              f"{differ}")
        print(f"  compare: {compare_url(links, sweep['run_ids'], [sweep['experiment_id']])}")
        key = view_key(sweep["view"])
        print(f"  runs:    {shared_view_url(links, sweep['experiment_id'], key)}")
        charts = shared_view_url(links, sweep["experiment_id"], key, charts=True)
        print(f"  charts:  {charts}")


def main(argv: list[str] | None = None) -> None:
    configure_process()
    parser = argparse.ArgumentParser(prog="python -m rnnlab.tracking.runs",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--links", nargs="?", const="http://127.0.0.1:5000", metavar="BASE",
                        help="print the UI's comparison link of each line (BASE: where "
                             "./dev.sh ui serves it, default %(const)s)")
    args = parser.parse_args(argv)
    try:
        # the repository matters only when the store is its own mlflow.db
        root = repo_root() if os.environ.get("MLFLOW_TRACKING_URI") else require_repo_root()
        uri = tracking_uri(root)
        with store_errors(uri), store_lock(uri):
            rows = summarize(uri)
            found = sweeps(uri) if args.links else []
            save_views(uri, found)
    except RnnlabError as e:
        sys.exit(f"error: {e}")
    with output_for_a_reader_that_may_stop():
        show(uri, rows, found, args.links or "")


if __name__ == "__main__":
    main()
