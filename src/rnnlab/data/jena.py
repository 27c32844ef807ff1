"""Jena Climate: parse the CSV, check its schema, and z-score it with training statistics.

The file has a quoted 15-column header, a ``dd.mm.yyyy HH:MM:SS`` timestamp and 14
numeric columns written with two decimals, one row every 10 minutes (420,551 rows for
2009-2016). Parsing is polars' multithreaded reader; Python loops over the lines only to
name the first bad one, after a vectorized check failed.

Values are checked in the dtype they are stored in: the prepared features are float32, so
a reading that is finite in float64 but past float32's range (``1e300``, anything beyond
about 3.4e38) is refused with its line and column, as ``inf`` is; it would otherwise
become ``inf`` in ``features.npy`` (and ``test_mae inf``), or, inside the training rows,
an infinite std that flattens its whole column to zero. A z-score that still overflows
float32 (a reading far out of scale with the training rows) is refused the same way.

A column whose spread over the training rows is negligible against its values is
*near-constant* and refused like a constant one, naming the column: its std must exceed
``NEAR_CONSTANT`` (1e-9) times the larger of 1 and the largest absolute value of the
column over those rows. A std below that is rounding or an edit (a 1e-13 step on 1000
mbar), not weather: the file writes readings in hundredths, and z-scores divided by such
a std reach 1e11 and more. The floor of 1 (in the column's unit) catches a tiny step on
zero too.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rnnlab.core.atomic import atomic_output, file_md5, write_json
from rnnlab.core.config import ConfigError, at_least, show
from rnnlab.core.errors import DataFormatError

if TYPE_CHECKING:   # polars parses the CSV only: training stages load .npy files without it
    import polars as pl

log = logging.getLogger(__name__)

TIME_COLUMN = "Date Time"
FEATURES = (
    "p (mbar)", "T (degC)", "Tpot (K)", "Tdew (degC)", "rh (%)", "VPmax (mbar)",
    "VPact (mbar)", "VPdef (mbar)", "sh (g/kg)", "H2OC (mmol/mol)", "rho (g/m**3)",
    "wv (m/s)", "max. wv (m/s)", "wd (deg)",
)
HEADER = (TIME_COLUMN, *FEATURES)
TIME_FORMAT = "%d.%m.%Y %H:%M:%S"
# md5 of the canonical jena_climate_2009_2016.csv (43,164,220 bytes): results on any
# other file are not comparable with the lecture's.
CANONICAL_MD5 = "959915f05bfafef18e471a97ae679535"
WIND_COLUMNS = ("wv (m/s)", "max. wv (m/s)")
SENTINEL = -9999.0
# The largest float32: the prepared features are stored as float32 (see the docstring).
FLOAT32_MAX = float(np.finfo(np.float32).max)
# A std at or below this fraction of max(1, the largest |value|) is a constant column.
NEAR_CONSTANT = 1e-9
# A number as polars' CSV reader takes it: spaces or tabs before (not after), ASCII digits,
# a sign, a point, an exponent, or nan/inf/infinity in any case. Python's float() takes
# more ('271_20', '1.5 ', Arabic-Indic digits), so the slow path checks this first: a value
# that polars refused must not pass there as "no malformed line found".
POLARS_NUMBER = re.compile(r"[ \t]*[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
                           r"|nan|inf|infinity)", re.IGNORECASE | re.ASCII)

# Names of the files the normalize step writes into its output directory.
FEATURES_FILE = "features.npy"
TIMESTAMPS_FILE = "timestamps.npy"   # no stage reads it: row times for users' own plots
STATS_FILE = "stats.json"


@dataclass(frozen=True)
class JenaStats:
    """What normalize learned about the file (``stats.json``); every later stage reads it."""
    columns: list[str]
    target: str
    target_index: int
    mean: dict[str, float]        # per column, over the training rows
    std: dict[str, float]
    n_rows: int
    train_rows: list[int]         # [lo, hi] the statistics were taken over
    wind_sentinel_fill: float | None
    sentinels_found: dict[str, int]
    repeated_timestamps: int
    first_timestamp: str
    last_timestamp: str
    csv_md5: str                  # what was normalized: the data's identity, not its URL

    @property
    def target_std(self) -> float:
        """Degrees C per normalized unit of the target."""
        return self.std[self.target]

    @property
    def canonical(self) -> bool:
        """The lecture's own file (its md5), so figures compare with the lecture's."""
        return self.csv_md5 == CANONICAL_MD5

    @classmethod
    def load(cls, prepared: Path) -> JenaStats:
        return cls(**json.loads((Path(prepared) / STATS_FILE).read_text()))


@dataclass(frozen=True)
class JenaTable:
    timestamps: np.ndarray  # (N,) datetime64[s]
    frame: pl.DataFrame     # the 14 feature columns, Float64, in FEATURES order

    @property
    def values(self) -> np.ndarray:
        """(N, 14) float64."""
        return self.frame.to_numpy()


def _decode(raw: bytes, lineno: int) -> str:
    """One line as text; a byte that is not UTF-8 is an error naming its line and column.

    A UTF-8 byte-order mark (spreadsheets write one) is dropped from the first line.
    """
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as e:
        field = raw[:e.start].count(b",")
        column = f"column {HEADER[field]!r}" if field < len(HEADER) else f"field {field + 1}"
        raise DataFormatError(f"line {lineno}: {column}: byte 0x{raw[e.start]:02x} is not "
                              "UTF-8; save the file as UTF-8") from None


def _check_header(path: Path) -> None:
    with open(path, "rb") as f:
        raw = f.readline()
    try:
        first = _decode(raw, 1)
    except DataFormatError as e:
        raise DataFormatError(f"{path}: {e}") from None
    if not first.strip():
        raise DataFormatError(f"{path}: the file is empty; expected the Jena header {HEADER}")
    found = next(csv.reader([first]))
    for i, expected in enumerate(HEADER):
        if i >= len(found):
            raise DataFormatError(f"{path}: line 1: missing column {i + 1} {expected!r} "
                                  f"(the header has {len(found)} columns, expected {len(HEADER)})")
        if found[i] != expected:
            raise DataFormatError(f"{path}: line 1: column {i + 1} is {found[i]!r}, expected "
                                  f"{expected!r}; the file must have the 15 columns of the "
                                  "Jena Climate header, in order")
    if len(found) > len(HEADER):
        raise DataFormatError(f"{path}: line 1: unexpected extra column(s) {found[len(HEADER):]}")


def _bad_row(lineno: int, row: list[str]) -> str | None:
    """What is wrong with one parsed data row, or None."""
    if len(row) != len(HEADER):
        return f"line {lineno}: {len(row)} fields, expected {len(HEADER)}"
    if not row[0].strip():
        return f"line {lineno}: column {TIME_COLUMN!r} is empty"
    for name, value in zip(FEATURES, row[1:]):
        if not value.strip():
            return f"line {lineno}: column {name!r} is empty"
        if not POLARS_NUMBER.fullmatch(value):
            return (f"line {lineno}: column {name!r}: cannot parse {value!r} as a number; "
                    "write ASCII digits with an optional sign, '.' and exponent (no '_', "
                    "no space after it), or remove the row")
        number = float(value)
        if not math.isfinite(number):
            return (f"line {lineno}: column {name!r}: {value.strip()!r} is not a finite number; "
                    "write the reading as a number, or remove the row")
        if abs(number) > FLOAT32_MAX:
            return (f"line {lineno}: column {name!r}: {value.strip()!r} is too large for the "
                    f"float32 the features are stored in (at most {FLOAT32_MAX:.4g}); correct "
                    "the reading, or remove the row")
    return None


def _first_bad_line(path: Path, reader_error: str = "") -> str:
    """Slow path, only after the fast reader failed or found bad values: name the first bad
    line. Line by line in bytes, so that a byte that is not UTF-8 is named, not raised.
    Should it find none, the reader's own first line (``reader_error``) is the clue."""
    blank = None                      # a blank line is an error only if data follows it
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = _decode(raw, lineno)
            except DataFormatError as e:
                return str(e)
            if lineno == 1:
                continue
            if not text.strip():
                blank = blank or lineno
                continue
            if blank is not None:
                return f"line {blank}: blank line inside the data"
            problem = _bad_row(lineno, next(csv.reader([text])))
            if problem:
                return problem
    said = reader_error.strip().splitlines()[0] if reader_error.strip() else ""
    return "no malformed line found" + (f"; the CSV reader said: {said[:200]}" if said else "")


