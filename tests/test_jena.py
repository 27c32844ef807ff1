import hashlib
import json
import logging
import re

import numpy as np
import pytest

from rnnlab.core.errors import DataFormatError
from rnnlab.data.jena import (
    FEATURES,
    HEADER,
    SENTINEL,
    JenaStats,
    load_features,
    normalize_jena,
    read_jena_csv,
)
from rnnlab.data.synthetic import jena_frame, write_jena_csv

HEADER_LINE = ",".join(f'"{c}"' for c in HEADER)


@pytest.fixture(scope="module")
def jena_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("csv") / "jena.csv"
    write_jena_csv(path, rows=3000, seed=3)
    return path


def lines_of(path):
    return path.read_text().split("\n")


def write_lines(path, lines):
    path.write_text("\n".join(lines))
    return path


def test_generator_writes_the_true_format(jena_csv):
    lines = lines_of(jena_csv)
    assert lines[0] == HEADER_LINE
    assert len(lines) == 3001 and lines[-1] != ""           # no trailing newline, as the real file
    assert lines[1].startswith("01.01.2009 00:10:00,")
    row = re.compile(r"^\d\d\.\d\d\.\d{4} \d\d:\d\d:\d\d(,-?\d+\.\d\d){14}$")
    assert all(row.match(line) for line in lines[1:])
    assert sum("-9999.00,-9999.00" in line for line in lines) >= 2
    stamps = [line.split(",")[0] for line in lines[1:]]
    assert len(stamps) - len(set(stamps)) == 1                # one repeated timestamp


def test_parse_round_trips_the_generator(jena_csv):
    table = read_jena_csv(jena_csv)
    frame = jena_frame(3000, seed=3)
    assert table.values.shape == (3000, 14)
    np.testing.assert_allclose(table.values, frame.select(FEATURES).to_numpy(), atol=5e-3)
    assert str(table.timestamps[0]) == "2009-01-01T00:10:00"
    assert str(table.timestamps[1]) == "2009-01-01T00:20:00"


@pytest.mark.hostile
def test_renamed_column_is_named(tmp_path, jena_csv):
    lines = lines_of(jena_csv)
    lines[0] = lines[0].replace('"rh (%)"', '"relhum (%)"')
    with pytest.raises(DataFormatError, match=r"line 1: column 6 is 'relhum \(%\)', expected 'rh \(%\)'"):
        read_jena_csv(write_lines(tmp_path / "x.csv", lines))


@pytest.mark.hostile
def test_missing_column_is_named(tmp_path, jena_csv):
    lines = [",".join(line.split(",")[:-1]) for line in lines_of(jena_csv)]
    with pytest.raises(DataFormatError, match=r"missing column 15 'wd \(deg\)'"):
        read_jena_csv(write_lines(tmp_path / "x.csv", lines))


@pytest.mark.hostile
def test_unparseable_value_names_the_line(tmp_path, jena_csv):
    lines = lines_of(jena_csv)
    fields = lines[1234].split(",")
    fields[3] = "27x.15"
    lines[1234] = ",".join(fields)
    with pytest.raises(DataFormatError, match=r"x\.csv: line 1235: column 'Tpot \(K\)': cannot parse '27x\.15'"):
        read_jena_csv(write_lines(tmp_path / "x.csv", lines))


@pytest.mark.hostile
@pytest.mark.parametrize("value", ["271_20", "271.20 ", "\u0662\u0667\u0661"])
def test_a_number_python_reads_but_polars_refuses_names_the_line(tmp_path, jena_csv, value):
    """Underscores between digits, a space after the number, Arabic-Indic digits: polars'
    reader refuses them, Python's float() took them, and the slow path said "no malformed
    line found"."""
    path = with_value(jena_csv, tmp_path, {(1235, "Tpot (K)"): value})
    with pytest.raises(DataFormatError) as caught:
        read_jena_csv(path)
    assert str(caught.value) == (
        f"{path}: line 1235: column 'Tpot (K)': cannot parse {value!r} as a number; write "
        "ASCII digits with an optional sign, '.' and exponent (no '_', no space after it), "
        "or remove the row (ComputeError)")


