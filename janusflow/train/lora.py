"""Optional LoRA on the LLM (peft), merged into plain weights on export.

The adapters are injected in place (``peft.inject_adapter_in_model``), so the model keeps its
class and its other module names; only the LLM's target linears gain ``base_layer`` / ``lora_A`` /
``lora_B``. :func:`merged_copy` returns a plain ``JanusFlowModel`` with W <- W + (alpha / r) B A,
whose ``save_pretrained`` folder loads in a model without peft.
"""

from __future__ import annotations

import copy

import torch.nn as nn


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
    return merged
