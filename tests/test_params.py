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
    ("device", None, "params.yaml: device: expected a string, got None"),
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
    ("device", True, "device: expected a string, got True: YAML reads an unquoted "
                     "yes/no/on/off/true/false as a boolean; put the value in quotes"),
    ("train.clip_norm", float("nan"), "train.clip_norm: expected a finite number, got nan"),
    ("gradients.explode.lr", float("inf"), "gradients.explode.lr: expected a finite number, got inf"),
    ("jena.wind_sentinel_fill", float("-inf"), "jena.wind_sentinel_fill: expected a finite "
                                               "number, got -inf"),
    ("models.gru.dropout", float("nan"), "models.gru.dropout: expected a finite number, got nan"),
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
    with pytest.raises(ConfigError, match=r": cannot be read \(Is a directory\)$"):
        load_params(tmp_path)
