import hashlib
import shutil
import stat
import zipfile

import pytest

from rnnlab.core.errors import ChecksumError, DownloadError, UnsafeArchiveError
from rnnlab.data.download import download_csv, extract_zip_csv, fetch
from rnnlab.data.synthetic import JENA_CSV_NAME, write_jena_zip

from conftest import leftovers


def serve(http_server, src, name="jena.zip"):
    shutil.copy(src, http_server.root / name)
    return name


def test_good_zip_over_http(http_server, small_jena_zip, tmp_path):
    zip_path, md5 = small_jena_zip
    name = serve(http_server, zip_path)
    out = tmp_path / "raw" / "jena.csv"
    assert download_csv(http_server.url(name), out, md5=md5, progress=False) == md5
    assert hashlib.md5(out.read_bytes()).hexdigest() == md5
    assert out.read_bytes().startswith(b'"Date Time","p (mbar)"')
    assert leftovers(out.parent) == ["jena.csv"]


def test_good_zip_over_file_url(small_jena_zip, tmp_path):
    zip_path, md5 = small_jena_zip
    out = tmp_path / "raw" / "jena.csv"
    assert download_csv(zip_path.as_uri(), out, md5=md5, progress=False) == md5
    assert leftovers(out.parent) == ["jena.csv"]


def test_bare_csv_url(tmp_path, small_jena_zip):
    zip_path, md5 = small_jena_zip
    csv = tmp_path / "plain.csv"
    csv.write_bytes(zipfile.ZipFile(zip_path).read(JENA_CSV_NAME))
    out = tmp_path / "raw" / "jena.csv"
    assert download_csv(csv.as_uri(), out, md5=md5, progress=False) == md5


@pytest.mark.hostile
def test_wrong_checksum_names_url_and_both_md5s(http_server, small_jena_zip, tmp_path):
    zip_path, md5 = small_jena_zip
    name = serve(http_server, zip_path)
    out = tmp_path / "raw" / "jena.csv"
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as e:
        download_csv(http_server.url(name), out, md5=wrong, progress=False)
    msg = str(e.value)
    assert http_server.url(name) in msg and wrong in msg and md5 in msg
    assert leftovers(tmp_path / "raw") == []


def test_fetch_checks_md5_of_the_download_itself(http_server, small_jena_zip, tmp_path):
    zip_path, _ = small_jena_zip
    name = serve(http_server, zip_path)
    zip_md5 = hashlib.md5(zip_path.read_bytes()).hexdigest()
    out = tmp_path / "dl" / "a.zip"
    assert fetch(http_server.url(name), out, md5=zip_md5, progress=False) == zip_md5
    with pytest.raises(ChecksumError):
        fetch(http_server.url(name), tmp_path / "dl" / "b.zip", md5="f" * 32, progress=False)
    assert leftovers(tmp_path / "dl") == ["a.zip"]


@pytest.mark.hostile
def test_truncated_body_is_retried_then_fails_clean(http_server, small_jena_zip, tmp_path):
    zip_path, md5 = small_jena_zip
    name = serve(http_server, zip_path)
    out = tmp_path / "raw" / "jena.csv"
    with pytest.raises(DownloadError, match=r"truncated.*gave up after 3 attempts"):
        download_csv(http_server.url(f"truncated/{name}"), out, md5=md5, progress=False,
                     retries=2, backoff=0.01)
    assert http_server.hits[f"/truncated/{name}"] == 3
    assert leftovers(tmp_path / "raw") == []


@pytest.mark.hostile
def test_transient_503_is_retried(http_server, small_jena_zip, tmp_path):
    zip_path, md5 = small_jena_zip
    name = serve(http_server, zip_path)
    out = tmp_path / "raw" / "jena.csv"
    download_csv(http_server.url(f"flaky/{name}"), out, md5=md5, progress=False, backoff=0.01)
    assert http_server.hits[f"/flaky/{name}"] == 3
    assert hashlib.md5(out.read_bytes()).hexdigest() == md5


@pytest.mark.hostile
def test_404_fails_at_once_with_the_url(http_server, tmp_path):
    out = tmp_path / "raw" / "jena.csv"
    url = http_server.url("missing.zip")
    with pytest.raises(DownloadError, match="HTTP 404") as e:
        download_csv(url, out, md5=None, progress=False, backoff=0.01)
    assert url in str(e.value)
    assert http_server.hits["/missing.zip"] == 1  # not retried
    assert leftovers(tmp_path / "raw") == []


@pytest.mark.hostile
def test_missing_file_url(tmp_path):
    with pytest.raises(DownloadError, match="check the path"):
        download_csv((tmp_path / "nope.zip").as_uri(), tmp_path / "raw" / "x.csv", md5=None,
                     progress=False)
    assert leftovers(tmp_path / "raw") == []


@pytest.mark.hostile
@pytest.mark.parametrize("member, reason", [
    ("../evil.txt", "'..'"),
    ("sub/../../evil.txt", "'..'"),
    ("/etc/evil.txt", "absolute"),
])
def test_hostile_member_refuses_whole_zip(http_server, tmp_path, member, reason):
    src = tmp_path / "bad.zip"
    md5 = write_jena_zip(src, rows=200, extra_members={member: b"pwned"})
    name = serve(http_server, src, "bad.zip")
    out_dir = tmp_path / "target" / "raw"
    with pytest.raises(UnsafeArchiveError, match=reason) as e:
        download_csv(http_server.url(name), out_dir / "jena.csv", md5=md5, progress=False)
    assert member in str(e.value) and http_server.url(name) in str(e.value)
    assert leftovers(tmp_path / "target") == []
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "target" / "evil.txt").exists()


@pytest.mark.hostile
def test_symlink_member_refused(tmp_path):
    src = tmp_path / "link.zip"
    write_jena_zip(src, rows=100)
    with zipfile.ZipFile(src, "a") as zf:
        info = zipfile.ZipInfo("link.csv")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        extract_zip_csv(src, tmp_path / "out" / "x.csv")
    assert not (tmp_path / "out" / "x.csv").exists()


@pytest.mark.hostile
def test_zip_without_csv(tmp_path):
    src = tmp_path / "empty.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(DownloadError, match="exactly one .csv"):
        extract_zip_csv(src, tmp_path / "x.csv")
