"""Streaming, checksummed, atomic downloads and safe archive extraction.

Every writer here streams into a temporary file beside its destination and renames it
into place only after the checksum matched, so an interrupted or failed download leaves
nothing behind: the destination either holds verified bytes or does not exist.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import stat
import tarfile
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from rnnlab.atomic import atomic_output, file_md5, write_json
from rnnlab.errors import ChecksumError, DataFormatError, DownloadError, UnsafeArchiveError
from rnnlab.imdb import ARCHIVE_FILE, WANTED

log = logging.getLogger(__name__)
CHUNK = 1 << 20  # 1 MiB per read: large enough that Python overhead is negligible


class _Transient(Exception):
    """A failure worth retrying (connection reset, truncated body, HTTP 5xx...)."""


def _check_md5(what: str, expected: str | None, actual: str, size: int) -> None:
    if expected is not None and expected.lower() != actual:
        raise ChecksumError(
            f"{what}: md5 mismatch: expected {expected.lower()}, got {actual} ({size:,} bytes). "
            "If this is the copy you meant to use, set the expected md5 to the actual one."
        )


def _stream(url: str, out: Path, timeout: float, progress: bool) -> tuple[str, int]:
    """One attempt: copy ``url`` into ``out``; return (md5, size)."""
    h = hashlib.md5()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(out, "wb") as f:
            length = resp.headers.get("Content-Length")
            total = int(length) if length is not None and length.isdigit() else None
            name = PurePosixPath(urllib.request.url2pathname(url.rsplit("/", 1)[-1])).name
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"download {name}", disable=not progress, file=sys.stderr) as bar:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
            if total is not None and size != total:
                raise _Transient(f"truncated body: got {size:,} of {total:,} bytes")
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code in (408, 429):
            raise _Transient(f"HTTP {e.code} {e.reason}") from e
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}; check the URL") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, FileNotFoundError) or url.startswith("file:"):
            raise DownloadError(f"{url}: {e.reason}; check the path") from e
        raise _Transient(f"{e.reason}") from e
    except http.client.IncompleteRead as e:
        raise _Transient(f"truncated body: got {size + len(e.partial):,} bytes, "
                         f"{e.expected:,} more expected") from e
    except (ConnectionError, TimeoutError, http.client.HTTPException) as e:
        raise _Transient(f"{type(e).__name__}: {e}") from e
    return h.hexdigest(), size


def fetch(url: str, dest: Path, *, md5: str | None = None, retries: int = 3,
          backoff: float = 2.0, timeout: float = 60.0, progress: bool = True) -> str:
    """Download ``url`` (http, https or file) to ``dest`` atomically; return its md5.

    Transient failures (connection errors, truncated bodies, HTTP 5xx) are retried
    ``retries`` times with exponential backoff; the rest fail at once. A checksum
    mismatch raises ChecksumError and leaves nothing at ``dest``.
    """
    dest = Path(dest)
    with atomic_output(dest) as tmp:
        for attempt in range(retries + 1):
            try:
                digest, size = _stream(url, tmp, timeout, progress)
                break
            except _Transient as e:
                if attempt == retries:
                    raise DownloadError(f"{url}: {e} (gave up after {retries + 1} attempts)") from e
                wait = backoff * 2**attempt
                log.warning("download %s: %s; retrying in %g s (attempt %d of %d)", url, e,
                            wait, attempt + 2, retries + 1)
                time.sleep(wait)
        _check_md5(url, md5, digest, size)
    return digest


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


def extract_zip_csv(zip_path: Path, dest: Path, *, md5: str | None = None,
                    member: str | None = None, label: str | None = None) -> str:
    """Extract the one CSV of ``zip_path`` to ``dest`` atomically; return its md5.

    Every member name is checked first: an absolute path, a ``..`` component, a link or
    a device refuses the whole archive before anything is written. ``label`` names the
    archive in errors (the URL it came from), default its path.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    label = label or str(zip_path)
    try:
        zf = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{label}: not a zip archive ({e})") from e
    with zf:
        infos = zf.infolist()
        for info in infos:
            _check_member(label, info)
        info = _pick_csv(label, infos, member)
        h = hashlib.md5()
        with atomic_output(dest) as tmp:
            with zf.open(info) as src, open(tmp, "wb") as out:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
                    h.update(chunk)
            _check_md5(f"{label}: {info.filename}", md5, h.hexdigest(), info.file_size)
    return h.hexdigest()


