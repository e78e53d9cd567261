"""Model folders as whole models: load, save, export to the official layout.

The file-level work (config, safetensors, key and shape checks, the official key map) lives in
:mod:`janusflow.model_files` and :mod:`janusflow.convert`; the model class in :mod:`janusflow.modeling`.
This module only joins them (imports go one way: checkpoint -> modeling -> model_files), and keeps the
names older code imports from here.
"""

from __future__ import annotations

import os

import torch

from .model_files import (  # noqa: F401  (re-exported)
    CONFIG, INDEX, WEIGHTS, _materialize_buffers, assign_state, export_official, materialize_buffers, read_config,
    read_safetensors, token_ids_from_tokenizer, weight_files, write_folder,
)
from .modeling import build_meta, default_dtype, load_model  # noqa: F401  (re-exported)


def save_model(model, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Our layout: ``config.json`` + safetensors (``model.save_pretrained``)."""
    model.save_pretrained(path, dtype=dtype)
