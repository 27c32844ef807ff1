"""The ``models`` section of params.yaml: one ``ModelSpec`` per variant, and the fields each
architecture reads. Torch-free (the report reads it too); ``rnnlab.nn.models`` registers one
builder per architecture named here (a test keeps the two in step).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rnnlab.core.config import ConfigError, at_least, check_type, show

# Variant names become file names, DVC stage names and shell arguments: keep them plain.
NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class Architecture:
    """What a model builder reads from its variant: the datasets it fits and its fields."""
    datasets: tuple[str, ...]
    fields: tuple[str, ...]
    torch: bool = True          # False: not built by rnnlab.nn.models (scikit-learn)


# Every variant has dataset, arch and epochs; these are the fields each architecture adds.
# rnnlab.nn.models registers one builder per name here (a test keeps the two in step).
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
            raise ConfigError(f"{where}.arch: unknown architecture {show(arch)}; known: "
                              f"{', '.join(sorted(ARCHITECTURES))}")
        reads = fields_read(arch)
        unused = [k for k in data if k not in reads]
        if unused:
            shown = ", ".join(show(k) for k in unused[:5]) + (
                f" and {len(unused) - 5} more" if len(unused) > 5 else "")
            raise ConfigError(f"{where}: unknown key(s) {shown} for arch "
                              f"{show(arch)}; it reads {', '.join(reads)}")

    def validate(self, where: str) -> None:
        datasets = ARCHITECTURES[self.arch].datasets
        if self.dataset not in datasets:
            raise ConfigError(f"{where}.dataset: {show(self.dataset)}; arch {show(self.arch)} "
                              "trains "
                              f"on {' or '.join(datasets)}")
        if self.activations is not None and len(self.activations) != len(self.units):
            raise ConfigError(f"{where}.activations: {len(self.activations)} given for "
                              f"{len(self.units)} layers (units)")
        bad = [a for a in (self.activations or ()) if a not in ("tanh", "relu")]
        if bad:
            raise ConfigError(f"{where}.activations: {show(bad[0])}; choose tanh or relu")
        for name in ("dropout", "recurrent_dropout"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"{where}.{name}: {p} is not in [0, 1)")
        if self.cell not in ("rnn", "gru", "lstm"):
            raise ConfigError(f"{where}.cell: {show(self.cell)}; choose rnn, gru or lstm")
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


def load_models(data: Any, where: str) -> dict[str, ModelSpec]:
    """``models:`` of params.yaml (``where`` names it) as variant name -> ModelSpec."""
    models = check_type(data, dict[str, ModelSpec], where)
    check_variant_names(models, where)
    return models


# Names whose metrics/<name>.json or plots/<name>.csv another stage writes (dvc.yaml):
# a variant of that name makes two stages write one file, and DVC refuses every command.
RESERVED_NAMES = {"naive": "the naive stage's metrics/naive.json",
                  "gradients": "the gradients stage's metrics/gradients.json",
                  "gradients_vanishing": "the gradients stage's plots/gradients_vanishing.csv",
                  "gradients_exploding": "the gradients stage's plots/gradients_exploding.csv"}


def check_variant_names(names: Iterable[str], where: str) -> None:
    """Variant names become file, stage and run names and shell arguments: plain ones only,
    and none whose files another stage writes."""
    for name in names:
        if not NAME.match(name):
            raise ConfigError(f"{where}: {show(name)}: a variant name is a lowercase "
                              "identifier (a-z, 0-9, _; starting with a letter)")
        if name in RESERVED_NAMES:
            raise ConfigError(f"{where}: {show(name)}: a variant of that name would write "
                              f"{RESERVED_NAMES[name]} too; choose another name "
                              f"(e.g. {name}_model)")


def variant_spec(models: Mapping[str, ModelSpec], name: str) -> ModelSpec:
    """``models[name]``, or one ConfigError listing the variants there are."""
    try:
        return models[name]
    except KeyError:
        raise ConfigError(f"params.yaml: models: no variant {show(name)}; known: "
                          f"{', '.join(models)}") from None
