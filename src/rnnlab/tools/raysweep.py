"""Sweeps on Ray: every grid point of ``-S key=v1,v2`` a Ray task, run as a DVC experiment.

    python -m rnnlab.tools.raysweep -S 'models.gru_dropout.dropout=0.1,0.3' \\
        -S 'jena.lookback=720,1440' train@gru_dropout [--address HOST:PORT]

The grid is DVC's own: the same ``-S`` grammar as ``dvc exp run --queue`` (DVC's Hydra
parser does the splitting), one point per combination. Each point is one Ray task with
``--cpus-per-point`` CPUs (default 1). The task, on whichever node Ray picks:

1. clones the git remote (``--git-remote``, default this repository's ``origin``) at the
   sweep's commit into a temporary folder;
2. points the clone at the DVC remote (``--dvc-remote``, default the repository's) and
   runs ``dvc exp run --pull -S ... [targets] --name <name>``: the stages whose deps and
   params are unchanged are restored from the remote's run-cache instead of run (the data
   is never downloaded again), the rest run with ``OMP_NUM_THREADS`` set to the task's
   CPUs and log to ``MLFLOW_TRACKING_URI`` (this shell's, passed through);
3. shares the experiment with ``dvc exp push --run-cache origin <name>``: the experiment's
   git ref to the git remote, its cached outputs and run records to the DVC remote;
4. deletes the clone and hands back its status, time and log.

Before fanning out the command refuses a workspace with uncommitted changes to tracked
files (the points run the commit, not the workspace), and makes sure the commit is on the
git remote: when no branch or tag there holds it, it pushes it as
``refs/rnnlab-sweeps/<commit>``. A point's default name is a digest of its values, and a
point whose name the commit already has on the remote is not run again: rerunning a sweep
runs only the points that failed or never ran (``--name NAME``, for ``NAME-1``...,
refuses a NAME the commit already has instead).

Then, on any machine: ``dvc exp pull origin`` and ``dvc exp show`` (docs/teams.md).

A remote's URL may carry credentials (``https://user:token@host/...``): every line the
command prints or writes (errors, a point's log and its tail, the closing hint) shows them
as ``***@`` (``rnnlab.core.errors.redact``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rnnlab.core.errors import redact
from rnnlab.core.process import configure_process, this_python_first

INSTALL_HINT = "rnnlab.tools.raysweep needs Ray: pip install -e '.[team]'"
SWEEP_REFS = "refs/rnnlab-sweeps"   # where a commit no branch of the remote holds is pushed
LOG_TAIL = 25                       # lines of a failed point's log printed


class SweepError(Exception):
    """A precondition the sweep checks before it starts (one line, no traceback)."""


# --- the Ray task: standard library only (and ``redact``); shipped by value (see
# _ship_by_value), so a worker needs Python, Ray and rnnlab's dependencies, and imports
# rnnlab from the clone.

def run_point(point: dict) -> dict:
    """Run one grid point as a DVC experiment in a fresh clone; never raises."""
    start = time.monotonic()
    log: list[str] = []
    result = {"name": point["name"], "status": "failed", "host": socket.gethostname(),
              "threads": 1, "log": log}
    work = Path(tempfile.mkdtemp(prefix=f"rnnlab-{point['name']}-"))
    try:
        threads = _assigned_cpus()
        result["threads"] = threads
        clone = work / "repo"
        # The stages call `python` and import rnnlab: this worker's Python, and the
        # sweep's commit's rnnlab (the clone's src), whatever version is installed.
        env = this_python_first() | point["env"] | {
            "OMP_NUM_THREADS": str(threads),
            "PYTHONPATH": os.pathsep.join(p for p in (str(clone / "src"),
                                                      os.environ.get("PYTHONPATH")) if p),
            "DVC_NO_ANALYTICS": "1"}
        env.pop("DVC_EXP_NAME", None)
        dvc = [sys.executable, "-m", "dvc"]
        steps = [["git", "clone", "-q", "--no-checkout", point["git_remote"], str(clone)]]
        if point["ref"]:
            steps.append(["git", "fetch", "-q", "origin", point["ref"]])
        steps.append(["git", "checkout", "-q", "--detach", point["commit"]])
        for i, cmd in enumerate(steps):
            if not _step(cmd, work if i == 0 else clone, env, log):
                return result
        _use_dvc_remote(clone, point["dvc_remote"])
        # DVC keeps stages with `persist: true` outs (the downloads, which must survive a
        # failed rerun) out of its run cache, so `exp run --pull` cannot restore them: fetch
        # their outs as dvc.lock records them, or the point would download the data again.
        persisted = _persisted_stages(clone)
        if persisted and not _step([*dvc, "pull", "--allow-missing", *persisted], clone, env,
                                   log):
            return result
        run = [*dvc, "exp", "run", "--pull", "--name", point["name"]]
        for override in point["overrides"]:
            run += ["-S", override]
        if (_step([*run, *point["targets"]], clone, env, log) and
                _step([*dvc, "exp", "push", "--run-cache", "origin", point["name"]],
                      clone, env, log)):
            result["status"] = "ok"
    except Exception as e:  # noqa: BLE001 (a failed point is reported, never raised)
        log.append(redact(f"{type(e).__name__}: {e}"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        result["seconds"] = time.monotonic() - start
    return result


def _persisted_stages(repo: Path) -> list[str]:
    """The stages of ``repo``'s dvc.yaml with an out marked ``persist: true``."""
    import yaml

    stages = (yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages") or {}
    return [name for name, stage in stages.items()
            if any(isinstance(out, dict) and any(isinstance(v, dict) and v.get("persist")
                                                 for v in out.values())
                   for out in stage.get("outs") or [])]


def _assigned_cpus() -> int:
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    return max(1, int(cpus))


def _step(cmd: list[str], cwd: Path, env: dict, log: list[str]) -> bool:
    # The command holds the remotes' URLs as given (credentials and all), and a tool's
    # output may too: the log keeps them redacted from its first line.
    log.append(redact(f"$ {' '.join(cmd)}"))
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
    log.extend(redact(line) for line in proc.stdout.splitlines())
    log.append(f"({time.monotonic() - start:.1f} s" +
               (f", exit status {proc.returncode})" if proc.returncode else ")"))
    return proc.returncode == 0


def _use_dvc_remote(clone: Path, remote: dict) -> None:
    """Make ``remote`` the clone's default DVC remote, in the clone's local config (which
    DVC merges over the committed one: options the committed config gives it stay)."""
    (clone / ".dvc" / "config.local").write_text(
        f"[core]\n    remote = {remote['name']}\n"
        f"['remote \"{remote['name']}\"']\n    url = {remote['url']}\n")


# --- the command

@dataclass(frozen=True)
class Point:
    index: int
    overrides: list[str]     # `-S` arguments of this point: `key=value` or `file:key=value`
    name: str                # the DVC experiment's name


def grid(set_params: list[str]) -> list[list[str]]:
    """The points of ``-S`` arguments as ``dvc exp run --queue`` makes them (DVC's parser):
    ``['a=1,2', 'b=x']`` -> ``[['a=1', 'b=x'], ['a=2', 'b=x']]``."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps
    from hydra.errors import HydraException

    if not set_params:
        return [[]]
    try:
        sweeps = get_hydra_sweeps(to_path_overrides(set_params))
    except (InvalidArgumentError, HydraException) as e:
        raise SweepError(f"-S: {e}") from None
    return [[o if path == "params.yaml" else f"{path}:{o}"
             for path, overrides in sweep.items() for o in overrides] for sweep in sweeps]


def point_names(points: list[list[str]], targets: list[str], prefix: str | None) -> list[str]:
    """``<prefix>-1``... as DVC names a queued sweep, or without a prefix ``ray-<digest>`` of
    the point: the same point of the same commit keeps its name from sweep to sweep."""
    if prefix:
        return [f"{prefix}-{i}" for i in range(1, len(points) + 1)]
    return ["ray-" + hashlib.sha1(json.dumps([targets, p]).encode()).hexdigest()[:8]
            for p in points]


def git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:   # git hides a URL's password in its text; not in the arguments
        raise SweepError(redact(f"git {' '.join(args)}: "
                                f"{proc.stderr.strip() or proc.returncode}"))
    return proc.stdout.strip()


def check_clean(root: Path) -> None:
    changed = git(root, "diff", "--name-only", "HEAD").splitlines()   # staged or not
    if changed:
        raise SweepError(
            f"uncommitted changes to tracked files: {', '.join(changed)}; the points run "
            "the commit, cloned from the git remote: commit them (or stash them) first")


def resolve_git_remote(root: Path, remote: str | None) -> str:
    """A URL or path the workers can clone: ``remote`` as given, a remote's name resolved,
    a local path made absolute."""
    remote = remote or "origin"
    names = git(root, "remote").split()
    if remote in names:
        remote = git(root, "remote", "get-url", remote)
    elif not (Path(remote).exists() or "://" in remote or ":" in remote):
        raise SweepError(f"git remote {redact(remote)!r}: neither a remote of this repository "
                         f"({', '.join(names) or 'it has none'}) nor a URL or path; pass "
                         "--git-remote with the shared repository the workers clone")
    path = Path(remote) if "://" not in remote else None
    if path is not None and (path.exists() or (root / path).exists()):
        remote = str((root / path).resolve())
    return remote


def publish_commit(root: Path, remote: str, commit: str, remote_refs: dict[str, str]) -> str | None:
    """None when a branch or tag of the remote holds ``commit`` (a clone has it); else push
    it to ``refs/rnnlab-sweeps/<commit>`` and return that ref (the tasks fetch it)."""
    for ref, sha in remote_refs.items():
        if not ref.startswith(("refs/heads/", "refs/tags/")):
            continue
        known = subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=root,
                               capture_output=True).returncode == 0
        if known and subprocess.run(["git", "merge-base", "--is-ancestor", commit, sha],
                                    cwd=root, capture_output=True).returncode == 0:
            return None
    ref = f"{SWEEP_REFS}/{commit}"
    git(root, "push", "-q", remote, f"{commit}:{ref}")
    return ref


def ls_remote(root: Path, remote: str) -> dict[str, str]:
    refs = {}
    for line in git(root, "ls-remote", remote).splitlines():
        sha, ref = line.split("\t")
        refs[ref] = sha
    return refs


def resolve_dvc_remote(root: Path, remote: str | None) -> dict[str, str]:
    """{'name', 'url'} of the DVC remote the points pull from and push to: a remote of this
    repository by name (its default without ``remote``), or a URL or path."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        config = repo.config
        remotes = config.get("remote", {})
        name = remote or config.get("core", {}).get("remote")
    if name in remotes:
        return {"name": name, "url": remotes[name]["url"]}
    if remote is None:
        raise SweepError("no DVC remote: the points pull their inputs from one and push "
                         "their outputs to it; add one (dvc remote add -d NAME URL) or pass "
                         "--dvc-remote URL")
    if "://" not in remote and not Path(remote).is_absolute():
        if not (root / remote).exists():
            raise SweepError(f"DVC remote {redact(remote)!r}: neither a remote of this repository "
                             f"({', '.join(remotes) or 'it has none'}) nor a URL or path")
        remote = str((root / remote).resolve())
    return {"name": "sweep", "url": remote}


def task_env(root: Path) -> tuple[dict[str, str], str]:
    """What every task gets from this shell: the MLflow settings (the tracking server) and
    the git identity its experiment commits carry; and the tracking URI, for the header."""
    from rnnlab.tracking import store as tracking

    env = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}
    try:
        tracking.refuse_run_id("every point's runs")   # before any point is cloned
        env.setdefault("MLFLOW_TRACKING_URI", tracking.tracking_uri(root))
    except tracking.TrackingError as e:
        raise SweepError(str(e)) from None
    # rnnlab's experiments made here, once, before the points start: points creating them
    # at once on a new server collide (RESOURCE_ALREADY_EXISTS fails all but one), and in
    # this repository's own store the artifacts stay at this root (not in a clone's folder,
    # deleted with it). A store that cannot be reached stops the sweep here, in one line.
    try:
        for name in tracking.EXPERIMENTS:
            tracking.experiment_id(name, root)
    except tracking.TrackingError as e:
        raise SweepError(str(e)) from None
    ident = subprocess.run(["git", "var", "GIT_COMMITTER_IDENT"], cwd=root,
                           capture_output=True, text=True).stdout
    if "<" in ident:
        who, email = ident.split("<", 1)
        email = email.split(">", 1)[0]
        for role in ("AUTHOR", "COMMITTER"):
            env[f"GIT_{role}_NAME"], env[f"GIT_{role}_EMAIL"] = who.strip(), email
    return env, env["MLFLOW_TRACKING_URI"]


