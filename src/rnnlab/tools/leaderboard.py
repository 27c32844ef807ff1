"""DVC experiments side by side, narrow enough for a terminal.

    python -m rnnlab.tools.leaderboard [--split test] [--width 100] [-A | -n N]   (./dev.sh leaderboard)

One row per experiment (the workspace, the baseline commit and the experiments DVC shows
for it, as ``dvc exp show`` lists them): first the params that differ between the
experiments (the workspace's and the experiments' own params, what a sweep changed; those
that differ only from the baseline commit, say data URLs pointed at local copies, come in
a short list below the table), then, per data set, each variant's headline figure: Jena's
MAE (normalized units, lower is better, ``naive`` included), IMDB's accuracy (higher is
better); validation by default, test with ``--split test``. ``*`` marks the best figure of
a column (none where every figure ties), and a last line names the best variant (``naive``
aside) and experiment. ``^`` marks a figure its row did not compute: its stage's record in
that row's ``dvc.lock`` is from other params or other input data (an experiment that
reran one stage keeps the baseline's figures for the others); such figures are never
marked best. Tables wider than ``--width`` (default: the terminal's, 100 when unknown)
continue below with the experiment column repeated. The figures come from DVC
(``dvc exp show``'s data and each row's ``dvc.lock``, read through its Python API), not
from MLflow.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnlab.core.errors import RnnlabError
from rnnlab.core.process import configure_process, output_for_a_reader_that_may_stop
from rnnlab.tracking.paths import require_repo_root

# The headline figure of each data set's variants: (metric key stem, label, lower is better).
HEADLINE = {"jena": ("mae", "MAE (normalized units)", True),
            "imdb": ("accuracy", "accuracy", False)}
TITLES = {"jena": "Jena", "imdb": "IMDB"}
PARAMS_FILE = "params.yaml"
MISSING = "–"
INHERITED = "^"       # after a figure its row's stage did not compute at the row's params
BEST = "*"


@dataclass
class Row:
    """One experiment as DVC shows it: its name, flattened params and metrics per file."""
    name: str
    params: dict[str, Any]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    state: str = ""                  # "" when it ran; else queued, running, failed...
    kind: str = "experiment"         # "workspace", "baseline" (a commit) or "experiment"
    rev: str = ""                    # the git commit ("workspace" for the workspace)
    inherited: set[str] = field(default_factory=set)   # metrics files not computed here


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _row(name: str, data: Mapping[str, Any] | None, state: str = "",
         kind: str = "experiment", rev: str = "") -> Row:
    data = data or {}
    params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data") or {}
    metrics = {Path(path).stem: (content or {}).get("data") or {}
               for path, content in (data.get("metrics") or {}).items()}
    return Row(name, flatten(params), metrics, state, kind, rev)


def rows_from_exp_show(shown: Sequence[Mapping[str, Any]]) -> list[Row]:
    """Rows from ``dvc exp show --json``'s structure (one baseline per entry, each with its
    experiments)."""
    rows = []
    for baseline in shown:
        rev = baseline.get("rev") or "?"
        name = baseline.get("name") or (rev if rev == "workspace" else rev[:7])
        rows.append(_row(name, baseline.get("data"),
                         kind="workspace" if rev == "workspace" else "baseline", rev=rev))
        for exp in baseline.get("experiments") or []:
            revs = exp.get("revs") or [{}]
            first = revs[0]
            state = ((exp.get("executor") or {}).get("state") or "")
            state = "" if state in ("success", "") else state
            if first.get("error") and not state:
                state = "failed"
            rows.append(_row(exp.get("name") or first.get("name") or (first.get("rev") or "?")[:7],
                             first.get("data"), state, rev=first.get("rev") or ""))
    return rows


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _params_match(recorded: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    """Whether a stage's params as ``dvc.lock`` records them (``{key: value}``, a value
    possibly a whole section) are ``params`` (flattened) now."""
    for key, value in recorded.items():
        if isinstance(value, Mapping):
            ours = {k: v for k, v in params.items() if k.startswith(f"{key}.")}
            if not _same(flatten(value, f"{key}."), ours):
                return False
        elif key not in params or not _same(value, params[key]):
            return False
    return True


def not_computed_here(lock: Mapping[str, Any], params: Mapping[str, Any]) -> set[str]:
    """The metrics files (by stem: ``gru``, ``naive``) whose figures a row's ``dvc.lock``
    says were not computed at its ``params``: their stage's recorded params differ from
    them, or an input it read is not what the stage that makes that input recorded (a
    stage upstream reran, for other params), or such an upstream stage is itself stale.

    This is how ``dvc exp run -S jena.lookback=720 train@gru`` looks: DVC reruns
    ``windows_jena`` and ``train@gru``, and the commit keeps every other stage's record,
    with the baseline's params and the baseline's windows. (The code the stages read is
    not compared: an experiment runs the code of its commit.)"""
    stages: Mapping[str, Any] = lock.get("stages") or {}
    made_by: dict[str, tuple[str, str | None]] = {}          # out path -> (stage, md5)
    for name, stage in stages.items():
        for out in stage.get("outs") or []:
            made_by[out["path"]] = (name, out.get("md5"))

    stale: dict[str, bool] = {}

    def is_stale(name: str) -> bool:
        if name in stale:
            return stale[name]
        stale[name] = False                                   # no cycles in a DVC graph
        stage = stages[name]
        recorded = (stage.get("params") or {}).get(PARAMS_FILE) or {}
        verdict = not _params_match(recorded, params)
        for dep in stage.get("deps") or []:
            if verdict:
                break
            path = dep["path"]
            for out, (maker, md5) in made_by.items():
                if maker == name or not (path == out or path.startswith(f"{out}/")):
                    continue
                if (path == out and md5 != dep.get("md5")) or is_stale(maker):
                    verdict = True
                    break
        stale[name] = verdict
        return verdict

    return {Path(out["path"]).stem for name, stage in stages.items() if is_stale(name)
            for out in stage.get("outs") or [] if out["path"].startswith("metrics/")}


def read_experiments(root: Path, *, num: int = 1, all_commits: bool = False) -> list[Row]:
    """What ``dvc exp show`` shows, through DVC's Python API (no subprocess)."""
    import yaml
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        states = repo.experiments.show(num=num, all_commits=all_commits)
        shown = json.loads(json.dumps([s.dumpd() for s in states], default=str))
        rows = rows_from_exp_show(shown)
        for row in rows:
            if not row.params or not row.metrics:
                continue
            try:
                if row.rev == "workspace":
                    text = (root / "dvc.lock").read_text()
                else:
                    text = repo.scm.get_fs(row.rev).read_text("dvc.lock")
            except (OSError, ValueError):
                continue                            # no dvc.lock: nothing to tell
            row.inherited = not_computed_here(yaml.safe_load(text) or {}, row.params)
    return rows


