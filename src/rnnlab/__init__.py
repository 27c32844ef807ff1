"""rnnlab: the recurrent-networks lecture as a reproducible PyTorch pipeline.

Rooms by role (docs/pipeline.md draws them; tests/test_layers.py keeps the arrows down):
``core`` < ``data``, ``nn`` < ``training`` < ``lecture``; ``tracking`` beside them (MLflow,
used by ``lecture``); ``tools`` on top. The library takes plain values, params sections
and paths; only the thin scripts in ``stages/`` read params.yaml, and nothing outside
``tracking`` and ``tools`` imports DVC or MLflow.
"""

__version__ = "0.1.0"
