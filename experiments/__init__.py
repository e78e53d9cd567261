"""Experiments on the shapes world that did not make the embedded model (experiments/README.md).

They import ``janusflow`` like any user of the package; run one from the repository root with
``python -m experiments.NAME --help``.
"""