def test_the_slow_path_reads_a_number_as_polars_does():
    """``POLARS_NUMBER`` against polars' own reader, value by value."""
    import io

    import polars as pl

    from rnnlab.data.jena import POLARS_NUMBER
    values = ["271_20", "1.5", " 1.5", "\t1.5", "1.5 ", "1.5\t", "+1.5", "-.5e-3", "5.", "1.e5",
              ".", ".e5", "1e", "1e+", "+ 1", "--1", "1.2.3", "1_0", "\u0663", "\uff11\uff12",
              "0x10", "1d5", "nan", "-NaN", "iNf", "+Infinity", "infinit", "infinityy", "1e400",
              "\xa01.5", "\x0b1.5", "0001", "1 5"]
    for value in values:
        try:
            read = pl.read_csv(io.StringIO(f"a,b\nx,{value}\n"),
                               schema={"a": pl.String, "b": pl.Float64})["b"][0] is not None
        except pl.exceptions.PolarsError:
            read = False
        assert read == bool(POLARS_NUMBER.fullmatch(value)), value


@pytest.mark.hostile
def test_empty_value_names_the_line(tmp_path, jena_csv):
    lines = lines_of(jena_csv)
    fields = lines[99].split(",")
    fields[2] = ""
    lines[99] = ",".join(fields)
    with pytest.raises(DataFormatError, match=r"line 100: column 'T \(degC\)' is empty"):
        read_jena_csv(write_lines(tmp_path / "x.csv", lines))


@pytest.mark.hostile
def test_bad_date_names_the_line(tmp_path, jena_csv):
    lines = lines_of(jena_csv)
    lines[10] = "2009-01-01 01:40:00" + lines[10][19:]
    with pytest.raises(DataFormatError, match=r"line 11: column 'Date Time': cannot parse"):
        read_jena_csv(write_lines(tmp_path / "x.csv", lines))


@pytest.mark.hostile
def test_short_row_names_the_line(tmp_path, jena_csv):
    lines = lines_of(jena_csv)
    lines[500] = ",".join(lines[500].split(",")[:10])
    with pytest.raises(DataFormatError, match=r"line 501: 10 fields, expected 15"):
        read_jena_csv(write_lines(tmp_path / "x.csv", lines))


def test_normalize_uses_training_rows_only(tmp_path, jena_csv):
    out = tmp_path / "prep"
    stats = normalize_jena(jena_csv, out, train_rows=(0, 1000), target="T (degC)",
                           wind_sentinel_fill=0.0)
    raw = read_jena_csv(jena_csv).values
    raw[raw == SENTINEL] = 0.0
    mean, std = raw[:1000].mean(axis=0), raw[:1000].std(axis=0)
    features, loaded = load_features(out)
    assert isinstance(features, np.memmap) and features.dtype == np.float32
    np.testing.assert_allclose(features, (raw - mean) / std, rtol=1e-5, atol=1e-5)
    assert loaded == JenaStats(**json.loads((out / "stats.json").read_text())) == stats
    assert stats.std["T (degC)"] == stats.target_std == pytest.approx(std[1])
    assert stats.mean["p (mbar)"] == pytest.approx(mean[0])
    assert stats.csv_md5 == hashlib.md5(jena_csv.read_bytes()).hexdigest()
    assert not stats.canonical
    # Rows past the training split have no influence on the statistics.
    assert abs(features[:1000].mean(axis=0)).max() < 1e-4
    assert abs(features[1000:].mean(axis=0)).max() > 1e-3
    assert sorted(p.name for p in out.iterdir()) == ["features.npy", "stats.json", "timestamps.npy"]
    assert np.load(out / "timestamps.npy").dtype == np.dtype("datetime64[s]")


def test_sentinels_replaced_and_counted(tmp_path, jena_csv, caplog):
    caplog.set_level(logging.INFO)
    stats = normalize_jena(jena_csv, tmp_path / "a", train_rows=(0, 2000), target="T (degC)",
                           wind_sentinel_fill=0.0)
    n_bad = sum("-9999.00,-9999.00" in line for line in lines_of(jena_csv))
    assert stats.sentinels_found == {"wv (m/s)": n_bad, "max. wv (m/s)": n_bad}
    assert f"{2 * n_bad} sentinel -9999 value(s) replaced by 0" in caplog.text
    feats, _ = load_features(tmp_path / "a")
    wv = feats[:, FEATURES.index("wv (m/s)")] * stats.std["wv (m/s)"] + stats.mean["wv (m/s)"]
    assert wv.min() > -1e-3                                   # no -9999 left
    kept = normalize_jena(jena_csv, tmp_path / "b", train_rows=(0, 2000), target="T (degC)",
                          wind_sentinel_fill=None)
    assert kept.mean["wv (m/s)"] < 0                       # the lecture's behaviour


