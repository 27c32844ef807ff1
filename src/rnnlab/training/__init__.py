"""The training engine and what it needs: tasks over the data sets, threads, devices,
seeds, checkpoints. Imports ``rnnlab.core``, ``rnnlab.data`` and ``rnnlab.nn``.
"""
