"""Build the batches of the coming steps in worker processes while the accelerator trains.

A task's ``micro_batches(step, shard)`` is a pure function of the step and the task's data state
(see :mod:`.trainer`), so workers forked from the training process can build step ``s + k`` while
step ``s`` trains, and the trainer receives exactly the batches it would have built itself: the
run is the same with or without workers (``tests/test_train_prefetch.py``).

Workers are forked (as ``torch.utils.data.DataLoader``'s are) after the task's state is loaded, and
run on the CPU only: they call the task's ``cpu_micro_batches`` when it has one (else
``micro_batches``), and work that needs the device (encoding images with a VAE on the GPU, say)
belongs in the task's optional ``on_device(batch)``, which the trainer calls in the training process
(it must do nothing to a batch already done). A task whose batch building advances some state of
its own gets ``advance(step)`` called in the training process for each step built by a worker. A
task whose steps depend on the steps before (sequence packing: how many samples fill a step depends
on their lengths) has ``plan(step)``: cheap and sequential, it runs here in step order, and the
worker builds the planned step with ``cpu_micro_batches(step, shard, plan)``.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

_TASK: Any = None  # the task, inherited by the forked workers
_SHARD: Any = None


def _init_worker() -> None:
    torch.set_num_threads(1)  # many workers share the cores


def cpu_batches(task, step: int, shard, plan=None) -> list[Any]:
    """The task's micro-batches of ``step`` before device work: ``cpu_micro_batches`` when the task
    has it (``on_device`` then runs where the batch trains), else ``micro_batches``; with the step's
    ``plan`` when one was made (see the module docstring)."""
    if plan is not None:
        return task.cpu_micro_batches(step, shard, plan)
    return getattr(task, "cpu_micro_batches", task.micro_batches)(step, shard)


def _build(step: int, plan=None) -> list[Any]:
    return cpu_batches(_TASK, step, _SHARD, plan)


class Prefetcher:
    """``get(step)`` -> the task's micro-batches of ``step``, built ``depth`` steps ahead by ``workers``
    processes. Steps must be asked for in order (the trainer's loop)."""

    def __init__(self, task, shard, workers: int, first_step: int, depth: int | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if "fork" not in multiprocessing.get_all_start_methods():
            raise RuntimeError("data_workers needs the 'fork' start method (Linux); set trainer.data_workers=0")
        global _TASK, _SHARD
        _TASK, _SHARD = task, shard
        self.task = task
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                        initializer=_init_worker)
        self.depth = depth or 2 * workers
        self.next_submit = first_step
        self.pending: deque = deque()

    def get(self, step: int) -> list[Any]:
        while self.pending and self.pending[0][0] < step:  # steps skipped by the caller
            self.pending.popleft()
        if not self.pending or self.pending[0][0] != step:
            self.pending.clear()
            self.next_submit = step
        while len(self.pending) < self.depth:
            plan = self.task.plan(self.next_submit) if hasattr(self.task, "plan") else None
            self.pending.append((self.next_submit, self.pool.submit(_build, self.next_submit, plan)))
            self.next_submit += 1
        _, result = self.pending.popleft()
        micro = result.result()
        if hasattr(self.task, "advance"):
            self.task.advance(step)
        return micro

    def close(self) -> None:
        global _TASK, _SHARD
        self.pool.shutdown(wait=True, cancel_futures=True)  # waits for the batches being built
        self.pending.clear()
        _TASK = _SHARD = None

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
