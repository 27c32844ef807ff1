"""What every stage script shares: params.yaml read once, each stage building only the
sections it reads (so a stage depends on its sections' schemas and no others), and a
``main`` that ends with one clear line on bad input instead of a traceback.

    params = read_params()                         # the file, its top-level keys checked
    jena = params.section("jena", JenaParams)      # typed, frozen, validated; or one line
    seed = params.value("seed", int)
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rnnlab.core.config import ConfigError, check_type, from_mapping, keys, read_yaml_mapping
from rnnlab.core.errors import RnnlabError, redact
from rnnlab.core.process import configure_process

PARAMS_FILE = Path("params.yaml")
# The top-level keys of params.yaml (docs/conventions.md); anything else is a typo.
SECTIONS = ("seed", "seeds", "device", "data", "jena", "imdb", "train", "gradients", "models")
T = TypeVar("T")


class StageParams:
    """params.yaml as one stage reads it: the whole file parsed, only its sections typed."""

    def __init__(self, raw: dict, path: Path = PARAMS_FILE):
        unknown = [k for k in raw if k not in SECTIONS]
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {keys(unknown)}; "
                              f"known keys are {', '.join(SECTIONS)}")
        self.raw, self.path = raw, path

    def section(self, name: str, cls: type[T]) -> T:
        """``name`` (a mapping; dotted for a nested one: ``data.jena``) as the frozen
        dataclass ``cls``."""
        return from_mapping(cls, self.at(name), where=f"{self.path}: {name}")

    def at(self, dotted: str) -> Any:
        """The raw value at ``dotted`` (``gradients.distance``), or one missing-key line."""
        node: Any = self.raw
        parts = dotted.split(".")
        for i, key in enumerate(parts):
            if not isinstance(node, dict):
                where = f"{self.path}: {'.'.join(parts[:i])}"
                raise ConfigError(f"{where}: expected a mapping of keys, got {type(node).__name__}")
            if key not in node:
                where = f"{self.path}: {'.'.join(parts[:i])}" if i else str(self.path)
                raise ConfigError(f"{where}: missing key {key!r}")
            node = node[key]
        return node

    def top(self, cls: type[T]) -> T:
        """The top-level keys that dataclass ``cls`` declares (seed, seeds, device)."""
        fields = cls.__dataclass_fields__       # type: ignore[attr-defined]
        return from_mapping(cls, {k: v for k, v in self.raw.items() if k in fields},
                            where=str(self.path))

    def value(self, name: str, tp: Any) -> Any:
        return check_type(self.at(name), tp, f"{self.path}: {name}")


def read_params(path: Path = PARAMS_FILE) -> StageParams:
    return StageParams(read_yaml_mapping(path), path)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main with the library's log lines on stderr; bad input -> one line."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    configure_process()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        main()
    except (RnnlabError, ConfigError) as e:
        # The messages redact the URLs they name; this is the net under them.
        print(f"error: {redact(str(e))}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        # Outputs are written to temp files and renamed: each is whole, the new one or the
        # old, or absent. One line for every stage (a download has no checkpoint).
        print("interrupted: nothing half-written is left (each output is the new one, the "
              "old one or none; an open MLflow run is marked KILLED); `dvc repro` runs the "
              "stage again, a training stage from its last checkpoint", file=sys.stderr)
        sys.exit(130)
