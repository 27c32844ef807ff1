import hashlib
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from rnnlab.core.config import ConfigError
from rnnlab.core.errors import DataFormatError, DownloadError, UnsafeArchiveError
from rnnlab.data.archive import WANTED
from rnnlab.data.download import download_imdb
from rnnlab.data.imdb import (
    CANONICAL_MD5,
    OOV,
    PAD,
    REAL_REVIEWS_SHA256,
    build_vocabulary,
    clean,
    data_source,
    digest_reviews,
    encode,
    interleave_classes,
    load_imdb,
    load_texts,
    prepare_imdb,
    read_reviews,
    reviews_digest,
    split_validation,
    tokenize,
)
from rnnlab.data.synthetic import write_imdb_tarball

from conftest import leftovers


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    path = tmp_path_factory.mktemp("imdb") / "aclImdb_v1.tar.gz"
    return path, write_imdb_tarball(path, per_class=30, seed=1)


def test_download_over_http_unpacks_only_the_review_folders(http_server, tarball, tmp_path):
    path, md5 = tarball
    shutil.copy(path, http_server.root / "imdb.tar.gz")
    dest = tmp_path / "raw" / "imdb"
    assert download_imdb(http_server.url("imdb.tar.gz"), dest, md5=md5, progress=False) == 120
    files = leftovers(tmp_path / "raw")
    assert len(files) == 121 and "imdb/archive.json" in files
    assert json.loads((dest / "archive.json").read_text()) == {"md5": md5, "reviews": 120}
    assert all(f.startswith("imdb/aclImdb/") and f.endswith(".txt") for f in files
               if f != "imdb/archive.json")
    assert not (dest / "aclImdb" / "README").exists()
    assert not (dest / "aclImdb" / "train" / "urls_pos.txt").exists()
    reviews = read_reviews(dest, "train")
    assert len(reviews.texts) == 60 and reviews.labels.sum() == 30
    assert any("<br />" in t for t in reviews.texts) and any("é" in t for t in reviews.texts)


@pytest.mark.hostile
def test_wrong_md5_leaves_nothing(tarball, tmp_path):
    path, _ = tarball
    with pytest.raises(DownloadError, match="md5 mismatch"):
        download_imdb(path.as_uri(), tmp_path / "raw" / "imdb", md5="0" * 32, progress=False)
    assert leftovers(tmp_path / "raw") == []


def hostile(tmp_path, info: tarfile.TarInfo, data: bytes | None = b"x"):
    if data is not None:
        info.size = len(data)
    path = tmp_path / "bad.tar.gz"
    write_imdb_tarball(path, per_class=3, extra_members=[(info, data)])
    return path


@pytest.mark.hostile
@pytest.mark.parametrize("make, reason", [
    (lambda: tarfile.TarInfo("aclImdb/../../evil.txt"), "'..'"),
    (lambda: tarfile.TarInfo("/tmp/evil.txt"), "absolute path"),
    (lambda: _link("aclImdb/train/pos/99_9.txt", "/etc/passwd", tarfile.SYMTYPE), "a link"),
    (lambda: _link("aclImdb/train/pos/98_9.txt", "aclImdb/README", tarfile.LNKTYPE), "a link"),
    (lambda: _dev("aclImdb/train/pos/dev"), "device"),
])
def test_hostile_archives_are_refused_whole(tmp_path, make, reason):
    info = make()
    path = hostile(tmp_path, info, None if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE,
                                                          tarfile.CHRTYPE) else b"x")
    dest = tmp_path / "out" / "imdb"
    with pytest.raises(UnsafeArchiveError, match=reason) as e:
        download_imdb(path.as_uri(), dest, md5=None, progress=False)
    assert info.name in str(e.value)
    assert leftovers(tmp_path / "out") == [] and not dest.exists()
    assert not (tmp_path / "evil.txt").exists()


def _link(name, target, kind):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _dev(name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.hostile
def test_truncated_archive_is_a_clear_error(tarball, tmp_path):
    path, _ = tarball
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DownloadError, match="damaged or truncated"):
        download_imdb(cut.as_uri(), tmp_path / "out" / "imdb", md5=None, progress=False)
    assert leftovers(tmp_path / "out") == []