def _ship_by_value(ray) -> None:
    """Send ``run_point`` to the workers as code rather than as a name to import: a worker
    then needs no rnnlab of its own (the clone brings the sweep's), only Ray and Python.
    ``redact`` goes with it (rnnlab.core.errors: standard library only)."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.cloudpickle.register_pickle_by_value(sys.modules[redact.__module__])


def say(text: str, **kwargs) -> None:
    """``print``, with the credentials of every URL in ``text`` shown as ``***@``: the
    remotes, an ``-S`` value, a worker's error."""
    print(redact(text), **kwargs)


def point_report(n: int, total: int, point: Point, result: dict, logs: Path) -> list[str]:
    """The lines printed when a point ends: its status, and for a failed one the tail of
    its log and where the whole log is (``write_log``)."""
    lines = [f"[{n}/{total}] {result['status']:6} {point.name}  {' '.join(point.overrides)}  "
             f"{result['seconds']:.1f} s on {result['host']}, {result['threads']} thread(s)"]
    if result["status"] != "ok":
        lines += [f"    | {line}" for line in result["log"][-LOG_TAIL:]]
        lines.append(f"    (whole log: {logs / point.name}.log)")
    return [redact(line) for line in lines]


def write_log(path: Path, lines: list[str]) -> None:
    """A point's whole log, redacted (a worker redacts its own; this is the net under it)."""
    path.write_text("".join(redact(line) + "\n" for line in lines))