def _drop_trailing_blank_rows(df: pl.DataFrame) -> pl.DataFrame:
    """A blank line at the end of the file reads as a row of nulls: drop those rows only."""
    if any(v is not None for v in df.row(-1)):
        return df                                      # the usual case: one row looked at
    import polars as pl
    blank = df.select(pl.all_horizontal(pl.all().is_null())).to_series().to_numpy()
    filled = np.flatnonzero(~blank)
    return df.head(int(filled[-1]) + 1 if len(filled) else 0)


def _warn_out_of_order(path: Path, ts: pl.Series, stamps: pl.Series) -> int:
    """Count the timestamps earlier than the row before them; log the first one's line.

    Rows stay in file order (windows are positions, as in the lecture), but a file whose
    clock runs backwards is worth knowing about before its windows mix up the days.
    """
    back = (ts.to_physical().diff() < 0).fill_null(False)   # ms since 1970, Int64
    count = int(back.sum())
    if count:
        i = int(back.arg_true()[0])
        log.warning("%s: %d timestamp(s) earlier than the row before them, first at line %d "
                    "(%s after %s); rows are kept in file order", path, count, i + 2,
                    stamps[i], stamps[i - 1])
    return count


def read_jena_csv(path: Path) -> JenaTable:
    """Parse and validate a Jena Climate CSV; errors name the line and the column.

    Every check runs vectorized over the whole table; only when one fails is the file
    read again line by line (``_first_bad_line``) to name the first bad line. Polars reads
    a blank line as a row of nulls, so data row ``i`` is line ``i + 2``.
    """
    import polars as pl
    path = Path(path)
    _check_header(path)
    schema = {TIME_COLUMN: pl.String, **{c: pl.Float64 for c in FEATURES}}
    try:
        df = pl.read_csv(path, schema=schema, has_header=True)
    except (pl.exceptions.PolarsError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{path}: {_first_bad_line(path, str(e))} "
                              f"({type(e).__name__})") from e
    if df.height:
        df = _drop_trailing_blank_rows(df)
    if df.height == 0:
        raise DataFormatError(f"{path}: no data rows after the header")
    # Empty fields and short rows come back as nulls; polars reads nan, inf and overflowing
    # numbers (1e400) as non-finite floats that would poison every statistic, and a number
    # past float32's range (1e300) would be inf once stored: let the slow path name the line.
    if df.select(pl.any_horizontal(pl.all().is_null()).any()
                 | pl.any_horizontal(~pl.col(FEATURES).is_finite()).any()
                 | pl.any_horizontal(pl.col(FEATURES).abs() > FLOAT32_MAX).any()).item():
        raise DataFormatError(f"{path}: {_first_bad_line(path)}")
    # cache=False: the timestamps are (almost) all distinct, so a cache only costs time.
    stamps = df.get_column(TIME_COLUMN)
    ts = stamps.str.to_datetime(TIME_FORMAT, time_unit="ms", strict=False, cache=False)
    bad = ts.is_null().arg_true()
    if len(bad):
        i = bad[0]
        raise DataFormatError(f"{path}: line {i + 2}: column {TIME_COLUMN!r}: cannot parse "
                              f"{df[i, TIME_COLUMN]!r} as dd.mm.yyyy HH:MM:SS")
    _warn_out_of_order(path, ts, stamps)
    return JenaTable(timestamps=ts.to_numpy().astype("datetime64[s]"), frame=df.drop(TIME_COLUMN))


