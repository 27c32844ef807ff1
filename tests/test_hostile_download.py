"""Hostile servers and archives (issue 13): every wait bounded, URLs redacted, redirects
kept to http(s), archives read to their end and bounded, nothing left behind.

Everything runs against the real loopback server of conftest (its /drip, /redirect, /auth
routes misbehave on purpose); the bounds are made small through the functions' arguments,
so no test waits long.
"""

import base64
import gzip
import io
import logging
import shutil
import tarfile
import time
import zipfile

import pytest

from rnnlab.core.config import ConfigError, from_mapping
from rnnlab.core.errors import (
    ChecksumError,
    DataFormatError,
    DownloadError,
    LimitError,
    UnsafeArchiveError,
    redact,
)
from rnnlab.data.download import download_dataset, fetch, remove_stale_temps
from rnnlab.data.synthetic import write_imdb_tarball
from rnnlab.tools.params import SourceParams

from conftest import leftovers

SECRET = "s3cret"
pytestmark = pytest.mark.hostile     # every case here is in docs/hostile-inputs.md


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    """A 12-review IMDB-shaped tarball and its md5."""
    path = tmp_path_factory.mktemp("imdb") / "aclImdb_v1.tar.gz"
    return path, write_imdb_tarball(path, per_class=3, seed=3)


def serve_data(http_server, dataset, small_jena_zip, tarball):
    """Serve the small file of ``dataset``; return (name, md5 params would hold)."""
    src, md5 = small_jena_zip if dataset == "jena" else tarball
    name = f"{dataset}.data"
    shutil.copy(src, http_server.root / name)
    return name, md5


def dest_of(tmp_path, dataset):
    return tmp_path / "raw" / ("jena.csv" if dataset == "jena" else "imdb")


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# -- 1. every wait is bounded ---------------------------------------------------------------

@pytest.mark.parametrize("dataset", ["jena", "imdb"])
@pytest.mark.parametrize("limit, drip, kwargs, words", [
    ("deadline_s", 2.0, {"deadline_s": 0.3},
     ["not finished within the deadline of 0.3 s", "raise the deadline"]),
    ("min_rate_kb_s", 0.01, {"min_rate_kb_s": 1.0, "rate_grace_s": 0.2},
     ["kB/s on average", "below the minimum of 1 kB/s", "lower the minimum"]),
    ("max_mb", 0.01, {"max_mb": 0.001},
     ["larger than the size limit of 0.001 MB", "raise the limit"]),
])
def test_a_dripping_server_fails_on_its_bound(http_server, small_jena_zip, tarball, tmp_path,
                                              dataset, limit, drip, kwargs, words):
    http_server.drip_interval = drip
    name, md5 = serve_data(http_server, dataset, small_jena_zip, tarball)
    url = http_server.url(f"drip/{name}")
    dest = dest_of(tmp_path, dataset)
    started = time.monotonic()
    with pytest.raises(LimitError) as e:
        download_dataset(dataset, url, dest, md5=md5, progress=False, **kwargs)
    assert time.monotonic() - started < 1.5     # unbounded: 2 s a byte, or a MB at 100 B/s
    msg = one_line(e)
    assert msg.startswith(url + ": ") and msg.endswith(f"(params.yaml: data.{dataset}.{limit})")
    assert all(w in msg for w in words), msg
    assert e.value.limit == limit
    assert http_server.hits[f"/drip/{name}"] == 1          # a bound is not retried
    assert leftovers(tmp_path / "raw") == [] and not dest.exists()


