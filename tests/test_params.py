"""params.yaml is read whole into one typed tree; any mistake is one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rnnlab.core.config import ConfigError
from rnnlab.nn.models import REGISTRY
from rnnlab.tools.params import ARCHITECTURES, Params, load_params

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def load_with(tmp_path, edit) -> Params:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return load_params(path)


def test_the_shipped_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.seed_list == [DEFAULTS["seed"]]
    assert set(params.models) == set(DEFAULTS["models"])
    assert params.models["conv_gru"].lookback == 720 and params.jena.splits["test"][1] is None
    assert params.train.init == "keras"


def set_key(dotted: str, value):
    def edit(params):
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


KNOWN_TOP = "known keys are seed, device, data, jena, imdb, train, gradients, models, seeds"


@pytest.mark.hostile
@pytest.mark.parametrize("dotted, value, message", [
    # a misspelled key at each level
    ("seeed", 1, f"params.yaml: unknown key(s) 'seeed'; {KNOWN_TOP}"),
    ("trian", {}, f"params.yaml: unknown key(s) 'trian'; {KNOWN_TOP}"),
    ("data.jena.urll", "x", "params.yaml: data.jena: unknown key(s) 'urll'; known keys are url, md5, "
                         "deadline_s, min_rate_kb_s, max_mb"),
    ("jena.lookbak", 720, "params.yaml: jena: unknown key(s) 'lookbak'; known keys are lookback, "
                          "step, delay, batch_size, train_rows, val_rows, test_rows, target, "
                          "wind_sentinel_fill"),
    ("gradients.explode.stepz", 3, "params.yaml: gradients.explode: unknown key(s) 'stepz'; "
                                   "known keys are recurrent_scale, nonlinearity, lr, steps, "
                                   "timesteps, clip_norm"),
    ("models.gru.unitz", [8], "params.yaml: models.gru: unknown key(s) 'unitz' for arch 'gru'; "
                              "it reads dataset, arch, epochs, units, activations, dropout, "
                              "recurrent_dropout, bidirectional, reverse, lookback, step"),
    # a field the architecture does not use
    ("models.dense.dropout", 0.2, "params.yaml: models.dense: unknown key(s) 'dropout' for arch "
                                  "'dense'; it reads dataset, arch, epochs, units, reverse, "
                                  "lookback, step"),
    ("models.imdb_lstm.lookback", 100, "models.imdb_lstm: unknown key(s) 'lookback' for arch "
                                       "'embed_rnn'"),
    ("models.gru.cell", "rnn", "models.gru: unknown key(s) 'cell' for arch 'gru'"),
    ("models.lstm.recurrent_dropout", 0.2, "models.lstm: unknown key(s) 'recurrent_dropout' "
                                          "for arch 'lstm'"),
    # values
    ("models.gru.arch", "transformer", "params.yaml: models.gru.arch: unknown architecture "
                                       "'transformer'; known: conv_gru, dense, embed_rnn, gru"),
    ("models.gru.dataset", "imdb", "params.yaml: models.gru.dataset: 'imdb'; arch 'gru' trains on jena"),
    ("models.gru.epochs", 0, "params.yaml: models.gru.epochs: must be >= 1, got 0"),
    ("models.gru_stacked.activations", ["tanh", "sigmoid"], "activations: 'sigmoid'; choose tanh or relu"),
    ("train.max_epochs", 0, "params.yaml: train.max_epochs: must be >= 1 or null (no cap), got 0"),
    ("train.init", "glorot", "params.yaml: train.init: 'glorot'; choose keras or torch"),
    ("jena.batch_size", 0, "params.yaml: jena.batch_size: must be >= 1, got 0"),
    ("imdb.maxlen", -5, "params.yaml: imdb.maxlen: must be >= 1, got -5"),
    ("seeds", [1, 1], "params.yaml: seeds: [1, 1] repeats a seed"),
    ("seed", "x", "params.yaml: seed: expected an integer, got 'x'"),
    ("device", None, "params.yaml: device: expected a string, got null"),
    ("device", "tpu", "params.yaml: device: 'tpu' is not one of auto, cpu, cuda, cuda:N, mps"),
])
def test_one_clear_error_per_mistake(tmp_path, dotted, value, message):
    with pytest.raises(ConfigError) as caught:
        load_with(tmp_path, set_key(dotted, value))
    got = str(caught.value).replace(str(tmp_path) + "/", "")
    assert "\n" not in got
    # The line names the file, the section, the key and what is known; the order in which
    # it lists the known keys is not part of the message's meaning.
    for lead in ("known keys are ", "it reads "):
        if lead in message:
            head, listed = message.split(lead)
            assert head in got and lead in got, got
            assert set(got.split(lead)[1].split(", ")) == set(listed.split(", ")), got
            return
    assert message in got


@pytest.mark.hostile
@pytest.mark.parametrize("name", ["y;touch pwned;#", "../../pwn", "Gru", "with space", "1st"])
def test_variant_names_are_plain_identifiers(tmp_path, name):
    def edit(params):
        params["models"][name] = params["models"]["gru"]
    with pytest.raises(ConfigError, match=r"a variant name is a lowercase identifier"):
        load_with(tmp_path, edit)


@pytest.mark.hostile
@pytest.mark.parametrize("name", ["naive", "gradients_exploding"])
def test_a_variant_may_not_take_another_stages_files(tmp_path, name):
    """train@naive would write metrics/naive.json beside the naive stage: DVC then refuses
    every command, and its advice (dvc remove) deletes a stage."""
    def edit(params):
        params["models"][name] = params["models"]["gru"]
    with pytest.raises(ConfigError, match=rf"'{name}': a variant of that name would write "
                                          rf"the .* stage's .*; choose another name"):
        load_with(tmp_path, edit)


@pytest.mark.hostile
def test_missing_section_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"params.yaml: missing key 'gradients'"):
        load_with(tmp_path, lambda p: p.pop("gradients"))


def test_every_torch_architecture_has_a_builder():
    assert set(REGISTRY) == {n for n, a in ARCHITECTURES.items() if a.torch}


QUOTE = "YAML reads unquoted digits as a number; put the value in quotes"
SPLIT_ORDER = "the splits run train, val, test in order without overlap (shared rows leak " \
              "between them)"


@pytest.mark.hostile
@pytest.mark.parametrize("dotted, value, message", [
    # 0 is never a silent 'no limit': a count or a size is >= 1, and null lifts a cap
    ("train.max_epochs", 0, "train.max_epochs: must be >= 1 or null (no cap), got 0"),
    ("train.max_eval_batches", 0, "train.max_eval_batches: must be >= 1 or null (no cap), got 0"),
    ("train.steps_per_epoch", 0, "train.steps_per_epoch: must be >= 1 or null (a full pass), got 0"),
    ("train.imdb_steps_per_epoch", -3, "train.imdb_steps_per_epoch: must be >= 1 or null "
                                       "(a full pass), got -3"),
    ("train.eval_batch_size", 0, "train.eval_batch_size: must be >= 1, got 0"),
    ("jena.batch_size", 0, "jena.batch_size: must be >= 1, got 0"),
    ("imdb.batch_size", 0, "imdb.batch_size: must be >= 1, got 0"),
    ("jena.step", 0, "jena.step: must be >= 1, got 0"),
    ("jena.lookback", 0, "jena.lookback: must be >= 1, got 0"),
    ("jena.lookback", 4, "jena.lookback: 4 is shorter than jena.step (6); a window needs "
                         "lookback >= step"),
    ("jena.delay", -1, "jena.delay: must be >= 0, got -1"),
    ("imdb.maxlen", 0, "imdb.maxlen: must be >= 1, got 0"),
    ("imdb.maxlen", -500, "imdb.maxlen: must be >= 1, got -500"),
    ("imdb.max_features", 0, "imdb.max_features: must be >= 1, got 0"),
    ("gradients.hidden", 0, "gradients.hidden: must be >= 1, got 0"),
    ("gradients.batches", 0, "gradients.batches: must be >= 1, got 0"),
    ("gradients.train_steps", 0, "gradients.train_steps: must be >= 1, got 0"),
    ("gradients.distance", 0, "gradients.distance: must be >= 1, got 0"),
    ("gradients.explode.steps", 0, "gradients.explode.steps: must be >= 1, got 0"),
    ("gradients.explode.timesteps", 0, "gradients.explode.timesteps: must be >= 1, got 0"),
    ("gradients.explode.lr", 0, "gradients.explode.lr: must be > 0, got 0.0"),
    ("gradients.explode.clip_norm", -1, "gradients.explode.clip_norm: must be > 0, got -1.0"),
    ("gradients.explode.nonlinearity", "sigmoid", "gradients.explode.nonlinearity: 'sigmoid'; "
                                                  "choose tanh or relu"),
    ("models.imdb_tfidf_logreg.c", 0, "models.imdb_tfidf_logreg.c: the inverse regularization "
                                      "must be > 0, got 0.0"),
    # splits: [start, end] with start < end; train, val, test in order, disjoint
    ("jena.val_rows", [100000, 300000], "jena.val_rows: [100000, 300000] starts before the end "
                                        f"of train_rows [0, 200000]; {SPLIT_ORDER}: start it at "
                                        "200000 or later"),
    ("jena.val_rows", [0, 200000], "jena.val_rows: [0, 200000] starts before the end of "
                                   "train_rows [0, 200000]"),
    ("jena.test_rows", [250000, None], "jena.test_rows: [250000, null] starts before the end of "
                                       f"val_rows [200001, 300000]; {SPLIT_ORDER}: start it at "
                                       "300000 or later"),
    ("jena.test_rows", [0, 100000], "jena.test_rows: [0, 100000] starts before the end of "
                                    "val_rows [200001, 300000]"),
    ("jena.val_rows", [200001, None], "jena.val_rows: the end is null (the end of the data), so "
                                      "it runs over test_rows [300001, null]; give it an end "
                                      "<= 300001"),
    ("jena.train_rows", [300000, 200000], "jena.train_rows: [300000, 200000] is not [start, end] "
                                          "with 0 <= start < end (end null = the end of the data)"),
    ("jena.train_rows", [-5, 200000], "jena.train_rows: [-5, 200000] is not [start, end]"),
    ("jena.val_rows", [250000, 250000], "jena.val_rows: [250000, 250000] is not [start, end]"),
    ("jena.train_rows", [0, None], "jena.train_rows: the end must be a row number, not null"),
    # values YAML reads as something else
    ("data.jena.md5", 12345678901234567890123456789012,
     f"data.jena.md5: expected a string, got 12345678901234567890123456789012: {QUOTE}"),
    ("data.imdb.md5", 1234, f"data.imdb.md5: expected a string, got 1234: {QUOTE}"),
    ("device", True, "device: expected a string, got true: YAML reads an unquoted "
                     "yes/no/on/off/true/false as a boolean; put the value in quotes"),
    ("train.clip_norm", float("nan"), "train.clip_norm: expected a finite number, got .nan"),
    ("gradients.explode.lr", float("inf"), "gradients.explode.lr: expected a finite number, "
                                           "got .inf"),
    ("jena.wind_sentinel_fill", float("-inf"), "jena.wind_sentinel_fill: expected a finite "
                                               "number, got -.inf"),
    ("models.gru.dropout", float("nan"), "models.gru.dropout: expected a finite number, got .nan"),
    ("seed", 2**64, "seed: 18446744073709551616 does not fit a 64-bit integer; use a smaller "
                    "number"),
    ("jena.val_rows", [200001, 10**30], "jena.val_rows[1]: 1000000000000000000000000000000 does "
                                        "not fit a 64-bit integer"),
])
def test_hostile_values_give_one_line_naming_key_value_and_fix(tmp_path, dotted, value, message):
    with pytest.raises(ConfigError) as caught:
        load_with(tmp_path, set_key(dotted, value))
    text = str(caught.value)
    assert text.startswith("params.yaml: ") or text.startswith(f"{tmp_path}/params.yaml: ")
    assert message in text
    assert "\n" not in text


@pytest.mark.hostile
def test_quoted_all_digit_md5_is_the_string_it_means(tmp_path):
    digits = "12345678901234567890123456789012"
    params = load_with(tmp_path, set_key("data.jena.md5", digits))   # safe_dump quotes it
    assert params.data.jena.md5 == digits


@pytest.mark.hostile
@pytest.mark.parametrize("splits", [
    {"train_rows": [0, 100], "val_rows": [100, 200], "test_rows": [200, None]},   # adjacent
    {"train_rows": [10, 100], "val_rows": [150, 200], "test_rows": [250, 300]},   # gaps, closed
])
def test_ordered_disjoint_splits_load(tmp_path, splits):
    params = load_with(tmp_path, lambda p: p["jena"].update(splits))
    assert params.jena.splits == {k[:-5]: tuple(v) for k, v in splits.items()}


@pytest.mark.hostile
@pytest.mark.parametrize("text, message", [
    ("seed: 1\nseed: 2\n", "line 2, column 1: not valid YAML: key 'seed' appears twice in one "
                           "mapping; keep one"),
    ("jena:\n\tlookback: 3\n", "line 2, column 1: not valid YAML: found character '\\t' that "
                               "cannot start any token"),
    ("seed: 1\n1: a\nzz: b\n", "unknown key(s) 1, 'zz'; known keys are seed,"),
])
def test_broken_yaml_is_one_line(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "\n" not in str(caught.value)


@pytest.mark.hostile
@pytest.mark.parametrize("value", [["gru"], {"a": 1}, None, 3])
def test_arch_of_the_wrong_type_is_named(tmp_path, value):
    with pytest.raises(ConfigError, match=r"models\.gru\.arch: unknown architecture .*; known: "):
        load_with(tmp_path, set_key("models.gru.arch", value))


@pytest.mark.hostile
def test_unreadable_params_file_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes((ROOT / "params.yaml").read_bytes() + b"# caf\xe9\n")
    line = (ROOT / "params.yaml").read_bytes().count(b"\n") + 1
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == (f"{path}: line {line}: byte 0xe9 is not UTF-8; "
                                 "save the file as UTF-8")
    with pytest.raises(ConfigError, match=r": is a folder, not a regular file; params are read "
                                          r"from a plain YAML file: put one there$"):
        load_params(tmp_path)


# --- YAML as users write it: anchors and merge keys, as DVC reads them -------------------

PARAMS_TEXT = (ROOT / "params.yaml").read_text()


def with_models(tmp_path, anchors: dict[str, str], extra: str) -> Path:
    """params.yaml with ``&anchor`` on the variants named in ``anchors`` and ``extra`` (more
    variants, indented under ``models:``, the file's last section) at the end."""
    text = PARAMS_TEXT
    for variant, anchor in anchors.items():
        head = next(line for line in text.splitlines() if line.startswith(f"  {variant}:"))
        text = text.replace(head + "\n", f"  {variant}: &{anchor}\n", 1)
    path = tmp_path / "params.yaml"
    path.write_text(text + extra)
    return path


@pytest.mark.hostile
@pytest.mark.parametrize("extra, expected", [
    ("  gru64: {<<: *gru_base, units: [64]}\n", {"units": (64,)}),
    ("  gru64:\n    <<: *gru_base\n    units: [64]\n    epochs: 5\n",
     {"units": (64,), "epochs": 5}),
    # of a list, the earlier mapping wins (gru's arch, not lstm's)
    ("  gru64: {<<: [*gru_base, *lstm_base], units: [64]}\n", {"units": (64,)}),
    # a merge of a merge keeps the override (PyYAML's own gave units [32] here)
    ("  gru64: &gru64 {<<: *gru_base, units: [64]}\n  gru64b: {<<: *gru64, epochs: 3}\n",
     {"units": (64,)}),
], ids=["flow", "block", "list", "merge of a merge"])
def test_merge_keys_load_as_dvc_reads_them(tmp_path, extra, expected):
    from dataclasses import replace

    from dvc.utils.serialize import parse_yaml

    from rnnlab.core.config import read_yaml_mapping

    path = with_models(tmp_path, {"gru": "gru_base", "lstm": "lstm_base"}, extra)
    params = load_params(path)
    assert params.models["gru64"] == replace(params.models["gru"], **expected)
    if "gru64b" in params.models:
        assert params.models["gru64b"] == replace(params.models["gru64"], epochs=3)
    assert read_yaml_mapping(path) == parse_yaml(path.read_text(), str(path))


@pytest.mark.hostile
@pytest.mark.parametrize("extra, message", [
    ("  gru64: {<<: *gru_base, <<: *lstm_base}\n", "key '<<' appears twice in one mapping; "
                                                   "merge several with one: <<: [*first, *second]"),
    ("  gru64: {<<: *gru_base, units: [64], units: [8]}\n", "key 'units' appears twice in one "
                                                            "mapping; keep one"),
], ids=["<< twice", "a key twice"])
def test_a_merge_still_refuses_a_repeated_key(tmp_path, extra, message):
    path = with_models(tmp_path, {"gru": "gru_base", "lstm": "lstm_base"}, extra)
    line = len(path.read_text().splitlines())
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value).startswith(f"{path}: line {line}, column ")
    assert str(caught.value).endswith(f": not valid YAML: {message}")


