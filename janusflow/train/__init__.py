"""Training: a generic loop (:mod:`.trainer`) and the JanusFlow recipe on it (:mod:`.task`).

``python -m janusflow.train CONFIG.yaml [key=value ...]`` (or ``janusflow train``) runs a stage;
see docs/training.md.
"""

from .trainer import Shard, Trainer, TrainerConfig, TrainTask, share

__all__ = ["Shard", "Trainer", "TrainerConfig", "TrainTask", "share"]
