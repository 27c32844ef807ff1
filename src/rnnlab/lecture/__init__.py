"""The lecture's studies as the stages run them: a variant's training run, the naive
baseline, the gradients study, the TF-IDF baseline, the report. The only room besides
the tools that uses ``rnnlab.tracking``.
"""
