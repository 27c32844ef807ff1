"""Same architecture as the lecture, proven: the lecture's Keras models (bench/keras_lecture.py),
their weights copied into rnnlab's, give the same outputs and count the same parameters.

Keras runs in another Python (``RNNLAB_KERAS_PYTHON``, or this one if it has keras and
tensorflow), through bench/keras_export.py; without one these tests skip, saying how to
enable them (docs/testing.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_models import IMDB_TORCH_VARIANTS, JENA_VARIANTS, assert_keras_initialized, spec_of
from torch import nn

from rnnlab.nn.models import build_model, count_parameters
from rnnlab.nn.recurrent import RecurrentLayer

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = sorted({**JENA_VARIANTS, **IMDB_TORCH_VARIANTS})
VOCAB, MAXLEN, JENA_SHAPE, BATCH = 10002, 500, (240, 14), 8
ENABLE = ("run `./dev.sh keras` (the 'bench' extra, tensorflow-cpu and keras, in .venv-keras, "
          "which `./dev.sh test` then uses), or set RNNLAB_KERAS_PYTHON to a Python that has "
          "keras and tensorflow-cpu")


def keras_python() -> str | None:
    if os.environ.get("RNNLAB_KERAS_PYTHON"):
        return os.environ["RNNLAB_KERAS_PYTHON"]
    if importlib.util.find_spec("keras") and importlib.util.find_spec("tensorflow"):
        return sys.executable
    return None


@pytest.fixture(scope="module")
def keras_side(tmp_path_factory):
    """Inputs, and what bench/keras_export.py made of them: {variant: (layers, weights,
    features, output, n_params)}: one Keras process for every variant (about 30 s)."""
    python = keras_python()
    if python is None:
        pytest.skip(f"no Keras to compare with: {ENABLE}")
    rng = np.random.default_rng(0)
    ids = rng.integers(2, VOCAB, size=(BATCH, MAXLEN))
    ids[: BATCH // 2, :120] = 0                       # front padding, as the data has
    inputs = {"jena": rng.normal(size=(BATCH, *JENA_SHAPE)).astype(np.float32), "imdb": ids}
    folder = tmp_path_factory.mktemp("keras")
    np.savez(folder / "in.npz", **inputs)
    done = subprocess.run([python, str(ROOT / "bench" / "keras_export.py"), str(folder / "in.npz"),
                           str(folder / "out.npz"), *VARIANTS],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{python} bench/keras_export.py failed:\n{done.stderr[-3000:]}"
    out = np.load(folder / "out.npz")
    manifest = json.loads(str(out["manifest"]))
    side = {}
    for variant, entry in manifest.items():
        weights = [[out[f"{variant}/{i}/{j}"] for j in range(_count(out, f"{variant}/{i}/"))]
                   for i in range(len(entry["layers"]))]
        side[variant] = (entry["layers"], weights, out[f"{variant}/features"],
                         out[f"{variant}/out"], entry["n_params"])
    return inputs, side


def _count(npz, prefix: str) -> int:
    return sum(1 for key in npz.files if key.startswith(prefix))


KERAS_CLASS = {nn.Linear: "Dense", nn.Conv1d: "Conv1D", nn.Embedding: "Embedding"}
RECURRENT_CLASS = {"gru": "GRU", "lstm": "LSTM", "rnn": "SimpleRNN"}


def keras_class(module: nn.Module) -> str | None:
    if isinstance(module, RecurrentLayer):
        return RECURRENT_CLASS[module.cell]
    return next((name for cls, name in KERAS_CLASS.items() if isinstance(module, cls)), None)


def gru_gates(a: torch.Tensor) -> torch.Tensor:
    """Keras' GRU gate blocks z, r, h (last axis) in PyTorch's order r, z, n."""
    z, r, h = a.chunk(3, -1)
    return torch.cat([r, z, h], -1)


@torch.no_grad()
def copy_keras_weights(model: nn.Module, layers: list[str], weights: list[list[np.ndarray]]):
    """Keras' (in, out) kernels into torch's (out, in) layouts, layer by layer in order."""
    ours = [m for m in model.modules() if keras_class(m) is not None]
    assert [keras_class(m) for m in ours] == layers
    for module, arrays in zip(ours, weights):
        w = [torch.from_numpy(a) for a in arrays]
        if isinstance(module, nn.Linear):
            module.weight.copy_(w[0].t())
            module.bias.copy_(w[1])
        elif isinstance(module, nn.Conv1d):                  # Keras (k, in, out)
            module.weight.copy_(w[0].permute(2, 1, 0))
            module.bias.copy_(w[1])
        elif isinstance(module, nn.Embedding):
            module.weight.copy_(w[0])
        elif module.cell == "gru":                           # reset_after: bias (2, 3H)
            module.weight_ih_l0.copy_(gru_gates(w[0]).t())
            module.weight_hh_l0.copy_(gru_gates(w[1]).t())
            module.bias_ih_l0.copy_(gru_gates(w[2][0]))
            module.bias_hh_l0.copy_(gru_gates(w[2][1]))
        else:                                                # LSTM i, f, c, o = i, f, g, o
            module.weight_ih_l0.copy_(w[0].t())
            module.weight_hh_l0.copy_(w[1].t())
            module.bias_ih_l0.copy_(w[2])                    # Keras' one bias
            module.bias_hh_l0.zero_()                        # PyTorch's second, redundant


def redundant_biases(model: nn.Module) -> int:
    """PyTorch's LSTM and RNN add two bias vectors where Keras has one."""
    return sum(m.bias_hh_l0.numel() for m in model.modules()
               if isinstance(m, RecurrentLayer) and m.cell != "gru")


