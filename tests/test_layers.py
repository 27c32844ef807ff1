"""The library's rooms and the arrows between them (docs/pipeline.md draws them): every
import in src/rnnlab, at module level or inside a function, runs down the layers, and
DVC, MLflow and Ray are imported only where the boundary says."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "src" / "rnnlab"

# room -> the rooms it may import (itself included). Lower rooms never import higher ones.
MAY_IMPORT = {
    "core": {"core"},
    "data": {"core", "data"},
    "nn": {"core", "nn"},
    "training": {"core", "data", "nn", "training"},
    "tracking": {"core", "tracking"},
    "lecture": {"core", "data", "nn", "training", "tracking", "lecture"},
    "tools": {"core", "data", "nn", "training", "tracking", "lecture", "tools"},
}
# Third-party packages that belong to one side of the boundary only.
ONLY_IN = {"dvc": {"tools"}, "mlflow": {"tracking", "tools"}, "ray": {"tools"},
           "hydra": {"tools"}, "sqlalchemy": {"tracking", "tools"},
           "sklearn": {"lecture"}, "selenium": set()}


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "rnnlab":       # from rnnlab import tracking
                found += [(node.lineno, f"rnnlab.{a.name}") for a in node.names]
    return found


MODULES = sorted(p for p in LIBRARY.rglob("*.py") if p.parent != LIBRARY)


def room_of(path: Path) -> str:
    return path.relative_to(LIBRARY).parts[0]


def test_every_module_lives_in_a_room():
    flat = sorted(p.name for p in LIBRARY.glob("*.py") if p.name != "__init__.py")
    assert flat == [], f"modules outside a room: {flat}"
    assert {room_of(p) for p in MODULES} == set(MAY_IMPORT)
    assert imports(LIBRARY / "__init__.py") == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_imports_run_down_the_layers(path):
    room = room_of(path)
    wrong = []
    for line, name in imports(path):
        parts = name.split(".")
        if parts[0] == "rnnlab":
            if len(parts) > 1 and parts[1] not in MAY_IMPORT[room]:
                wrong.append(f"line {line}: {name} ({room} may import "
                             f"{', '.join(sorted(MAY_IMPORT[room]))})")
        elif parts[0] in ONLY_IN and room not in ONLY_IN[parts[0]]:
            wrong.append(f"line {line}: {name} (only {', '.join(sorted(ONLY_IN[parts[0]])) or 'tests'})")
    assert not wrong, f"{path.relative_to(LIBRARY)}: " + "; ".join(wrong)


def test_the_contract_catches_an_arrow_up(tmp_path):
    """The check itself: a data module importing the training engine is refused."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from rnnlab.training.engine import fit\n")
    assert imports(bad) == [(2, "rnnlab.training.engine")]
    assert "training" not in MAY_IMPORT["data"]
