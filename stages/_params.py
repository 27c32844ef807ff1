"""params.yaml, read once and turned into typed, frozen configs (unknown keys are errors).

Shared by the thin scripts in this folder; the library in src/rnnlab never reads params.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rnnlab.config import ConfigError, from_mapping
from rnnlab.errors import RnnlabError

PARAMS_FILE = Path("params.yaml")


@dataclass(frozen=True)
class SourceConfig:
    url: str
    md5: str | None = None

    def validate(self, where: str) -> None:
        if not self.url.startswith(("http://", "https://", "file://")):
            raise ConfigError(f"{where}.url: {self.url!r} is not an http(s):// or file:// URL "
                              "(a local file is file:///absolute/path)")
        if self.md5 is not None and (len(self.md5) != 32 or
                                     any(c not in "0123456789abcdefABCDEF" for c in self.md5)):
            raise ConfigError(f"{where}.md5: {self.md5!r} is not a 32-digit hex md5")


@dataclass(frozen=True)
class JenaConfig:
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
        if self.train_rows[1] is None:
            raise ConfigError(f"{where}.train_rows: the end must be a row number, not null "
                              "(the statistics are taken over these rows)")

    @property
    def splits(self) -> dict[str, tuple[int, int | None]]:
        return {"train": self.train_rows, "val": self.val_rows, "test": self.test_rows}


@dataclass(frozen=True)
class ImdbConfig:
    max_features: int
    maxlen: int
    val_fraction: float
    batch_size: int
    padding: str = "pre"
    truncating: str = "pre"


def load_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    try:
        with open(path) as f:
            params = yaml.safe_load(f)
    except FileNotFoundError:
        raise RnnlabError(f"{path}: not found; run the stages from the repository root") from None
    except yaml.YAMLError as e:
        raise RnnlabError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(params, dict):
        raise RnnlabError(f"{path}: expected a mapping of sections at the top")
    return params


def section(params: dict[str, Any], dotted: str, cls: type, path: Path = PARAMS_FILE):
    """The typed config of ``params[a][b]...`` for ``dotted='a.b'``."""
    node: Any = params
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise ConfigError(f"{path}: missing section {dotted!r}")
        node = node[key]
    return from_mapping(cls, node, where=f"{path}: {dotted}")


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; bad input ends with one clear line, not a traceback."""
    try:
        main()
    except (RnnlabError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