def alias_bomb(levels: int = 9) -> str:
    """``seeds`` of 9**9 values with its aliases expanded, in 449 bytes."""
    inner = "[1, 1, 1, 1, 1, 1, 1, 1, 1]"
    for i in range(levels):
        inner = f"[&s{i} {inner}, " + ", ".join([f"*s{i}"] * 8) + "]"
    return inner


def unblock_fifo_later(path: Path, after: float = 3.0) -> None:
    """Open the FIFO for writing once (and close it) after a while: a reader that opened
    it and blocks (the code before the check) then reads an empty file instead of hanging
    the suite; with no reader, nothing happens."""
    import threading

    def run() -> None:
        import os
        import time
        time.sleep(after)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    threading.Thread(target=run, daemon=True).start()


HOSTILE_FILES = ("alias bomb", "alias loop", "too big", "too deep", "fifo", "/dev/zero")


def hostile_file(tmp_path: Path, kind: str) -> Path:
    import os

    path = tmp_path / "params.yaml"
    if kind == "alias bomb":
        path.write_text(PARAMS_TEXT.replace("seeds: []", f"seeds: {alias_bomb()}"))
    elif kind == "alias loop":
        path.write_text(PARAMS_TEXT.replace("seeds: []", "seeds: &loop [1, *loop]"))
    elif kind == "too big":
        pad = 2_000_001 - len(PARAMS_TEXT.encode())
        path.write_text(PARAMS_TEXT + "#" * (pad - 1) + "\n")
    elif kind == "too deep":
        path.write_text(PARAMS_TEXT.replace("seeds: []", "seeds: " + "[" * 2000 + "]" * 2000))
    elif kind == "fifo":
        os.mkfifo(path)
        unblock_fifo_later(path)
    elif kind == "/dev/zero":
        path.symlink_to("/dev/zero")
    return path