def closing_hint(remote: str, commit: str, ref: str | None) -> str:
    """How to see the experiments: ``remote`` as given to --git-remote (its credentials
    shown as ``***@``: put them back, or name a remote of the clone)."""
    hint = (f"to see them in a clone at commit {commit[:7]}: dvc exp pull {remote} && "
            "dvc exp show" if ref is None else
            f"to see them in any clone: dvc exp pull -A {remote} && dvc exp show --rev {commit}")
    return redact(hint)


def summary(rows: list[tuple[Point, dict | None]]) -> str:
    table = [("point", "params", "status", "seconds", "experiment")]
    for point, result in rows:
        status = "exists" if result is None else result["status"]
        seconds = "" if result is None else f"{result['seconds']:.1f}"
        table.append((str(point.index), redact(" ".join(point.overrides)) or "(none)", status,
                      seconds, point.name))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rnnlab.tools.raysweep",
        description="Fan a `dvc exp run -S` grid out over a Ray cluster, one task per point; "
                    "each point runs in its own clone and is shared with `dvc exp push`.")
    parser.add_argument("targets", nargs="*", help="stages to run, as for dvc exp run "
                        "(e.g. train@gru); default: the whole pipeline")
    parser.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=V1,V2",
                        help="as dvc exp run -S: comma-separated values; several -S make "
                             "the grid")
    parser.add_argument("--address", help="the Ray cluster (HOST:PORT of `ray start --head`); "
                        "default RAY_ADDRESS, a cluster started on this machine, else a new "
                        "local one")
    parser.add_argument("--git-remote", help="the shared git repository the points clone "
                        "and push to (a remote's name, URL or path; default: origin)")
    parser.add_argument("--dvc-remote", help="the DVC remote the points pull from and push "
                        "to (a remote's name, URL or path; default: the repository's)")
    parser.add_argument("--name", help="name the experiments NAME-1, NAME-2... (default: "
                        "ray-<digest of the point>, and a point already on the git remote "
                        "is not run again)")
    parser.add_argument("--cpus-per-point", type=int, default=1, metavar="N",
                        help="Ray CPUs per point, and its torch threads (default 1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    configure_process()
    args = parse_args(argv)
    try:
        import ray
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    try:
        return sweep(args, ray)
    except SweepError as e:
        say(f"error: {e}", file=sys.stderr)
        return 2


def sweep(args: argparse.Namespace, ray) -> int:
    root = Path(git(Path.cwd(), "rev-parse", "--show-toplevel"))
    check_clean(root)
    overrides = grid(args.set_param)
    names = point_names(overrides, args.targets, args.name)
    points = [Point(i, o, n) for i, (o, n) in enumerate(zip(overrides, names), 1)]
    commit = git(root, "rev-parse", "HEAD")
    remote = resolve_git_remote(root, args.git_remote)
    refs = ls_remote(root, remote)
    done = {r.rsplit("/", 1)[1] for r in refs
            if r.startswith(f"refs/exps/{commit[:2]}/{commit[2:]}/")} & set(names)
    if args.name and done:
        # NAME-1 of another grid is another experiment: only a digest name means "this point"
        raise SweepError(f"experiments {', '.join(sorted(done))} of commit {commit[:7]} are "
                         f"already on the git remote: choose another --name")
    todo = [p for p in points if p.name not in done]
    dvc_remote = resolve_dvc_remote(root, args.dvc_remote)
    ref = publish_commit(root, remote, commit, refs)
    env, uri = task_env(root)

    say(f"sweep: {len(points)} points of commit {commit[:7]} "
        f"({'on the git remote' if ref is None else 'pushed as ' + ref}) from {remote}")
    say(f"  DVC remote {dvc_remote['name']} ({dvc_remote['url']}), MLflow {uri}")
    if "MLFLOW_TRACKING_URI" not in os.environ:
        say("  note: MLFLOW_TRACKING_URI is not set: the runs go to this repository's "
            "store, which only workers on this machine reach; set it to the team's "
            "tracking server")
    for p in points:
        if p.name in done:
            say(f"  {p.name} is already on the git remote: not run again")

    logs = root / ".dvc" / "tmp" / "raysweep"
    results: dict[str, dict] = {}
    if todo:
        started = time.monotonic()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(address=args.address, logging_level="WARNING", log_to_driver=False,
                     configure_logging=True)
        except Exception as e:  # noqa: BLE001 (Ray's connection errors have no common base)
            raise SweepError(redact(f"Ray cluster {args.address or '(local)'}: {e}")) from None
        _ship_by_value(ray)
        cpus = ray.cluster_resources().get("CPU", 0)
        say(f"  Ray: {cpus:g} CPUs, {args.cpus_per_point} per point "
            f"(connected in {time.monotonic() - started:.1f} s)")
        task = ray.remote(num_cpus=args.cpus_per_point)(run_point)
        spec = {"git_remote": remote, "commit": commit, "ref": ref, "dvc_remote": dvc_remote,
                "targets": args.targets, "env": env}
        pending = {task.remote(spec | {"name": p.name, "overrides": p.overrides}): p
                   for p in todo}
        logs.mkdir(parents=True, exist_ok=True)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                point = pending.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except Exception as e:  # noqa: BLE001 (the worker itself died)
                    result = {"name": point.name, "status": "failed", "seconds": 0.0,
                              "host": "?", "threads": 0, "log": [str(e)]}
                results[point.name] = result
                write_log(logs / f"{point.name}.log", result["log"])
                say("\n".join(point_report(len(results), len(todo), point, result, logs)),
                    flush=True)
        except KeyboardInterrupt:
            for ref_ in pending:
                ray.cancel(ref_, force=True)
            say(f"interrupted: {len(pending)} points cancelled", file=sys.stderr)
            return 130
        finally:
            ray.shutdown()
        say(f"sweep: {len(todo)} points ran in {time.monotonic() - started:.1f} s")

    say(summary([(p, results.get(p.name)) for p in points]))
    failed = [n for n, r in results.items() if r["status"] != "ok"]
    if failed:
        say(f"{len(failed)} of {len(points)} points failed (logs in {logs})")
    say(closing_hint(args.git_remote or "origin", commit, ref))
    return 1 if failed else 0


if __name__ == "__main__":
    # Through the package name, so that Ray ships run_point as rnnlab.tools.raysweep's code.
    from rnnlab.tools.raysweep import main as _main

    sys.exit(_main())