def zscore_stats(frame: pl.DataFrame, train_rows: tuple[int, int]) -> tuple[list, list]:
    """Per-column mean and std (ddof 0, as NumPy and the lecture) over rows [lo, hi).

    A constant or near-constant column (std at most ``NEAR_CONSTANT`` of max(1, its largest
    |value|) over those rows; module docstring) is refused, naming it.
    """
    import polars as pl
    lo, hi = train_rows
    n = len(FEATURES)
    row = frame.slice(lo, hi - lo).select(
        [pl.col(c).mean().alias(f"m{i}") for i, c in enumerate(FEATURES)]
        + [pl.col(c).std(ddof=0).alias(f"s{i}") for i, c in enumerate(FEATURES)]
        + [pl.col(c).abs().max().alias(f"a{i}") for i, c in enumerate(FEATURES)]).row(0)
    mean, std, largest = list(row[:n]), list(row[n:2 * n]), row[2 * n:]
    flat = {c: (sd, big) for c, sd, big in zip(FEATURES, std, largest)
            if sd <= NEAR_CONSTANT * max(1.0, big)}
    if flat:
        what = ", ".join(f"{c!r} (std {sd:.3g}, values up to {big:.6g})"
                         for c, (sd, big) in flat.items())
        raise DataFormatError(
            f"column(s) {what} are constant or near-constant over the training rows "
            f"{lo}..{hi} (std at most {NEAR_CONSTANT:g} of max(1, |value|)): z-scores would "
            "divide by rounding noise; check the column in the CSV, or set jena.train_rows "
            "to rows where it varies")
    return mean, std


