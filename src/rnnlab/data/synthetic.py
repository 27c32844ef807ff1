"""Generated stand-ins for the public data, in the true file formats.

No offline copy of the real Jena file exists on our machines, so the tests, the bench
and offline trial runs use these. Figures computed on them are NOT comparable with the
lecture's; every report that uses them must say so.

    python -m rnnlab.data.synthetic jena /tmp/jena.zip --rows 420551
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import tarfile
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from rnnlab.core.atomic import atomic_output
from rnnlab.data.jena import FEATURES, HEADER, TIME_FORMAT

JENA_CSV_NAME = "jena_climate_2009_2016.csv"
JENA_START = datetime(2009, 1, 1, 0, 10)
FULL_JENA_ROWS = 420_551


def jena_frame(rows: int, seed: int = 0, sentinels: int | None = None) -> pl.DataFrame:
    """A Jena-like table: seasonal and daily temperature cycles plus weather-scale waves.

    Physically related columns (vapour pressures from temperature and humidity, density
    from pressure and temperature), two-decimal values, ``sentinels`` rows with -9999 in
    both wind columns (default: about one in 50,000, at least two) and one repeated
    timestamp, as in the real file.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(rows, dtype=np.float64)          # 10-minute steps
    day = t / 144.0
    waves = sum(a * np.sin(2 * np.pi * day / p + rng.uniform(0, 2 * np.pi))
                for a, p in [(3.0, 9.7), (2.0, 4.3), (1.5, 2.1), (1.0, 23.0)])
    T = (9.0 + 9.5 * np.sin(2 * np.pi * (day - 110) / 365.25)
         + 4.0 * np.sin(2 * np.pi * (day % 1 - 0.375)) + waves + rng.normal(0, 0.3, rows))
    p = 989.0 + 7.0 * np.sin(2 * np.pi * day / 6.1) + rng.normal(0, 0.5, rows)
    rh = np.clip(75 - 2.0 * (T - 9) + rng.normal(0, 6, rows), 15, 100)
    vpmax = 6.1078 * np.exp(17.27 * T / (T + 237.3))
    vpact = vpmax * rh / 100
    tdew = 237.3 * np.log(vpact / 6.1078) / (17.27 - np.log(vpact / 6.1078))
    wv = np.abs(rng.gamma(2.0, 1.1, rows))
    columns = {
        "p (mbar)": p,
        "T (degC)": T,
        "Tpot (K)": T + 273.15 + (1000 - p) * 0.08,
        "Tdew (degC)": tdew,
        "rh (%)": rh,
        "VPmax (mbar)": vpmax,
        "VPact (mbar)": vpact,
        "VPdef (mbar)": vpmax - vpact,
        "sh (g/kg)": 622 * vpact / p,
        "H2OC (mmol/mol)": 1000 * vpact / p,
        "rho (g/m**3)": p * 1e5 / (287.05 * (T + 273.15)),
        "wv (m/s)": wv,
        "max. wv (m/s)": wv * rng.uniform(1.2, 2.2, rows),
        "wd (deg)": rng.uniform(0, 360, rows),
    }
    values = {k: np.round(v, 2) for k, v in columns.items()}
    if sentinels is None:
        sentinels = max(2, rows // 50_000)
    bad = rng.choice(rows, size=min(sentinels, rows), replace=False)
    values["wv (m/s)"][bad] = -9999.0
    values["max. wv (m/s)"][bad] = -9999.0

    stamps = (np.datetime64(JENA_START, "m") + np.arange(rows) * np.timedelta64(10, "m"))
    if rows > 2:
        k = rows // 2
        stamps[k] = stamps[k - 1]          # one repeated timestamp, as the real file has
    frame = pl.DataFrame({"Date Time": stamps.astype("datetime64[ms]")})
    frame = frame.with_columns(pl.col("Date Time").dt.strftime(TIME_FORMAT))
    frame = frame.with_columns(pl.Series(name, values[name]) for name in FEATURES)
    return frame


def write_jena_csv(path: Path, rows: int, seed: int = 0, **kwargs) -> str:
    """Write a Jena-format CSV (quoted header, no trailing newline); return its md5."""
    frame = jena_frame(rows, seed, **kwargs)
    header = ",".join(f'"{c}"' for c in HEADER)
    body = frame.write_csv(include_header=False, float_precision=2, quote_style="never")
    data = (header + "\n" + body.rstrip("\n")).encode()
    with atomic_output(Path(path)) as tmp:
        tmp.write_bytes(data)
    return hashlib.md5(data).hexdigest()


def write_jena_zip(path: Path, rows: int, seed: int = 0, *, macosx: bool = True,
                   extra_members: dict[str, bytes] | None = None, **kwargs) -> str:
    """Write a zip shaped like the canonical download; return the md5 of its CSV.

    ``extra_members`` adds raw members (tests use it for hostile names such as ``../x``).
    """
    path = Path(path)
    csv_path = path.with_name(path.name + ".csv.tmp")
    try:
        md5 = write_jena_csv(csv_path, rows, seed, **kwargs)
        with atomic_output(path) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.write(csv_path, JENA_CSV_NAME)
                if macosx:   # the canonical zip carries a macOS resource fork too
                    zf.writestr(f"__MACOSX/._{JENA_CSV_NAME}", b"\x00\x05\x16\x07" + bytes(78))
                for name, data in (extra_members or {}).items():
                    zf.writestr(name, data)
    finally:
        csv_path.unlink(missing_ok=True)
    return md5


_POSITIVE = ("wonderful", "brilliant", "moving", "superb", "delightful", "masterpiece",
             "great", "loved", "charming", "beautiful")
_NEGATIVE = ("awful", "boring", "dreadful", "worst", "clumsy", "tedious", "waste",
             "terrible", "hated", "dull")
_NEUTRAL = ("the", "film", "movie", "plot", "actor", "scene", "story", "director", "and", "a",
            "was", "it", "of", "to", "is", "this", "in", "with", "music", "ending", "café",
            "naïve", "über", "señor", "cinéma")


def imdb_review(rng: np.random.Generator, positive: bool, length: int) -> str:
    """A review of ``length`` words: mostly neutral, with words of its sentiment (and a few
    of the other one), ``<br />`` line breaks and non-ASCII words, as the real reviews have."""
    pools = (_POSITIVE, _NEGATIVE) if positive else (_NEGATIVE, _POSITIVE)
    words = []
    for _ in range(length):
        u = rng.random()
        pool = pools[0] if u < 0.15 else pools[1] if u < 0.19 else _NEUTRAL
        words.append(pool[rng.integers(len(pool))])
    words[0] = words[0].capitalize()
    for i in rng.integers(1, length, size=max(1, length // 40)):
        words[i] = words[i] + ".<br /><br />"
    return " ".join(words) + "."


def write_imdb_tarball(path: Path, per_class: int, seed: int = 0, *,
                       extra_members: list[tuple[tarfile.TarInfo, bytes | None]] | None = None
                       ) -> str:
    """Write an aclImdb_v1.tar.gz-shaped archive; return its md5.

    ``per_class`` reviews in each of train/pos, train/neg, test/pos, test/neg, named
    ``<id>_<rating>.txt`` (ratings 7-10 positive, 1-4 negative), plus the top-level files
    the real archive has. ``extra_members`` appends raw members (tests: hostile names).
    """
    rng = np.random.default_rng(seed)
    path = Path(path)

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
        tar.addfile(info, io.BytesIO(data))

    # The gzip header without a name or a time: the same seed gives the same bytes, so the
    # same md5 (the demo writes its data at each run, and a queued sweep checks it).
    with atomic_output(path) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
        with tarfile.open(fileobj=packed, mode="w") as tar:
            add(tar, "aclImdb/README", b"Large Movie Review Dataset v1.0 (generated stand-in)\n")
            add(tar, "aclImdb/imdb.vocab", "\n".join(_NEUTRAL + _POSITIVE + _NEGATIVE).encode())
            for split in ("train", "test"):
                for label in ("pos", "neg"):
                    for i in range(per_class):
                        rating = rng.integers(7, 11) if label == "pos" else rng.integers(1, 5)
                        text = imdb_review(rng, label == "pos", int(rng.integers(20, 120)))
                        add(tar, f"aclImdb/{split}/{label}/{i}_{rating}.txt", text.encode())
                add(tar, f"aclImdb/{split}/urls_pos.txt", b"http://www.imdb.com/title/tt0/\n")
            for info, data in extra_members or []:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return hashlib.md5(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rnnlab.data.synthetic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["jena", "imdb"])
    parser.add_argument("out", type=Path, help="a .zip (like the download) or a .csv")
    parser.add_argument("--rows", type=int, default=FULL_JENA_ROWS, help="jena: data rows")
    parser.add_argument("--per-class", type=int, default=12_500,
                        help="imdb: reviews per split and label")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.dataset == "imdb":
        md5 = write_imdb_tarball(args.out, args.per_class, args.seed)
        print(f"wrote {args.out} ({4 * args.per_class:,} reviews); md5: {md5}")
        print(f"use it: dvc exp run -S data.imdb.url={args.out.resolve().as_uri()} "
              f"-S data.imdb.md5={md5}")
        return
    if args.out.suffix == ".zip":
        md5 = write_jena_zip(args.out, args.rows, args.seed)
    else:
        md5 = write_jena_csv(args.out, args.rows, args.seed)
    print(f"wrote {args.out} ({args.rows:,} rows); md5 of the CSV: {md5}")
    print(f"use it: dvc exp run -S data.jena.url={args.out.resolve().as_uri()} "
          f"-S data.jena.md5={md5}")


if __name__ == "__main__":
    main()