def test_tokenize_strips_tags_and_lowercases():
    assert tokenize("Great film.<br /><br />The END, naïve señor!") == [
        "great", "film", "the", "end", "naïve", "señor"]


def test_vocabulary_ranks_by_frequency_and_reserves_ids():
    vocab = build_vocabulary([["b", "a", "b"], ["c", "b", "a"]], max_features=2)
    assert vocab == {"b": 2, "a": 3}                 # 0 = padding, 1 = out of vocabulary
    assert PAD == 0 and OOV == 1


def test_padding_truncation_and_reversal():
    vocab = {"a": 2, "b": 3, "c": 4}
    tokens = [["a", "b", "c", "zzz"], ["a"]]
    pre = encode(tokens, vocab, 3)
    np.testing.assert_array_equal(pre, [[3, 4, 1], [0, 0, 2]])        # keeps the end, pads front
    post = encode(tokens, vocab, 3, padding="post", truncating="post")
    np.testing.assert_array_equal(post, [[2, 3, 4], [2, 0, 0]])
    rev = encode(tokens, vocab, 3, reverse=True)
    np.testing.assert_array_equal(rev, [[4, 3, 2], [0, 0, 2]])       # x[::-1], then pad


def test_validation_split_is_seeded():
    a, b, c = split_validation(100, 0.2, 1), split_validation(100, 0.2, 1), split_validation(100, 0.2, 2)
    assert np.array_equal(a[1], b[1]) and not np.array_equal(a[1], c[1])
    assert len(a[1]) == 20 and not set(a[0]) & set(a[1])


def test_prepare_builds_the_vocabulary_on_training_reviews_only(tarball, tmp_path):
    path, md5 = tarball
    raw = tmp_path / "raw"
    download_imdb(path.as_uri(), raw, md5=md5, progress=False)
    # A word that appears only in a test review, and one only in a validation review.
    test_file = next((raw / "aclImdb" / "test" / "neg").glob("*.txt"))
    test_file.write_text(test_file.read_text() + " zyzzyvaonlyintest")
    stats = prepare_imdb(raw, tmp_path / "prep", max_features=1000, maxlen=50,
                         val_fraction=0.25, seed=3)
    assert len(stats["val_ids"]) == 15 and all(i.startswith("train/") for i in stats["val_ids"])
    vocab = json.loads((tmp_path / "prep" / "vocab.json").read_text())
    assert "zyzzyvaonlyintest" not in vocab
    assert stats["counts"] == {"train": 45, "val": 15, "test": 60}
    x, y = load_imdb(tmp_path / "prep", "train")
    assert x.shape == (45, 50) and x.dtype == np.int32 and set(np.unique(y)) == {0, 1}
    xr, _ = load_imdb(tmp_path / "prep", "train", reverse=True)
    assert not np.array_equal(x, xr)
    assert len(load_texts(tmp_path / "prep")["test"]) == 60
    # Written piece by piece, the bytes of json.dumps all the same.
    texts_json = (tmp_path / "prep" / "texts.json").read_text()
    assert texts_json == json.dumps(load_texts(tmp_path / "prep"))
    # Every vocabulary word occurs in the training part (validation and test excluded).
    train_words = {w for t in load_texts(tmp_path / "prep")["train"] for w in tokenize(t)}
    assert set(vocab) <= train_words


def test_reading_tokenized_keeps_one_object_per_word(tarball, tmp_path):
    """With ``words``, read_reviews gives the reviews cleaned, with tokenize's words, and
    each word as one str object however often it occurs (the real corpus: 11 million words
    of about 100,000 distinct ones, 700 MB as a str each)."""
    path, md5 = tarball
    raw = tmp_path / "raw"
    download_imdb(path.as_uri(), raw, md5=md5, progress=False)
    words: dict[str, str] = {}
    for split in ("train", "test"):
        read, tokenized = read_reviews(raw, split), read_reviews(raw, split, words)
        assert tokenized.texts == [clean(t) for t in read.texts]
        assert read.tokens is None and tokenized.tokens == [tokenize(t) for t in read.texts]
        assert np.array_equal(tokenized.labels, read.labels) and tokenized.ids == read.ids
        every = [w for tokens in tokenized.tokens for w in tokens]
        assert len({id(w) for w in every}) == len(set(every)) < len(every)
        assert all(words[w] is w for w in every)


