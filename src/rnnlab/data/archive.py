"""The layout of the aclImdb tarball: which members a download unpacks, how many reviews a
complete copy holds, and the record the download leaves beside them. Shared by the download
and tokenize stages, so the download never depends on tokenisation."""

from __future__ import annotations

import json
import re
from pathlib import Path

WANTED = re.compile(r"^(?:\./)?aclImdb/(train|test)/(pos|neg)/\d+_\d+\.txt$")
REVIEWS_PER_FOLDER = 12_500   # the canonical archive: 25,000 train + 25,000 test
ARCHIVE_FILE = "archive.json"   # beside the unpacked reviews: the tarball's md5 and count


def archive_md5(raw: Path) -> str | None:
    """The md5 of the tarball the reviews under ``raw`` came from (None if unrecorded)."""
    path = Path(raw) / ARCHIVE_FILE
    return json.loads(path.read_text())["md5"] if path.exists() else None