def changed_params(rows: Sequence[Row]) -> list[str]:
    """The params keys whose values differ between the rows that have params."""
    with_params = [r for r in rows if r.params]
    keys = sorted({k for r in with_params for k in r.params})
    return [k for k in keys if len({json.dumps(r.params.get(k), sort_keys=True)
                                    for r in with_params}) > 1]


def swept_params(rows: Sequence[Row]) -> tuple[list[str], list[str]]:
    """(the changed params that differ between the experiments and the workspace, the
    changed params that are the same in all of them and differ only from a baseline
    commit). With fewer than two such rows, or when none differs between them, every
    changed param is in the first list."""
    keys = changed_params(rows)
    ours = [r for r in rows if r.params and r.kind != "baseline"]
    among = [k for k in keys if len({json.dumps(r.params.get(k), sort_keys=True)
                                     for r in ours}) > 1]
    if not among:
        return keys, []
    return among, [k for k in keys if k not in among]


def variants(rows: Sequence[Row], dataset: str) -> list[str]:
    """The variants of ``dataset`` in any row's params, in params order (Jena: naive first)."""
    names: dict[str, None] = {"naive": None} if dataset == "jena" else {}
    for row in rows:
        for key, value in row.params.items():
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == "models" and parts[2] == "dataset" \
                    and value == dataset:
                names[parts[1]] = None
    return list(names)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def headline_table(rows: Sequence[Row], dataset: str, split: str
                   ) -> tuple[list[str], list[list[str]], str] | None:
    """(variant columns, cells per row, the best line) of ``dataset``; None without figures.

    The figures compare as shown (3 decimals). A figure a row did not compute
    (``Row.inherited``) gets ``^`` and is never the best; ``*`` goes on the best of the
    others in a column, and on none when they all tie (or only one is there)."""
    stem, label, lower = HEADLINE[dataset]
    key = f"{split}_{stem}"
    names = variants(rows, dataset)
    values = [[_number(r.metrics.get(v, {}).get(key)) for v in names] for r in rows]
    shown = [j for j in range(len(names)) if any(vals[j] is not None for vals in values)]
    if not shown:
        return None
    own = [[vals[j] is not None and names[j] not in row.inherited for j in range(len(names))]
           for row, vals in zip(rows, values)]
    best_of: dict[int, float] = {}
    marked: set[int] = set()
    for j in shown:
        column = {round(v, 3) for vals, mine in zip(values, own) if mine[j]
                  and (v := vals[j]) is not None}
        if column:
            best_of[j] = min(column) if lower else max(column)
        if len(column) > 1:
            marked.add(j)

    def cell(vals: list[float | None], mine: list[bool], j: int) -> str:
        value = vals[j]
        if value is None:
            return MISSING
        if not mine[j]:
            return f"{value:.3f}{INHERITED}"
        return f"{value:.3f}" + (BEST if j in marked and round(value, 3) == best_of[j] else " ")

    cells = [[cell(vals, mine, j) for j in shown] for vals, mine in zip(values, own)]
    ranked = [j for j in shown if j in best_of]
    if not ranked:
        return [names[j] for j in shown], cells, "best model: none computed at its row's params"
    models = [j for j in ranked if names[j] != "naive"] or ranked   # the baseline is no model
    j = (min if lower else max)(models, key=lambda j: best_of[j])
    where = [r for r, vals, mine in zip(rows, values, own)
             if mine[j] and round(vals[j], 3) == best_of[j]]        # type: ignore[arg-type]
    where.sort(key=lambda r: r.kind == "workspace")                 # an experiment's name first
    best = f"best model: {names[j]}, {split} {stem} {best_of[j]:.3f}, in "
    if j not in marked and len(where) > 1:
        best += "every row that computed it"
    else:
        best += ", ".join(r.name for r in where[:3]) + (f" and {len(where) - 3} more"
                                                      if len(where) > 3 else "")
    return [names[j] for j in shown], cells, best


