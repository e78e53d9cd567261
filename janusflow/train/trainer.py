"""A generic training loop: any objective plugs in as a :class:`TrainTask`.

The trainer owns what every objective needs and none should rewrite: AdamW, warm-up then constant
learning rate, gradient accumulation, gradient clipping, EMA of the trainable weights, bf16
autocast on CUDA (fp32 on CPU), DDP/FSDP under ``torchrun``, atomic checkpoints with exact resume,
SIGTERM/Ctrl-C handling, a progress bar and a CSV log.

Plugging in a new objective
---------------------------
Write a class with these members (``JanusFlowTask`` in :mod:`janusflow.train.task` is the full
example; ``tests/test_train_trainer.py`` has a 30-line one)::

    class MyTask:
        module: nn.Module                 # holds every parameter that is trained or checkpointed;
                                          # forward(batch, totals) -> (loss, logs), see below
        def trainable_parameters(self) -> dict[str, nn.Parameter]:
            ...                           # names as in module.named_parameters(); others are frozen
        def micro_batches(self, step: int, shard: Shard) -> list[Batch]:
            ...                           # this process's part of global step `step`,
                                          # one batch per accumulation micro-step
        def counts(self, batch) -> dict[str, float]:
            ...                           # e.g. {"samples": 8, "tokens": 512, "ce_tokens": 300}
        def state_dict(self) -> dict: ...             # JSON-able (data position, ...)
        def load_state_dict(self, state: dict): ...
        def export(self, directory: Path): ...        # the released artefact (save_pretrained)
        def setup(self, ctx: Dist): ...               # optional: move helpers (a frozen VAE) to ctx.device
        def cpu_micro_batches(self, step, shard): ... # optional: micro_batches before on_device's work;
                                                      # what the trainer and data workers build
        def on_device(self, batch): ...               # optional: device work on a batch moved there
                                                      # (micro_batches itself stays on the CPU)
        def advance(self, step: int): ...             # optional: what micro_batches(step) advances, for
                                                      # batches built by data workers (see .prefetch)
        def plan(self, step): ...                     # optional: sequential work deciding a step (packing),
                                                      # run in step order here; cpu_micro_batches(step,
                                                      # shard, plan) builds it (see .prefetch)
        def export_state(self, directory, state): ... # optional, FSDP: export from a gathered state dict

The loss contract (what makes accumulation and data parallelism exact): before the forward
passes of a step the trainer sums ``counts`` over every micro-batch of every process and hands
the sums to ``module.forward(batch, totals)``. The forward returns ``loss`` = (sum of the
per-item losses in *this* micro-batch) / (that total), plus ``logs``: the same per-term
contributions as numbers. Summed over micro-batches and processes these are the mean over the
global batch, whatever way it was split, so 1 process with accumulation 2 and 2 processes with
accumulation 1 compute the same gradient. Use :func:`share` for that division.

``micro_batches`` must be a pure function of the step and the task's state (which it may advance);
randomness per sample should come from a generator seeded by (seed, step, sample), see
:func:`janusflow.train.sources.sample_generator`, so that a resumed run draws the same numbers.
:class:`Shard` splits a global list of items into this process's micro-batches.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn

from . import distributed
from .checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import Dist
from .ema import EMA
from .monitor import Monitor
from .prefetch import cpu_batches


@dataclass
class TrainerConfig:
    """How the loop runs; the objective's own settings live in its task."""

    run_dir: str = "runs/default"
    steps: int = 100
    lr: float = 1e-4
    warmup_steps: int = 0
    decay_steps: int = 0  # the last decay_steps of the schedule take the lr linearly down to 0
    schedule_steps: int = 0  # the schedule's length (0: steps); a run trained in segments keeps its whole
    #                          schedule by giving each segment the same schedule_steps
    grad_accum: int = 1
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    ema_decay: float = 0.99  # 0 disables the EMA
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32" or "bf16"
    device: str = "auto"
    distributed: str = "ddp"  # under torchrun: "ddp" or "fsdp"
    save_every: int = 100  # steps between checkpoints (one is always written at the end)
    keep_last: int = 3
    log_every: int = 1
    data_workers: int = 0  # processes building the next steps' batches (.prefetch); 0: in this process
    max_seconds: float = 0.0  # end the run (checkpoint and export, as after the last step) after this
    #                           much time in the loop, whatever the step; 0: no limit
    resume: bool = True  # continue from the newest checkpoint in run_dir/checkpoints if there is one
    progress: bool = True
    tensorboard: bool = False

    def validate(self) -> None:
        from ..errors import ConfigError

        if self.steps < 0 or self.warmup_steps < 0 or self.grad_accum < 1 or self.keep_last < 0:
            raise ConfigError("trainer: steps and warmup_steps must be >= 0, grad_accum >= 1, keep_last >= 0")
        if self.schedule_steps < 0 or not 0 <= self.decay_steps <= (self.schedule_steps or self.steps):
            raise ConfigError(f"trainer: decay_steps ({self.decay_steps}) must be in 0..the schedule's length "
                              f"({self.schedule_steps or self.steps} steps); schedule_steps must be >= 0")
        if self.save_every < 1 or self.log_every < 1:
            raise ConfigError("trainer: save_every and log_every must be >= 1")
        if self.data_workers < 0 or self.max_seconds < 0:
            raise ConfigError("trainer: data_workers and max_seconds must be >= 0")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"trainer.precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.distributed not in ("ddp", "fsdp"):
            raise ConfigError(f"trainer.distributed must be ddp or fsdp, got {self.distributed!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"trainer.ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass(frozen=True)
class Shard:
    """Which part of a global batch this process handles: ``world_size * grad_accum`` shards.

    Shard ``rank * grad_accum + micro`` goes to process ``rank`` at accumulation step ``micro``,
    so 1 process with accumulation k sees exactly the micro-batches k processes would see.
    """

    rank: int
    world_size: int
    grad_accum: int

    @property
    def parts(self) -> int:
        return self.world_size * self.grad_accum

    def bounds(self, n: int, micro: int) -> tuple[int, int]:
        """[start, stop) of micro-batch ``micro`` of this process in a global list of ``n`` items."""
        index = self.rank * self.grad_accum + micro
        base, extra = divmod(n, self.parts)
        start = index * base + min(index, extra)
        return start, start + base + (index < extra)

    def split(self, items: list) -> list[list]:
        """This process's micro-batches of a global list (contiguous, sizes differ by at most 1)."""
        return [items[slice(*self.bounds(len(items), m))] for m in range(self.grad_accum)]


@runtime_checkable
class TrainTask(Protocol):
    module: nn.Module

    def trainable_parameters(self) -> dict[str, nn.Parameter]: ...
    def micro_batches(self, step: int, shard: Shard) -> list[Any]: ...
    def counts(self, batch: Any) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def export(self, directory: Path) -> None: ...


def share(total_of_items: torch.Tensor, totals: dict[str, float], key: str) -> torch.Tensor:
    """This micro-batch's share of a global mean: sum over its items / number of items in the step."""
    count = totals.get(key, 0.0)
    return total_of_items / count if count > 0 else total_of_items * 0.0


def to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor inside dicts, lists, tuples and dataclasses to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def lr_schedule(warmup_steps: int, total_steps: int = 0, decay_steps: int = 0):
    """lr factor at optimizer step s (0-based), warm-up, constant, then an optional linear cool-down:

        warmup(s) = (s + 1) / warmup_steps           (1 without warm-up)
        decay(s)  = (total_steps - s) / decay_steps  for s >= total_steps - decay_steps, else 1
        factor(s) = min(1, warmup(s), decay(s))

    With decay_steps = 0 the rate stays constant after warm-up, as in the paper's stages."""

    def factor(s: int) -> float:
        f = min(1.0, (s + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        if decay_steps > 0 and s >= total_steps - decay_steps:
            f = min(f, max(0.0, (total_steps - s) / decay_steps))
        return f

    return factor


def _adamw_kernel(params, device: torch.device) -> dict[str, bool]:
    """AdamW's implementation: the fused kernel on CUDA for float parameters (one launch per step
    instead of a few per tensor), multi-tensor elsewhere on CUDA, the per-tensor loop on the CPU."""
    if device.type != "cuda":
        return {"foreach": False}
    fusable = all(p.is_floating_point() and not hasattr(p, "full_tensor") for p in params)  # not FSDP's DTensors
    return {"fused": True} if fusable else {"foreach": True}


class _Objective(nn.Module):
    """What DDP/FSDP wrap: ``task.module(batch, totals)``, with a zero that keeps a micro-batch
    without any item (every sample corrupt) in the autograd graph, so that processes stay in step."""

    def __init__(self, module: nn.Module, trainable: dict[str, nn.Parameter]):
        super().__init__()
        self.inner = module
        self._trainable = set(trainable)  # names: FSDP replaces the parameter objects

    def forward(self, batch, totals):
        loss, logs = self.inner(batch, totals)
        if not loss.requires_grad:
            loss = loss + sum(p.sum() for n, p in self.inner.named_parameters() if n in self._trainable) * 0.0
        return loss, logs


class Trainer:
    """Runs a :class:`TrainTask` for ``config.steps`` optimizer steps; see the module docstring."""

    def __init__(self, task: TrainTask, config: TrainerConfig, resolved_config: dict[str, Any] | None = None):
        config.validate()
        self.task, self.config = task, config
        self.resolved_config = resolved_config or {}
        self.stop_requested = False
        self.step = 0
        self.cumulative: dict[str, float] = {}
        self.last_logs: dict[str, float] = {}
        self.checkpoint_path: Path | None = None

    # -- set-up -----------------------------------------------------------------------------------
    def _autocast(self, device: torch.device):
        precision = self.config.precision
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" else "fp32"
        if precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _install_signals(self, monitor: Monitor):
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop now, without a checkpoint
            self.stop_requested = True
            monitor.message(f"{signal.Signals(signum).name}: finishing this step, writing a checkpoint, then exiting")

        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
        return previous

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train; return {"step", "stopped", "checkpoint", "logs"}. Exports when all steps are done."""
        cfg = self.config
        ctx = distributed.setup(cfg.device)
        run_dir = Path(cfg.run_dir)
        if ctx.main:
            run_dir.mkdir(parents=True, exist_ok=True)
        if hasattr(self.task, "setup"):
            self.task.setup(ctx)
        module = self.task.module.to(ctx.device)
        trainable = self.task.trainable_parameters()
        for name, p in module.named_parameters():
            p.requires_grad_(name in trainable)
        if not trainable:
            raise ValueError("the task has no trainable parameters")
        objective = _Objective(module, trainable)
        wrapped = distributed.wrap(objective, ctx, cfg.distributed)
        trainable = {n: p for n, p in module.named_parameters() if n in trainable}  # FSDP swaps them
        optimizer = torch.optim.AdamW(list(trainable.values()), lr=cfg.lr, betas=tuple(cfg.betas),
                                      weight_decay=cfg.weight_decay, **_adamw_kernel(trainable.values(), ctx.device))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._schedule())
        ema = EMA(trainable, cfg.ema_decay) if cfg.ema_decay > 0 else None

        latest = latest_checkpoint(run_dir) if cfg.resume else None
        if latest is not None:
            state = load_checkpoint(latest, module=module, optimizer=optimizer, ema=ema, ctx=ctx)
            self.step = int(state["step"])
            scheduler.load_state_dict(state["scheduler"])
            self._apply_config_hyperparameters(optimizer, scheduler)
            self.task.load_state_dict(state["task"])
            self.cumulative = dict(state.get("cumulative", {}))
        self._save_config(run_dir, ctx)

        monitor = Monitor(run_dir, cfg.steps, self.step, enabled=ctx.main, progress=cfg.progress,
                          tensorboard=cfg.tensorboard)
        if latest is not None:
            monitor.message(f"resumed from {latest} at step {self.step}")
        previous_handlers = self._install_signals(monitor)
        shard = Shard(ctx.rank, ctx.world_size, cfg.grad_accum)
        autocast = self._autocast(ctx.device)
        module.train()
        saved_at = self.step if latest is not None else -1
        prefetcher = None
        if cfg.data_workers > 0 and self.step < cfg.steps:
            from .prefetch import Prefetcher

            prefetcher = Prefetcher(self.task, shard, cfg.data_workers, self.step)
        started, out_of_time = time.monotonic(), False
        try:
            while self.step < cfg.steps and not out_of_time:
                lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
                micro = prefetcher.get(self.step) if prefetcher else cpu_batches(self.task, self.step, shard)
                logs, counts = self._train_step(micro, wrapped, shard, ctx, autocast, optimizer, scheduler,
                                                trainable)
                if ema is not None:
                    ema.update()
                self.step += 1
                for k, v in counts.items():
                    self.cumulative[k] = self.cumulative.get(k, 0.0) + v
                self.last_logs = logs
                write = self.step % cfg.log_every == 0 or self.step == cfg.steps
                monitor.step(self.step, lr, logs, counts, self.cumulative, write)
                stop = self.stop_requested = distributed.any_process(self.stop_requested, ctx)
                if cfg.max_seconds:  # the same decision on every process
                    out_of_time = distributed.any_process(time.monotonic() - started >= cfg.max_seconds, ctx)
                if stop or out_of_time or self.step % cfg.save_every == 0 or self.step == cfg.steps:
                    self._save(run_dir, module, optimizer, scheduler, ema, ctx)
                    saved_at = self.step
                if stop:
                    monitor.message(f"stopped at step {self.step}; resume with the same command")
                    break
            if self.step >= cfg.steps and saved_at != self.step:
                self._save(run_dir, module, optimizer, scheduler, ema, ctx)
            finished = (self.step >= cfg.steps or out_of_time) and not self.stop_requested
            if finished:
                self._export(run_dir, ema, ctx)
                why = f"the time limit ({cfg.max_seconds:g} s)" if self.step < cfg.steps else "done"
                monitor.message(f"{why}: {self.step} steps; model exported to {run_dir / 'export'}")
        finally:
            if prefetcher is not None:
                prefetcher.close()
            for sig, h in previous_handlers.items():
                signal.signal(sig, h)
            monitor.close()
        distributed.barrier(ctx)
        return {"step": self.step, "stopped": not finished, "checkpoint": self.checkpoint_path,
                "logs": self.last_logs, "out_of_time": out_of_time}

    def _train_step(self, micro, wrapped, shard, ctx, autocast, optimizer, scheduler, trainable):
        if len(micro) != shard.grad_accum:
            raise RuntimeError(f"micro_batches returned {len(micro)} batches for grad_accum {shard.grad_accum}")
        local: dict[str, float] = {}
        for batch in micro:
            for k, v in self.task.counts(batch).items():
                local[k] = local.get(k, 0.0) + float(v)
        totals = distributed.all_reduce_sum(local, ctx)
        logs: dict[str, float] = {}
        for i, batch in enumerate(micro):
            batch = to_device(batch, ctx.device)
            if hasattr(self.task, "on_device"):
                batch = self.task.on_device(batch)
            with distributed.no_sync(wrapped, skip=i < len(micro) - 1), autocast:
                loss, parts = wrapped(batch, totals)
                # DDP averages gradients over processes; the loss is a share of the global sum
                (loss * ctx.world_size).backward()
            for k, v in parts.items():
                logs[k] = logs.get(k, 0.0) + float(v)
            logs["loss"] = logs.get("loss", 0.0) + float(loss.detach())
        logs = distributed.all_reduce_sum(logs, ctx)
        if self.config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(list(trainable.values()), self.config.grad_clip)
            if hasattr(norm, "full_tensor"):
                norm = norm.full_tensor()
            logs["grad_norm"] = float(norm)
            if not math.isfinite(logs["grad_norm"]):
                raise FloatingPointError(f"step {self.step}: gradient norm is {logs['grad_norm']}")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return logs, totals

    def _schedule(self):
        cfg = self.config
        return lr_schedule(cfg.warmup_steps, cfg.schedule_steps or cfg.steps, cfg.decay_steps)

    def _apply_config_hyperparameters(self, optimizer, scheduler) -> None:
        """After a resume the config's lr, schedule, betas and weight decay apply (the checkpoint holds
        the old ones), e.g. to continue a finished run at another rate; the same config changes nothing."""
        cfg = self.config
        schedule = self._schedule()
        lr = cfg.lr * schedule(scheduler.last_epoch)
        scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
        scheduler._last_lr = [lr] * len(optimizer.param_groups)
        for group in optimizer.param_groups:
            group.update(lr=lr, initial_lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)

    # -- persistence ------------------------------------------------------------------------------
    def _save(self, run_dir, module, optimizer, scheduler, ema, ctx) -> None:
        state = {"scheduler": scheduler.state_dict(), "task": self.task.state_dict(),
                 "cumulative": self.cumulative, "config": self.resolved_config, "time": time.time()}
        self.checkpoint_path = save_checkpoint(run_dir, self.step, module=module, optimizer=optimizer, ema=ema,
                                               trainer_state=state, ctx=ctx, keep_last=self.config.keep_last)

    def _export(self, run_dir: Path, ema: EMA | None, ctx: Dist) -> None:
        """``run_dir/export``: the EMA weights when the EMA is on, else the raw ones (main process)."""
        if ctx.world_size > 1 and self.config.distributed == "fsdp":
            return self._export_fsdp(run_dir, ema, ctx)
        if ctx.main:
            with ema.swapped_in() if ema is not None else nullcontext():
                self.task.export(run_dir / "export")
            if ema is not None:
                self.task.export(run_dir / "export-raw")

    def _export_fsdp(self, run_dir: Path, ema: EMA | None, ctx: Dist) -> None:
        """Sharded weights: gather full copies (a collective), then the task exports them on one process
        through ``task.export_state(directory, state_dict)``."""
        from .checkpointing import _full, _model_state

        raw = _model_state(self.task.module)
        ema_state = {k: _full(v) for k, v in ema.state_dict().items()} if ema is not None else None
        if not ctx.main:
            return
        if not hasattr(self.task, "export_state"):
            print(f"FSDP run: this task has no export_state; the weights are in {self.checkpoint_path}")
            return
        if ema_state is not None:
            self.task.export_state(run_dir / "export", {**raw, **ema_state})
            self.task.export_state(run_dir / "export-raw", raw)
        else:
            self.task.export_state(run_dir / "export", raw)

    def _save_config(self, run_dir: Path, ctx: Dist) -> None:
        if not ctx.main or not self.resolved_config:
            return
        import yaml

        tmp = run_dir / "config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(self.resolved_config, sort_keys=False), encoding="utf-8")
        os.replace(tmp, run_dir / "config.yaml")
