"""The schema of ``params.yaml``: one typed, frozen tree, validated whole when loaded.

    params = load_params(Path("params.yaml"))      # -> Params; one clear error otherwise
    params.jena.lookback, params.models["gru"].units, params.seed_list

Every section is a frozen dataclass; unknown keys are errors at every level (top level
included) naming the key, its section and the known keys; each model variant accepts
only the fields its architecture reads (``ARCHITECTURES``). Nothing here imports torch,
so the data stages stay light and their DVC dependencies small.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml

from rnnlab.config import ConfigError, from_mapping
from rnnlab.errors import redact

PARAMS_FILE = Path("params.yaml")
# Variant names become file names, DVC stage names and shell arguments: keep them plain.
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# train.init: the initial weights of every torch model (rnnlab.models.initialize).
INITS = ("keras", "torch")


def at_least(where: str, name: str, value: float | None, low: int, *,
             null: str | None = None) -> None:
    """``value >= low``, or null where ``null`` says what null means. Zero is never a
    silent 'no limit': where a cap is optional, null is how to lift it."""
    if value is None and null is not None:
        return
    if value is None or value < low:
        fix = f"must be >= {low}" + (f" or null ({null})" if null else "")
        raise ConfigError(f"{where}.{name}: {fix}, got {'null' if value is None else value}")


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


@dataclass(frozen=True)
class DataParams:
    jena: SourceParams
    imdb: SourceParams


@dataclass(frozen=True)
class JenaParams:
    lookback: int
    step: int
    delay: int
    batch_size: int
    train_rows: tuple[int, int | None]
    val_rows: tuple[int, int | None]
    test_rows: tuple[int, int | None]
    target: str
    wind_sentinel_fill: float | None = 0.0

    def validate(self, where: str) -> None:
        for name in ("lookback", "step", "batch_size"):
            at_least(where, name, getattr(self, name), 1)
        at_least(where, "delay", self.delay, 0)
        if self.lookback < self.step:
            raise ConfigError(f"{where}.lookback: {self.lookback} is shorter than jena.step "
                              f"({self.step}); a window needs lookback >= step")
        if self.train_rows[1] is None:
            raise ConfigError(f"{where}.train_rows: the end must be a row number, not null "
                              "(the statistics are taken over these rows)")
        self._check_splits(where)

    def _check_splits(self, where: str) -> None:
        """Each split is [start, end] with start < end, and train, val, test follow one
        another without overlap: validation rows inside training would leak into the
        figures. (Targets may still reach ``delay`` rows past a split's end, as in the
        lecture; docs/conventions.md.)"""
        for name, (lo, hi) in self.splits.items():
            if lo < 0 or (hi is not None and hi <= lo):
                raise ConfigError(f"{where}.{name}_rows: {_rows(lo, hi)} is not [start, end] "
                                  "with 0 <= start < end (end null = the end of the data)")
        for (name, (_, hi)), (after, (lo, _)) in pairwise(self.splits.items()):
            if hi is None:
                raise ConfigError(f"{where}.{name}_rows: the end is null (the end of the data), "
                                  f"so it runs over {after}_rows {_rows(*self.splits[after])}; "
                                  f"give it an end <= {lo}")
            if hi > lo:
                raise ConfigError(f"{where}.{after}_rows: {_rows(*self.splits[after])} starts "
                                  f"before the end of {name}_rows {_rows(*self.splits[name])}; "
                                  "the splits run train, val, test in order without overlap "
                                  f"(shared rows leak between them): start it at {hi} or later")

    @property
    def splits(self) -> dict[str, tuple[int, int | None]]:
        return {"train": self.train_rows, "val": self.val_rows, "test": self.test_rows}


def _rows(lo: int, hi: int | None) -> str:
    return f"[{lo}, {'null' if hi is None else hi}]"


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


@dataclass(frozen=True)
class TrainParams:
    """The training engine, for every variant."""
    steps_per_epoch: int | None               # Jena; null = a full pass over the windows
    imdb_steps_per_epoch: int | None = None   # IMDB; null = a full pass
    max_epochs: int | None = None             # cap over every variant's epochs; null = none
    max_eval_batches: int | None = None       # cap on val/test batches; null = all
    clip_norm: float | None = None
    eval_batch_size: int = 128                # val/test batches (no gradients)
    threads: int | str = "auto"               # CPU threads: auto (measured) or a number
    init: str = "keras"                       # initial weights: keras (the lecture's) or torch

    def validate(self, where: str) -> None:
        if self.init not in INITS:
            raise ConfigError(f"{where}.init: {self.init!r}; choose {' or '.join(INITS)}")
        if self.threads != "auto" and (isinstance(self.threads, str) or self.threads < 1):
            raise ConfigError(f"{where}.threads: must be auto or a number of threads >= 1, "
                              f"got {self.threads!r}")
        at_least(where, "eval_batch_size", self.eval_batch_size, 1)
        for name in ("steps_per_epoch", "imdb_steps_per_epoch"):
            at_least(where, name, getattr(self, name), 1, null="a full pass")
        for name in ("max_epochs", "max_eval_batches"):
            at_least(where, name, getattr(self, name), 1, null="no cap")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ConfigError(f"{where}.clip_norm: must be > 0 or null, got {self.clip_norm}")


@dataclass(frozen=True)
class ExplodeParams:
    recurrent_scale: float
    nonlinearity: str
    lr: float
    steps: int
    timesteps: int            # the last steps of each window the run reads
    clip_norm: float          # used when train.clip_norm is null

    def validate(self, where: str) -> None:
        at_least(where, "steps", self.steps, 1)
        at_least(where, "timesteps", self.timesteps, 1)
        for name in ("recurrent_scale", "lr", "clip_norm"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name}: must be > 0, got {getattr(self, name)}")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ConfigError(f"{where}.nonlinearity: {self.nonlinearity!r}; choose tanh or relu")


@dataclass(frozen=True)
class GradientsParams:
    hidden: int
    batches: int
    train_steps: int
    distance: int
    explode: ExplodeParams

    def validate(self, where: str) -> None:
        for name in ("hidden", "batches", "train_steps", "distance"):
            at_least(where, name, getattr(self, name), 1)


@dataclass(frozen=True)
class Architecture:
    """What a model builder reads from its variant: the datasets it fits and its fields."""
    datasets: tuple[str, ...]
    fields: tuple[str, ...]
    torch: bool = True          # False: not built by rnnlab.models (scikit-learn)


# Every variant has dataset, arch and epochs; these are the fields each architecture adds.
# rnnlab.models registers one builder per name here (a test keeps the two in step).
_WINDOW = ("reverse", "lookback", "step")
_RECURRENT = ("units", "activations", "dropout", "recurrent_dropout", "bidirectional")
ARCHITECTURES = {
    "dense": Architecture(("jena",), ("units", *_WINDOW)),
    "gru": Architecture(("jena",), (*_RECURRENT, *_WINDOW)),
    "lstm": Architecture(("jena",), ("units", "bidirectional", *_WINDOW)),
    "conv_gru": Architecture(("jena",), (*_RECURRENT, *_WINDOW, "conv_filters", "conv_kernel",
                                         "pool_size")),
    "multihot_dense": Architecture(("imdb",), ("units",)),
    "embed_rnn": Architecture(("imdb",), ("cell", "units", "embedding_dim", "bidirectional",
                                          "reverse")),
    "tfidf_logreg": Architecture(("imdb",), ("ngram_max", "c"), torch=False),
}
COMMON_FIELDS = ("dataset", "arch", "epochs")


def fields_read(arch: str) -> tuple[str, ...]:
    """Every ``models.<variant>`` key a variant of ``arch`` reads (the common ones first)."""
    return COMMON_FIELDS + ARCHITECTURES[arch].fields


@dataclass(frozen=True)
class ModelSpec:
    """One variant's architecture and training length (a ``models.<variant>`` entry)."""

    dataset: str
    arch: str
    epochs: int
    units: tuple[int, ...] = (32,)         # one entry per stacked recurrent layer
    activations: tuple[str, ...] | None = None  # per layer; default tanh
    dropout: float = 0.0                   # on each recurrent layer's inputs, one mask per sequence
    recurrent_dropout: float = 0.0         # on the recurrent state, one mask per sequence
    bidirectional: bool = False
    reverse: bool = False                  # train and evaluate on reversed-order sequences
    lookback: int | None = None            # Jena window overrides (conv_gru uses its own)
    step: int | None = None
    conv_filters: int = 32                 # conv_gru only
    conv_kernel: int = 5
    pool_size: int = 3
    cell: str = "lstm"                     # embed_rnn only: rnn (simple, tanh), gru, lstm
    embedding_dim: int = 32                # embed_rnn only
    ngram_max: int = 2                     # tfidf_logreg only: 1 = words, 2 = + bigrams
    c: float = 1.0                         # tfidf_logreg only: inverse regularization

    @staticmethod
    def check_keys(data: Mapping[str, Any], where: str) -> None:
        """Before the fields are read: the arch is known and every key is one it uses."""
        arch = data.get("arch")
        if not isinstance(arch, str) or arch not in ARCHITECTURES:
            raise ConfigError(f"{where}.arch: unknown architecture {arch!r}; known: "
                              f"{', '.join(sorted(ARCHITECTURES))}")
        reads = fields_read(arch)
        unused = [k for k in data if k not in reads]
        if unused:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unused))} for arch "
                              f"{arch!r}; it reads {', '.join(reads)}")

    def validate(self, where: str) -> None:
        datasets = ARCHITECTURES[self.arch].datasets
        if self.dataset not in datasets:
            raise ConfigError(f"{where}.dataset: {self.dataset!r}; arch {self.arch!r} trains "
                              f"on {' or '.join(datasets)}")
        if self.activations is not None and len(self.activations) != len(self.units):
            raise ConfigError(f"{where}.activations: {len(self.activations)} given for "
                              f"{len(self.units)} layers (units)")
        bad = [a for a in (self.activations or ()) if a not in ("tanh", "relu")]
        if bad:
            raise ConfigError(f"{where}.activations: {bad[0]!r}; choose tanh or relu")
        for name in ("dropout", "recurrent_dropout"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"{where}.{name}: {p} is not in [0, 1)")
        if self.cell not in ("rnn", "gru", "lstm"):
            raise ConfigError(f"{where}.cell: {self.cell!r}; choose rnn, gru or lstm")
        for name in ("epochs", "conv_filters", "conv_kernel", "pool_size", "embedding_dim",
                     "ngram_max"):
            at_least(where, name, getattr(self, name), 1)
        if self.c <= 0:
            raise ConfigError(f"{where}.c: the inverse regularization must be > 0, got {self.c}")
        if not self.units or min(self.units) < 1:
            raise ConfigError(f"{where}.units: one size >= 1 per layer, got {list(self.units)}")
        for name in ("lookback", "step"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{where}.{name}: must be >= 1 or absent, "
                                  f"got {getattr(self, name)}")