def test_reviews_digest_names_the_content_not_the_packing(tarball, tmp_path):
    """The digest of the unpacked reviews is the documented formula, the same for another
    packing of the same files (another tarball md5), and changes with one review."""
    path, md5 = tarball
    raw = tmp_path / "raw"
    download_imdb(path.as_uri(), raw, md5=md5, progress=False)
    base = raw / "aclImdb"
    files = sorted(p.relative_to(base).as_posix() for p in base.rglob("*.txt"))
    by_hand = hashlib.sha256()
    for rel in files:
        data = (base / rel).read_bytes()
        by_hand.update(f"{rel}\n{len(data)}\n".encode() + data)
    digest, counts = reviews_digest(raw)
    assert digest == by_hand.hexdigest()
    assert counts == {"train/pos": 30, "train/neg": 30, "test/pos": 30, "test/neg": 30}

    # Re-packed: uncompressed, members in reverse order, other dates and modes.
    repacked = tmp_path / "repacked.tar"
    with tarfile.open(repacked, "w") as tar:
        for rel in reversed(files):
            tar.add(base / rel, arcname=f"aclImdb/{rel}")
    assert hashlib.md5(repacked.read_bytes()).hexdigest() != md5
    download_imdb(repacked.as_uri(), tmp_path / "raw2", md5=None, progress=False)
    assert reviews_digest(tmp_path / "raw2") == (digest, counts)

    review = base / files[0]
    review.write_bytes(review.read_bytes() + b" ")
    assert reviews_digest(raw)[0] != digest


def test_data_source_labels(tarball, tmp_path):
    """canonical by the tarball's md5, real by the reviews' digest and the canonical counts,
    other for anything else: generated reviews are never called real."""
    path, md5 = tarball
    raw = tmp_path / "raw"
    download_imdb(path.as_uri(), raw, md5=md5, progress=False)
    stats = prepare_imdb(raw, tmp_path / "prep", max_features=100, maxlen=20,
                         val_fraction=0.2, seed=1)
    assert stats["archive_md5"] == md5 and stats["review_counts"]["test/neg"] == 30
    assert stats["reviews_sha256"] == reviews_digest(raw)[0]
    assert data_source(stats) == "other"
    assert data_source(stats | {"archive_md5": CANONICAL_MD5}) == "canonical"
    full = dict.fromkeys(stats["review_counts"], 12_500)
    assert data_source(stats | {"reviews_sha256": REAL_REVIEWS_SHA256,
                                "review_counts": full}) == "real"
    assert data_source(stats | {"reviews_sha256": REAL_REVIEWS_SHA256}) == "other"
    assert data_source(stats | {"review_counts": full}) == "other"


# A copy of the real tarball, where one is at hand (.ci/run points at the shared mirror).
REAL_COPY = os.environ.get("RNNLAB_IMDB_COPY")


def test_the_offline_mirror_of_the_real_reviews_is_labelled_real():
    """Our re-packed mirror of the real corpus: another tarball md5, the real reviews."""
    if not REAL_COPY or not Path(REAL_COPY).is_file():
        pytest.skip(f"RNNLAB_IMDB_COPY={REAL_COPY or ''!r} names no copy of the real IMDB "
                    "tarball; set it to aclImdb_v1.tar.gz's path to run this check")
    reviews = []
    with tarfile.open(REAL_COPY) as tar:        # streamed: no 50,000 files written
        for member in tar:
            if member.isfile() and WANTED.match(member.name):
                reviews.append((member.name.split("aclImdb/", 1)[1],
                                tar.extractfile(member).read()))
    digest, counts = digest_reviews(reviews)
    assert counts == dict.fromkeys(("train/pos", "train/neg", "test/pos", "test/neg"), 12_500)
    assert digest == REAL_REVIEWS_SHA256
    tarball_md5 = hashlib.md5(Path(REAL_COPY).read_bytes()).hexdigest()
    assert data_source({"archive_md5": tarball_md5, "reviews_sha256": digest,
                        "review_counts": counts}) == ("canonical" if tarball_md5 == CANONICAL_MD5
                                                      else "real")


