"""Where the repository root is, also from DVC's temporary experiment copies."""

from __future__ import annotations

from pathlib import Path

from rnnlab.core.errors import RnnlabError


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


def require_repo_root(start: Path | None = None) -> Path:
    """``repo_root``, refused unless it holds ``dvc.yaml`` and ``params.yaml``: the tools
    write the store, ``.dvc/tmp`` and DVC's queries there, and outside a clone that was the
    folder they ran in (an empty store, a stray ``.dvc`` taken for a repository later)."""
    start = (start or Path.cwd()).resolve()
    root = repo_root(start)
    if not ((root / "dvc.yaml").is_file() and (root / "params.yaml").is_file()):
        where = "above it" if root == start else f"in {root}, the repository holding it"
        raise RnnlabError(f"{start} is not inside an rnnlab repository (no dvc.yaml and "
                          f"params.yaml {where}); run this from your clone")
    return root
