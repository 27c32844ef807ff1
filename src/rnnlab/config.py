"""Typed, frozen configs built from plain dicts, with errors that name the field.

A stage reads its section of params.yaml and calls ``from_mapping(JenaConfig, section,
where="params.yaml: jena")``. Unknown keys are errors (a typo must not be silently
ignored), and so are missing keys and values of the wrong type.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from rnnlab.errors import RnnlabError

T = TypeVar("T")


class ConfigError(RnnlabError, ValueError):
    """A params section that does not fit its config class."""


def child(where: str, name: str) -> str:
    """``params.yaml`` + ``jena`` -> ``params.yaml: jena``; then ``params.yaml: jena.step``."""
    return f"{where}.{name}" if ": " in where else f"{where}: {name}"


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in args:
            try:
                return _check_type(value, arm, where)
            except ConfigError as e:
                errors.append(str(e))
        # `int | None` given a string: say what the int arm wanted, not 'expected null'.
        raise ConfigError(next((e for e in errors if 'expected null' not in e), errors[-1]))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of names, got {value!r}")
        key_type, value_type = args
        return {_check_type(k, key_type, f"{where} key"): _check_type(v, value_type, child(where, str(k)))
                for k, v in value.items()}
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} items, got {value!r}")
        return tuple(_check_type(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is float:
        # YAML writes 0 for 0.0; accept ints where a float is asked for, never bools.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # YAML reads .nan and .inf; either would slip past every range check (nan < 0
            # and nan > 0 are both false) and poison the run.
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{where}: expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            # Seeds, sizes and row numbers end up in torch and NumPy as 64-bit integers.
            if not -2**63 <= value < 2**63:
                raise ConfigError(f"{where}: {value} does not fit a 64-bit integer; "
                                  "use a smaller number")
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (bool, int, float)):
            # An all-digit md5 or a bare yes/no reads as a number or a boolean, and its
            # digits may not survive (leading zeros, octal): only quotes keep the text.
            read = ("an unquoted yes/no/on/off/true/false as a boolean" if isinstance(value, bool)
                    else "unquoted digits as a number")
            raise ConfigError(f"{where}: expected a string, got {value!r}: YAML reads {read}; "
                              "put the value in quotes")
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where=where)
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def from_mapping(cls: type[T], data: Any, *, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` names the file and section in errors."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys = getattr(cls, "check_keys", None)   # a class may narrow the keys further
    if check_keys is not None:
        check_keys(data, where)
    unknown = sorted(set(data) - set(fields), key=str)   # YAML keys may be numbers
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known keys are {', '.join(fields)}"
        )
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _check_type(data[name], hints[name], child(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing key {name!r}")
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj
