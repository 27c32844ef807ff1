"""The lecture's Keras models, freshly built, on fixed inputs: their weights and outputs.

    python bench/keras_export.py INPUTS.npz OUT.npz VARIANT...   # a Python with keras

Run with a Python that has ``keras`` and ``tensorflow-cpu`` (the ``bench`` extra); there is
no torch here. tests/test_keras_parity.py drives it (``RNNLAB_KERAS_PYTHON``), copies the
weights into rnnlab's models and compares the outputs.

INPUTS.npz: ``jena`` (N, 240, 14) float32 windows and ``imdb`` (N, 500) word ids (0 pads).
OUT.npz, per variant ``v``:
- ``v/out``: ``model.predict`` (inference mode), (N,): Jena's regression, IMDB's sigmoid;
- ``v/features``: the last hidden layer's output (N, units), what the final Dense reads;
- ``v/<i>/<j>``: weight j of weighted layer i, as ``layer.get_weights()`` gives them (a
  ``Bidirectional`` counts as its forward then its backward layer);
- ``manifest``: JSON {variant: {"layers": [class name per weighted layer], "n_params"}}.
The weights are Keras' own initial draws (``keras.utils.set_random_seed(0)``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import keras  # noqa: E402  (keras_lecture chose the TensorFlow backend)
from keras_lecture import lecture_model, multi_hot  # noqa: E402

logging.getLogger("tensorflow").setLevel(logging.ERROR)   # one predict function per model


def weighted_layers(model: keras.Model) -> list:
    """The layers holding weights, in order; a Bidirectional is its two directions."""
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Bidirectional):
            layers += [layer.forward_layer, layer.backward_layer]
        elif layer.get_weights():
            layers.append(layer)
    return layers


def main() -> None:
    inputs, out, variants = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    data = np.load(inputs)
    arrays: dict[str, np.ndarray] = {}
    manifest = {}
    for variant in variants:
        keras.utils.set_random_seed(0)
        model, _ = lecture_model(variant)
        if variant == "imdb_dense":
            x = multi_hot(data["imdb"])
        else:
            x = data["imdb"] if variant.startswith("imdb_") else data["jena"]
        # One predict for both: the model's output and its last hidden layer's (the final
        # Dense's input), which checks the body where a sigmoid near 0.5 says little.
        both = keras.Model(model.inputs, [model.layers[-2].output, model.outputs[0]])
        features, output = both.predict(x, batch_size=len(x), verbose=0)
        arrays[f"{variant}/out"], arrays[f"{variant}/features"] = output.reshape(-1), features
        layers = weighted_layers(model)
        for i, layer in enumerate(layers):
            for j, w in enumerate(layer.get_weights()):
                arrays[f"{variant}/{i}/{j}"] = w
        manifest[variant] = {"layers": [type(layer).__name__ for layer in layers],
                             "n_params": int(model.count_params())}
    np.savez(out, manifest=np.array(json.dumps(manifest)), **arrays)


if __name__ == "__main__":
    main()
