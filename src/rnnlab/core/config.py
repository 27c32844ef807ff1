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
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from rnnlab.core.errors import RnnlabError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


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
    # A type hint is a class, never a dataclass instance.
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where=where)
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def check_type(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp`` (a dataclass, a tuple, a dict...), or one ConfigError."""
    return _check_type(value, tp, where)


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


def at_least(where: str, name: str, value: float | None, low: int, *,
             null: str | None = None) -> None:
    """``value >= low``, or null where ``null`` says what null means. Zero is never a
    silent 'no limit': where a cap is optional, null is how to lift it."""
    if value is None and null is not None:
        return
    if value is None or value < low:
        fix = f"must be >= {low}" + (f" or null ({null})" if null else "")
        raise ConfigError(f"{where}.{name}: {fix}, got {'null' if value is None else value}")


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


def read_yaml_mapping(path: Path) -> dict:
    """A YAML file whose top level is a mapping (params.yaml); any problem is one ConfigError
    naming the file, and where in it."""
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
    return raw