@pytest.mark.hostile
@pytest.mark.parametrize("kind, message", [
    ("alias bomb", "line 4, column 29: more than 50,000 values with the aliases (*name) "
                   "expanded; a params file holds settings, a few hundred values: check the "
                   "anchors and aliases"),
    ("alias loop", "line 4, column 8: an alias (*name) inside the value its anchor (&name) "
                   "names: a loop without end; point it at another anchor"),
    ("too big", "2,000,001 bytes, more than the 2,000,000 a params file may have (it holds "
                "settings, not data); cut it down"),
    ("too deep", "nested too deeply to read (a params file needs a few levels); check its "
                 "brackets"),
    ("fifo", "is a FIFO (named pipe), not a regular file; params are read from a plain YAML "
             "file: put one there"),
    ("/dev/zero", "is a character device, not a regular file; params are read from a plain "
                  "YAML file: put one there"),
], ids=list(HOSTILE_FILES))
def test_any_params_file_is_read_with_bounded_work(tmp_path, kind, message):
    """A 3 KB alias bomb in ``seeds`` took 73 s and 3 GB (the repr of the whole value in
    an error message), a FIFO blocked for good, /dev/zero read without end."""
    path = hostile_file(tmp_path, kind)
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == f"{path}: {message}"


@pytest.mark.hostile
@pytest.mark.parametrize("value, message", [
    ("2024-13-01", "'2024-13-01': month must be in 1..12; put it in quotes if it is text"),
    ("1" * 5000, "'11111111111111111111111111111111111111111111111111111111111...: Exceeds the "
                 "limit (4300 digits) for integer string conversion: value has 5000 digits; "
                 "put it in quotes if it is text"),
], ids=["date", "5000 digits"])
def test_a_scalar_python_cannot_hold_is_one_line(tmp_path, value, message):
    """YAML reads these as a date and an integer, which Python refuses (a traceback)."""
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS_TEXT.replace("seed: 1337", f"seed: {value}"))
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == f"{path}: line 3, column 7: not valid YAML: {message}"


