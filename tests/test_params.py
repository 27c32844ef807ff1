"""params.yaml is read whole into one typed tree; any mistake is one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rnnlab.config import ConfigError
from rnnlab.params import ARCHITECTURES, Params, load_params
from rnnlab.models import REGISTRY

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


def set_key(dotted: str, value):
    def edit(params):
        *parents, last = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


KNOWN_TOP = "known keys are seed, device, data, jena, imdb, train, gradients, models, seeds"


@pytest.mark.parametrize("dotted, value, message", [
    # a misspelled key at each level
    ("seeed", 1, f"params.yaml: unknown key(s) 'seeed'; {KNOWN_TOP}"),
    ("trian", {}, f"params.yaml: unknown key(s) 'trian'; {KNOWN_TOP}"),
    ("data.jena.urll", "x", "params.yaml: data.jena: unknown key(s) 'urll'; known keys are url, md5, "
                         "deadline_s, min_rate_kb_s, max_mb"),
    ("jena.lookbak", 720, "params.yaml: jena: unknown key(s) 'lookbak'; known keys are lookback, "),
    ("gradients.explode.stepz", 3, "params.yaml: gradients.explode: unknown key(s) 'stepz'; "
                                   "known keys are recurrent_scale, nonlinearity, lr, steps, clip_norm"),
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
    ("data.jena.md5", 12345678901234567890123456789012, "params.yaml: data.jena.md5: expected a "
                                                       "string, got 12345678901234567890123456789012"),
    ("train.max_epochs", 0, "params.yaml: train.max_epochs: must be >= 1 or null (no cap), got 0"),
    ("jena.batch_size", 0, "params.yaml: jena.batch_size: must be >= 1, got 0"),
    ("imdb.maxlen", -5, "params.yaml: imdb.maxlen: must be >= 1, got -5"),
    ("seeds", [1, 1], "params.yaml: seeds: [1, 1] repeats a seed"),
    ("seed", "x", "params.yaml: seed: expected an integer, got 'x'"),
    ("device", None, "params.yaml: device: expected a string, got None"),
])
def test_one_clear_error_per_mistake(tmp_path, dotted, value, message):
    with pytest.raises(ConfigError) as caught:
        load_with(tmp_path, set_key(dotted, value))
    assert message in str(caught.value).replace(str(tmp_path) + "/", "")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["y;touch pwned;#", "../../pwn", "Gru", "with space", "1st"])
def test_variant_names_are_plain_identifiers(tmp_path, name):
    def edit(params):
        params["models"][name] = params["models"]["gru"]
    with pytest.raises(ConfigError, match=r"a variant name is a lowercase identifier"):
        load_with(tmp_path, edit)


def test_missing_section_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"params.yaml: missing key 'gradients'"):
        load_with(tmp_path, lambda p: p.pop("gradients"))


def test_every_torch_architecture_has_a_builder():
    assert set(REGISTRY) == {n for n, a in ARCHITECTURES.items() if a.torch}
