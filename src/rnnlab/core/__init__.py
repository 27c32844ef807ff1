"""Foundations every room uses: errors, atomic writes, typed configs, process set-up.
Imports nothing else of rnnlab.
"""
