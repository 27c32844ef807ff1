"""Streaming, checksummed, bounded, atomic downloads and safe archive extraction.

Every writer here streams into a temporary file beside its destination and renames it
into place only after the checksum matched, so an interrupted or failed download leaves
nothing behind: the destination either holds verified bytes or does not exist, and a
previous good copy stays in place, untouched, until the new one is complete (the IMDB
folder: the old one is renamed aside, the new one renamed in, then the old one removed).
(A killed process cannot clean up; ``remove_stale_temps`` clears what one left, at the
next run, and puts back an old copy that a kill left aside.)

Every wait and every write is bounded: a download has an overall deadline (retries and
their back-off included), a minimum average rate and a size limit, and an extraction stops
at the same size limit. A server that stalls, drips one byte at a time, or sends without
end fails with one line that names the URL, the bound and the fix.

URLs in messages and logs go through ``redact``: credentials in a URL are sent (as HTTP
Basic auth, to the host named, never to a redirect target) but never printed.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import stat
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Self
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from tqdm import tqdm

from rnnlab.core.atomic import atomic_output, file_md5, write_json
from rnnlab.core.config import ConfigError
from rnnlab.core.errors import (
    ChecksumError,
    DataFormatError,
    DownloadError,
    LimitError,
    UnsafeArchiveError,
    redact,
)
from rnnlab.data.archive import ARCHIVE_FILE, REVIEWS_PER_FOLDER, WANTED, archive_md5

log = logging.getLogger(__name__)
CHUNK = 1 << 20  # 1 MiB per read: large enough that Python overhead is negligible
# The average rate is judged only after this long: a connection's first seconds (DNS, TLS,
# TCP slow start) say little about the rest.
RATE_GRACE_S = 30.0
OFFLINE_HINT = ("offline? Point the URL at a local copy, file:///absolute/path, and set that "
                "file's md5 (README, 'Data without the internet')")
# The temp names of this module and rnnlab.core.atomic beside a destination: '.<name>.' then
# tempfile's 8 random characters, '.part' for files, 'dl.' before them for the IMDB
# tarball's folder, 'old.' for a previous copy set aside while the new one moves in.
# Nothing else in a data folder is named so.
_TEMP_NAME = r"\.{name}\.(?P<kind>dl\.|old\.)?[a-z0-9_]{{8}}(?:\.part)?"
# What zipfile can decompress: stored, Deflate, bzip2, LZMA.
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_REZIP = ("re-zip the CSV with plain Deflate (zip -Z deflate, or python -m zipfile -c), or "
          "point the URL at the bare CSV")


def _one_line(e: object) -> str:
    """An inner error's text for our one-line messages (tarfile's, for one, spans lines)."""
    return " ".join(str(e).split())


class _Transient(Exception):
    """A failure worth retrying (connection reset, truncated body, HTTP 5xx...)."""


def _check_md5(what: str, expected: str | None, actual: str, size: int) -> None:
    """Called only after the file passed its format check: the advice to adopt the actual
    md5 is right for a good copy of other data, wrong for an error page or a damaged file."""
    if expected is not None and expected.lower() != actual:
        raise ChecksumError(
            f"{what}: md5 mismatch: expected {expected.lower()}, got {actual} ({size:,} bytes). "
            "If this is the copy you meant to use, set the expected md5 to the actual one."
        )


class _Budget:
    """The bounds of one download, across all its attempts: a deadline, a minimum average
    rate per attempt, a size limit. ``check`` is called after every chunk."""

    def __init__(self, url: str, deadline_s: float, min_rate_kb_s: float, max_mb: float | None,
                 rate_grace_s: float):
        self.url, self.deadline_s, self.min_rate_kb_s = redact(url), deadline_s, min_rate_kb_s
        self.max_mb, self.rate_grace_s = max_mb, rate_grace_s
        self.max_bytes = None if max_mb is None else int(max_mb * 1e6)
        self.end = time.monotonic() + deadline_s
        self.received = 0          # by the current attempt

    def left(self) -> float:
        return self.end - time.monotonic()

    def deadline_error(self, cause: object = None) -> LimitError:
        why = f" (last: {cause})" if cause else ""
        return LimitError(f"{self.url}: not finished within the deadline of {self.deadline_s:g} s"
                          f"{why}, {self.received:,} bytes received; raise the deadline for a "
                          f"slow link, or {OFFLINE_HINT}", "deadline_s")

    def check_size(self, size: int) -> None:
        if self.max_bytes is not None and size > self.max_bytes:
            raise LimitError(f"{self.url}: larger than the size limit of {self.max_mb:g} MB "
                             f"({size:,} bytes); raise the limit if this really is the data",
                             "max_mb")

    def check(self, size: int, started: float) -> None:
        self.received = size
        if self.left() <= 0:
            raise self.deadline_error()
        self.check_size(size)
        elapsed = time.monotonic() - started
        if elapsed > self.rate_grace_s and size / elapsed < self.min_rate_kb_s * 1000:
            raise LimitError(f"{self.url}: {size / elapsed / 1000:.3g} kB/s on average over "
                             f"{elapsed:.3g} s, below the minimum of {self.min_rate_kb_s:g} kB/s; "
                             f"lower the minimum for a slow link, or {OFFLINE_HINT}",
                             "min_rate_kb_s")


class _Watchdog:
    """Shuts down every socket of one attempt when the deadline passes.

    A socket timeout bounds each read, not their sum: a server that sends one byte a second
    never trips it, in the body or in the headers. Shutting the socket down wakes whatever
    read is blocked on it (connect, TLS, headers, body), wherever urllib is.
    """

    def __init__(self, seconds: float):
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.fired:
                self._shutdown(sock)

    def cancel(self) -> None:
        self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


def _watched(base: type[http.client.HTTPConnection], watchdog: _Watchdog) -> type:
    """``base`` (HTTP or HTTPS connection) whose sockets ``watchdog`` can shut down."""

    class Watched(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            create = self._create_connection

            def create_and_watch(*a, **kw):
                sock = create(*a, **kw)
                watchdog.watch(sock)
                return sock

            self._create_connection = create_and_watch

    return Watched


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        self._connection = _watched(http.client.HTTPConnection, watchdog)

    def http_open(self, req):
        return self.do_open(self._connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watchdog: _Watchdog):
        super().__init__()
        self._connection = _watched(http.client.HTTPSConnection, watchdog)

    def https_open(self, req):
        return self.do_open(self._connection, req, context=self._context)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only, and never from https down to http.

    urllib's own handler also follows ftp://, and turns a refused file:// into an
    'HTTP 302' error that blames the server. A downgrade is refused rather than warned
    about: the https:// in params.yaml is the user's statement that the bytes travel
    protected, and without an md5 nothing else would notice them changed on the way.
    ``shown`` is the URL as given, redacted, for the message."""

    def __init__(self, shown: str):
        super().__init__()
        self.shown = shown

    def http_error_302(self, req, fp, code, msg, headers):
        target = headers.get("location") or headers.get("uri")
        if target is not None:
            target = urljoin(req.full_url, target)
            if urlsplit(target).scheme.lower() not in ("http", "https"):
                fp.close()
                raise DownloadError(
                    f"{self.shown}: redirected (HTTP {code}) to {redact(target)}; "
                    "only redirects to http:// or https:// are followed. Point the URL at "
                    "the file itself")
            if urlsplit(req.full_url).scheme.lower() == "https" and \
                    urlsplit(target).scheme.lower() == "http":
                fp.close()
                raise DownloadError(
                    f"{self.shown}: redirected (HTTP {code}) from https to plain http "
                    f"({redact(target)}); a downgrade is not followed. Use an https mirror, "
                    "or put the http:// URL in params.yaml if you accept an unprotected "
                    "transfer (with its md5)")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _request(url: str) -> urllib.request.Request:
    """A Request for ``url``; credentials in it (``user:password@host``) become a Basic
    Authorization header (urllib would take them for part of the host name), sent to that
    host only: never to a redirect target."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return urllib.request.Request(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    req = urllib.request.Request(urlunsplit(parts._replace(netloc=host)))
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    req.add_unredirected_header("Authorization", f"Basic {token}")
    return req


def _copy(url: str, out: Path, budget: _Budget, watchdog: _Watchdog, timeout: float,
          progress: bool) -> tuple[str, int]:
    """One attempt: copy ``url`` into ``out``; return (md5, size). Failures worth another
    attempt raise _Transient, the rest DownloadError."""
    shown = redact(url)
    h = hashlib.md5()
    size = 0
    started = time.monotonic()
    opener = urllib.request.build_opener(_HTTPHandler(watchdog), _HTTPSHandler(watchdog),
                                         _HttpOnlyRedirects(shown))
    try:
        # The socket timeout bounds a stall (one read); the watchdog bounds the sum.
        with opener.open(_request(url), timeout=max(min(timeout, budget.left()), 0.001)) as resp, \
                open(out, "wb") as f:
            length = resp.headers.get("Content-Length")
            total = int(length) if length is not None and length.isdigit() else None
            if total is not None:
                budget.check_size(total)
            name = PurePosixPath(unquote(urlsplit(url).path)).name or "download"
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"download {name}", disable=not progress, file=sys.stderr) as bar:
                # read1: whatever has arrived, so the bounds are checked between arrivals
                # (read(CHUNK) would wait for a whole MiB from a dripping server).
                while chunk := resp.read1(CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
                    budget.check(size, started)
            if total is not None and size != total:
                raise _Transient(f"truncated body: got {size:,} of {total:,} bytes")
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code in (408, 429):
            raise _Transient(f"HTTP {e.code} {e.reason}") from e
        raise DownloadError(f"{shown}: HTTP {e.code} {e.reason}; check the URL") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, socket.gaierror):
            # Not retried: a missing network or a misspelt host does not heal in seconds.
            host = urlsplit(url).hostname
            raise DownloadError(f"{shown}: cannot resolve the host name {host!r} "
                                f"({e.reason.strerror}); {OFFLINE_HINT}") from e
        if isinstance(e.reason, FileNotFoundError) or url.startswith("file:"):
            raise DownloadError(f"{shown}: {_one_line(e.reason)}; check the path") from e
        raise _Transient(_one_line(e.reason)) from e
    except http.client.IncompleteRead as e:
        raise _Transient(f"truncated body: got {size + len(e.partial):,} bytes, "
                         f"{e.expected:,} more expected") from e
    except (ConnectionError, TimeoutError, http.client.HTTPException) as e:
        raise _Transient(f"{type(e).__name__}: {_one_line(e)}") from e
    return h.hexdigest(), size


def _attempt(url: str, out: Path, budget: _Budget, timeout: float,
             progress: bool) -> tuple[str, int]:
    """One bounded attempt. Whatever breaks once the deadline has passed (the watchdog shut
    the socket: an empty read, a reset) is reported as the deadline, its real cause."""
    budget.received = 0
    watchdog = _Watchdog(budget.left())
    try:
        result = _copy(url, out, budget, watchdog, timeout, progress)
        if watchdog.fired:   # without a Content-Length, a shut socket reads as a clean end
            raise budget.deadline_error()
        return result
    except LimitError:
        raise
    except Exception as e:
        if watchdog.fired or budget.left() <= 0:
            raise budget.deadline_error() from e
        raise
    finally:
        watchdog.cancel()


def fetch(url: str, dest: Path, *, md5: str | None = None, retries: int = 3,
          backoff: float = 2.0, timeout: float = 60.0, progress: bool = True,
          deadline_s: float = 3600.0, min_rate_kb_s: float = 20.0, max_mb: float | None = None,
          rate_grace_s: float = RATE_GRACE_S) -> str:
    """Download ``url`` (http, https or file) to ``dest`` atomically; return its md5.

    Transient failures (connection errors, truncated bodies, HTTP 5xx) are retried
    ``retries`` times with exponential backoff; the rest fail at once (a host name that
    does not resolve included). The whole of it, back-off included, must end within
    ``deadline_s``; each attempt must average ``min_rate_kb_s`` once ``rate_grace_s`` have
    passed (0: no minimum); more than ``max_mb`` bytes stop it. A socket ``timeout`` bounds
    each single read. A checksum mismatch raises ChecksumError and leaves nothing at ``dest``.
    """
    dest = Path(dest)
    if urlsplit(url).scheme.lower() not in ("http", "https", "file"):
        raise DownloadError(f"{redact(url)}: not an http://, https:// or file:// URL")
    budget = _Budget(url, deadline_s, min_rate_kb_s, max_mb, rate_grace_s)
    with atomic_output(dest) as tmp:
        for attempt in range(retries + 1):
            try:
                digest, size = _attempt(url, tmp, budget, timeout, progress)
                break
            except _Transient as e:
                if attempt == retries:
                    raise DownloadError(f"{budget.url}: {e} (gave up after {retries + 1} "
                                        f"attempts); {OFFLINE_HINT}") from e
                wait = backoff * 2**attempt
                if wait >= budget.left():
                    raise budget.deadline_error(e) from e
                log.warning("download %s: %s; retrying in %g s (attempt %d of %d)", budget.url,
                            e, wait, attempt + 2, retries + 1)
                time.sleep(wait)
        _check_md5(budget.url, md5, digest, size)
    return digest


def remove_stale_temps(dest: Path) -> list[str]:
    """Delete the temp files and folders an interrupted download of ``dest`` left beside it;
    return their names.

    A killed process (SIGKILL, a closed laptop, CI's timeout) skips every cleanup, and each
    left-over can be a whole download. Only this module's temp names for ``dest`` are
    touched; DVC runs one stage at a time per repository, so none of them is in use. A
    previous copy set aside by a swap that a kill cut between its two renames (``_swap_in``)
    is put back at ``dest`` if nothing is there, not removed: it is the last good data.
    """
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    pattern = re.compile(_TEMP_NAME.format(name=re.escape(dest.name)))
    removed = []
    for path in sorted(dest.parent.iterdir()):
        match = pattern.fullmatch(path.name)
        if not match:
            continue
        if match["kind"] == "old." and not os.path.lexists(dest):
            os.replace(path, dest)
            log.warning("download: put back the previous copy of %s that an interrupted run "
                        "had set aside (%s)", dest, path.name)
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    if removed:
        log.warning("download: removed %d stale temp file(s) of an interrupted run beside %s: %s",
                    len(removed), dest, ", ".join(removed))
    return removed


def _check_member(zip_path: Path | str, info: zipfile.ZipInfo) -> None:
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    mode = info.external_attr >> 16
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        reason = "an absolute path"
    elif ".." in parts:
        reason = "a '..' component that would write outside the target directory"
    elif stat.S_ISLNK(mode):
        reason = "a symbolic link"
    elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        reason = "a special file"
    else:
        return
    raise UnsafeArchiveError(
        f"{zip_path}: refusing member {info.filename!r}: {reason}. "
        "The archive is not the expected download; check the URL."
    )


def _pick_csv(zip_path: Path | str, infos: list[zipfile.ZipInfo], member: str | None) -> zipfile.ZipInfo:
    if member is not None:
        for info in infos:
            if info.filename == member:
                return info
        raise DownloadError(f"{zip_path}: no member named {member!r}")
    # The canonical zip also carries macOS resource forks (__MACOSX/._name.csv): skip them.
    csvs = [i for i in infos
            if i.filename.lower().endswith(".csv") and not i.is_dir()
            and not i.filename.startswith("__MACOSX/")
            and not PurePosixPath(i.filename).name.startswith("._")]
    if len(csvs) != 1:
        names = [i.filename for i in infos][:10]
        raise DownloadError(f"{zip_path}: expected exactly one .csv member, found {len(csvs)} "
                            f"among {names}")
    return csvs[0]


def _check_readable(label: str, info: zipfile.ZipInfo) -> None:
    """A member zipfile cannot read is one line, not zipfile's RuntimeError or
    NotImplementedError: an encrypted one (flag bit 0), or another compression than stored,
    Deflate, bzip2 or LZMA (Deflate64, method 9, is what Windows writes for large zips)."""
    if info.flag_bits & 0x1:
        raise DownloadError(f"{label}: member {info.filename!r} is encrypted (a password-"
                            "protected zip), which Python's standard library cannot extract; "
                            f"unzip it with its password and {_REZIP}")
    if info.compress_type not in _ZIP_METHODS:
        method = ("Deflate64 (method 9, what Windows writes for large zips)"
                  if info.compress_type == 9 else f"compression method {info.compress_type}")
        raise DownloadError(f"{label}: member {info.filename!r} is compressed with {method}, "
                            f"which Python's standard library cannot read; {_REZIP}")


def _too_big(label: str, what: str, max_mb: float | None) -> LimitError:
    assert max_mb is not None   # called only where a limit was set
    return LimitError(f"{label}: {what} is larger than the size limit of {max_mb:g} MB, so "
                      "nothing was extracted; raise the limit if this really is the data",
                      "max_mb")


def extract_zip_csv(zip_path: Path, dest: Path, *, md5: str | None = None,
                    member: str | None = None, label: str | None = None,
                    max_mb: float | None = None) -> str:
    """Extract the one CSV of ``zip_path`` to ``dest`` atomically; return its md5.

    Every member name is checked first: an absolute path, a ``..`` component, a link or
    a device refuses the whole archive before anything is written. The CSV is read to its
    end, so zip's CRC is checked, and stops at ``max_mb`` MB (a zip bomb's declared size
    may lie). ``label`` names the archive in errors (the URL it came from), default its path.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    label = redact(label or str(zip_path))
    limit = None if max_mb is None else int(max_mb * 1e6)
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{label}: not a zip archive ({_one_line(e)}); check the URL") from e
    with zf:
        infos = zf.infolist()
        for info in infos:
            _check_member(label, info)
        info = _pick_csv(label, infos, member)
        _check_readable(label, info)
        if limit is not None and info.file_size > limit:
            raise _too_big(label, f"{info.filename} ({info.file_size:,} bytes)", max_mb)
        h = hashlib.md5()
        size = 0
        with atomic_output(dest) as tmp:
            try:
                with zf.open(info) as src, open(tmp, "wb") as out:
                    while chunk := src.read(CHUNK):
                        size += len(chunk)
                        if limit is not None and size > limit:
                            raise _too_big(label, info.filename, max_mb)
                        out.write(chunk)
                        h.update(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                raise DownloadError(f"{label}: damaged zip archive ({info.filename}: {_one_line(e)}); "
                                    "download it again or check the URL") from e
            _check_md5(f"{label}: {info.filename}", md5, h.hexdigest(), size)
    return h.hexdigest()


def _check_csv_text(label: str, path: Path) -> None:
    """A bare download (not a zip) must look like CSV text before its md5 is judged: an
    HTML error page or a login form must not be offered for adoption as the data."""
    with open(path, "rb") as f:
        head = f.read(4096)
    first = head.split(b"\n", 1)[0]
    try:
        first.decode("utf-8")
        text = b"\0" not in head
    except UnicodeDecodeError:
        text = False
    if not (text and b"," in first and not first.lstrip().startswith(b"<")):
        raise DownloadError(f"{label}: neither a zip archive nor a CSV file (it begins "
                            f"{head[:40]!r}); check the URL")


def download_csv(url: str, dest: Path, *, md5: str | None, max_mb: float | None = None,
                 **fetch_kwargs) -> str:
    """Fetch ``url`` (a zip holding one CSV, or a bare CSV) and leave the verified CSV at ``dest``.

    ``md5`` is that of the CSV itself, as for the Jena file in the conventions. ``max_mb``
    bounds the download and the extracted CSV alike.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        raw = Path(tmp) / "download"
        fetch(url, raw, max_mb=max_mb, **fetch_kwargs)
        if zipfile.is_zipfile(raw):
            return extract_zip_csv(raw, dest, md5=md5, label=url, max_mb=max_mb)
        _check_csv_text(redact(url), raw)
        digest = file_md5(raw)
        _check_md5(redact(url), md5, digest, raw.stat().st_size)
        shutil.move(raw, dest)  # same directory: a rename
        return digest


class _StrictTarInfo(tarfile.TarInfo):
    """Remembers the header error that ended tarfile's iteration.

    Past the first member, tarfile ends its iteration silently at a damaged, cut or missing
    header, exactly as at the end-of-archive marker: a corrupt archive would pass for a
    short one. ``extract_tar_members`` turns the remembered error into a failure.
    """

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(tarfile_)
        # The end-of-archive marker: a proper end. (Real, but missing from typeshed's stubs.)
        except tarfile.EOFHeaderError:  # type: ignore[attr-defined]
            raise
        except tarfile.HeaderError as e:
            tarfile_.rnnlab_header_error = e  # type: ignore[attr-defined]
            raise


def _refusal(member: tarfile.TarInfo) -> str | None:
    """Why ``member`` refuses the whole archive, or None if it is a plain file or folder."""
    name = member.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in PurePosixPath(name).parts:
        return "a '..' component that would write outside the target directory"
    if member.issym() or member.islnk():
        return f"a link (to {member.linkname!r})"
    if not (member.isfile() or member.isdir()):
        return "a device or other special file"
    return None


def _swap_in(new: Path, dest: Path) -> None:
    """Put the complete directory ``new`` at ``dest``, replacing what is there.

    The old copy is renamed aside, the new one renamed in, and only then the old one
    removed: at every instant ``dest`` holds the old copy or the new one, never a mix or a
    half-deleted folder. A kill between the two renames leaves the old copy aside under a
    temp name (``.<name>.old.*``) that ``remove_stale_temps`` puts back.
    """
    if not os.path.lexists(dest):
        os.replace(new, dest)
        return
    aside = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old."))
    aside.rmdir()                     # a free name beside dest, ours (the temp pattern)
    os.replace(dest, aside)
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(aside, dest)       # the old copy back where it was
        raise
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def extract_tar_members(tar_path: Path, dest: Path, wanted, *, label: str | None = None,
                        max_mb: float | None = None,
                        check: Callable[[list[str]], None] | None = None,
                        finish: Callable[[Path, list[str]], None] | None = None) -> int:
    """Extract the members for which ``wanted(name)`` is true into ``dest``, atomically.

    Everything is written into a temporary directory beside ``dest`` and swapped in at the
    end (``_swap_in``): an old ``dest`` stays as it was unless the new copy is complete.
    Any member, wanted or not, with an absolute path, a ``..`` component, or that is
    a link or a device refuses the whole archive and leaves nothing behind. The archive is
    read to its very end, so a damaged header or a compressed stream whose CRC or length
    is wrong fails rather than passing for a shorter archive; the files extracted stop at
    ``max_mb`` MB. ``check(names)`` sees the extracted names before the swap and may
    refuse them; ``finish(directory, names)`` then adds files to the new copy (a record),
    still before the swap. Returns the number of files extracted.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    label = redact(label or str(tar_path))
    limit = None if max_mb is None else int(max_mb * 1e6)
    dest.parent.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    size = 0
    tmp = tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        try:
            tar = tarfile.open(tar_path, "r:*", tarinfo=_StrictTarInfo)
        except tarfile.TarError as e:
            with open(tar_path, "rb") as f:
                head = f.read(40)
            raise DownloadError(f"{label}: not a tar archive, compressed or not (it begins "
                                f"{head!r}); check the URL") from e
        with tar:
            try:
                for member in tar:
                    reason = _refusal(member)
                    if reason is not None:
                        raise UnsafeArchiveError(
                            f"{label}: refusing member {member.name!r}: {reason}. The archive "
                            "is not the expected download; check the URL.")
                    if member.isfile() and wanted(member.name):
                        size += member.size
                        if limit is not None and size > limit:
                            raise _too_big(label, f"what it unpacks ({size:,} bytes so far)",
                                           max_mb)
                        # The 'data' filter re-checks all of the above and drops modes.
                        tar.extract(member, tmp, filter="data")
                        names.append(member.name)
                damage = getattr(tar, "rnnlab_header_error", None)
                if damage is not None:
                    raise DownloadError(f"{label}: damaged or truncated archive ({_one_line(damage)} at "
                                        f"byte {tar.offset:,} of the tar); download it again "
                                        "or check the URL")
                # To the end of the compressed stream: gzip checks its CRC and length there.
                while tar.fileobj.read(CHUNK):
                    pass
            except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
                raise DownloadError(f"{label}: damaged or truncated archive ({_one_line(e)}); download it "
                                    "again or check the URL") from e
        if check is not None:
            check(names)
        if finish is not None:
            finish(Path(tmp), names)
        _swap_in(Path(tmp), dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # gone already after a successful rename
    return len(names)


def _folder(name: str) -> tuple[str, str]:
    """(split, label) of an extracted review's name."""
    match = WANTED.match(name)
    assert match is not None   # only names that WANTED matches are extracted
    return match.group(1), match.group(2)


def _check_reviews(url: str, names: list[str]) -> None:
    """No review at all is an error, and so is a folder without reviews (a tarball without
    its test/ or train/ half: rerunning the download would not help, nor would tokenize);
    another count than the canonical archive's is a warning (fine for a small mirror)."""
    if not names:
        raise DataFormatError(f"{redact(url)}: no review files "
                              "aclImdb/{train,test}/{pos,neg}/*.txt in the archive; check the URL")
    counts = Counter(_folder(n) for n in names)
    folders = [(split, label) for split in ("train", "test") for label in ("pos", "neg")]
    found = ", ".join(f"{s}/{lab} {counts[(s, lab)]:,}" for s, lab in folders)
    empty = [f"aclImdb/{s}/{lab}" for s, lab in folders if not counts[(s, lab)]]
    if empty:
        raise DataFormatError(f"{redact(url)}: the archive is incomplete: no review in "
                              f"{', '.join(empty)} (found {found}); get a complete copy of "
                              "aclImdb_v1.tar.gz (check data.imdb.url and data.imdb.md5)")
    if any(counts[f] != REVIEWS_PER_FOLDER for f in folders):
        log.warning("download %s: found %s reviews, not the canonical %s per folder "
                    "(25,000 train + 25,000 test); fine for a small mirror, otherwise the "
                    "archive is incomplete", redact(url), found, f"{REVIEWS_PER_FOLDER:,}")


def download_imdb(url: str, dest: Path, *, md5: str | None, max_mb: float | None = None,
                  **fetch_kwargs) -> int:
    """Fetch the tarball (md5 of the tarball), unpack the four review folders to ``dest``.

    The md5 is compared only after the whole archive was read: its advice (adopt the
    actual md5) is for a sound archive, never for an error page or a damaged file.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.dl.") as tmp:
        tarball = Path(tmp) / "aclImdb_v1.tar.gz"
        digest = fetch(url, tarball, max_mb=max_mb, **fetch_kwargs)
        size = tarball.stat().st_size

        def check(names: list[str]) -> None:
            _check_reviews(url, names)
            _check_md5(redact(url), md5, digest, size)

        def record(directory: Path, names: list[str]) -> None:
            # The data's identity travels with it (not the URL: a mirror changes nothing
            # downstream), written into the new copy before it replaces the old one.
            write_json(directory / ARCHIVE_FILE, {"md5": digest, "reviews": len(names)})

        return extract_tar_members(tarball, dest, lambda n: bool(WANTED.match(n)), label=url,
                                   max_mb=max_mb, check=check, finish=record)


def download_dataset(dataset: str, url: str, dest: Path, *, md5: str | None,
                     **fetch_kwargs) -> str:
    """The download stage of ``dataset`` (jena: the CSV from its zip; imdb: the unpacked
    reviews); returns the line to print. Errors name the params key to change: the bounds
    (``deadline_s``, ``min_rate_kb_s``, ``max_mb``) are named in fetch as in params."""
    shown = redact(url)
    remove_stale_temps(dest)
    try:
        if dataset == "jena":
            digest = download_csv(url, dest, md5=md5, **fetch_kwargs)
        else:
            download_imdb(url, dest, md5=md5, **fetch_kwargs)
            recorded = archive_md5(dest)
            assert recorded is not None   # download_imdb just wrote the record
            digest = recorded
    except ChecksumError as e:
        raise ChecksumError(f"{e} (params.yaml: data.{dataset}.md5)") from e
    except LimitError as e:
        raise LimitError(f"{e} (params.yaml: data.{dataset}.{e.limit})", e.limit) from e
    except (DownloadError, DataFormatError) as e:
        raise type(e)(f"{e} (params.yaml: data.{dataset}.url)") from e
    if md5 is None:
        what = "the CSV's" if dataset == "jena" else "the tarball's"
        log.warning("download %s: no md5 set, so the data is NOT verified; to pin this copy, "
                    "set params.yaml: data.%s.md5 to %s (%s md5)", shown, dataset, digest, what)
        return f"download: {shown} -> {dest} (not verified: no md5 set)"
    return f"download: {shown} -> {dest} (md5 verified)"


@dataclass(frozen=True)
class SourceParams:
    """Where a data set comes from (``data.<dataset>``) and the bounds of its download: only
    its download stage reads it. The bounds make every wait and every write finite: a server
    that stalls or drips, or an archive that unpacks without end, fails with one line."""
    url: str
    md5: str | None = None
    deadline_s: float = 3600.0    # the whole download, retries included
    min_rate_kb_s: float = 20.0   # average kB/s (1000 bytes) of an attempt, judged after 30 s
    max_mb: float = 1000.0        # MB (10^6 bytes) downloaded, and extracted from it

    def validate(self, where: str) -> None:
        if not self.url.startswith(("http://", "https://", "file://")):
            raise ConfigError(f"{where}.url: {redact(self.url)!r} is not an http(s):// or "
                              "file:// URL (a local file is file:///absolute/path)")
        if self.md5 is not None and (len(self.md5) != 32 or
                                     any(c not in "0123456789abcdefABCDEF" for c in self.md5)):
            raise ConfigError(f"{where}.md5: {self.md5!r} is not a 32-digit hex md5")
        for name in ("deadline_s", "max_mb"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name}: must be > 0, got {getattr(self, name)}")
        if self.min_rate_kb_s < 0:
            raise ConfigError(f"{where}.min_rate_kb_s: must be >= 0 (0: no minimum), "
                              f"got {self.min_rate_kb_s}")
