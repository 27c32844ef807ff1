"""The errors rnnlab raises for bad input; stages print them without a traceback."""

from __future__ import annotations

import re

# scheme://user:password@host...: everything between '//' and the last '@' of the authority
# (which ends at the path, the query, the fragment, or the end of a word in a longer text).
# A scheme starts where a run of scheme characters starts: linear work on a long line.
_CREDENTIALS = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")


def redact(text: str) -> str:
    """``text`` with the ``user:password@`` (if any) of every URL in it shown as ``***@``.

    Every message and log line that names a URL goes through this: params.yaml may hold a
    mirror's credentials, a command line a remote's, and errors end up in CI logs and bug
    reports. ``text`` is a URL or any line holding URLs (a command, a tool's output).
    """
    return _CREDENTIALS.sub(r"\1***@", text)


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