# --- ranges checked up front, one line each ---------------------------------------------

@pytest.mark.hostile
@pytest.mark.parametrize("dotted, value, message", [
    ("seed", -1, "seed: -1 is not a seed: seeds run from 0 to 4294967295 (2**32 - 1, "
                 "NumPy's range); choose one in it"),
    ("seed", 2**32, "seed: 4294967296 is not a seed: seeds run from 0 to 4294967295"),
    ("seeds", [1, -5], "seeds[1]: -5 is not a seed: seeds run from 0 to 4294967295"),
    ("train.threads", 2**40, "train.threads: must be auto or a number of threads from 1 to "
                             "1024, got 1099511627776"),
    ("train.clip_norm", 10**400, "train.clip_norm: a 401-digit integer is too large for a "
                                 "number (the largest is about 1.8e308); use a smaller one"),
    ("jena.lookback", -10**400, "jena.lookback: a 401-digit integer does not fit a 64-bit "
                                "integer; use a smaller number"),
], ids=["seed -1", "seed 2**32", "seeds", "threads 2**40", "float 10**400", "int -10**400"])
def test_ranges_are_checked_when_params_load(tmp_path, dotted, value, message):
    with pytest.raises(ConfigError) as caught:
        load_with(tmp_path, set_key(dotted, value))
    assert str(caught.value).startswith(f"{tmp_path}/params.yaml: {message}")


