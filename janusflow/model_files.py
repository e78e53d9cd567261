"""The files of a model folder: config, safetensors weights, special token ids. Every key and shape checked.

Two layouts are read:
  * ours: ``config.json`` (``model_type: janusflow``) + ``model.safetensors`` or a sharded
    ``model.safetensors.index.json`` (what ``save_pretrained`` writes);
  * the official release: ``config.json`` with ``language_config`` (DeepSeek's nested format) +
    ``model.safetensors`` or a sharded index, with official key names (converted by :mod:`janusflow.convert`).
Pickle files (``*.bin``, ``*.pt``) are never opened: unpickling runs code.

This module knows files and state dicts, not the model class: :mod:`janusflow.modeling` builds the
model (on the meta device) and calls :func:`assign_state`, so a 1.3B checkpoint needs one copy of its
weights in memory, not two.
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
from .tokenizer_build import BOI_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN, PAD_TOKEN

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"


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


def token_ids_from_tokenizer(path: str | os.PathLike) -> dict[str, int]:
    """The special token ids of the folder's ``tokenizer.json`` (JSON only, no tokenizer built), named
    as in :data:`janusflow.config.TOKEN_ID_KEYS`; {} without a tokenizer. The pad token is
    ``<｜▁pad▁｜>`` when the vocabulary has it, else EOS (as the processor pads)."""
    folder = Path(path)
    try:
        tokenizer = json.loads((folder / TOKENIZER).read_text(encoding="utf-8"))
        settings = json.loads((folder / TOKENIZER_CONFIG).read_text(encoding="utf-8")) \
            if (folder / TOKENIZER_CONFIG).is_file() else {}
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(tokenizer, dict) or not isinstance(settings, dict):
        return {}
    vocab = dict(tokenizer.get("model", {}).get("vocab") or {}) if isinstance(tokenizer.get("model"), dict) else {}
    vocab.update({t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])
                  if isinstance(t, dict) and "content" in t and "id" in t})

    def named(key: str, default: str) -> str:
        value = settings.get(key) or default
        return value.get("content", default) if isinstance(value, dict) else value

    strings = {"bos_token_id": named("bos_token", BOS_TOKEN), "eos_token_id": named("eos_token", EOS_TOKEN),
               "pad_token_id": PAD_TOKEN if PAD_TOKEN in vocab else named("eos_token", EOS_TOKEN),
               "image_token_id": IMAGE_TOKEN, "boi_token_id": BOI_TOKEN}
    return {key: vocab[s] for key, s in strings.items() if isinstance(vocab.get(s), int)}


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


def materialize_buffers(model, device: torch.device) -> None:
    """Recompute the non-persistent buffers (RoPE frequencies, SigLIP position ids) left on meta."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    llm = model.language_model.model
    llm.rotary_emb = LlamaRotaryEmbedding(config=model.language_model.config).to(device)
    emb = model.und_encoder.siglip.embeddings
    emb.position_ids = torch.arange(emb.num_positions, device=device).expand((1, -1))
    left = [name for name, b in model.named_buffers() if b.is_meta]
    if left:
        raise RuntimeError(f"buffers left uninitialised: {left}")


_materialize_buffers = materialize_buffers  # the name training and benchmarks import


def assign_state(model, state: dict[str, torch.Tensor], dtype: torch.dtype, device, what: str):
    """Load ``state`` (our names) into a meta-built ``model`` after checking keys and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    convert.check_keys({k: tuple(v.shape) for k, v in state.items()}, expected, what)
    bad = sorted(k for k, v in state.items() if not (v.is_floating_point()))
    if bad:
        raise CheckpointError(f"{what}: non-float weights {bad[:5]}")
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    materialize_buffers(model, torch.device(device))
    return model.eval()


def read_weights(folder: Path, config: JanusFlowConfig, official: bool,
                 our_shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The folder's weights under our names (official ones converted through the one key map)."""
    state = read_safetensors(weight_files(folder))
    if official:
        state = convert.official_to_ours(state, our_shapes, what=f"{folder} (official layout)")
    return state


def write_folder(folder: Path, config_data: dict, state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> None:
    """``config.json`` + one ``model.safetensors``, each written to a temporary file, then renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype else v).detach().cpu().contiguous() for k, v in state.items()}
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / WEIGHTS)
    tmp = folder / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(config_data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / CONFIG)


def export_official(model, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """The official layout, loadable by DeepSeek's code (and by ``from_pretrained``)."""
    write_folder(Path(path), convert.config_to_official(model.config), convert.ours_to_official(model.state_dict()),
                 dtype)