@pytest.mark.parametrize("variant", VARIANTS)
def test_keras_weights_give_keras_outputs(keras_side, variant):
    inputs, side = keras_side
    layers, weights, features, expected, n_params = side[variant]
    spec = spec_of(variant)
    imdb = spec.dataset == "imdb"
    model = build_model(spec, VOCAB if imdb else JENA_SHAPE[1], MAXLEN if imdb else JENA_SHAPE[0])
    # Parameter counts: the same, but for PyTorch's second bias of an LSTM or SimpleRNN.
    assert count_parameters(model) - redundant_biases(model) == n_params
    copy_keras_weights(model, layers, weights)
    # Keras' own initial draws have the properties our `keras` init gives (test_models).
    assert_keras_initialized(model, f"{variant} (Keras' weights)")
    x = torch.from_numpy(inputs["imdb" if imdb else "jena"])
    model.eval()
    for native in (True, False):           # the C++ recurrences, and PyTorch's / the Python GRU loop
        for m in model.modules():
            if isinstance(m, RecurrentLayer):
                m.native = native
        with torch.no_grad():
            body = model.body(x)                           # (B, units): the final Dense's input
            out = model.out(body).squeeze(-1)
        ours = (torch.sigmoid(out) if imdb else out).numpy()
        diff = float(np.abs(ours - expected).max())
        body_diff = float(np.abs(body.numpy() - features).max())
        print(f"{variant} native={native}: max |ours - keras| output {diff:.2e}, "
              f"last hidden layer {body_diff:.2e}")
        assert diff < 1e-5, f"{variant} (native={native}): outputs differ by {diff:.2e}"
        assert body_diff < 1e-5, f"{variant} (native={native}): hidden differ by {body_diff:.2e}"


KERAS_RMSPROP = """
import sys, numpy as np, keras
data = np.load(sys.argv[1])
w = keras.Variable(data["w0"])
opt = keras.optimizers.RMSprop()          # the lecture's: Keras' defaults
for g in data["grads"]:
    opt.apply_gradients([(keras.ops.convert_to_tensor(g), w)])
np.save(sys.argv[2], np.asarray(w.value))
"""