def _header_lines(name: str, width: int) -> list[str]:
    """A column name cut at '_' or '.' into lines of at most ``width`` characters."""
    lines: list[str] = []
    for part in name.replace(".", "._").split("_"):
        part = part or "_"
        if lines and len(lines[-1]) + 1 + len(part) <= width and not lines[-1].endswith("."):
            lines[-1] += "_" + part
        else:
            lines.append(part)
    return [line.rstrip("_") or "_" for line in lines]


def render(headers: Sequence[str], first: Sequence[str], cells: Sequence[Sequence[str]],
           width: int, first_title: str = "experiment") -> list[str]:
    """A table of ``first`` (row names) and ``cells`` under ``headers`` (cut into lines),
    split into blocks no wider than ``width``, the row names repeated in each block."""
    name_width = min(max(len(first_title), *(len(n) for n in first)), 24)
    names = [n if len(n) <= name_width else n[:name_width - 1] + "…" for n in first]
    widths = []
    for j, header in enumerate(headers):
        cell_width = max((len(row[j]) for row in cells), default=1)
        widths.append(max(cell_width, min(len(header), max(cell_width, 9))))
    heads = [_header_lines(h, w) for h, w in zip(headers, widths)]
    widths = [max(w, *(len(x) for x in h)) for w, h in zip(widths, heads)]
    blocks: list[list[int]] = []
    block: list[int] = []
    used = name_width
    for j, w in enumerate(widths):
        if block and used + 2 + w > width:
            blocks.append(block)
            block, used = [], name_width
        block.append(j)
        used += 2 + w
    blocks.append(block)
    out: list[str] = []
    for b, block in enumerate(blocks):
        if b:
            out.append("")
        depth = max(len(heads[j]) for j in block)
        for line in range(depth):
            title = first_title if line == depth - 1 else ""
            parts = [title.ljust(name_width)]
            for j in block:
                pad = depth - len(heads[j])
                text = heads[j][line - pad] if line >= pad else ""
                parts.append(text.rjust(widths[j]))
            out.append("  ".join(parts).rstrip())
        for name, row in zip(names, cells):
            out.append("  ".join([name.ljust(name_width)]
                                 + [row[j].rjust(widths[j]) for j in block]).rstrip())
    return out


