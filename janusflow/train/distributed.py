"""Process groups and data-parallel wrapping: DDP (gloo on CPU, nccl on CUDA) or FSDP.

One process per device, started by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). Without those variables everything runs in one
process and every collective here is a no-op, so the same code path serves both.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Dist:
    """Join the process group that torchrun describes (if any) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world_size, local_rank, dev)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: dict[str, float], ctx: Dist) -> dict[str, float]:
    """Sum a dict of numbers over all processes (every process must pass the same keys)."""
    if not ctx.active or not values:
        return dict(values)
    keys = sorted(values)
    device = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
    packed = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    summed = dict(zip(keys, packed.tolist()))
    return {k: summed[k] for k in values}  # the caller's order


def any_process(flag: bool, ctx: Dist) -> bool:
    """True on every process if it is True on any (used to stop all ranks at the same step)."""
    return bool(all_reduce_sum({"flag": float(flag)}, ctx)["flag"] > 0) if ctx.active else flag


def barrier(ctx: Dist) -> None:
    if ctx.active:
        dist.barrier()


def wrap(module: nn.Module, ctx: Dist, strategy: str, find_unused_parameters: bool = True) -> nn.Module:
    """The module the loop calls: itself (1 process), DDP, or FSDP (``fully_shard`` on every block).

    DDP keeps a full replica per process and all-reduces gradients (averaging them: the trainer
    scales the loss by the world size so the result is the gradient of the global-batch loss).
    ``find_unused_parameters`` is on because a micro-batch may hold no sample of some task, so
    that task's modules get no gradient on that process.
    FSDP shards parameters, gradients and optimizer state over processes (for models that do not
    fit one device): each transformer block and the root are wrapped with ``fully_shard``.
    """
    if not ctx.active:
        return module
    if strategy == "ddp":
        import warnings

        from torch.nn.parallel import DistributedDataParallel

        # depthwise-conv gradients come in another memory layout than DDP's bucket: harmless
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for sub in module.modules():
            if type(sub).__name__.endswith(("DecoderLayer", "EncoderLayer")):
                fully_shard(sub)
        fully_shard(module)
        return module
    raise ValueError(f"unknown distributed strategy {strategy!r}; use 'ddp' or 'fsdp'")


def no_sync(wrapped: nn.Module, skip: bool):
    """Skip the gradient all-reduce on accumulation micro-steps before the last (DDP only)."""
    if skip and hasattr(wrapped, "no_sync"):
        return wrapped.no_sync()
    if skip and hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(False)
        return _ResyncFSDP(wrapped)
    return nullcontext()


class _ResyncFSDP:
    def __init__(self, module):
        self.module = module

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.module.set_requires_gradient_sync(True)
        return False