def test_the_deadline_covers_the_waits_between_retries(http_server, small_jena_zip, tmp_path):
    name, md5 = serve_data(http_server, "jena", small_jena_zip, None)
    started = time.monotonic()
    with pytest.raises(LimitError, match=r"deadline of 0\.5 s \(last: HTTP 503") as e:
        download_dataset("jena", http_server.url(f"flaky/{name}"), tmp_path / "raw" / "jena.csv",
                         md5=md5, progress=False, deadline_s=0.5, backoff=10.0)
    assert time.monotonic() - started < 0.5                 # no 10 s sleep first
    assert one_line(e).endswith("(params.yaml: data.jena.deadline_s)")
    assert http_server.hits[f"/flaky/{name}"] == 1
    assert leftovers(tmp_path / "raw") == []


def test_an_unresolvable_host_fails_at_once_with_the_offline_hint(tmp_path, caplog):
    url = "http://rnnlab-no-such-host.invalid/jena.zip"
    started = time.monotonic()
    with pytest.raises(DownloadError) as e:
        download_dataset("jena", url, tmp_path / "raw" / "jena.csv", md5=None, progress=False)
    assert time.monotonic() - started < 2.0     # a retry would wait 2 s first
    msg = one_line(e)
    assert msg.startswith(f"{url}: cannot resolve the host name 'rnnlab-no-such-host.invalid'")
    assert "offline?" in msg and "file:///absolute/path" in msg and "md5" in msg
    assert msg.endswith("(params.yaml: data.jena.url)")
    assert "retrying" not in caplog.text                     # not retried
    assert leftovers(tmp_path / "raw") == []


# -- 2. network hygiene ---------------------------------------------------------------------

@pytest.mark.parametrize("target", ["ftp://127.0.0.1/jena.zip", "file:///etc/passwd", "served"])
def test_redirects_only_to_http(http_server, small_jena_zip, tmp_path, target):
    name, md5 = serve_data(http_server, "jena", small_jena_zip, None)
    if target == "served":   # a local file that would be read if the redirect were followed
        target = (http_server.root / name).as_uri()
    http_server.redirects["away"] = target
    url = http_server.url("redirect/away")
    with pytest.raises(DownloadError) as e:
        download_dataset("jena", url, tmp_path / "raw" / "jena.csv", md5=md5, progress=False)
    assert one_line(e) == (f"{url}: redirected (HTTP 302) to {target}; only redirects to "
                           "http:// or https:// are followed. Point the URL at the file itself "
                           "(params.yaml: data.jena.url)")
    assert leftovers(tmp_path / "raw") == []


def test_a_redirect_to_http_is_followed_without_the_credentials(http_server, small_jena_zip,
                                                                 tmp_path):
    name, md5 = serve_data(http_server, "jena", small_jena_zip, None)
    http_server.redirects["there"] = http_server.url(name)
    url = http_server.url("redirect/there").replace("://", f"://user:{SECRET}@")
    line = download_dataset("jena", url, tmp_path / "raw" / "jena.csv", md5=md5, progress=False)
    assert line.endswith("(md5 verified)") and SECRET not in line
    assert http_server.seen_auth[0] is not None and http_server.seen_auth[1:] == [None]


@pytest.fixture
def https_redirect(tmp_path, monkeypatch):
    """A real https server on 127.0.0.1 (a self-signed certificate this process trusts
    through SSL_CERT_FILE) whose /down answers 302 to the URL set in ``targets["down"]``."""
    import ssl
    import subprocess
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate for the https server")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    targets: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", targets[self.path.lstrip("/")])
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", targets
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_redirect_from_https_down_to_http_is_refused(https_redirect, http_server,
                                                        small_jena_zip, tmp_path):
    base, targets = https_redirect
    name, md5 = serve_data(http_server, "jena", small_jena_zip, None)
    targets["down"] = http_server.url(name)
    url = f"{base}/down".replace("://", f"://user:{SECRET}@")
    with pytest.raises(DownloadError) as e:
        download_dataset("jena", url, tmp_path / "raw" / "jena.csv", md5=md5, progress=False)
    shown = f"{base}/down".replace("://", "://***@")
    assert one_line(e) == (f"{shown}: redirected (HTTP 302) from https to plain http "
                           f"({http_server.url(name)}); a downgrade is not followed. Use an "
                           "https mirror, or put the http:// URL in params.yaml if you accept "
                           "an unprotected transfer (with its md5) (params.yaml: data.jena.url)")
    assert http_server.hits == {}, "the http target was requested"
    assert leftovers(tmp_path / "raw") == []