@dataclass(frozen=True)
class Params:
    """The whole of params.yaml."""
    seed: int
    device: str
    data: DataParams
    jena: JenaParams
    imdb: ImdbParams
    train: TrainParams
    gradients: GradientsParams
    models: dict[str, ModelSpec]
    seeds: tuple[int, ...] | None = None   # train each variant once per seed; null/[] = seed

    def validate(self, where: str) -> None:
        for name in self.models:
            if not NAME.match(name):
                raise ConfigError(f"{where}: models.{name!r}: a variant name is a lowercase "
                                  "identifier (a-z, 0-9, _; starting with a letter)")
        if self.seeds and len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{where}: seeds: {list(self.seeds)} repeats a seed; "
                              "list each once")

    @property
    def seed_list(self) -> list[int]:
        """``seeds`` when given (each variant trains once per seed), else ``[seed]``."""
        return list(self.seeds) if self.seeds else [self.seed]

    def variant(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise ConfigError(f"{PARAMS_FILE}: models: no variant {name!r}; known: "
                              f"{', '.join(self.models)}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; DVC's parser refuses them.
    Refuse them here too, so that the value a stage reads is the one the user sees."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:       # an unhashable key: SafeLoader's own error follows
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping; keep one",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: where, then what (PyYAML's own text spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}not valid YAML: {problem}"


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate the whole file; any problem is one ConfigError naming the key."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run the stages from the repository root") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: byte 0x{data[e.start]:02x} is not UTF-8; "
                          "save the file as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)   # a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {_yaml_problem(e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top")
    return from_mapping(Params, raw, where=str(path))