def download_csv(url: str, dest: Path, *, md5: str | None, **fetch_kwargs) -> str:
    """Fetch ``url`` (a zip holding one CSV, or a bare CSV) and leave the verified CSV at ``dest``.

    ``md5`` is that of the CSV itself, as for the Jena file in the conventions.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        raw = Path(tmp) / "download"
        fetch(url, raw, **fetch_kwargs)
        if zipfile.is_zipfile(raw):
            return extract_zip_csv(raw, dest, md5=md5, label=url)
        digest = file_md5(raw)
        _check_md5(url, md5, digest, raw.stat().st_size)
        shutil.move(raw, dest)  # same directory: a rename
        return digest


def extract_tar_members(tar_path: Path, dest: Path, wanted, *, label: str | None = None) -> int:
    """Extract the members for which ``wanted(name)`` is true into ``dest``, atomically.

    Everything is written into a temporary directory beside ``dest`` and renamed at the
    end. Any member, wanted or not, with an absolute path, a ``..`` component, or that is
    a link or a device refuses the whole archive and leaves nothing behind. Returns the
    number of files extracted.
    """
    tar_path, dest = Path(tar_path), Path(dest)
    label = label or str(tar_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    tmp = tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        try:
            tar = tarfile.open(tar_path, "r:*")
        except tarfile.TarError as e:
            raise DownloadError(f"{label}: not a tar archive ({e})") from e
        with tar:
            try:
                for member in tar:
                    name = member.name
                    parts = PurePosixPath(name).parts
                    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
                        reason = "an absolute path"
                    elif ".." in parts:
                        reason = "a '..' component that would write outside the target directory"
                    elif member.issym() or member.islnk():
                        reason = f"a link (to {member.linkname!r})"
                    elif not (member.isfile() or member.isdir()):
                        reason = "a device or other special file"
                    else:
                        if member.isfile() and wanted(name):
                            # The 'data' filter re-checks all of the above and drops modes.
                            tar.extract(member, tmp, filter="data")
                            count += 1
                        continue
                    raise UnsafeArchiveError(
                        f"{label}: refusing member {name!r}: {reason}. The archive is not "
                        "the expected download; check the URL.")
            except (tarfile.TarError, EOFError, OSError) as e:
                raise DownloadError(f"{label}: damaged or truncated archive ({e})") from e
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # gone already after a successful rename
    return count


def download_imdb(url: str, dest: Path, *, md5: str | None, **fetch_kwargs) -> int:
    """Fetch the tarball (md5 of the tarball), unpack the four review folders to ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.dl.") as tmp:
        tarball = Path(tmp) / "aclImdb_v1.tar.gz"
        digest = fetch(url, tarball, md5=md5, **fetch_kwargs)
        count = extract_tar_members(tarball, dest, lambda n: bool(WANTED.match(n)), label=url)
    if count == 0:
        raise DataFormatError(f"{url}: no review files aclImdb/{{train,test}}/{{pos,neg}}/*.txt "
                              "in the archive")
    # The data's identity travels with it (not the URL: a mirror changes nothing downstream).
    write_json(dest / ARCHIVE_FILE, {"md5": digest, "reviews": count})
    return count


def download_dataset(dataset: str, url: str, dest: Path, *, md5: str | None) -> None:
    """The download stage of ``dataset`` (jena: the CSV from its zip; imdb: the unpacked
    reviews); errors name the params key to change."""
    try:
        if dataset == "jena":
            download_csv(url, dest, md5=md5)
        else:
            download_imdb(url, dest, md5=md5)
    except ChecksumError as e:
        raise ChecksumError(f"{e} (params.yaml: data.{dataset}.md5)") from e
    except DownloadError as e:
        raise DownloadError(f"{e}. Offline? Point params.yaml: data.{dataset}.url at a "
                            "local copy (README, 'Data without the internet')") from e
