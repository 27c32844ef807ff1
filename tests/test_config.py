"""params.yaml problems reach the user as one line naming the file, the field and the fix."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from rnnlab.core.config import ConfigError, from_mapping
from rnnlab.tracking.paths import repo_root

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Example:
    size: int
    rate: float
    rows: tuple[int, int | None]
    name: str | None = None


def test_from_mapping_types_and_defaults():
    cfg = from_mapping(Example, {"size": 3, "rate": 1, "rows": [0, None]}, where="p.yaml: ex")
    assert cfg == Example(size=3, rate=1.0, rows=(0, None), name=None)


@pytest.mark.parametrize("data, message", [
    ({"size": 3, "rate": 1, "rows": [0, 1], "sise": 4}, r"p.yaml: ex: unknown key\(s\) 'sise'; known keys are size, rate, rows, name"),
    ({"rate": 1, "rows": [0, 1]}, "p.yaml: ex: missing key 'size'"),
    ({"size": "3", "rate": 1, "rows": [0, 1]}, "p.yaml: ex.size: expected an integer, got '3'"),
    ({"size": True, "rate": 1, "rows": [0, 1]}, "p.yaml: ex.size: expected an integer"),
    ({"size": 3, "rate": 1, "rows": [0]}, r"p.yaml: ex.rows: expected a list of 2 items"),
    ({"size": 3, "rate": 1, "rows": [0, "end"]}, r"p.yaml: ex.rows\[1\]: expected an integer, got 'end'"),
])
def test_from_mapping_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(Example, data, where="p.yaml: ex")


def run_stage(tmp_path, params: dict, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, str(ROOT / "stages" / args[0]), *args[1:]],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)


def repo_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.hostile
def test_exponent_floats_read_as_dvc_reads_them(tmp_path):
    """``lr: 5e-2`` is 0.05 to DVC (YAML 1.2) and was text to PyYAML (YAML 1.1), so the
    stage refused a value DVC took; now both read a number. Quoted, it stays text."""
    from rnnlab.core.config import read_yaml_mapping

    path = tmp_path / "params.yaml"
    path.write_text("a: 5e-2\nb: -1E3\nc: .5e1\nd: '5e-2'\ne: 7\nf: 1.5\ng: .5e+1\n")
    assert read_yaml_mapping(path) == {"a": 0.05, "b": -1000.0, "c": ".5e1", "d": "5e-2",
                                       "e": 7, "f": 1.5, "g": 5.0}   # c: text to DVC too
    assert yaml.safe_load("a: 5e-2") == {"a": "5e-2"}     # PyYAML's own loader is untouched


@pytest.mark.hostile
def test_stage_rejects_unknown_key_in_one_line(tmp_path):
    params = repo_params()
    params["jena"]["lookbak"] = 720
    proc = run_stage(tmp_path, params, "windows.py", "prep", "out")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: params.yaml: jena: unknown key(s) 'lookbak'; known keys are lookback, step, "
        "delay, batch_size, train_rows, val_rows, test_rows, target, wind_sentinel_fill"]


@pytest.mark.hostile
def test_stage_rejects_bad_url_and_md5(tmp_path):
    params = repo_params()
    params["data"]["jena"]["url"] = "/data/jena.zip"
    proc = run_stage(tmp_path, params, "download.py", "jena", "out.csv")
    assert proc.returncode == 1
    assert "params.yaml: data.jena.url: '/data/jena.zip' is not an http(s):// or file:// URL" in proc.stderr
    params["data"]["jena"]["url"] = "file:///nowhere/jena.zip"
    params["data"]["jena"]["md5"] = "abc"
    proc = run_stage(tmp_path, params, "download.py", "jena", "out.csv")
    assert "params.yaml: data.jena.md5: 'abc' is not a 32-digit hex md5" in proc.stderr
    assert not (tmp_path / "out.csv").exists()


def test_the_download_stage_draws_its_bar_on_a_terminal_only(tmp_path, small_jena_zip):
    """Under `dvc queue` or with stderr redirected to a log, the download wrote tqdm's
    carriage-return frames into it (the training stages already drew bars on a terminal
    only); now the log holds the stage's lines alone."""
    zip_path, md5 = small_jena_zip
    params = repo_params()
    params["data"]["jena"] |= {"url": zip_path.as_uri(), "md5": md5}
    proc = run_stage(tmp_path, params, "download.py", "jena", "out.csv")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.csv").is_file()
    assert "\r" not in proc.stderr and "download jena" not in proc.stderr, proc.stderr


def test_repo_root_sees_through_dvc_temp_copies(tmp_path):
    (tmp_path / ".dvc").mkdir()
    inner = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    (inner / "stages").mkdir(parents=True)
    assert repo_root(inner) == tmp_path
    assert repo_root(inner / "stages") == tmp_path
    assert repo_root(tmp_path) == tmp_path


@pytest.mark.hostile
@pytest.mark.parametrize("key, value, message", [
    ("seed", -1, "error: params.yaml: seed: -1 is not a seed: seeds run from 0 to 4294967295 "
                 "(2**32 - 1, NumPy's range); choose one in it"),
    ("train", {"steps_per_epoch": 5, "threads": 2**40},
     "error: params.yaml: train.threads: must be auto or a number of threads from 1 to 1024, "
     "got 1099511627776"),
    ("jena", {"target": "T (degF)"},
     "error: params.yaml: jena.target: 'T (degF)' is not a Jena column; choose one of "
     "('p (mbar)', 'T (degC)', 'Tpot (K)', 'Tdew (degC)', 'rh (%)', 'VPmax (mbar)', "
     "'VPact (mbar)', 'VPdef (mbar)', 'sh (g/kg)', 'H2OC (mmol/mol)', 'rho (g/m**3)', "
     "'wv (m/s)', 'max. wv (m/s)', 'wd (deg)')"),
], ids=["seed -1", "threads 2**40", "target T (degF)"])
def test_stage_refuses_a_value_out_of_range_before_any_run(tmp_path, key, value, message):
    """A negative seed was a traceback from NumPy inside the MLflow run, 2**40 threads one
    from torch, a target that is no column a line without its key, from the normalize
    stage: each is one line now, before the stage opens a run or writes a file."""
    params = repo_params()
    params[key] = params[key] | value if isinstance(value, dict) else value
    proc = run_stage(tmp_path, params, "train.py", "gru", "--prepared", "prep", "--windows",
                     "windows.json", "--metrics", "gru.json", "--plots", "gru.csv", "--model",
                     "gru.pt")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [message]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
