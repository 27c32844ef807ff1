"""No figure that is not a number is reported as a result.

Python's JSON writes NaN and inf as ``NaN`` and ``Infinity`` (not JSON: strict readers
refuse the file) and ``dvc metrics show`` prints them beside real figures, so a stage that
would write one into ``metrics/<name>.json`` stops instead, before writing it, with one
line naming the variant, the metric and what to do. Figures that are legitimately absent
(a ratio that underflowed to 0, a run that never diverged) are ``null`` or ``0`` and pass.

    refuse_non_finite("imdb_lstm", metrics, advice=lambda key: "...", output=path)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rnnlab.core.errors import RnnlabError


class NonFiniteResult(RnnlabError):
    """A figure that is NaN or infinite where a result must be a number."""


def non_finite(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """Every (dotted key, value) of ``metrics`` (nested mappings too: ``per_seed``) that is
    a float and not finite, in the file's order."""
    found: list[tuple[str, float]] = []
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            found += non_finite(value, f"{prefix}{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            found.append((f"{prefix}{key}", value))
    return found


def refuse_non_finite(name: str, metrics: Mapping[str, Any], *, advice: Callable[[str], str],
                      output: Path, first: Callable[[str], int] = lambda key: 0) -> None:
    """Raise ``NonFiniteResult`` when a figure of ``metrics`` is not finite: one line with
    ``name`` (the variant), the key, the value, ``advice(key)`` (what to do) and the file
    not written. ``first`` orders the keys when several are bad (lowest first): the one
    that names the cause goes first (a diverged loss before the AUC it spoils)."""
    bad = sorted(non_finite(metrics), key=lambda item: first(item[0]))
    if not bad:
        return
    key, value = bad[0]
    more = f" (and {', '.join(k for k, _ in bad[1:])})" if len(bad) > 1 else ""
    raise NonFiniteResult(f"{name}: {key} is {value}{more}, not a figure a result can hold: "
                          f"{advice(key)}; {output} not written")
