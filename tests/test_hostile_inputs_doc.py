"""docs/hostile-inputs.md lists every test marked ``hostile``, with its number of cases:
a row for a test that does not exist, a marked test without a row, or a changed number of
cases fails here, so the table cannot drift from the suite."""

from __future__ import annotations

import importlib
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "hostile-inputs.md"
ROW = re.compile(r"^\|(?P<case>[^|]+)\|(?P<outcome>.+)\|\s*`(?P<test>test_\w+\.py::test_\w+)`"
                 r"\s*\|\s*(?P<n>\d+)\s*\|$")


def documented() -> Counter:
    rows: Counter = Counter()
    for line in TABLE.read_text().splitlines():
        if match := ROW.match(line):
            assert match["test"] not in rows, f"{match['test']} has two rows"
            rows[match["test"]] = int(match["n"])
        elif line.startswith("| ") and "`test_" in line:
            raise AssertionError(f"a table row the check cannot read: {line}")
    return rows


def cases(function) -> int:
    """How many items pytest makes of ``function``: the product of its parametrizations."""
    n = 1
    for mark in getattr(function, "pytestmark", []):
        if mark.name == "parametrize":
            n *= len(mark.args[1])
    return n


def collected() -> Counter:
    """The tests marked ``hostile`` (on the function or the whole module), each with its
    number of cases, read from the test modules themselves (no pytest run inside this one)."""
    found: Counter = Counter()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        module = importlib.import_module(path.stem)
        module_marks = getattr(module, "pytestmark", [])
        module_marks = module_marks if isinstance(module_marks, list) else [module_marks]
        for name, function in vars(module).items():
            if not (name.startswith("test_") and callable(function)):
                continue
            marks = [*module_marks, *getattr(function, "pytestmark", [])]
            if any(m.name == "hostile" for m in marks):
                found[f"{path.name}::{name}"] = cases(function)
    return found


def test_the_table_lists_every_hostile_test_with_its_cases():
    rows, tests = documented(), collected()
    assert len(rows) > 50
    missing = sorted(set(tests) - set(rows))
    unknown = sorted(set(rows) - set(tests))
    assert not missing, f"marked hostile, no row in {TABLE.name}: {missing}"
    assert not unknown, f"rows naming no hostile test: {unknown}"
    wrong = {t: (rows[t], tests[t]) for t in rows if rows[t] != tests[t]}
    assert not wrong, f"cases in the table vs collected (describe the new ones): {wrong}"