def test_a_redirect_from_https_to_https_is_followed(https_redirect, tmp_path, small_jena_zip):
    """The https server is real (a refusal above is not a certificate failure): it redirects
    to itself, then to the ftp:// refused by scheme, which names the https hop."""
    base, targets = https_redirect
    targets["down"] = f"{base}/ftp"
    targets["ftp"] = "ftp://127.0.0.1/jena.zip"
    with pytest.raises(DownloadError) as e:
        download_dataset("jena", f"{base}/down", tmp_path / "raw" / "jena.csv",
                         md5=small_jena_zip[1], progress=False)
    assert one_line(e).startswith(f"{base}/down: redirected (HTTP 302) to "
                                  "ftp://127.0.0.1/jena.zip; only redirects to http")


@pytest.mark.parametrize("url, shown", [
    ("https://user:pw@host/x.zip", "https://***@host/x.zip"),
    ("http://user:p@ss@host:8080/x", "http://***@host:8080/x"),     # '@' in the password
    ("http://token@host/x", "http://***@host/x"),
    ("https://host/x.zip?mail=a@b", "https://host/x.zip?mail=a@b"),  # not credentials
    ("file:///data/a@b/x.zip", "file:///data/a@b/x.zip"),
])
def test_redact(url, shown):
    assert redact(url) == shown


@pytest.mark.parametrize("route, kwargs, error", [
    ("auth/jena.data", {}, "HTTP 401 Unauthorized"),
    ("flaky/jena.data", {"retries": 1, "backoff": 0.01}, "HTTP 503"),
    ("drip/jena.data", {"deadline_s": 0.2}, "deadline of 0.2 s"),
    ("redirect/away", {}, "redirected (HTTP 302) to file:///etc/passwd"),
])
def test_credentials_are_never_shown(http_server, small_jena_zip, tmp_path, caplog,
                                     route, kwargs, error):
    serve_data(http_server, "jena", small_jena_zip, None)
    http_server.redirects["away"] = "file:///etc/passwd"
    url = http_server.url(route).replace("://", f"://user:{SECRET}@")
    with caplog.at_level(logging.INFO), pytest.raises(DownloadError) as e:
        download_dataset("jena", url, tmp_path / "raw" / "jena.csv", md5=None, progress=False,
                         **kwargs)
    msg = one_line(e)
    assert error in msg and redact(url) in msg and "://***@127.0.0.1:" in msg
    assert SECRET not in msg and SECRET not in caplog.text
    assert leftovers(tmp_path / "raw") == []


def test_credentials_are_sent_as_basic_auth(http_server, small_jena_zip, tmp_path, caplog):
    name, md5 = serve_data(http_server, "jena", small_jena_zip, None)
    http_server.auth = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()
    url = http_server.url(f"auth/{name}").replace("://", f"://user:{SECRET}@")
    with caplog.at_level(logging.INFO):
        line = download_dataset("jena", url, tmp_path / "raw" / "jena.csv", md5=md5,
                                progress=False)
    assert line == f"download: {redact(url)} -> {tmp_path / 'raw' / 'jena.csv'} (md5 verified)"
    assert SECRET not in caplog.text


def test_params_redact_a_bad_url():
    with pytest.raises(ConfigError) as e:
        from_mapping(SourceParams, {"url": f"ftp://user:{SECRET}@host/x.zip"},
                     where="params.yaml: data.jena")
    assert str(e.value).startswith("params.yaml: data.jena.url: 'ftp://***@host/x.zip' is not")


