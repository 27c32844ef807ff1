"""IMDB Large Movie Review Dataset: download, tokenize, pad, split.

Layout of the archive (``aclImdb_v1.tar.gz``)::

    aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt    12,500 reviews per folder

Only those four folders are unpacked. Reviews carry ``<br />`` tags; tokens are the
lowercased words of scikit-learn's default pattern (2+ word characters). The vocabulary is
the ``max_features`` most frequent words of the *training* reviews (the validation part
excluded); id 0 pads, id 1 stands for every word outside the vocabulary, words take ids
2 .. max_features + 1 by decreasing frequency. Sequences are padded and truncated at the
front by default, as Keras' ``pad_sequences`` does.

Every prepared split (train, val, test) is stored in a seeded interleaving of the two
classes (``interleave_classes``): each class in a seeded random order, the two spread
evenly along the split, so that any run of consecutive reviews (the first N batches of a
capped evaluation) holds both classes in their proportions; sorted by folder, the first
half of a split would be negative reviews only. ``x``, ``x_reversed``, ``y``, the texts of
``texts.json`` and ``stats.json``'s ``val_ids`` share that order.

Each split must hold reviews of both classes: ``imdb.val_fraction`` must leave reviews of
each class in training and in validation, and the archive's train and test halves must
hold both folders; either is one error line.

The IMDB release is UTF-8. A review that is not (one Latin-1 byte, say) is read with each
undecodable byte replaced by U+FFFD rather than refused: the word around it loses a
character, the rest of the corpus is untouched. One warning names the files (their path
inside the archive) and ``stats.json`` lists them (``not_utf8``), so the replacement is
never silent; re-encode those files as UTF-8 to keep their characters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rnnlab.core.atomic import atomic_output, write_json
from rnnlab.core.config import ConfigError, at_least
from rnnlab.core.errors import DataFormatError
from rnnlab.core.machine import available_bytes, gigabytes
from rnnlab.data.archive import REVIEWS_PER_FOLDER, archive_md5

PAD, OOV = 0, 1
# md5 of the canonical aclImdb_v1.tar.gz; other copies (our offline mirror) differ.
CANONICAL_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
LABEL_DIRS = {"neg": 0, "pos": 1}
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
TOKEN = re.compile(r"(?u)\b\w\w+\b")
FILES = {"x": "x_{split}.npy", "x_reversed": "x_{split}_reversed.npy", "y": "y_{split}.npy"}
# The real corpus, however it was packed: ``reviews_digest`` of its 50,000 labelled reviews,
# computed on 2026-11-27 over our offline mirror (a re-packed copy whose reviews its
# PROVENANCE.md checks: 12,500 per folder, every id once, the official ratings, spot texts
# equal to a second public copy). Not computed on the canonical tarball (not reachable
# here). A copy with another tarball md5 but this digest holds the same reviews.
REAL_REVIEWS_SHA256 = "5b40628e929e1699e5b272aa53f31144d5462d93d1ebbe484d65aa087d60f0e2"
FOLDERS = ("train/pos", "train/neg", "test/pos", "test/neg")

log = logging.getLogger(__name__)


@dataclass
class Reviews:
    texts: list[str]       # as read; clean(review) when read with ``words``
    labels: np.ndarray     # (n,) int8, 1 = positive
    ids: list[str]         # "<split>/<pos|neg>/<id>_<rating>" for traceability
    # Files that are not UTF-8, read with U+FFFD for their bad bytes: "aclImdb/<path>
    # (byte 0xe9 at offset 17)" (module docstring).
    not_utf8: list[str] = field(default_factory=list)
    tokens: list[list[str]] | None = None    # read with ``words``: each text's words


def read_reviews(root: Path, split: str, words: dict[str, str] | None = None) -> Reviews:
    """All reviews of ``split`` under ``root`` (the unpacked ``aclImdb`` parent), sorted.

    With ``words``, each review is cleaned and tokenized as it is read: ``texts`` hold
    ``clean(review)`` and ``tokens`` its words (``tokenize(review)``), each word the one
    str object ``words`` maps it to (give every call the same dict). A word is then one
    object however often it occurs: the real corpus' 50,000 reviews are 11 million words
    of about 100,000 distinct ones, and as a str each they took 700 MB.
    """
    texts, tokens, labels, ids, not_utf8 = [], [], [], [], []
    for label_dir, label in LABEL_DIRS.items():
        folder = Path(root) / "aclImdb" / split / label_dir
        if not folder.is_dir():
            raise DataFormatError(f"{folder}: missing; rerun the download stage")
        for path in sorted(folder.glob("*.txt")):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                text = raw.decode("utf-8", errors="replace")
                not_utf8.append(f"aclImdb/{split}/{label_dir}/{path.name} "
                                f"(byte 0x{raw[e.start]:02x} at offset {e.start})")
            if words is not None:
                text = clean(text)
                tokens.append([words.setdefault(w, w) for w in TOKEN.findall(text)])
            texts.append(text)
            labels.append(label)
            ids.append(f"{split}/{label_dir}/{path.stem}")
    return Reviews(texts, np.asarray(labels, dtype=np.int8), ids, not_utf8,
                   tokens if words is not None else None)


def clean(text: str) -> str:
    return _BR.sub(" ", text).lower()


def tokenize(text: str) -> list[str]:
    return TOKEN.findall(clean(text))


def build_vocabulary(token_lists: list[list[str]], max_features: int) -> dict[str, int]:
    """The max_features most frequent words -> ids 2.. (ties broken alphabetically)."""
    counts: Counter[str] = Counter()
    for tokens in token_lists:
        counts.update(tokens)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_features]
    return {word: i + 2 for i, (word, _) in enumerate(ranked)}


def encode(token_lists: list[list[str]], vocab: dict[str, int], maxlen: int, *,
           padding: str = "pre", truncating: str = "pre", reverse: bool = False) -> np.ndarray:
    """Token lists -> (n, maxlen) int32 ids, padded with 0, OOV as 1.

    ``reverse`` flips each review's word order before padding and truncating (the
    lecture's reversed-sequence experiment: ``x[::-1]`` then ``pad_sequences``).
    """
    out = np.zeros((len(token_lists), maxlen), dtype=np.int32)
    for i, tokens in enumerate(token_lists):
        ids = [vocab.get(t, OOV) for t in (reversed(tokens) if reverse else tokens)]
        ids = ids[-maxlen:] if truncating == "pre" else ids[:maxlen]
        if not ids:
            continue
        if padding == "pre":
            out[i, maxlen - len(ids):] = ids
        else:
            out[i, :len(ids)] = ids
    return out


def split_validation(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train_idx, val_idx) of ``n`` training reviews."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def interleave_classes(labels: np.ndarray, seed: int) -> np.ndarray:
    """An order of ``labels``' indices that spreads each class evenly along the split.

    Each class is put in a seeded random order; its k-th of n reviews goes to position key
    (k + 1/2) / n, and the keys of all classes are merged (ties: negative first). With
    balanced classes that alternates neg, pos, neg, ...; otherwise every run of
    consecutive reviews holds each class in its proportion, to within one review.
    """
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        keys[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.lexsort((labels, keys))


def _one_class(labels: np.ndarray) -> str | None:
    """None if ``labels`` hold both classes, else what they hold ("60, all negative")."""
    positive = int(np.sum(labels == 1))
    if 0 < positive < len(labels):
        return None
    return f"{len(labels):,}, all {'positive' if positive else 'negative'}" if len(labels) \
        else "none"


def _check_splits(raw: Path, train: Reviews, test: Reviews, tr: np.ndarray, va: np.ndarray,
                  val_fraction: float) -> None:
    """Each split must hold reviews of both classes (accuracy and AUC on one class say
    nothing; an empty split gives NaN or a division by zero)."""
    for name, reviews in (("train", train), ("test", test)):
        if _one_class(reviews.labels) is not None:
            missing = [f"{name}/{d}" for d, label in LABEL_DIRS.items()
                       if not np.any(reviews.labels == label)]
            raise DataFormatError(
                f"{Path(raw) / 'aclImdb' / name}: no review in {' and '.join(missing)} "
                f"({len(reviews.labels):,} {name} reviews in all): the archive was incomplete; "
                "get a complete copy (check data.imdb.url and data.imdb.md5) and rerun the "
                "download")
    n = len(train.labels)
    counts = f"{len(va):,} for validation and {len(tr):,} for training"
    fix = ("set params.yaml imdb.val_fraction so that both parts keep reviews of each "
           "class (0.2 is usual)")
    if not len(va) or not len(tr):
        raise ConfigError(f"imdb.val_fraction: {val_fraction:g} of the {n:,} training reviews "
                          f"leaves {counts}; {fix}")
    for part, rows in (("validation", va), ("training", tr)):
        held = _one_class(train.labels[rows])
        if held is not None:
            raise ConfigError(f"imdb.val_fraction: {val_fraction:g} of the {n:,} training "
                              f"reviews leaves {counts} ({part}: {held}); {fix}")


def _check_memory(largest_split: int, maxlen: int) -> None:
    """One split's padded ids, forward and reversed (2 x reviews x maxlen int32), must fit
    the memory this process may still take: ``imdb.maxlen: 1000000000`` was an allocator's
    traceback (112 GB for 30 reviews) instead of a line naming the key."""
    need = 2 * largest_split * maxlen * np.dtype(np.int32).itemsize
    have, source = available_bytes()
    if need > have:
        raise ConfigError(f"tokenize_imdb would need about {gigabytes(need)} for one split's "
                          f"padded word ids ({largest_split:,} reviews x imdb.maxlen "
                          f"{maxlen:,} int32, forward and reversed) but this machine has "
                          f"{gigabytes(have)} {source}; lower imdb.maxlen (500 is the "
                          "lecture's)")


def prepare_imdb(raw: Path, out: Path, *, max_features: int, maxlen: int, val_fraction: float,
                 seed: int, padding: str = "pre", truncating: str = "pre") -> dict:
    """Tokenize, build the vocabulary on training reviews, write the arrays and vocab.json.

    Every split is stored in ``interleave_classes`` order (seeded by ``seed``)."""
    for name, value in (("padding", padding), ("truncating", truncating)):
        if value not in ("pre", "post"):
            raise DataFormatError(f"imdb.{name}: {value!r}; choose pre or post")
    began = time.perf_counter()
    words: dict[str, str] = {}
    train, test = read_reviews(raw, "train", words), read_reviews(raw, "test", words)
    tr, va = split_validation(len(train.texts), val_fraction, seed)
    _check_splits(raw, train, test, tr, va, val_fraction)
    _check_memory(max(len(tr), len(va), len(test.texts)), maxlen)
    not_utf8 = train.not_utf8 + test.not_utf8
    if not_utf8:
        log.warning("tokenize: %d review(s) are not UTF-8 (the IMDB release is); their "
                    "undecodable bytes were replaced by U+FFFD: %s%s; re-encode them as UTF-8 "
                    "to keep those characters", len(not_utf8), ", ".join(not_utf8[:5]),
                    ", ..." if len(not_utf8) > 5 else "")
    digest, review_counts = reviews_digest(raw)
    train_tokens, test_tokens = train.tokens, test.tokens
    assert train_tokens is not None and test_tokens is not None
    vocab = build_vocabulary([train_tokens[i] for i in tr], max_features)
    # Stored order (module docstring): rows of the reviews read, classes interleaved.
    rows = {"train": tr[interleave_classes(train.labels[tr], seed)],
            "val": va[interleave_classes(train.labels[va], seed)],
            "test": interleave_classes(test.labels, seed)}
    source = {"train": (train, train_tokens), "val": (train, train_tokens),
              "test": (test, test_tokens)}
    splits = {s: ([source[s][1][i] for i in r], source[s][0].labels[r]) for s, r in rows.items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, (tokens, labels) in splits.items():
        for key in FILES:        # one array at a time: a split's ids, then its reversed ids
            array = labels if key == "y" else encode(
                tokens, vocab, maxlen, padding=padding, truncating=truncating,
                reverse=key == "x_reversed")
            with atomic_output(out / FILES[key].format(split=split)) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, array)
            del array
    # Cleaned texts for the TF-IDF baseline, in the order of the arrays (one list per split);
    # json.dump writes it piece by piece, where json.dumps built the whole string first.
    texts = {s: [source[s][0].texts[i] for i in r] for s, r in rows.items()}
    with atomic_output(out / "texts.json") as tmp:
        with open(tmp, "w") as f:
            json.dump(texts, f)
    lengths = np.array([len(t) for t in train_tokens])
    stats: dict[str, Any] = {
        "vocab_size": len(vocab) + 2, "max_features": max_features, "maxlen": maxlen,
        "padding": padding, "truncating": truncating, "pad_id": PAD, "oov_id": OOV,
        "counts": {s: len(v[1]) for s, v in splits.items()},
        "positive_fraction": {s: float(np.mean(v[1])) for s, v in splits.items()},
        "train_review_length_median": float(np.median(lengths)),
        "train_truncated_fraction": float(np.mean(lengths > maxlen)),
        "val_ids": [train.ids[i] for i in rows["val"]],      # in the stored order
        "not_utf8": not_utf8,
        "archive_md5": archive_md5(raw),
        "reviews_sha256": digest, "review_counts": review_counts,
        "seconds": round(time.perf_counter() - began, 2)}
    with atomic_output(out / "vocab.json") as tmp:
        tmp.write_text(json.dumps(vocab))
    with atomic_output(out / "stats.json") as tmp:
        tmp.write_text(json.dumps(stats, indent=1) + "\n")
    log.info("tokenize: %s reviews, vocabulary %s + 2 reserved ids, %s s",
             f"{sum(stats['counts'].values()):,}", f"{len(vocab):,}", stats["seconds"])
    return stats


def save_sequence_spec(stats: dict, out_dir: Path) -> Path:
    """IMDB's counterpart of the Jena window spec (``windows.json``): how a review becomes
    one model input, (maxlen,) word ids of a vocab_size-word vocabulary. The train stages
    of both data sets read their input shape from ``data/prepared/<dataset>_windows``."""
    spec = {k: stats[k] for k in ("maxlen", "vocab_size", "padding", "truncating",
                                  "pad_id", "oov_id")} | {"timesteps": stats["maxlen"]}
    write_json(Path(out_dir) / "windows.json", spec)
    return Path(out_dir) / "windows.json"


def digest_reviews(reviews: Iterable[tuple[str, bytes]]) -> tuple[str, dict[str, int]]:
    """A sha256 over labelled reviews given as (path relative to ``aclImdb``, bytes), and
    their count per folder.

    In sorted order of the paths (``test/neg/0_2.txt``); for each, the path, a newline, its
    size in bytes, a newline, then its bytes. It names the content, whatever the archive's
    compression, order or timestamps: a re-packed copy of the real corpus has the real
    corpus' digest (``REAL_REVIEWS_SHA256``) although its tarball md5 differs.
    """
    return _digest_sorted(sorted(reviews))


def _digest_sorted(reviews: Iterable[tuple[str, bytes]]) -> tuple[str, dict[str, int]]:
    """``digest_reviews`` of reviews already in sorted order of their paths."""
    h = hashlib.sha256()
    counts = dict.fromkeys(FOLDERS, 0)
    for rel, data in reviews:
        h.update(f"{rel}\n{len(data)}\n".encode())
        h.update(data)
        counts[rel.rsplit("/", 1)[0]] += 1
    return h.hexdigest(), counts


def reviews_digest(raw: Path) -> tuple[str, dict[str, int]]:
    """``digest_reviews`` of the reviews unpacked under ``raw/aclImdb/{train,test}/{pos,neg}``,
    one file read at a time (the paths sorted first, not the 50,000 files' bytes)."""
    base = Path(raw) / "aclImdb"
    paths = sorted(p.relative_to(base).as_posix()
                   for folder in FOLDERS for p in (base / folder).glob("*.txt"))
    return _digest_sorted((rel, (base / rel).read_bytes()) for rel in paths)


def data_source(stats: dict) -> str:
    """What the prepared reviews are, from tokenize_imdb's ``stats.json``: ``canonical``
    (the canonical tarball, by its md5), ``real`` (another packing of the real corpus: the
    reviews' digest is ``REAL_REVIEWS_SHA256`` and every folder holds 12,500 reviews) or
    ``other`` (generated reviews, a subset, an altered copy)."""
    if stats.get("archive_md5") == CANONICAL_MD5:
        return "canonical"
    counts = stats.get("review_counts") or {}
    if (stats.get("reviews_sha256") == REAL_REVIEWS_SHA256
            and all(counts.get(f) == REVIEWS_PER_FOLDER for f in FOLDERS)):
        return "real"
    return "other"


def load_imdb(prepared: Path, split: str, reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    prepared = Path(prepared)
    key = "x_reversed" if reverse else "x"
    return (np.load(prepared / FILES[key].format(split=split)),
            np.load(prepared / FILES["y"].format(split=split)))


def load_texts(prepared: Path) -> dict[str, list[str]]:
    return json.loads((Path(prepared) / "texts.json").read_text())


@dataclass(frozen=True)
class ImdbParams:
    max_features: int
    maxlen: int
    val_fraction: float
    batch_size: int
    padding: str = "pre"
    truncating: str = "pre"

    def validate(self, where: str) -> None:
        for name in ("max_features", "maxlen", "batch_size"):
            at_least(where, name, getattr(self, name), 1)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"{where}.val_fraction: must be in (0, 1), got {self.val_fraction}")
        for name in ("padding", "truncating"):
            if getattr(self, name) not in ("pre", "post"):
                raise ConfigError(f"{where}.{name}: {getattr(self, name)!r}; choose pre or post")
