"""MLflow: the store, runs and their links. Imports only ``rnnlab.core``; the one room
(with the tools) that imports mlflow.
"""