def test_accuracy_is_the_exact_fraction(tmp_path):
    """21,648 right of 25,000 logs as 0.86592, not float32's 0.8659200072288513."""
    import torch

    from rnnlab.data.imdb import FILES
    from rnnlab.training.tasks import ImdbTask
    for split in ("train", "val", "test"):
        np.save(tmp_path / FILES["x"].format(split=split), np.ones((4, 3), np.int32))
        np.save(tmp_path / FILES["y"].format(split=split), np.array([0, 1, 0, 1], np.int8))
    task = ImdbTask(tmp_path, batch_size=2, vocab_size=5)
    targets = torch.ones(25_000)
    outputs = torch.full((25_000,), 2.0)
    outputs[21_648:] = -2.0                       # 3,352 wrong
    assert task.metrics(outputs, targets)["accuracy"] == 21_648 / 25_000


def test_the_task_holds_the_ids_as_stored_and_batches_them_as_int64(tmp_path):
    """The (n, maxlen) ids stay the int32 of the files (half of int64's memory); every
    training and evaluation batch is the int64 the embedding and the multi-hot index take."""
    import torch

    from rnnlab.data.imdb import FILES
    from rnnlab.training.tasks import ImdbTask
    rng = np.random.default_rng(0)
    stored = {}
    for split in ("train", "val", "test"):
        stored[split] = rng.integers(0, 10_002, (10, 7)).astype(np.int32)
        np.save(tmp_path / FILES["x"].format(split=split), stored[split])
        np.save(tmp_path / FILES["y"].format(split=split), np.arange(10, dtype=np.int8) % 2)
    task = ImdbTask(tmp_path, batch_size=4, vocab_size=10_002, eval_batch_size=3)
    assert all(task.data[split][0].dtype == torch.int32 for split in stored)
    seen = []
    for x, _ in task.train_batches(epoch=1, steps=None, seed=1):
        assert x.dtype == torch.int64 and x.shape[1] == 7
        seen += [row.tolist() for row in x]
    assert sorted(seen) == sorted(stored["train"].tolist())       # every review once
    from rnnlab.data.windows import shuffled_batches  # in the epoch's order
    assert [x.tolist() for x, _ in task.train_batches(epoch=2, steps=None, seed=1)] == [
        stored["train"][rows].tolist()
        for rows in shuffled_batches(np.arange(10), 2, None, 4, 1)]
    batches = list(task.eval_batches("test", None))
    assert [len(y) for _, y in batches] == [3, 3, 3, 1]
    assert [len(y) for _, y in task.eval_batches("test", None, join=2)] == [6, 4]
    assert [len(y) for _, y in task.eval_batches("test", 3, join=2)] == [6, 3]   # 3 batches
    assert [len(y) for _, y in task.eval_batches("test", 0, join=2)] == []
    assert np.array_equal(torch.cat([x for x, _ in task.eval_batches("test", None, 3)]).numpy(),
                          stored["test"])
    assert all(x.dtype == torch.int64 for x, _ in batches)
    assert np.array_equal(torch.cat([x for x, _ in batches]).numpy(), stored["test"])


def test_roc_auc_is_scikit_learns():
    """The IMDB stages' AUC (numpy, average ranks) equals scikit-learn's roc_auc_score, ties
    and float32 logits included; NaN with one class."""
    from sklearn.metrics import roc_auc_score

    from rnnlab.training.tasks import roc_auc
    rng = np.random.default_rng(0)
    for n, levels in ((25_000, None), (1_000, 7), (50, 2), (2, None)):
        labels = rng.random(n) < 0.4
        labels[:2] = (True, False)
        scores = rng.normal(size=n).astype(np.float32)
        if levels:                                       # many ties
            scores = np.round(scores * levels / 3) / levels
        assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores),
                                                        rel=1e-12, abs=1e-12)
    assert roc_auc(np.array([True, False, True]), np.array([0.3, 0.3, 0.3])) == 0.5
    assert roc_auc(np.array([True, False]), np.array([0.9, 0.1])) == 1.0
    assert np.isnan(roc_auc(np.array([True, True]), np.array([0.2, 0.4])))


