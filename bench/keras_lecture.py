"""The lecture's models (Chollet, ch. 6.3 and ch. 3's IMDB baseline) in Keras 3 on TensorFlow.

Imported by bench/speed_worker.py in a Python that has ``keras`` and ``tensorflow-cpu``
(``pip install -e '.[bench]'``, or another venv given with ``--keras-python``).
Reversed-order variants are the same model: the order is the data's.
"""

import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from keras import layers  # noqa: E402

VOCAB = 10002          # rnnlab's 10,000 words plus its padding and unknown-word ids


def multi_hot(ids: np.ndarray) -> np.ndarray:
    """The lecture's ``vectorize_sequences``; id 0 is our padding, so it stays 0."""
    hot = np.zeros((len(ids), VOCAB), "float32")
    np.put_along_axis(hot, ids.astype(np.int64), 1.0, axis=1)
    hot[:, 0] = 0.0
    return hot


def lecture_model(name: str) -> tuple[keras.Model, str]:
    """The lecture's model for one of our variant names, and its loss."""
    if name.startswith("imdb_"):
        if name == "imdb_dense":      # the lecture multi-hot encodes the words beforehand
            body = [keras.Input((VOCAB,)), layers.Dense(16, activation="relu"),
                    layers.Dense(16, activation="relu")]
        else:
            cell = {"imdb_simplernn": lambda: layers.SimpleRNN(32),
                    "imdb_lstm": lambda: layers.LSTM(32),
                    "imdb_lstm_reversed": lambda: layers.LSTM(32),
                    "imdb_bilstm": lambda: layers.Bidirectional(layers.LSTM(32))}[name]
            body = [keras.Input((500,)), layers.Embedding(VOCAB, 32), cell()]
        return keras.Sequential(body + [layers.Dense(1, activation="sigmoid")]), "binary_crossentropy"
    seq = [keras.Input((240, 14))]          # conv_gru: lookback 720 / step 3 = 240 steps too
    if name == "dense":
        seq += [layers.Flatten(), layers.Dense(32, activation="relu")]
    elif name in ("gru", "gru_reversed"):
        seq += [layers.GRU(32)]
    elif name == "gru_dropout":
        seq += [layers.GRU(32, dropout=0.2, recurrent_dropout=0.2)]
    elif name == "gru_stacked":
        seq += [layers.GRU(32, dropout=0.1, recurrent_dropout=0.5, return_sequences=True),
                layers.GRU(64, activation="relu", dropout=0.1, recurrent_dropout=0.5)]
    elif name == "bigru":
        seq += [layers.Bidirectional(layers.GRU(32))]
    elif name == "conv_gru":
        seq += [layers.Conv1D(32, 5, activation="relu"), layers.MaxPooling1D(3),
                layers.Conv1D(32, 5, activation="relu"),
                layers.GRU(32, dropout=0.1, recurrent_dropout=0.5)]
    elif name == "lstm":
        seq += [layers.LSTM(32)]
    else:
        raise SystemExit(f"no lecture model for {name}")
    return keras.Sequential(seq + [layers.Dense(1)]), "mae"
