"""The code a stage script runs: its import closure inside this repository, from the AST
(imports inside functions included), so dvc.yaml's deps can be checked against it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "src"


def _module_file(name: str, stages: Path) -> Path | None:
    parts = name.split(".")
    if parts[0] == "rnnlab":
        base = LIBRARY.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None
    local = stages / f"{name}.py"                  # stages/_params.py, imported as _params
    return local if len(parts) == 1 and local.is_file() else None


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}  # submodules
    return names


def import_closure(script: Path) -> set[str]:
    """Repository files (relative paths) that ``script`` imports, transitively, itself included."""
    stages = script.parent
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            found = _module_file(name, stages)
            if found is not None:
                todo.append(found)
            # importing rnnlab.x.y runs rnnlab/__init__.py and rnnlab/x/__init__.py first
            parts = name.split(".")
            if parts[0] == "rnnlab":
                for depth in range(1, len(parts)):
                    init = LIBRARY.joinpath(*parts[:depth], "__init__.py")
                    if init.is_file():
                        todo.append(init)
    closure = {str(p.relative_to(ROOT)) for p in seen}
    if "src/rnnlab/nn/fused.py" in closure:     # it compiles these at first use
        closure |= {str(p.relative_to(ROOT)) for p in (LIBRARY / "rnnlab" / "nn" / "csrc").iterdir()}
    return closure