@pytest.mark.hostile
def test_unknown_target_and_bad_split(tmp_path, jena_csv):
    with pytest.raises(DataFormatError, match="target 'T' is not a Jena column"):
        normalize_jena(jena_csv, tmp_path, train_rows=(0, 100), target="T", wind_sentinel_fill=0)
    with pytest.raises(DataFormatError, match=r"train_rows \[0, 5000\] do not fit the 3,000"):
        normalize_jena(jena_csv, tmp_path, train_rows=(0, 5000), target="T (degC)",
                       wind_sentinel_fill=0)


@pytest.mark.hostile
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400"])
def test_non_finite_value_names_the_line_and_writes_nothing(tmp_path, jena_csv, value):
    # polars reads these as floats without complaint; one would make every statistic NaN.
    lines = lines_of(jena_csv)
    fields = lines[1234].split(",")
    fields[3] = value
    lines[1234] = ",".join(fields)
    path = write_lines(tmp_path / "x.csv", lines)
    out = tmp_path / "prep"
    with pytest.raises(DataFormatError) as caught:
        normalize_jena(path, out, train_rows=(0, 2000), target="T (degC)", wind_sentinel_fill=0.0)
    assert str(caught.value) == (f"{path}: line 1235: column 'Tpot (K)': {value!r} is not a "
                                 "finite number; write the reading as a number, or remove the row")
    assert not out.exists()


def benign(kind: str, text: str) -> bytes:
    if kind == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if kind == "trailing_newline":
        return (text + "\n").encode()
    if kind == "trailing_blank_line":
        return (text + "\n\n").encode()
    if kind == "crlf":
        return text.replace("\n", "\r\n").encode()
    if kind == "crlf_bom_trailing_blank_line":
        return b"\xef\xbb\xbf" + (text + "\n\n").replace("\n", "\r\n").encode()
    raise AssertionError(kind)


@pytest.mark.hostile
@pytest.mark.parametrize("kind", ["bom", "trailing_newline", "trailing_blank_line", "crlf",
                                  "crlf_bom_trailing_blank_line"])
def test_benign_file_variants_read_the_same(tmp_path, jena_csv, kind):
    path = tmp_path / "x.csv"
    path.write_bytes(benign(kind, jena_csv.read_text()))
    table, expected = read_jena_csv(path), read_jena_csv(jena_csv)
    np.testing.assert_array_equal(table.values, expected.values)
    np.testing.assert_array_equal(table.timestamps, expected.timestamps)


@pytest.mark.hostile
@pytest.mark.parametrize("line, field, column", [
    (1, 0, "Date Time"),        # in the header
    (2, 0, "Date Time"),        # in a timestamp
    (1501, 5, "rh (%)"),        # in a number
    (3001, 14, "wd (deg)"),     # in the last field of the last line
])
def test_byte_that_is_not_utf8_names_the_line(tmp_path, jena_csv, line, field, column):
    lines = jena_csv.read_bytes().split(b"\n")
    fields = lines[line - 1].split(b",")
    fields[field] = fields[field][:2] + b"\xe9" + fields[field][2:]   # latin-1 'é'
    lines[line - 1] = b",".join(fields)
    path = tmp_path / "x.csv"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataFormatError) as caught:
        read_jena_csv(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: line {line}: column {column!r}: byte 0xe9 is not UTF-8; "
                              "save the file as UTF-8")
    assert "\n" not in message


@pytest.mark.hostile
def test_blank_line_inside_the_data_names_it(tmp_path, jena_csv):
    lines = lines_of(jena_csv)
    lines.insert(700, "")
    with pytest.raises(DataFormatError, match=r"x\.csv: line 701: blank line inside the data"):
        read_jena_csv(write_lines(tmp_path / "x.csv", lines))


@pytest.mark.hostile
@pytest.mark.parametrize("swaps, count, first", [
    ([(100, 101)], 1, 102),                  # two rows swapped: one step back
    ([(100, 101), (2000, 2001)], 2, 102),
    ([(1, 2999)], 2, 3),                     # the last row first: the clock runs back twice
])
def test_timestamps_out_of_order_are_reported(tmp_path, jena_csv, caplog, swaps, count, first):
    lines = lines_of(jena_csv)
    for a, b in swaps:
        lines[a], lines[b] = lines[b], lines[a]
    path = write_lines(tmp_path / "x.csv", lines)
    caplog.set_level(logging.WARNING)
    table = read_jena_csv(path)
    assert table.values.shape == (3000, 14)                 # kept, in file order
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{path}: {count} timestamp(s) earlier than the row before "
                                  f"them, first at line {first} (")


