"""DVC experiments side by side, narrow enough for a terminal.

    python -m rnnlab.tools.leaderboard [--split test] [--width 100] [-A | -n N]   (./dev.sh leaderboard)

One row per experiment (the workspace, the baseline commit and the experiments DVC shows
for it, as ``dvc exp show`` lists them): first the params that differ between the rows,
then, per data set, each variant's headline figure: Jena's MAE (normalized units, lower
is better, ``naive`` included), IMDB's accuracy (higher is better); validation by default,
test with ``--split test``. ``*`` marks the best row of each column, and a last line names
the best variant (``naive`` aside) and experiment. Tables wider than ``--width`` (default: the terminal's,
100 when unknown) continue below with the experiment column repeated. The figures come
from DVC (``dvc exp show``'s data, read through its Python API), not from MLflow.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnlab.core.process import configure_process
from rnnlab.tracking.paths import repo_root

# The headline figure of each data set's variants: (metric key stem, label, lower is better).
HEADLINE = {"jena": ("mae", "MAE (normalized units)", True),
            "imdb": ("accuracy", "accuracy", False)}
TITLES = {"jena": "Jena", "imdb": "IMDB"}
PARAMS_FILE = "params.yaml"
MISSING = "–"


@dataclass
class Row:
    """One experiment as DVC shows it: its name, flattened params and metrics per file."""
    name: str
    params: dict[str, Any]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    state: str = ""                  # "" when it ran; else queued, running, failed...


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _row(name: str, data: Mapping[str, Any] | None, state: str = "") -> Row:
    data = data or {}
    params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data") or {}
    metrics = {Path(path).stem: (content or {}).get("data") or {}
               for path, content in (data.get("metrics") or {}).items()}
    return Row(name, flatten(params), metrics, state)


def rows_from_exp_show(shown: Sequence[Mapping[str, Any]]) -> list[Row]:
    """Rows from ``dvc exp show --json``'s structure (one baseline per entry, each with its
    experiments)."""
    rows = []
    for baseline in shown:
        rev = baseline.get("rev") or "?"
        name = baseline.get("name") or (rev if rev == "workspace" else rev[:7])
        rows.append(_row(name, baseline.get("data")))
        for exp in baseline.get("experiments") or []:
            revs = exp.get("revs") or [{}]
            first = revs[0]
            state = ((exp.get("executor") or {}).get("state") or "")
            state = "" if state in ("success", "") else state
            if first.get("error") and not state:
                state = "failed"
            rows.append(_row(exp.get("name") or first.get("name") or (first.get("rev") or "?")[:7],
                             first.get("data"), state))
    return rows


def read_experiments(root: Path, *, num: int = 1, all_commits: bool = False) -> list[Row]:
    """What ``dvc exp show`` shows, through DVC's Python API (no subprocess)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        states = repo.experiments.show(num=num, all_commits=all_commits)
        shown = json.loads(json.dumps([s.dumpd() for s in states], default=str))
    return rows_from_exp_show(shown)


def changed_params(rows: Sequence[Row]) -> list[str]:
    """The params keys whose values differ between the rows that have params."""
    with_params = [r for r in rows if r.params]
    keys = sorted({k for r in with_params for k in r.params})
    return [k for k in keys if len({json.dumps(r.params.get(k), sort_keys=True)
                                    for r in with_params}) > 1]


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
    """(variant columns, cells per row, the best line) of ``dataset``; None without figures."""
    stem, label, lower = HEADLINE[dataset]
    key = f"{split}_{stem}"
    names = variants(rows, dataset)
    values = [[_number(r.metrics.get(v, {}).get(key)) for v in names] for r in rows]
    shown = [j for j in range(len(names)) if any(vals[j] is not None for vals in values)]
    if not shown:
        return None
    best_of: dict[int, float] = {}
    for j in shown:
        column = [v for vals in values if (v := vals[j]) is not None]
        best_of[j] = min(column) if lower else max(column)
    cells = [[MISSING if vals[j] is None else
              f"{vals[j]:.3f}" + ("*" if vals[j] == best_of[j] else " ") for j in shown]
             for vals in values]
    models = [j for j in shown if names[j] != "naive"] or shown     # the baseline is no model
    j = (min if lower else max)(models, key=lambda j: best_of[j])
    i = next(i for i, vals in enumerate(values) if vals[j] == best_of[j])
    best = f"best model: {names[j]}, {split} {stem} {best_of[j]:.3f}, in {rows[i].name}"
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


def leaderboard(rows: Sequence[Row], *, split: str = "val", width: int = 100) -> str:
    """The whole text: changed params, then each data set's headline figures."""
    names = [r.name + (f" ({r.state})" if r.state else "") for r in rows]
    lines: list[str] = []
    keys = changed_params(rows)
    if keys:
        lines.append("params that differ between the rows:")
        headers = [k.removeprefix("models.") for k in keys]
        cells = [[_param_text(r.params.get(k)) if r.params else MISSING for k in keys]
                 for r in rows]
        lines += render(headers, names, cells, width)
    else:
        lines.append("no param differs between the rows")
    for dataset in HEADLINE:
        table = headline_table(rows, dataset, split)
        if table is None:
            continue
        headers, cells, best = table
        stem, label, lower = HEADLINE[dataset]
        lines += ["", f"{TITLES[dataset]}: {split} {label}, {'lower' if lower else 'higher'} "
                      "is better; * the best row of each column"]
        lines += render([h.removeprefix(f"{dataset}_") for h in headers], names, cells, width)
        lines.append(best)
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
    rows = read_experiments(repo_root(), num=args.num, all_commits=args.all_commits)
    print(leaderboard(rows, split=args.split, width=max(args.width, 40)))


if __name__ == "__main__":
    main()
