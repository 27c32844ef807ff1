"""The networks: recurrent layers and their C++ kernels, the model builders and the
``models`` schema. Imports only ``rnnlab.core``.
"""
