"""Optional LoRA on the LLM (peft): trained in place, exported merged and as a peft adapter.

The adapters are injected in place (``peft.inject_adapter_in_model``), so the model keeps its
class and its other module names; only the LLM's target linears gain ``base_layer`` / ``lora_A`` /
``lora_B``. An export writes both:
  * the merged model (:func:`merged_copy`: W <- W + (alpha / r) B A), a plain ``JanusFlowModel`` folder
    that loads without peft;
  * the adapter alone in peft's format (:func:`save_adapter`: ``adapter_config.json`` +
    ``adapter_model.safetensors``), which ``peft.PeftModel.from_pretrained(base_model, folder)`` applies
    to the model the run started from (:func:`load_adapter` does just that).
The adapter's ``target_modules`` is a regular expression on the whole model's module names, restricted to
the LLM, so peft leaves the SigLIP tower's ``q_proj`` / ``v_proj`` alone.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import torch.nn as nn

ADAPTER_SUBFOLDER = "adapter"  # of an export folder
ADAPTER_NAME = "default"


def apply_lora(model, r: int, alpha: int, dropout: float, target_modules: list[str]) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))
    inject_adapter_in_model(config, model.language_model)


def is_lora_parameter(name: str) -> bool:
    return ".lora_" in name


def has_lora(model: nn.Module) -> bool:
    return any(is_lora_parameter(n) for n, _ in model.named_parameters())


def merged_copy(model):
    """A deep copy of ``model`` with every LoRA layer merged and replaced by its base linear."""
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(model)
    for parent in list(merged.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())
    if hasattr(merged.language_model, "peft_config"):
        del merged.language_model.peft_config
    return merged


def whole_model_targets(targets) -> str:
    """peft's ``target_modules`` of the LLM (names or a regex on its module names) -> a regex on the whole
    model's names that only the LLM's modules match (peft full-matches a string against each name)."""
    if isinstance(targets, str):
        return rf"language_model\.(?:{targets})"
    names = "|".join(sorted(re.escape(t) for t in targets))
    return rf"language_model\.(?:.*\.)?(?:{names})"


def save_adapter(model, directory: str | os.PathLike, base_model_name_or_path: str | None = None) -> Path:
    """Write the LLM's LoRA adapter in peft's format, its keys named within the whole model (as
    ``PeftModel.save_pretrained`` names them), so ``PeftModel.from_pretrained(base, directory)`` loads it."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    llm = model.language_model
    if not has_lora(llm) or ADAPTER_NAME not in getattr(llm, "peft_config", {}):
        raise ValueError("the model has no LoRA adapter to save")
    config = copy.deepcopy(llm.peft_config[ADAPTER_NAME])
    config.target_modules = whole_model_targets(config.target_modules)
    config.base_model_name_or_path = base_model_name_or_path
    config.inference_mode = True
    state = get_peft_model_state_dict(llm, adapter_name=ADAPTER_NAME)  # names within the LLM, adapter name out
    state = {f"base_model.model.language_model.{k}": v.detach().cpu().contiguous() for k, v in state.items()}
    folder = Path(os.fspath(directory))
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(os.fspath(folder))
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder


def load_adapter(model, directory: str | os.PathLike, is_trainable: bool = False):
    """``peft.PeftModel`` of ``model`` (the run's base model) with the adapter saved in ``directory``;
    ``.merge_and_unload()`` of it is the merged model."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, os.fspath(directory), is_trainable=is_trainable)