@pytest.fixture(scope="module")
def prepared_1200(tmp_path_factory):
    """1,200 reviews (300 a folder) prepared with val_fraction 0.25: train 450, val 150,
    test 600, every split past one batch of 128."""
    base = tmp_path_factory.mktemp("imdb1200")
    write_imdb_tarball(base / "a.tar.gz", per_class=300, seed=5)
    download_imdb((base / "a.tar.gz").as_uri(), base / "raw", md5=None, progress=False)
    stats = prepare_imdb(base / "raw", base / "prep", max_features=200, maxlen=40,
                         val_fraction=0.25, seed=7)
    return base, stats


@pytest.mark.hostile
def test_every_split_is_stored_with_the_classes_interleaved(prepared_1200):
    """A capped evaluation reads a split's first batches: each must hold both classes. The
    arrays, the texts and the validation ids stay aligned row for row."""
    base, stats = prepared_1200
    prep, raw = base / "prep", base / "raw"
    vocab = json.loads((prep / "vocab.json").read_text())
    texts = load_texts(prep)
    assert stats["counts"] == {"train": 450, "val": 150, "test": 600}
    for split in ("train", "val", "test"):
        x, y = load_imdb(prep, split)
        xr, y2 = load_imdb(prep, split, reverse=True)
        assert np.array_equal(y, y2) and len(texts[split]) == len(y)
        assert set(y[:128]) == {0, 1}, f"the first batch of {split} holds one class"
        share = y.mean()
        for start in range(0, len(y) - 127, 128):   # every full batch: the split's share
            assert abs(y[start:start + 128].sum() - 128 * share) <= 2, (split, start)
        tokens = [tokenize(t) for t in texts[split]]
        assert np.array_equal(x, encode(tokens, vocab, 40))
        assert np.array_equal(xr, encode(tokens, vocab, 40, reverse=True))
    # The validation ids name the reviews in the stored order; their labels are y_val's.
    _, y_val = load_imdb(prep, "val")
    for i, review_id in enumerate(stats["val_ids"]):
        split, label, stem = review_id.split("/")
        assert y_val[i] == (label == "pos")
        text = (raw / "aclImdb" / split / label / f"{stem}.txt").read_text()
        assert texts["val"][i] == text.replace("<br /><br />", "  ").lower()
    # Nothing lost or repeated: the test split holds each test review once.
    folder_texts = sorted(p.read_text().replace("<br /><br />", "  ").lower()
                          for p in (raw / "aclImdb" / "test").glob("*/*.txt"))
    assert sorted(texts["test"]) == folder_texts


def test_the_interleaving_is_seeded_and_even():
    labels = np.array([0] * 90 + [1] * 30)               # unbalanced: 3 to 1
    order = interleave_classes(labels, seed=1)
    assert sorted(order) == list(range(120))
    assert np.array_equal(order, interleave_classes(labels, seed=1))
    assert not np.array_equal(order, interleave_classes(labels, seed=2))
    ordered = labels[order]
    assert all(ordered[i:i + 4].sum() == 1 for i in range(0, 120, 4))   # one in every four


def _prepared_from(tmp_path, tarball, val_fraction, remove=()):
    path, md5 = tarball
    raw = tmp_path / "raw"
    download_imdb(path.as_uri(), raw, md5=md5, progress=False)
    for folder in remove:                     # a raw copy changed after its download
        for review in (raw / "aclImdb" / folder).glob("*.txt"):
            review.unlink()
    return raw, lambda: prepare_imdb(raw, tmp_path / "prep", max_features=100, maxlen=20,
                                     val_fraction=val_fraction, seed=1)


