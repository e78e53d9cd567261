"""int8 weights for the LLM's linear layers (inference), applied to a loaded model in place.

``quantize_model(model, "int8")`` replaces the weight of every ``nn.Linear`` in the LLM's decoder
blocks (q, k, v, o, gate, up, down: about 1.2 of the 1.3B model's LLM parameters) by torchao's
``Int8DynamicActivationInt8WeightConfig``:

    W_int8[o, :] = round(W[o, :] / s_o),  s_o = max|W[o, :]| / 127            (per output channel)
    x_int8[r, :] = round(x[r, :] / a_r),  a_r = max|x[r, :]| / 127            (per token, at run time)
    y[r, o]      = a_r * s_o * sum_k x_int8[r, k] W_int8[o, k]                 (an int8 x int8 -> int32 product)

so each matrix product runs on int8 operands (``torch._int_mm``), which on a CPU is several times
the fp32 rate (BENCHMARKS.md, "CPU int8"). Everything else stays in the model's dtype: the
embeddings, the LM head, the norms, SigLIP and the generation encoder/decoder. The result is an
inference model: train or save the unquantized one (``save_pretrained`` refuses a quantized model
with a CheckpointError: its int8 tensors are not plain weights).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch.nn as nn

from .errors import InputError, JanusFlowError

METHODS = ("none", "int8")


def check_method(method: str | None) -> str:
    """``None`` -> "none"; anything but a known method is an InputError naming the choices."""
    method = "none" if method is None else method
    if method not in METHODS:
        raise InputError(f"quantize must be one of {list(METHODS)}, got {method!r}")
    return method


@contextmanager
def _quiet_import():
    """torchao's import logs a warning for each optional kernel library it cannot load (CUDA-only ones on
    a CPU machine), and torch one for each of its enums: noise to a command-line user."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def llm_linears(model) -> list[tuple[str, nn.Linear]]:
    """(name, module) of every linear layer in the LLM's decoder blocks."""
    return [(name, m) for name, m in model.llm.layers.named_modules() if isinstance(m, nn.Linear)]


def quantize_model(model, method: str | None = "int8"):
    """Quantize ``model``'s LLM linear layers in place (see the module docstring); returns ``model``."""
    method = check_method(method)
    if method == "none":
        return model
    if is_quantized(model):
        raise InputError(f"the model is already quantized ({model.quantization_method})")
    try:
        with _quiet_import():
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        raise JanusFlowError("int8 needs torchao: pip install 'janusflow[quantize]'") from None
    quantize_(model.llm.layers, Int8DynamicActivationInt8WeightConfig())
    model.quantization_method = method
    return model


def is_quantized(model) -> bool:
    return getattr(model, "quantization_method", None) is not None