# --- messages write values as params.yaml does, and never a whole value -----------------

@pytest.mark.hostile
@pytest.mark.parametrize("dotted, value, message", [
    ("jena.test_rows", [300001, None, 5], "jena.test_rows: expected a list of 2 items, got "
                                          "[300001, null, 5]"),
    ("jena.train_rows", [0, True], "jena.train_rows[1]: expected an integer, got true"),
    ("seed", [1, None], "seed: expected an integer, got [1, null]"),
    ("data.jena", ["url", None], "data.jena: expected a mapping of keys, got ['url', null]"),
    ("train.max_epochs", {"cap": None}, "train.max_epochs: expected an integer, got "
                                        "{'cap': null}"),
    ("seed", list(range(10_000)), "seed: expected an integer, got [0, 1, 2, 3, 4, 5, 6, 7, 8, "
                                  "9, 10, 11, 12, 13, 14, 15, 16, 1..."),
    ("train.init", "x" * 10_000, "train.init: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
                                 "xxxxxxxxxxxx...; choose keras or torch"),
], ids=["null in a list", "true", "a list", "a list for a mapping", "a mapping", "10,000 seeds",
        "10,000 characters"])
def test_messages_write_values_as_yaml_does(tmp_path, dotted, value, message):
    with pytest.raises(ConfigError) as caught:
        load_with(tmp_path, set_key(dotted, value))
    assert str(caught.value) == f"{tmp_path}/params.yaml: {message}"


