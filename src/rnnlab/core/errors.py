"""The errors rnnlab raises for bad input; stages print them without a traceback."""

from __future__ import annotations

import re

# scheme://user:password@host...: everything between '//' and the last '@' of the authority.
_CREDENTIALS = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def redact(url: str) -> str:
    """``url`` with its ``user:password@`` (if any) shown as ``***@``.

    Every message and log line that names a URL goes through this: params.yaml may hold a
    mirror's credentials, and errors end up in CI logs and bug reports.
    """
    return _CREDENTIALS.sub(r"\1***@", url)


class RnnlabError(Exception):
    """Bad input or a failed precondition, with a message that names the file and the fix."""


class DownloadError(RnnlabError):
    """A download that failed for good (after retries where retrying made sense)."""


class ChecksumError(DownloadError):
    """Downloaded or extracted bytes whose md5 differs from the expected one."""


class UnsafeArchiveError(DownloadError):
    """An archive member that would land outside the target directory, or a link/device."""


class LimitError(DownloadError):
    """A download or extraction that ran past one of its bounds (time, rate, size).

    ``limit`` is the name of the argument that set the bound (``deadline_s``,
    ``min_rate_kb_s``, ``max_mb``), so a caller can point at its own setting for it.
    """

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        self.limit = limit


class DataFormatError(RnnlabError):
    """A data file that does not have the expected schema or values."""