def test_keras3_rmsprop_is_keras_own_and_the_default_is_the_books(tmp_path):
    """Keras 3's RMSprop applied to a sequence of gradients, some far below sqrt(eps), equals
    rnnlab's ``rmsprop: keras3``; the default (the book's Keras 2, torch's) does not."""
    from rnnlab.training.engine import Keras3RMSprop
    python = keras_python()
    if python is None:
        pytest.skip(f"no Keras to compare with: {ENABLE}")
    rng = np.random.default_rng(3)
    w0 = rng.normal(size=(6, 5)).astype(np.float32)
    scales = np.array([1.0, 1e-2, 1e-4, 1e-6, 0.0], np.float32)        # per column
    grads = (np.abs(rng.normal(size=(12, 6, 5))) * scales).astype(np.float32)   # one sign
    np.savez(tmp_path / "in.npz", w0=w0, grads=grads)
    done = subprocess.run([python, "-c", KERAS_RMSPROP, str(tmp_path / "in.npz"),
                           str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-3000:]
    keras_w = np.load(tmp_path / "out.npy")

    def ours(optimizer_class) -> np.ndarray:
        w = nn.Parameter(torch.from_numpy(w0.copy()))
        opt = optimizer_class([w], lr=1e-3, alpha=0.9, eps=1e-7)
        for g in grads:
            w.grad = torch.from_numpy(g.copy())
            opt.step()
        return w.detach().numpy()

    np.testing.assert_allclose(ours(Keras3RMSprop), keras_w, rtol=0, atol=2e-7)
    book = ours(torch.optim.RMSprop)
    moved_book, moved_keras = np.abs(book - w0), np.abs(keras_w - w0)
    # Large gradients: both forms take the same steps; tiny ones: the book's keeps steps of
    # about lr, Keras 3's damps them by |g| / sqrt(eps).
    np.testing.assert_allclose(book[:, 0], keras_w[:, 0], atol=1e-6)
    assert (moved_book[:, 3] > 1e-3).all() and (moved_keras[:, 3] < 1e-4).all()
    assert (book[:, 4] == w0[:, 4]).all() and (keras_w[:, 4] == w0[:, 4]).all()


def test_bench_fidelity_trains_both_sides_of_a_pair(tmp_path):
    """bench/bench_fidelity.py end to end on generated reviews, one short epoch of two
    IMDB variants a side: rnnlab's engine here, the lecture's Keras in the Keras Python,
    the same batches (the Keras worker draws them with rnnlab.data.windows); then its table.
    Both sides had broken unseen: ours on a changed ``build_task``, Keras' on a yaml import
    the Keras venv did not have."""
    python = keras_python()
    if python is None:
        pytest.skip(f"no Keras to compare with: {ENABLE}")
    from rnnlab.data.download import download_imdb
    from rnnlab.data.imdb import prepare_imdb, save_sequence_spec
    from rnnlab.data.synthetic import write_imdb_tarball

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["imdb"] |= {"max_features": 200, "maxlen": 30, "val_fraction": 0.25, "batch_size": 16}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    prepared = tmp_path / "data" / "prepared"
    write_imdb_tarball(tmp_path / "a.tar.gz", per_class=40, seed=3)
    download_imdb((tmp_path / "a.tar.gz").as_uri(), tmp_path / "raw", md5=None, progress=False)
    stats = prepare_imdb(tmp_path / "raw", prepared / "imdb", max_features=200, maxlen=30,
                         val_fraction=0.25, seed=1)
    save_sequence_spec(stats, prepared / "imdb_windows")
    out = tmp_path / "fidelity.jsonl"
    command = [sys.executable, str(ROOT / "bench" / "bench_fidelity.py"), "--out", str(out)]
    done = subprocess.run([*command, "--root", str(tmp_path), "--keras-python", python,
                           "--variants", "imdb_dense", "imdb_lstm", "--seeds", "7",
                           "--imdb-epochs", "1"],
                          capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["side"], r["variant"]) for r in runs) == [
        ("keras", "imdb_dense"), ("keras", "imdb_lstm"), ("ours", "imdb_dense"),
        ("ours", "imdb_lstm")]
    for run in runs:
        assert 0.0 <= run["val"]["accuracy"] <= 1.0 and run["seed"] == 7, run
    table = subprocess.run([*command, "--table"], capture_output=True, text=True, check=True,
                           env=dict(os.environ, PYTHONPATH=str(ROOT / "src"))).stdout
    assert "| imdb_dense | 1 epochs" in table and "| imdb_lstm | 1 epochs" in table, table
