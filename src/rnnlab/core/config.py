"""Typed, frozen configs built from plain dicts, with errors that name the field.

A stage reads its section of params.yaml and calls ``from_mapping(JenaConfig, section,
where="params.yaml: jena")``. Unknown keys are errors (a typo must not be silently
ignored), and so are missing keys and values of the wrong type.

``read_yaml_mapping`` reads the file as DVC does (anchors, merge keys) with bounded work
(``MAX_BYTES``, ``MAX_VALUES``, regular files only); every value a message names goes
through ``show`` (YAML's spelling, cut short).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
import stat
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


# Bounded work on any params file (the real one: 6 KB, a few hundred values).
MAX_BYTES = 2_000_000        # a bigger file is refused unread
MAX_VALUES = 50_000          # values (nodes) with every alias (*name) expanded
SHOW_LIMIT = 60              # characters of a value shown in a message


class ConfigError(RnnlabError, ValueError):
    """A params section that does not fit its config class."""


class _Cut(Exception):
    pass


def show(value: Any, limit: int = SHOW_LIMIT) -> str:
    """``value`` as params.yaml writes it (``null``, ``true``, ``.nan``, ``[1, null]``,
    ``{'a': 1}``; strings quoted), cut after ``limit`` characters with ``...``.

    Every value in a message goes through this: never Python's spelling (``None``,
    ``True``, tuples), and never a whole value: the repr of a 3 KB alias bomb takes
    minutes and gigabytes. The work stops where the text does.
    """
    parts: list[str] = []
    room = limit

    def put(text: str) -> None:
        nonlocal room
        parts.append(text)
        room -= len(text)
        if room < 0:
            raise _Cut

    def walk(v: Any) -> None:
        if v is None:
            put("null")
        elif isinstance(v, bool):
            put("true" if v else "false")
        elif isinstance(v, int):
            put(_integer(v))
        elif isinstance(v, float):
            put(".nan" if math.isnan(v) else ("-.inf" if v < 0 else ".inf")
                if math.isinf(v) else repr(v))
        elif isinstance(v, str):
            put(repr(v[:room + 1]))        # longer than the room: cut below
        elif isinstance(v, (list, tuple)):
            put("[")
            for i, item in enumerate(v):
                put(", " if i else "")
                walk(item)
            put("]")
        elif isinstance(v, Mapping):
            put("{")
            for i, (key, item) in enumerate(v.items()):
                put(", " if i else "")
                walk(key)
                put(": ")
                walk(item)
            put("}")
        elif isinstance(v, (datetime.date, datetime.datetime)):
            put(v.isoformat())
        else:                              # !!binary, !!set: what, not the whole of it
            put(f"<{type(v).__name__}>")

    try:
        walk(value)
    except _Cut:
        return "".join(parts)[:limit] + "..."
    return "".join(parts)


def _integer(value: int) -> str:
    """Digits, or a count of them for a number nobody reads digit by digit (Python
    refuses to write one of more than 4300 digits at all)."""
    if -10**40 < value < 10**40:
        return str(value)
    try:
        return f"a {len(str(abs(value)))}-digit integer"
    except ValueError:
        return "an integer of more than 4300 digits"


def child(where: str, name: str) -> str:
    """``params.yaml`` + ``jena`` -> ``params.yaml: jena``; then ``params.yaml: jena.step``."""
    if len(name) > SHOW_LIMIT:             # a key is a name: a long one is cut like a value
        name = name[:SHOW_LIMIT] + "..."
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
            raise ConfigError(f"{where}: expected a mapping of names, got {show(value)}")
        key_type, value_type = args
        return {_check_type(k, key_type, f"{where} key"): _check_type(v, value_type, child(where, str(k)))
                for k, v in value.items()}
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {show(value)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} items, got {show(value)}")
        return tuple(_check_type(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {show(value)}")
    if tp is float:
        # YAML writes 0 for 0.0; accept ints where a float is asked for, never bools.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # YAML reads .nan and .inf; either would slip past every range check (nan < 0
            # and nan > 0 are both false) and poison the run.
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{where}: expected a finite number, got {show(value)}")
            try:
                return float(value)
            except OverflowError:          # an integer past 1.8e308
                raise ConfigError(f"{where}: {show(value)} is too large for a number (the "
                                  "largest is about 1.8e308); use a smaller one") from None
        raise ConfigError(f"{where}: expected a number, got {show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            # Seeds, sizes and row numbers end up in torch and NumPy as 64-bit integers.
            if not -2**63 <= value < 2**63:
                raise ConfigError(f"{where}: {show(value)} does not fit a 64-bit integer; "
                                  "use a smaller number")
            return value
        raise ConfigError(f"{where}: expected an integer, got {show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (bool, int, float)):
            # An all-digit md5 or a bare yes/no reads as a number or a boolean, and its
            # digits may not survive (leading zeros, octal): only quotes keep the text.
            read = ("an unquoted yes/no/on/off/true/false as a boolean" if isinstance(value, bool)
                    else "unquoted digits as a number")
            raise ConfigError(f"{where}: expected a string, got {show(value)}: YAML reads {read}; "
                              "put the value in quotes")
        raise ConfigError(f"{where}: expected a string, got {show(value)}")
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
        raise ConfigError(f"{where}: expected a mapping of keys, got {show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    check_keys = getattr(cls, "check_keys", None)   # a class may narrow the keys further
    if check_keys is not None:
        check_keys(data, where)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {keys(unknown)}; "
                          f"known keys are {', '.join(fields)}")
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


def keys(names: typing.Iterable[Any], most: int = 5) -> str:
    """Keys of a mapping for a message, as YAML writes them (``'seeed', 1``), sorted, the
    first ``most`` of them: a file may hold any number."""
    listed = sorted(names, key=lambda k: k[:SHOW_LIMIT] if isinstance(k, str) else show(k))
    shown = ", ".join(show(k) for k in listed[:most])
    return shown + (f" and {len(listed) - most} more" if len(listed) > most else "")


def at_least(where: str, name: str, value: float | None, low: int, *,
             null: str | None = None) -> None:
    """``value >= low``, or null where ``null`` says what null means. Zero is never a
    silent 'no limit': where a cap is optional, null is how to lift it."""
    if value is None and null is not None:
        return
    if value is None or value < low:
        fix = f"must be >= {low}" + (f" or null ({null})" if null else "")
        raise ConfigError(f"{where}.{name}: {fix}, got {show(value)}")


MERGE = "tag:yaml.org,2002:merge"      # the key of `<<: *base`


class _Limit(yaml.MarkedYAMLError):
    """Valid YAML past what a params file may hold."""


class _ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, as DVC reads params.yaml, and bounded:

    - a key given twice in one mapping is refused: PyYAML keeps the last without a word,
      DVC's parser refuses it; the keys a merge (``<<: *base``) brings in may be given
      again (that is what a merge is for), ``<<`` itself only once, as in DVC;
    - at most ``MAX_VALUES`` values with the aliases expanded (an alias bomb is a few KB),
      and no alias inside the value it names (a loop);
    - a scalar Python refuses (``2024-13-01`` as a date, an integer of 5000 digits) is a
      YAML error with its line, not a traceback.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._composed = 0
        self._checked: set[int] = set()

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._composed += 1          # stop a huge file early, before the whole of it is read
        if self._composed > MAX_VALUES:
            raise _Limit(None, None, _too_many(), self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _expanded_size(node)         # before anything is built from it
        return self.construct_document(node)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as e:
            what = f"{show(node.value)}: " if isinstance(node, yaml.ScalarNode) else ""
            raise yaml.constructor.ConstructorError(
                None, None, f"{what}{str(e).split(';')[0]}; put it in quotes if it is text",
                node.start_mark) from None

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        """``<<`` as YAML's merge key and DVC define it: the mapping's own keys win over
        merged ones, and of ``<<: [*a, *b]`` the earlier wins. (PyYAML 6.0.2's own drops
        the keys of a merged mapping that overrides its own merge: ``b: {<<: *a, x: 2}``
        merged again gave ``x`` from ``a``.) Each mapping once, its own keys checked first."""
        if id(node) in self._checked:
            return
        self._checked.add(id(node))
        self._check_unique(node)
        merged: list = []
        own: list = []
        for key_node, value_node in node.value:
            if key_node.tag != MERGE:
                own.append((key_node, value_node))
                continue
            subs = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for sub in reversed(subs):     # the last pair of a key wins: earlier ones last
                if not isinstance(sub, yaml.MappingNode):
                    raise yaml.constructor.ConstructorError(
                        None, None, "<< merges a mapping (<<: *base) or a list of them "
                        "(<<: [*a, *b])", sub.start_mark)
                self.flatten_mapping(sub)
                merged.extend(sub.value)
        node.value = merged + own

    def _check_unique(self, node: yaml.MappingNode) -> None:
        seen: set = set()
        merges = 0
        for key_node, _ in node.value:
            if key_node.tag == MERGE:
                merges += 1
                if merges > 1:
                    raise yaml.constructor.ConstructorError(
                        None, None, "key '<<' appears twice in one mapping; merge several "
                        "with one: <<: [*first, *second]", key_node.start_mark)
                continue
            key = self.construct_object(key_node)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:       # an unhashable key: SafeLoader's own error follows
                continue
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {show(key)} appears twice in one mapping; keep one",
                    key_node.start_mark)


# YAML 1.2's floats, as DVC reads params.yaml (ruamel): ``5e-2`` and ``1e3`` are numbers
# there, text to PyYAML's YAML 1.1 rule (which wants a dot: ``5.0e-2``). Integers and the
# forms with a dot still resolve by the rules before this one; a leading dot with an
# unsigned exponent (``.5e1``) is text to both, and stays so.
_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _too_many() -> str:
    return (f"more than {MAX_VALUES:,} values with the aliases (*name) expanded; a params "
            "file holds settings, a few hundred values: check the anchors and aliases")


def _expanded_size(root: yaml.Node) -> int:
    """The values under ``root`` with every alias expanded (each node's size once), or a
    ``_Limit`` past ``MAX_VALUES`` or at a loop."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_:
            raise _Limit(None, None, "an alias (*name) inside the value its anchor (&name) "
                         "names: a loop without end; point it at another anchor",
                         node.start_mark)
        open_.add(id(node))
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for sub in children:
            total += size(sub)
            if total > MAX_VALUES:
                raise _Limit(None, None, _too_many(), node.start_mark)
        open_.discard(id(node))
        sizes[id(node)] = total
        return total

    return size(root)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: where, then what (PyYAML's own text spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{'' if isinstance(e, _Limit) else 'not valid YAML: '}{problem}"


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _check_regular(path: Path, st: os.stat_result) -> None:
    """Only a regular file is read: a FIFO blocks the read for good, /dev/zero never ends."""
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
        raise ConfigError(f"{path}: is {kind}, not a regular file; params are read from a "
                          "plain YAML file: put one there")
    if st.st_size > MAX_BYTES:
        raise ConfigError(f"{path}: {st.st_size:,} bytes, more than the {MAX_BYTES:,} a params "
                          "file may have (it holds settings, not data); cut it down")


def _read_bounded(path: Path) -> bytes:
    try:
        _check_regular(path, os.stat(path))     # before opening: a FIFO's open blocks
        # Non-blocking, and checked again once open: it may have been swapped meanwhile.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run the stages from the repository root") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        _check_regular(path, os.fstat(f.fileno()))
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:                   # grown since
        raise ConfigError(f"{path}: more than the {MAX_BYTES:,} bytes a params file may "
                          "have (it holds settings, not data); cut it down")
    return data


def read_yaml_mapping(path: Path) -> dict:
    """A YAML file whose top level is a mapping (params.yaml); any problem is one ConfigError
    naming the file, and where in it. Bounded: at most ``MAX_BYTES`` read, from a regular
    file only, at most ``MAX_VALUES`` values built."""
    path = Path(path)
    data = _read_bounded(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: byte 0x{data[e.start]:02x} is not UTF-8; "
                          "save the file as UTF-8") from None
    try:
        raw = yaml.load(text, Loader=_ParamsLoader)   # a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read (a params file needs a few "
                          "levels); check its brackets") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top")
    return raw