@pytest.mark.hostile
@pytest.mark.parametrize("val_fraction, remove, error", [
    (0.001, (), ConfigError("imdb.val_fraction: 0.001 of the 60 training reviews leaves 0 for "
                            "validation and 60 for training; set params.yaml imdb.val_fraction "
                            "so that both parts keep reviews of each class (0.2 is usual)")),
    (0.999, (), ConfigError("imdb.val_fraction: 0.999 of the 60 training reviews leaves 60 for "
                            "validation and 0 for training; set params.yaml imdb.val_fraction "
                            "so that both parts keep reviews of each class (0.2 is usual)")),
    (0.02, (), ConfigError("imdb.val_fraction: 0.02 of the 60 training reviews leaves 1 for "
                           "validation and 59 for training (validation: 1, all positive); set "
                           "params.yaml imdb.val_fraction so that both parts keep reviews of "
                           "each class (0.2 is usual)")),
    (0.2, ("test/pos",), DataFormatError("{raw}/aclImdb/test: no review in test/pos (30 test "
                                         "reviews in all): the archive was incomplete; get a "
                                         "complete copy (check data.imdb.url and data.imdb.md5) "
                                         "and rerun the download")),
])
def test_a_split_without_both_classes_is_refused(tarball, tmp_path, val_fraction, remove, error):
    raw, prepare = _prepared_from(tmp_path, tarball, val_fraction, remove)
    with pytest.raises(type(error)) as caught:
        prepare()
    assert str(caught.value) == str(error).format(raw=raw)
    assert not (tmp_path / "prep").exists()                 # nothing written


@pytest.mark.hostile
def test_a_review_that_is_not_utf8_is_read_with_replacement_and_named(tmp_path, caplog):
    info = tarfile.TarInfo("aclImdb/train/pos/999_9.txt")
    latin1 = "A café film, a naïve delight.".encode("latin-1")
    info.size = len(latin1)
    path = tmp_path / "latin1.tar.gz"
    write_imdb_tarball(path, per_class=10, seed=2, extra_members=[(info, latin1)])
    raw = tmp_path / "raw"
    download_imdb(path.as_uri(), raw, md5=None, progress=False)
    with caplog.at_level(logging.WARNING):
        stats = prepare_imdb(raw, tmp_path / "prep", max_features=100, maxlen=20,
                             val_fraction=0.2, seed=1)
    named = "aclImdb/train/pos/999_9.txt (byte 0xe9 at offset 5)"
    assert stats["not_utf8"] == [named]
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name == "rnnlab.data.imdb"]
    assert warnings == [f"tokenize: 1 review(s) are not UTF-8 (the IMDB release is); their "
                        f"undecodable bytes were replaced by U+FFFD: {named}; re-encode them as "
                        "UTF-8 to keep those characters"]
    texts = load_texts(tmp_path / "prep")
    assert "a caf\ufffd film, a na\ufffdve delight." in texts["train"] + texts["val"]
    assert stats["counts"]["train"] + stats["counts"]["val"] == 21     # 20 + the Latin-1 one


@pytest.mark.hostile
def test_a_maxlen_past_the_machines_memory_is_one_line_before_any_array(tmp_path):
    """``imdb.maxlen: 1000000000`` asks for 112 GB of padded ids for 30 reviews: one line
    naming the key, before tokenizing, and nothing written (today: MemoryError)."""
    from rnnlab.core.config import ConfigError
    from rnnlab.data.synthetic import write_imdb_tarball

    write_imdb_tarball(tmp_path / "a.tar.gz", per_class=20, seed=1)
    download_imdb((tmp_path / "a.tar.gz").as_uri(), tmp_path / "raw", md5=None, progress=False)
    with pytest.raises(ConfigError) as caught:
        prepare_imdb(tmp_path / "raw", tmp_path / "prep", max_features=100, maxlen=10**9,
                     val_fraction=0.25, seed=1)
    message = str(caught.value)
    assert message.startswith("tokenize_imdb would need about") and "\n" not in message
    assert "lower imdb.maxlen" in message
    assert not (tmp_path / "prep").exists()
