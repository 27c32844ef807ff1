"""Where the repository root is, also from DVC's temporary experiment copies."""

from __future__ import annotations

from pathlib import Path


def repo_root(start: Path | None = None) -> Path:
    """The repository holding ``start`` (default: the working directory).

    ``dvc exp run --temp`` and queued experiments run in a copy under
    ``<root>/.dvc/tmp/exps/<tmpdir>/``; their root is the outer ``<root>`` so that every
    way of running shares one MLflow store.
    """
    start = (start or Path.cwd()).resolve()
    parts = start.parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    for candidate in (start, *start.parents):
        if (candidate / ".dvc").is_dir() or (candidate / ".git").exists():
            return candidate
    return start