def _check_stored(csv_path: Path, features: np.ndarray, lo: int, hi: int) -> None:
    """The float32 z-scores as stored must be finite: a reading far out of scale with the
    training rows (1e38 against a std of 0.1) overflows float32 even though it fits."""
    bad = ~np.isfinite(features)
    if bad.any():
        i, j = (int(k[0]) for k in np.nonzero(bad))
        raise DataFormatError(
            f"{csv_path}: line {i + 2}: column {FEATURES[j]!r}: its z-score over the training "
            f"rows {lo}..{hi} overflows the float32 the features are stored in; the reading is "
            "out of scale with the training rows: correct it, or remove the row")


def normalize_jena(csv_path: Path, out_dir: Path, *, train_rows: tuple[int, int | None],
                   target: str, wind_sentinel_fill: float | None) -> JenaStats:
    """Parse ``csv_path`` and write features.npy (float32), timestamps.npy and stats.json.

    ``wind_sentinel_fill``: the real file writes -9999 for missing wind speeds; a number
    replaces them (before the statistics are taken), None keeps them as the lecture did.
    Returns the stats that were written.
    """
    import polars as pl
    table = read_jena_csv(csv_path)
    frame = table.frame
    n = frame.height
    if target not in FEATURES:
        raise DataFormatError(f"target {target!r} is not a Jena column; choose one of {FEATURES}")
    lo, hi = train_rows[0], n if train_rows[1] is None else train_rows[1]
    if not 0 <= lo < hi <= n:
        raise DataFormatError(f"{csv_path}: train_rows {list(train_rows)} do not fit the "
                              f"{n:,} data rows")

    replaced = dict(zip(WIND_COLUMNS, frame.select(
        (pl.col(c) == SENTINEL).sum() for c in WIND_COLUMNS).row(0)))
    if wind_sentinel_fill is not None:
        frame = frame.with_columns(
            pl.when(pl.col(c) == SENTINEL).then(wind_sentinel_fill).otherwise(pl.col(c)).alias(c)
            for c in WIND_COLUMNS)
    action = "kept" if wind_sentinel_fill is None else f"replaced by {wind_sentinel_fill:g}"
    log.info("normalize: %d sentinel %g value(s) %s: %s", sum(replaced.values()), SENTINEL,
             action, ", ".join(f"{k}: {v}" for k, v in replaced.items()))
    duplicates = n - pl.Series(table.timestamps.view(np.int64)).n_unique()
    if duplicates:
        log.info("normalize: %d repeated timestamp(s) kept (rows are positions, as in "
                 "the lecture)", duplicates)

    try:
        mean, std = zscore_stats(frame, (lo, hi))
    except DataFormatError as e:
        raise DataFormatError(f"{csv_path}: {e}") from None
    # z-score in float64 (polars, multithreaded), store float32, row-major for fast gathers.
    features = np.ascontiguousarray(frame.select(
        ((pl.col(c) - m) / sd).cast(pl.Float32) for c, m, sd in zip(FEATURES, mean, std)
    ).to_numpy())                                                    # (N, 14) float32
    _check_stored(csv_path, features, lo, hi)

    stats = JenaStats(
        columns=list(FEATURES), target=target, target_index=FEATURES.index(target),
        mean=dict(zip(FEATURES, mean)), std=dict(zip(FEATURES, std)), n_rows=n,
        train_rows=[lo, hi], wind_sentinel_fill=wind_sentinel_fill, sentinels_found=replaced,
        repeated_timestamps=duplicates, first_timestamp=str(table.timestamps[0]),
        last_timestamp=str(table.timestamps[-1]), csv_md5=file_md5(csv_path))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / FEATURES_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, features)
    with atomic_output(out_dir / TIMESTAMPS_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, table.timestamps)
    write_json(out_dir / STATS_FILE, asdict(stats))
    return stats


def load_features(prepared: Path, mmap: bool = True) -> tuple[np.ndarray, JenaStats]:
    """The normalized (N, 14) float32 matrix (memory-mapped by default) and its stats."""
    prepared = Path(prepared)
    stats = JenaStats.load(prepared)
    features = np.load(prepared / FEATURES_FILE, mmap_mode="r" if mmap else None)
    return features, stats


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
        if self.target not in FEATURES:
            raise ConfigError(f"{where}.target: {show(self.target)} is not a Jena column; "
                              f"choose one of {FEATURES}")
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
