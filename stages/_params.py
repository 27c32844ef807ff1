"""What every stage script shares: params.yaml read once (typed, validated whole) and a
``main`` that ends with one clear line on bad input instead of a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from rnnlab.config import ConfigError
from rnnlab.errors import RnnlabError
from rnnlab.params import PARAMS_FILE, Params, load_params

__all__ = ["PARAMS_FILE", "Params", "load_params", "run_stage"]


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main with the library's log lines on stderr; bad input -> one line."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        main()
    except (RnnlabError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
