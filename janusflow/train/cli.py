"""``janusflow train``: registered with the ``janusflow`` command's ``@command`` (see :mod:`janusflow.cli`).

    janusflow train CONFIG.yaml [key=value ...]
    janusflow train cache CONFIG.yaml [key=value ...]
    janusflow train toy-data FOLDER

The same as ``python -m janusflow.train`` (see :mod:`janusflow.train.__main__`); under ``torchrun``
use the module form: ``torchrun --nproc_per_node=N -m janusflow.train CONFIG.yaml``.
"""

from __future__ import annotations

from ..cli import arg, command
from .__main__ import run_from_args


@command("train", "train JanusFlow (a stage of the recipe) from a YAML config; see docs/training.md",
         arg("config", help="YAML config, or 'cache' / 'toy-data' followed by their arguments"),
         arg("overrides", nargs="*", help="key=value overrides, e.g. stage.steps=100 trainer.grad_accum=2"))
def train_main(args) -> int:
    return run_from_args(args)


from . import reflow_cli  # noqa: E402,F401  (registers reflow-pairs and reflow-train)
