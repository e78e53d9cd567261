"""Reading and writing model folders: safetensors only, every key and shape checked.

Two layouts are read:
  * ours: ``config.json`` (``model_type: janusflow``) + ``model.safetensors``;
  * the official release: ``config.json`` with ``language_config`` (DeepSeek's nested format) +
    ``model.safetensors`` or a sharded ``model.safetensors.index.json``, with official key names.
Pickle files (``*.bin``, ``*.pt``) are never opened: unpickling runs code.
The model is built on the meta device and the loaded tensors are assigned, so a 1.3B checkpoint
needs one copy of its weights in memory, not two.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import convert
from .config import JanusFlowConfig
from .errors import CheckpointError, ConfigError

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
CONFIG = "config.json"


def read_config(path: str | os.PathLike) -> tuple[JanusFlowConfig, bool]:
    """(config, is_official) of a model folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder")
    file = folder / CONFIG
    if not file.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file}: not valid JSON ({e})") from None
    if convert.is_official_config(data):
        return convert.config_from_official(data), True
    return JanusFlowConfig.from_dict(data), False


def weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: malformed index ({e!r})") from None
        files = sorted({folder / name for name in weight_map.values()})
    elif (folder / WEIGHTS).is_file():
        files = [folder / WEIGHTS]
    else:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = f" (found {pickles}: pickle files are not loaded, convert them to safetensors)" if pickles else ""
        raise CheckpointError(f"{folder}: no {WEIGHTS} or {INDEX}{hint}")
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{folder}: shard {f.name} named in the index is missing")
    return files


def read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(f, framework="pt") as reader:
                for key in reader.keys():
                    if key in state:
                        raise CheckpointError(f"{f}: key {key!r} appears in two shards")
                    state[key] = reader.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None
    return state


def build_meta(config: JanusFlowConfig):
    from .modeling import JanusFlowModel

    with torch.device("meta"):
        return JanusFlowModel(config)


def _materialize_buffers(model, device: torch.device) -> None:
    """Recompute the non-persistent buffers (RoPE frequencies, SigLIP position ids) left on meta."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    llm = model.language_model.model
    llm.rotary_emb = LlamaRotaryEmbedding(config=model.language_model.config).to(device)
    emb = model.und_encoder.siglip.embeddings
    emb.position_ids = torch.arange(emb.num_positions, device=device).expand((1, -1))
    left = [name for name, b in model.named_buffers() if b.is_meta]
    if left:
        raise RuntimeError(f"buffers left uninitialised: {left}")


def assign_state(model, state: dict[str, torch.Tensor], dtype: torch.dtype, device, what: str):
    """Load ``state`` (our names) into a meta-built ``model`` after checking keys and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    convert.check_keys({k: tuple(v.shape) for k, v in state.items()}, expected, what)
    bad = sorted(k for k, v in state.items() if not (v.is_floating_point()))
    if bad:
        raise CheckpointError(f"{what}: non-float weights {bad[:5]}")
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    _materialize_buffers(model, torch.device(device))
    return model.eval()


def load_model(path: str | os.PathLike, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Load a model folder of either layout; fp32 on CPU and bf16 on CUDA unless ``dtype`` is given."""
    from .modeling import default_dtype

    folder = Path(path)
    config, official = read_config(folder)
    state = read_safetensors(weight_files(folder))
    model = build_meta(config)
    if official:
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        state = convert.official_to_ours(state, shapes, what=f"{folder} (official layout)")
    return assign_state(model, state, dtype or default_dtype(device), device, what=str(folder))


def _write(folder: Path, config_data: dict, state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype else v).detach().cpu().contiguous() for k, v in state.items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / WEIGHTS)
    tmp = folder / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(config_data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / CONFIG)


def save_model(model, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Our layout: config.json + model.safetensors (written to temporary files, then renamed)."""
    if getattr(model, "quantization_method", None):  # janusflow.quantize: int8 tensors are not plain weights
        raise CheckpointError(f"a {model.quantization_method}-quantized model cannot be saved: save the model "
                              "before quantizing it (quantization is applied after loading)")
    _write(Path(path), model.config.to_dict(), model.state_dict(), dtype)


def export_official(model, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """The official layout, loadable by DeepSeek's code (and by :func:`load_model`)."""
    _write(Path(path), convert.config_to_official(model.config), convert.ours_to_official(model.state_dict()), dtype)
