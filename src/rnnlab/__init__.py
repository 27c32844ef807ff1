"""rnnlab: the recurrent-networks lecture as a reproducible PyTorch pipeline.

The library takes plain values and paths; it knows nothing of DVC or params.yaml
(the thin scripts in ``stages/`` do that part).
"""

__version__ = "0.1.0"
