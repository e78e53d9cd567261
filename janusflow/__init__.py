"""JanusFlow: unified image understanding and rectified-flow generation.

Importing the package registers its classes with transformers' Auto classes (:mod:`janusflow.auto`), so
``AutoModel.from_pretrained(folder)`` and ``AutoProcessor.from_pretrained(folder)`` work on our folders and
the release's without ``trust_remote_code``.
"""

__version__ = "0.1.0"

import logging as _logging  # noqa: E402


class _KnownNoise(_logging.Filter):
    """transformers imports torchao whenever it is installed (our ``[quantize]`` extra); on a CPU build of
    torch, torchao warns that its CUDA-only kernels (mxfp8, cutlass) do not load, and torch that torchao
    registers enums it no longer needs to, and diffusers that torchao's tensor types for its own
    quantized checkpoints do not import. None is actionable; each would open every command's output."""

    def filter(self, record: _logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith(("Failed to load", "Unable to import `torchao` Tensor objects"))
                    or "is an Enum subclass and is now natively" in message)


for _name in ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    _logging.getLogger(_name).addFilter(_KnownNoise())

from .auto import register as _register  # noqa: E402
from .config import JanusFlowConfig  # noqa: E402
from .image_processing import JanusFlowImageProcessor  # noqa: E402
from .modeling import JanusFlowForConditionalGeneration, JanusFlowModel  # noqa: E402
from .processor import JanusFlowProcessor  # noqa: E402

_register()

__all__ = ["JanusFlowConfig", "JanusFlowForConditionalGeneration", "JanusFlowImageProcessor", "JanusFlowModel",
           "JanusFlowProcessor", "__version__"]

# diffusers-side classes, imported on first use
_LAZY = {
    "JanusFlowPipeline": "pipeline",
    "JanusFlowImg2ImgPipeline": "pipeline_img2img",
    "JanusFlowInpaintPipeline": "pipeline_img2img",
    "FlowMatchMidpointScheduler": "schedulers",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