@pytest.mark.hostile
def test_many_unknown_keys_are_counted_not_listed(tmp_path):
    def edit(params):
        params.update({f"k{i:03}": i for i in range(100)})
    with pytest.raises(ConfigError) as caught:
        load_with(tmp_path, edit)
    assert str(caught.value).startswith(f"{tmp_path}/params.yaml: unknown key(s) 'k000', "
                                        "'k001', 'k002', 'k003', 'k004' and 95 more; known "
                                        "keys are ")


def test_show_writes_yaml_and_stops_early():
    import datetime

    from rnnlab.core.config import show

    assert show([None, True, False, float("nan"), float("-inf"), 0.5, "a"]) == \
        "[null, true, false, .nan, -.inf, 0.5, 'a']"
    assert show((1, {"k": [None]})) == "[1, {'k': [null]}]"
    assert show(datetime.date(2024, 1, 2)) == "2024-01-02"
    assert show(10**400) == "a 401-digit integer"
    assert show("y" * 100, limit=10) == "'yyyyyyyyy..."
    loop: list = []
    loop.append(loop)
    assert show(loop, limit=5) == "[[[[[..."


@pytest.mark.hostile
def test_a_models_value_in_a_message_is_cut_not_printed_whole(tmp_path):
    """The models schema's messages show at most 60 characters of a value, as the other
    sections' do: a 10,000-character arch is cut, not printed whole."""
    with pytest.raises(ConfigError) as caught:
        load_with(tmp_path, set_key("models.gru.arch", "x" * 10_000))
    message = str(caught.value)
    assert "unknown architecture 'xxx" in message and len(message) < 400