def test_timestamps_in_order_give_no_warning(jena_csv, caplog):
    caplog.set_level(logging.WARNING)
    read_jena_csv(jena_csv)                     # one repeated timestamp is not out of order
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def with_value(jena_csv, tmp_path, cells: dict[tuple[int, str], str]):
    """The CSV with the cells {(line, column): text} replaced; its path."""
    lines = lines_of(jena_csv)
    for (line, column), text in cells.items():
        fields = lines[line - 1].split(",")
        fields[HEADER.index(column)] = text
        lines[line - 1] = ",".join(fields)
    return write_lines(tmp_path / "x.csv", lines)


@pytest.mark.hostile
@pytest.mark.parametrize("value, column, line, problem", [
    # finite in float64, inf once stored as float32: outside and inside the training rows
    ("1e300", "T (degC)", 2600, "'1e300' is too large for the float32 the features are stored "
     "in (at most 3.403e+38); correct the reading, or remove the row"),
    ("-1e300", "p (mbar)", 100, "'-1e300' is too large for the float32 the features are "
     "stored in (at most 3.403e+38); correct the reading, or remove the row"),
    ("3.5e38", "rh (%)", 2999, "'3.5e38' is too large for the float32 the features are stored "
     "in (at most 3.403e+38); correct the reading, or remove the row"),
    # fits float32, but its z-score (over a std of 0.7) does not
    ("3e38", "VPdef (mbar)", 2600, "its z-score over the training rows 0..2000 overflows the "
     "float32 the features are stored in; the reading is out of scale with the training "
     "rows: correct it, or remove the row"),
])
def test_value_past_float32_names_the_line_and_writes_nothing(tmp_path, jena_csv, value,
                                                              column, line, problem):
    path = with_value(jena_csv, tmp_path, {(line, column): value})
    out = tmp_path / "prep"
    with pytest.raises(DataFormatError) as caught:
        normalize_jena(path, out, train_rows=(0, 2000), target="T (degC)", wind_sentinel_fill=0.0)
    assert str(caught.value) == f"{path}: line {line}: column {column!r}: {problem}"
    assert not out.exists()


@pytest.mark.hostile
@pytest.mark.parametrize("column, values, shown", [
    # 1000 mbar with a 1e-13 step every other row: std 8e-14, z-scores up to 1e14
    ("p (mbar)", lambda i: "1000.0000000000001" if i % 2 else "1000", "'p (mbar)' (std 8.04e-14, "
     "values up to 1000)"),
    # zero but for one 1e-13 step
    ("wd (deg)", lambda i: "1e-13" if i == 7 else "0.00", "'wd (deg)' (std 2.24e-15, "
     "values up to 1e-13)"),
    # exactly constant (refused before this round too)
    ("rh (%)", lambda i: "55.00", "'rh (%)' (std 0, values up to 55)"),
])
def test_near_constant_column_is_refused_naming_it(tmp_path, jena_csv, column, values, shown):
    path = with_value(jena_csv, tmp_path, {(i + 2, column): values(i) for i in range(2000)})
    out = tmp_path / "prep"
    with pytest.raises(DataFormatError) as caught:
        normalize_jena(path, out, train_rows=(0, 2000), target="T (degC)", wind_sentinel_fill=0.0)
    assert str(caught.value) == (
        f"{path}: column(s) {shown} are constant or near-constant over the training rows "
        "0..2000 (std at most 1e-09 of max(1, |value|)): z-scores would divide by rounding "
        "noise; check the column in the CSV, or set jena.train_rows to rows where it varies")
    assert not out.exists()


def test_a_column_varying_by_one_reading_is_not_near_constant(tmp_path, jena_csv):
    """One hundredth of a millibar once in 2,000 rows is a real (if small) variation."""
    cells = {(i + 2, "p (mbar)"): "1000.01" if i == 500 else "1000.00" for i in range(2000)}
    stats = normalize_jena(with_value(jena_csv, tmp_path, cells), tmp_path / "prep",
                           train_rows=(0, 2000), target="T (degC)", wind_sentinel_fill=0.0)
    assert stats.std["p (mbar)"] == pytest.approx(0.01 * np.sqrt(1999) / 2000)
    features, _ = load_features(tmp_path / "prep")
    assert np.isfinite(features).all()
