"""Registration with transformers' Auto classes (run when ``janusflow`` is imported).

After ``import janusflow``, with no ``trust_remote_code``:
  * ``AutoConfig`` reads ``model_type: janusflow`` (ours) and ``multi_modality`` (the release's layout,
    converted to a :class:`~janusflow.config.JanusFlowConfig` on reading);
  * ``AutoModel``, ``AutoModelForImageTextToText`` (and ``AutoModelForVision2Seq`` where transformers still
    has it) build :class:`~janusflow.modeling.JanusFlowForConditionalGeneration`, whose ``from_pretrained``
    reads both layouts;
  * ``AutoProcessor`` gives :class:`~janusflow.processor.JanusFlowProcessor` (also for the release's
    ``processor_class: VLChatProcessor``) and ``AutoImageProcessor`` the ``JanusFlowImageProcessor``
    (also for the release's ``VLMImageProcessor``).
"""

from __future__ import annotations

import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .config import MODEL_TYPE, JanusFlowConfig
from .convert import OFFICIAL_MODEL_TYPE, JanusFlowOfficialConfig
from .image_processing import JanusFlowImageProcessor
from .modeling import JanusFlowForConditionalGeneration
from .processor import JanusFlowProcessor


class VLChatProcessor(JanusFlowProcessor):
    """The name the release's ``processor_config.json`` gives its processor: ``AutoProcessor`` finds
    registered classes by that name, and this one loads a :class:`JanusFlowProcessor` from such a folder."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> JanusFlowProcessor:
        return JanusFlowProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)


class VLMImageProcessor(JanusFlowImageProcessor):
    """The name of the release's image processor class (``preprocessor_config.json``): the same settings,
    read into a :class:`JanusFlowImageProcessor`."""

    @classmethod
    def from_dict(cls, image_processor_dict, **kwargs):
        return JanusFlowImageProcessor.from_dict(image_processor_dict, **kwargs)


def register() -> None:
    """Idempotent: registering again replaces nothing else."""
    AutoConfig.register(MODEL_TYPE, JanusFlowConfig, exist_ok=True)
    AutoConfig.register(OFFICIAL_MODEL_TYPE, JanusFlowOfficialConfig, exist_ok=True)
    auto_models = [AutoModel, AutoModelForImageTextToText]
    if hasattr(transformers, "AutoModelForVision2Seq"):
        auto_models.append(transformers.AutoModelForVision2Seq)
    for auto in auto_models:
        auto.register(JanusFlowConfig, JanusFlowForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(JanusFlowConfig, JanusFlowProcessor, exist_ok=True)
    AutoProcessor.register(JanusFlowOfficialConfig, VLChatProcessor, exist_ok=True)
    try:
        AutoImageProcessor.register(JanusFlowConfig, image_processor_classes={"pil": JanusFlowImageProcessor},
                                    exist_ok=True)
        AutoImageProcessor.register(JanusFlowOfficialConfig, image_processor_classes={"pil": VLMImageProcessor},
                                    exist_ok=True)
    except ImportError:  # transformers < 5.2x: AutoImageProcessor itself needs torchvision, absent here
        pass