@pytest.mark.parametrize("key, value, error", [
    ("deadline_s", 0, "data.jena.deadline_s: must be > 0, got 0"),
    ("max_mb", -1, "data.jena.max_mb: must be > 0, got -1"),
    ("min_rate_kb_s", -1, "data.jena.min_rate_kb_s: must be >= 0 (0: no minimum), got -1"),
])
def test_params_check_the_bounds(key, value, error):
    with pytest.raises(ConfigError, match=error.replace("(", r"\(").replace(")", r"\)")):
        from_mapping(SourceParams, {"url": "https://host/x.zip", key: value},
                     where="params.yaml: data.jena")


@pytest.mark.parametrize("dataset", ["jena", "imdb"])
@pytest.mark.parametrize("pinned", [True, False])
def test_md5_verified_is_said_only_when_checked(http_server, small_jena_zip, tarball, tmp_path,
                                                caplog, dataset, pinned):
    name, md5 = serve_data(http_server, dataset, small_jena_zip, tarball)
    dest = dest_of(tmp_path, dataset)
    with caplog.at_level(logging.WARNING):
        line = download_dataset(dataset, http_server.url(name), dest,
                                md5=md5 if pinned else None, progress=False)
    if pinned:
        assert line.endswith("(md5 verified)") and "no md5" not in caplog.text
    else:
        assert line.endswith("(not verified: no md5 set)") and "verified)" not in line
        assert (f"no md5 set, so the data is NOT verified; to pin this copy, set params.yaml: "
                f"data.{dataset}.md5 to {md5}") in caplog.text


def _damaged_zip(small_jena_zip, tmp_path):
    """The Jena zip with one byte of the CSV's compressed data flipped (its CRC then fails)."""
    src, _ = small_jena_zip
    data = bytearray(src.read_bytes())
    info = next(i for i in zipfile.ZipFile(src).infolist() if i.filename.endswith("2016.csv"))
    data[info.header_offset + 30 + len(info.filename) + 1000] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("dataset, body, words", [
    ("jena", b"<!DOCTYPE html><html><body>Please log in</body></html>",
     "neither a zip archive nor a CSV file (it begins b'<!DOCTYPE html>"),
    ("jena", b"\x00\x01binary\xff\xfe" * 50, "neither a zip archive nor a CSV file"),
    ("jena", "damaged zip", "damaged zip archive"),
    ("imdb", b"<!DOCTYPE html><html><body>Please log in</body></html>",
     "not a tar archive, compressed or not (it begins b'<!DOCTYPE html>"),
])
def test_a_format_failure_gives_no_md5_advice(http_server, small_jena_zip, tmp_path, dataset,
                                              body, words):
    if body == "damaged zip":
        body = _damaged_zip(small_jena_zip, tmp_path)
    (http_server.root / "data").write_bytes(body)
    dest = dest_of(tmp_path, dataset)
    with pytest.raises(DownloadError) as e:
        download_dataset(dataset, http_server.url("data"), dest, md5="0" * 32, progress=False)
    msg = one_line(e)
    assert not isinstance(e.value, ChecksumError)
    assert words in msg and "check the URL" in msg and "md5" not in msg, msg
    assert msg.endswith(f"(params.yaml: data.{dataset}.url)")
    assert leftovers(tmp_path / "raw") == [] and not dest.exists()


# -- 3. archives read to the end, counted, bounded -------------------------------------------

def _tar_bytes(tarball) -> tuple[bytes, list[int]]:
    """The uncompressed tar and the offsets of its members' headers."""
    raw = gzip.decompress(tarball[0].read_bytes())
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        return raw, [m.offset for m in tar.getmembers()]


def _flip_middle(gz: bytes, tarball) -> bytes:
    out = bytearray(gz)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


def _wrong_crc(gz: bytes, tarball) -> bytes:
    """Every review intact: only gzip's CRC (read at the very end) says it is damaged."""
    return gz[:-8] + bytes(b ^ 0xFF for b in gz[-8:-4]) + gz[-4:]


