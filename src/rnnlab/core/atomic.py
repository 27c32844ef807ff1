"""Atomic file writes (a temp file beside the destination, renamed into place at the
end) and file digests.

A killed or failing writer leaves the destination as it was (absent or the old file),
never half-written; DVC then sees either the old output or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(dest: Path) -> Iterator[Path]:
    """Yield a temp path beside ``dest``; rename it to ``dest`` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def remove_if_empty(directory: Path) -> None:
    """Remove ``directory`` if it exists and is empty (a finished stage leaves no husk)."""
    try:
        Path(directory).rmdir()
    except OSError:
        pass


def write_text(dest: Path, text: str) -> None:
    with atomic_output(dest) as tmp:
        tmp.write_text(text)


def write_json(dest: Path, data: Any, indent: int | None = 2) -> None:
    write_text(dest, json.dumps(data, indent=indent) + "\n")


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