def _param_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, its middle cut (a URL keeps its file name)."""
    if len(text) <= width:
        return text
    keep = max(width - 1, 2)
    return text[:keep // 2] + "…" + text[len(text) - (keep - keep // 2):]


def baseline_only_lines(rows: Sequence[Row], keys: Sequence[str], width: int) -> list[str]:
    """``keys`` (the same in the workspace and every experiment) as one line each: the
    value they share, then each baseline's own."""
    ours = next(r for r in rows if r.params and r.kind != "baseline")
    bases = [r for r in rows if r.params and r.kind == "baseline"]
    title = ", ".join(r.name for r in bases)
    lines = [f"the same in the workspace and every experiment, other in {title}:"]
    key_width = max(len(k) for k in keys)
    for key in keys:
        mine = _param_text(ours.params.get(key))
        theirs = "; ".join(f"{r.name}: {_param_text(r.params.get(key))}" for r in bases
                           if not _same(r.params.get(key), ours.params.get(key)))
        room = max(width - key_width - 8, 30)       # for both values
        theirs = _shorten(theirs, max(room - len(mine), room // 2))
        mine = _shorten(mine, room - len(theirs))
        lines.append(f"  {key.ljust(key_width)}  {mine}  ({theirs})")
    return lines


def leaderboard(rows: Sequence[Row], *, split: str = "val", width: int = 100) -> str:
    """The whole text: the swept params, the params that differ only from a baseline,
    then each data set's headline figures."""
    names = [r.name + (f" ({r.state})" if r.state else "") for r in rows]
    lines: list[str] = []
    keys, baseline_only = swept_params(rows)
    if keys:
        lines.append("params that differ between the experiments:")
        headers = [k.removeprefix("models.") for k in keys]
        cells = [[_param_text(r.params.get(k)) if r.params else MISSING for k in keys]
                 for r in rows]
        lines += render(headers, names, cells, width)
    else:
        lines.append("no param differs between the rows")
    if baseline_only:
        lines += baseline_only_lines(rows, baseline_only, width)
    inherited = False
    for dataset in HEADLINE:
        table = headline_table(rows, dataset, split)
        if table is None:
            continue
        headers, cells, best = table
        stem, label, lower = HEADLINE[dataset]
        lines += ["", f"{TITLES[dataset]}: {split} {label}, {'lower' if lower else 'higher'} "
                      f"is better; {BEST} the best of its column"]
        lines += render([h.removeprefix(f"{dataset}_") for h in headers], names, cells, width)
        lines.append(best)
        inherited |= any(c.endswith(INHERITED) for row in cells for c in row)
    if inherited:
        lines += [""] + textwrap.wrap(
            f"{INHERITED} not computed at its row's params: the variant's stage did not run "
            "for that row (its record in the row's dvc.lock has other params or other input "
            "data, as when an experiment reruns one stage); the figure is the one the row "
            "started from", width=width)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    configure_process()
    parser = argparse.ArgumentParser(prog="python -m rnnlab.tools.leaderboard",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="which figure to compare (default: val, the one that picks "
                             "the best epoch)")
    parser.add_argument("--width", type=int, default=shutil.get_terminal_size((100, 24)).columns,
                        help="the widest line (default: the terminal's width)")
    parser.add_argument("-n", "--num", type=int, default=1,
                        help="the experiments of the last N commits (as dvc exp show -n)")
    parser.add_argument("-A", "--all-commits", action="store_true",
                        help="the experiments of every commit")
    args = parser.parse_args(argv)
    try:
        root = require_repo_root()
    except RnnlabError as e:
        sys.exit(f"error: {e}")
    rows = read_experiments(root, num=args.num, all_commits=args.all_commits)
    with output_for_a_reader_that_may_stop():
        print(leaderboard(rows, split=args.split, width=max(args.width, 40)))


if __name__ == "__main__":
    main()