def _no_trailer(gz: bytes, tarball) -> bytes:
    return gz[:-8]


def _tar_cut_at_a_member(gz: bytes, tarball) -> bytes:
    raw, offsets = _tar_bytes(tarball)
    return gzip.compress(raw[:offsets[len(offsets) // 2]], mtime=0)


def _junk_header_mid_tar(gz: bytes, tarball) -> bytes:
    raw, offsets = _tar_bytes(tarball)
    at = offsets[len(offsets) // 2]
    return gzip.compress(raw[:at] + b"junk" * 128 + raw[at + 512:], mtime=0)


@pytest.mark.parametrize("damage, words", [
    (_flip_middle, "damaged or truncated archive"),
    (_wrong_crc, "damaged or truncated archive (CRC check failed"),
    (_no_trailer, "damaged or truncated archive (Compressed file ended before the end-of-stream"),
    (_tar_cut_at_a_member, "damaged or truncated archive (empty header at byte"),
    (_junk_header_mid_tar, "damaged or truncated archive (invalid header at byte"),
])
def test_a_damaged_archive_with_its_own_md5_is_an_error(http_server, tarball, tmp_path, damage,
                                                        words):
    import hashlib

    bad = damage(tarball[0].read_bytes(), tarball)
    (http_server.root / "bad.tar.gz").write_bytes(bad)
    url = http_server.url("bad.tar.gz")
    dest = tmp_path / "raw" / "imdb"
    with pytest.raises(DownloadError) as e:
        download_dataset("imdb", url, dest, md5=hashlib.md5(bad).hexdigest(), progress=False)
    msg = one_line(e)
    assert not isinstance(e.value, ChecksumError)
    assert msg.startswith(f"{url}: {words}"), msg
    assert msg.endswith("download it again or check the URL (params.yaml: data.imdb.url)")
    assert leftovers(tmp_path / "raw") == [] and not dest.exists()


def _imdb_tar(path, names):
    with tarfile.open(path, "w:gz") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 5
            tar.addfile(info, io.BytesIO(b"good!"))


@pytest.mark.parametrize("per_folder, found", [
    ({"train/pos": 2, "train/neg": 2, "test/pos": 2, "test/neg": 2},
     "found train/pos 2, train/neg 2, test/pos 2, test/neg 2 reviews"),
    ({"train/pos": 3, "train/neg": 1, "test/pos": 2, "test/neg": 1},
     "found train/pos 3, train/neg 1, test/pos 2, test/neg 1 reviews"),
])
def test_review_counts_other_than_canonical_are_a_warning(tmp_path, caplog, per_folder, found):
    src = tmp_path / "few.tar.gz"
    _imdb_tar(src, [f"aclImdb/{folder}/{i}_7.txt" for folder, n in per_folder.items()
                    for i in range(n)] + ["aclImdb/README"])
    dest = tmp_path / "raw" / "imdb"
    with caplog.at_level(logging.WARNING):
        download_dataset("imdb", src.as_uri(), dest, md5=None, progress=False)
    assert f"{found}, not the canonical 12,500 per folder (25,000 train + 25,000 test)" \
        in caplog.text
    assert len(list(dest.glob("aclImdb/*/*/*.txt"))) == sum(per_folder.values())


@pytest.mark.parametrize("names", [[], ["aclImdb/README", "aclImdb/train/urls_pos.txt",
                                        "aclImdb/train/pos/notes.txt"]])
@pytest.mark.parametrize("old_data", [False, True])
def test_a_tar_without_reviews_leaves_no_directory(tmp_path, names, old_data):
    src = tmp_path / "empty.tar.gz"
    _imdb_tar(src, names)
    dest = tmp_path / "raw" / "imdb"
    if old_data:                         # a previous good download stays as it was
        (dest / "aclImdb").mkdir(parents=True)
        (dest / "archive.json").write_text("{}")
    with pytest.raises(DataFormatError) as e:
        download_dataset("imdb", src.as_uri(), dest, md5=None, progress=False)
    assert one_line(e) == (f"{src.as_uri()}: no review files aclImdb/{{train,test}}/{{pos,neg}}"
                           "/*.txt in the archive; check the URL (params.yaml: data.imdb.url)")
    assert leftovers(tmp_path / "raw") == (["imdb/archive.json"] if old_data else [])
    assert dest.exists() == old_data


@pytest.mark.parametrize("dataset", ["jena", "imdb"])
def test_extraction_stops_at_the_size_limit(small_jena_zip, tarball, tmp_path, dataset):
    src, md5 = small_jena_zip if dataset == "jena" else tarball
    if dataset == "jena":
        extracted = zipfile.ZipFile(src).getinfo("jena_climate_2009_2016.csv").file_size
    else:
        with tarfile.open(src) as tar:
            extracted = sum(m.size for m in tar if "/pos/" in m.name or "/neg/" in m.name)
    downloaded = src.stat().st_size
    assert downloaded < extracted                # a limit between the two trips on extraction
    max_mb = (downloaded + extracted) / 2 / 1e6
    dest = dest_of(tmp_path, dataset)
    with pytest.raises(LimitError) as e:
        download_dataset(dataset, src.as_uri(), dest, md5=md5, progress=False, max_mb=max_mb)
    msg = one_line(e)
    assert f"is larger than the size limit of {max_mb:g} MB, so nothing was extracted" in msg
    assert msg.startswith(src.as_uri()) and msg.endswith(f"(params.yaml: data.{dataset}.max_mb)")
    assert leftovers(tmp_path / "raw") == [] and not dest.exists()


# -- 4. nothing left behind ------------------------------------------------------------------

STALE = {
    "jena": [".jena.csv.abcd1234.part", ".jena.csv.k2j3h4g5/download",
             ".jena.csv.k2j3h4g5/.download.zz_y8x7w.part"],
    "imdb": [".imdb.dl.abcdefgh/aclImdb_v1.tar.gz", ".imdb.zz99yy88/aclImdb/train/pos/1_7.txt",
             ".imdb.2a3b4c5d.part"],
}
NOT_OURS = [".jena.csv.swp", "notes.txt", ".other.csv.abcd1234.part", ".imdb.keep/me.txt",
            "jena.csv.abcd1234.part"]


@pytest.mark.parametrize("dataset", ["jena", "imdb"])
def test_stale_temps_of_a_killed_run_are_removed_at_the_next(small_jena_zip, tarball, tmp_path,
                                                              caplog, dataset):
    src, md5 = small_jena_zip if dataset == "jena" else tarball
    raw = tmp_path / "raw"
    other = "imdb" if dataset == "jena" else "jena"
    for name in STALE[dataset] + STALE[other] + NOT_OURS:
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_text("left by a killed run")
    dest = dest_of(tmp_path, dataset)
    with caplog.at_level(logging.WARNING):
        download_dataset(dataset, src.as_uri(), dest, md5=md5, progress=False)
    assert "stale temp file(s) of an interrupted run" in caplog.text
    assert [f for f in leftovers(raw) if f != "jena.csv" and not f.startswith("imdb/")] == \
        sorted(STALE[other] + NOT_OURS)
    assert remove_stale_temps(dest) == []                     # nothing more to find


def test_fetch_refuses_other_schemes(tmp_path):
    with pytest.raises(DownloadError, match=r"^ftp://\*\*\*@host/x: not an http://, https:// or "
                                            r"file:// URL$"):
        fetch(f"ftp://u:{SECRET}@host/x", tmp_path / "x", progress=False)
    assert leftovers(tmp_path) == []


def test_unsafe_archive_messages_name_the_redacted_url(tmp_path):
    src = tmp_path / "evil.tar.gz"
    _imdb_tar(src, ["aclImdb/train/pos/1_7.txt", "aclImdb/../../evil.txt"])
    url = src.as_uri()
    with pytest.raises(UnsafeArchiveError) as e:
        download_dataset("imdb", url, tmp_path / "raw" / "imdb", md5=None, progress=False)
    assert one_line(e).endswith("check the URL. (params.yaml: data.imdb.url)")


# -- 5. what the standard library cannot read, incomplete archives, the old copy kept ---------

def _patch_zip(data: bytes, member: str, *, flag: int = 0, method: int | None = None) -> bytes:
    """``data`` (a zip) with ``member``'s general-purpose flag bits OR-ed with ``flag`` and
    its compression method set to ``method``, in its local header and in its central
    directory entry, as an encrypting or Deflate64 zip writer leaves them."""
    out = bytearray(data)
    zf = zipfile.ZipFile(io.BytesIO(data))
    info = zf.getinfo(member)
    at = zf.start_dir                                  # the central directory's first entry
    entries = []
    while out[at:at + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = (int.from_bytes(out[at + k:at + k + 2], "little")
                                            for k in (28, 30, 32))
        if out[at + 46:at + 46 + name_len].decode() == member:
            entries.append(at + 8)                       # flags at +8, method at +10
        at += 46 + name_len + extra_len + comment_len
    assert out[info.header_offset:info.header_offset + 4] == b"PK\x03\x04" and len(entries) == 1
    for flags_at in (info.header_offset + 6, entries[0]):  # local: flags at +6, method at +8
        flags = int.from_bytes(out[flags_at:flags_at + 2], "little") | flag
        out[flags_at:flags_at + 2] = flags.to_bytes(2, "little")
        if method is not None:
            out[flags_at + 2:flags_at + 4] = method.to_bytes(2, "little")
    return bytes(out)


@pytest.mark.parametrize("patch, problem", [
    ({"flag": 0x1}, "is encrypted (a password-protected zip), which Python's standard library "
     "cannot extract; unzip it with its password and re-zip"),
    ({"method": 9}, "is compressed with Deflate64 (method 9, what Windows writes for large "
     "zips), which Python's standard library cannot read; re-zip"),
])
def test_a_zip_member_the_standard_library_cannot_read_is_one_line(small_jena_zip, tmp_path,
                                                                  patch, problem):
    src, md5 = small_jena_zip
    zipped = tmp_path / "jena.zip"
    zipped.write_bytes(_patch_zip(src.read_bytes(), "jena_climate_2009_2016.csv", **patch))
    info = zipfile.ZipFile(zipped).getinfo("jena_climate_2009_2016.csv")
    assert info.flag_bits & 0x1 if "flag" in patch else info.compress_type == 9
    dest = tmp_path / "raw" / "jena.csv"
    with pytest.raises(DownloadError) as e:
        download_dataset("jena", zipped.as_uri(), dest, md5=md5, progress=False)
    assert one_line(e) == (f"{zipped.as_uri()}: member 'jena_climate_2009_2016.csv' {problem} "
                           "the CSV with plain Deflate (zip -Z deflate, or python -m zipfile -c), "
                           "or point the URL at the bare CSV (params.yaml: data.jena.url)")
    assert leftovers(tmp_path / "raw") == [] and not dest.exists()


@pytest.mark.parametrize("half, found", [
    ("test", "found train/pos 2, train/neg 2, test/pos 0, test/neg 0"),
    ("train", "found train/pos 0, train/neg 0, test/pos 2, test/neg 2"),
])
def test_a_tarball_without_its_train_or_test_half_is_refused_at_download(tmp_path, half, found):
    src = tmp_path / "half.tar.gz"
    kept = "train" if half == "test" else "test"
    _imdb_tar(src, [f"aclImdb/{kept}/{label}/{i}_7.txt" for label in ("pos", "neg")
                    for i in range(2)] + ["aclImdb/README"])
    dest = tmp_path / "raw" / "imdb"
    with pytest.raises(DataFormatError) as e:
        download_dataset("imdb", src.as_uri(), dest, md5=None, progress=False)
    assert one_line(e) == (f"{src.as_uri()}: the archive is incomplete: no review in "
                           f"aclImdb/{half}/pos, aclImdb/{half}/neg ({found}); get a complete "
                           "copy of aclImdb_v1.tar.gz (check data.imdb.url and data.imdb.md5) "
                           "(params.yaml: data.imdb.url)")
    assert leftovers(tmp_path / "raw") == [] and not dest.exists()


def _tree(directory) -> dict[str, bytes]:
    """Every file under ``directory`` (temp files included) with its bytes."""
    return {f: (directory / f).read_bytes() for f in leftovers(directory)}


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("dataset, failure", [
    ("jena", "wrong md5"), ("jena", "missing file"),
    ("imdb", "wrong md5"), ("imdb", "incomplete archive"), ("imdb", "disk full at the end"),
])
def test_a_failed_download_leaves_the_previous_copy_as_it_was(small_jena_zip, tarball, tmp_path,
                                                              monkeypatch, dataset, failure):
    """DVC keeps the outputs of a ``persist: true`` stage: the library must not lose them."""
    src, md5 = small_jena_zip if dataset == "jena" else tarball
    dest = dest_of(tmp_path, dataset)
    download_dataset(dataset, src.as_uri(), dest, md5=md5, progress=False)
    before = _tree(tmp_path / "raw")
    new = tmp_path / "new.data"                         # other data than the copy in place
    if dataset == "jena":
        from rnnlab.data.synthetic import write_jena_zip
        write_jena_zip(new, rows=300, seed=11)
    elif failure == "incomplete archive":
        _imdb_tar(new, ["aclImdb/train/pos/1_7.txt", "aclImdb/train/neg/1_2.txt"])
    else:
        write_imdb_tarball(new, per_class=2, seed=11)
    url, expected = new.as_uri(), DownloadError
    if failure == "missing file":
        url = (tmp_path / "nowhere.zip").as_uri()
    if failure == "incomplete archive":
        expected = DataFormatError
    if failure == "disk full at the end":               # the record of the new copy fails
        monkeypatch.setattr("rnnlab.data.download.write_json", _disk_full)
        expected = OSError
    with pytest.raises(expected):
        download_dataset(dataset, url, dest, md5=md5 if failure == "wrong md5" else None,
                         progress=False)
    assert _tree(tmp_path / "raw") == before             # byte-identical, no temp file


@pytest.mark.parametrize("dest_there", [False, True])
def test_an_old_copy_a_killed_swap_left_aside_is_put_back(tarball, tmp_path, caplog, dest_there):
    """A kill between the swap's two renames leaves the old copy aside under a temp name and
    nothing at the destination: the next run puts it back (then fails here, on a 404-like
    missing file, keeping it). A kill after the second rename, while the old copy was being
    removed, leaves the new copy in place: the rest of the old one is removed."""
    src, md5 = tarball
    dest = tmp_path / "raw" / "imdb"
    download_dataset("imdb", src.as_uri(), dest, md5=md5, progress=False)
    good = _tree(tmp_path / "raw")
    aside = tmp_path / "raw" / ".imdb.old.k2j3h4g5"
    if dest_there:
        shutil.copytree(dest, aside)
    else:
        dest.rename(aside)
    with caplog.at_level(logging.WARNING), pytest.raises(DownloadError, match="check the path"):
        download_dataset("imdb", (tmp_path / "nowhere.tar.gz").as_uri(), dest, md5=md5,
                         progress=False)
    assert _tree(tmp_path / "raw") == good
    assert ("put back the previous copy" in caplog.text) != dest_there
