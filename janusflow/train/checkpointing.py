"""Training checkpoints: everything needed to continue a run exactly, written atomically.

Layout of ``RUN_DIR/checkpoints/step-00001000/``:

    model.safetensors       every tensor of the task's module (trained and frozen, fp32)
    ema.safetensors         EMA of the trainable weights (when EMA is on)
    optimizer.safetensors   AdamW moments and step counts, keyed ``<param name>::<field>``
    optimizer.json          AdamW param groups (hyper-parameters, parameter names)
    rng-rank<r>.json        python, numpy, torch and CUDA RNG states of process r
    trainer_state.json      step, scheduler, data position, cumulative counts, resolved config

A checkpoint is written into ``.step-00001000.tmp`` and renamed into place with ``os.replace``
once complete, so a crash never leaves a half-written ``step-*`` folder; ``trainer_state.json`` is
written last and marks a folder as complete. The newest ``keep_last`` folders are kept.
Tensors go to safetensors and everything else to JSON: nothing is pickled, nothing unpickled.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .distributed import Dist, barrier

STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _STEP_DIR.match(p.name)) and (p / STATE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


# -- RNG ------------------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": _jsonable(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# -- tensors in and out of (possibly sharded) modules ---------------------------------------------

def _full(t: torch.Tensor) -> torch.Tensor:
    """A full CPU copy of a tensor, gathering it first if it is an FSDP shard (a DTensor)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().cpu().contiguous()


def _assign(dst: torch.Tensor, src: torch.Tensor) -> None:
    if hasattr(dst, "device_mesh"):  # FSDP shard: keep only this process's piece
        from torch.distributed.tensor import distribute_tensor

        src = distribute_tensor(src.to(dst.device_mesh.device_type), dst.device_mesh, dst.placements)
    dst.copy_(src)


def _model_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _optimizer_state(module, optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for name, fields in state["state"].items():
        for field, value in fields.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}::{field}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{name}::{field}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        name, field = key.rsplit("::", 1)
        state.setdefault(name, {})[field] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


# -- save / load ----------------------------------------------------------------------------------

def save_checkpoint(run_dir, step: int, *, module, optimizer, ema, trainer_state: dict[str, Any],
                    ctx: Dist, keep_last: int) -> Path:
    """Write a checkpoint (a collective call: every process must call it at the same step)."""
    root = checkpoint_dir(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    if ctx.main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier save
        tmp.mkdir()
    barrier(ctx)
    _write_json(tmp / f"rng-rank{ctx.rank}.json", rng_state())
    model_state = _model_state(module)  # collectives: every rank takes part
    optim_state = _optimizer_state(module, optimizer)  # full on the main process, empty elsewhere
    ema_state = {k: _full(v) for k, v in ema.state_dict().items()} if ema is not None else None
    if ctx.main:
        save_file({k: v.contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
        if ema_state is not None:
            save_file(ema_state, str(tmp / "ema.safetensors"))
        optim_tensors, optim_meta = _flatten_optimizer(optim_state)
        save_file(optim_tensors, str(tmp / "optimizer.safetensors"))
        _write_json(tmp / "optimizer.json", optim_meta)
    barrier(ctx)
    if ctx.main:
        _write_json(tmp / STATE, {"step": step, "world_size": ctx.world_size, **trainer_state})
        if final.exists():  # the same step saved again (e.g. stopped right after a resume)
            old = root / f".step-{step:08d}.old"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        _fsync_dir(root)
        for stale in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(stale, ignore_errors=True)
    barrier(ctx)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, *, module, optimizer, ema, ctx: Dist) -> dict[str, Any]:
    """Restore module, optimizer, EMA and this process's RNG; return ``trainer_state.json``."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    folder = Path(path)
    state = json.loads((folder / STATE).read_text(encoding="utf-8"))
    options = StateDictOptions(full_state_dict=True)
    model_state = load_file(str(folder / "model.safetensors"))
    set_model_state_dict(module, model_state, options=options)
    optim_meta = json.loads((folder / "optimizer.json").read_text(encoding="utf-8"))
    optim_state = _unflatten_optimizer(load_file(str(folder / "optimizer.safetensors")), optim_meta)
    # not strict: a trainable parameter that never received a gradient has no AdamW state to restore
    set_optimizer_state_dict(module, optimizer, optim_state,
                             options=StateDictOptions(full_state_dict=True, strict=False))
    if ema is not None:
        ema_file = folder / "ema.safetensors"
        if ema_file.is_file():
            saved = load_file(str(ema_file))
            with torch.no_grad():
                for name, value in ema.state_dict().items():
                    _assign(value, saved[name].to(value.dtype))
        else:  # EMA switched on for a run that had none: start it from the weights
            with torch.no_grad():
                for name, p in ema.params.items():
                    ema.shadow[name].copy_(p.detach().float())
    rng_file = folder / f"rng-rank{ctx.rank}.json"
    if rng_file.is_file():
        set_rng_state(json.loads(rng_file.read_text(encoding="utf-8")))
    return state
