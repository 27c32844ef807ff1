"""docs/hostile-inputs.md lists every test marked ``hostile``, with its number of cases:
a row for a test that does not exist, a marked test without a row, or a changed number of
cases fails here, so the table cannot drift from the suite."""

from __future__ import annotations

import re
import subprocess
import sys
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


def collected() -> Counter:
    """The marked tests as pytest collects them (every parametrization one item)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m",
                           "hostile", "-p", "no:cacheprovider", "tests"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    items = [line.split("[", 1)[0] for line in proc.stdout.splitlines()
             if line.startswith("tests/") and "::" in line]
    return Counter(item.removeprefix("tests/") for item in items)


def test_the_table_lists_every_hostile_test_with_its_cases():
    rows, tests = documented(), collected()
    assert len(rows) > 50
    missing = sorted(set(tests) - set(rows))
    unknown = sorted(set(rows) - set(tests))
    assert not missing, f"marked hostile, no row in {TABLE.name}: {missing}"
    assert not unknown, f"rows naming no hostile test: {unknown}"
    wrong = {t: (rows[t], tests[t]) for t in rows if rows[t] != tests[t]}
    assert not wrong, f"cases in the table vs collected (describe the new ones): {wrong}"
