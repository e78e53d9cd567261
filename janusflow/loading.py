"""Model folders on disk, in the two layouts a pipeline loads, and the diffusers layout it saves.

    model folder     config.json + model.safetensors (ours or the official release's), the tokenizer,
                     processor_config.json / preprocessor_config.json, optionally vae/ (a diffusers
                     AutoencoderKL), scheduler/ and image_generation_config.json
    pipeline folder  model_index.json (diffusers' ConfigMixin) and one subfolder a component:
                     model/ (a model folder without the tokenizer, with image_generation_config.json),
                     processor/ (tokenizer + processor_config.json), vae/, scheduler/

Why the pipeline reads its own ``model_index.json``: diffusers 0.42 resolves a component whose library
is not diffusers or transformers only from ``sys.modules`` (``_get_library_or_raise``) and loads it
only when the class derives from one of its ``LOADABLE_CLASSES`` bases *found as an attribute of that
module*, passing ``torch_dtype``/``device_map`` keywords. The model and processor are janusflow
classes with their own ``from_pretrained``; so the janusflow components are loaded here, through
their own loaders, and the diffusers ones (VAE, scheduler) through diffusers' classes.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from pathlib import Path

import torch

from .errors import CheckpointError, InputError

VAE_SUBFOLDER = "vae"
SCHEDULER_SUBFOLDER = "scheduler"
PIPELINE_INDEX = "model_index.json"


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"unknown device {device!r} ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but CUDA is not available")
    return device


def load_model_and_processor(model_dir: str | os.PathLike, device: str | torch.device | None = None,
                             dtype: torch.dtype | None = None, processor_dir: str | os.PathLike | None = None,
                             quantize: str | None = None):
    """(model, processor) from one folder, either layout (the processor from ``processor_dir`` when the
    tokenizer lives apart); fp32 on CPU and bf16 on CUDA by default; ``quantize="int8"``: the LLM's
    linear layers in int8 (:mod:`janusflow.quantize`).

    The processor's sizes come from the model's config (image size, image tokens of both paths) and
    its ``max_length`` is at most the LLM's context, so over-long prompts are refused up front.
    """
    from .modeling import JanusFlowModel, default_dtype
    from .processor import JanusFlowProcessor
    from .quantize import check_method, quantize_model

    quantize = check_method(quantize)  # before loading anything
    folder = Path(os.fspath(model_dir))
    if not folder.is_dir():
        raise CheckpointError(f"model folder not found: {folder}")
    processor_folder = Path(os.fspath(processor_dir)) if processor_dir is not None else folder
    device = resolve_device(device)
    model = quantize_model(JanusFlowModel.from_pretrained(folder, dtype=dtype or default_dtype(device), device=device),
                           quantize)
    config = model.config
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer reads our config.json and warns about its model_type
    try:
        processor = JanusFlowProcessor.from_pretrained(
            processor_folder, image_size=config.und_vision.image_size, num_image_tokens=config.num_und_image_tokens,
            num_gen_image_tokens=config.num_image_tokens)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{processor_folder}: cannot load the tokenizer/processor "
                              f"({str(e).splitlines()[0]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    context = config.language.max_position_embeddings
    processor.max_length = min(processor.max_length or context, context)
    if len(processor.tokenizer) > config.language.vocab_size:
        raise CheckpointError(f"{processor_folder}: the tokenizer has {len(processor.tokenizer)} tokens but the "
                              f"model's vocabulary is {config.language.vocab_size}")
    return model, processor


def component_class(library: str, class_name: str) -> type:
    """The class a ``model_index.json`` entry names: diffusers' own, or one of janusflow's. No other
    module is imported on a file's word."""
    if library == "diffusers":
        import diffusers

        found = getattr(diffusers, class_name, None)
    elif library == "janusflow" or library.startswith("janusflow."):
        found = getattr(importlib.import_module(library), class_name, None)
    else:
        raise CheckpointError(f"{PIPELINE_INDEX}: a component from {library!r}; janusflow loads components "
                              f"from diffusers and janusflow only")
    if found is None:
        raise CheckpointError(f"{PIPELINE_INDEX}: {library} has no class {class_name!r}")
    return found


def load_scheduler(folder: Path):
    """The scheduler saved in ``folder`` (``scheduler_config.json``, its ``_class_name`` a diffusers or
    janusflow class)."""
    path = folder / "scheduler_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the scheduler ({e})") from None
    name = config.get("_class_name") if isinstance(config, dict) else None
    library = "janusflow.schedulers" if name == "FlowMatchMidpointScheduler" else "diffusers"
    cls = component_class(library, name or "")
    return cls.from_config(config)


def load_components(folder: str | os.PathLike, vae=None, scheduler=None, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None, quantize: str | None = None) -> dict:
    """The pipeline's components (model, processor, vae, scheduler, image_generation_config) from a model
    folder or a pipeline folder; ``vae``/``scheduler`` given replace the folder's (``vae``: a diffusers
    folder or an ``AutoencoderKL``)."""
    from .image_generation_config import ImageGenerationConfig
    from .vae import load_vae

    folder = Path(os.fspath(folder))
    index = folder / PIPELINE_INDEX
    if index.is_file():  # a saved pipeline
        from diffusers import DiffusionPipeline

        entries = DiffusionPipeline.load_config(os.fspath(folder))
        for name in ("model", "processor"):
            if not (isinstance(entries.get(name), list) and entries[name][0]):
                raise CheckpointError(f"{index}: no {name} component")
            component_class(*entries[name])  # refuses a library we do not load from
        model_dir, processor_dir = folder / "model", folder / "processor"
        has = {name: isinstance(entries.get(name), list) and entries[name][0] is not None
               for name in (VAE_SUBFOLDER, SCHEDULER_SUBFOLDER)}
    else:
        model_dir, processor_dir = folder, None
        has = {name: (folder / name).is_dir() for name in (VAE_SUBFOLDER, SCHEDULER_SUBFOLDER)}
    model, processor = load_model_and_processor(model_dir, device, dtype, processor_dir, quantize=quantize)
    if vae is None and has[VAE_SUBFOLDER] and (folder / VAE_SUBFOLDER / "config.json").is_file():
        vae = folder / VAE_SUBFOLDER
    if vae is not None:
        vae = load_vae(vae, model.device, dtype)
    if scheduler is None and has[SCHEDULER_SUBFOLDER]:
        scheduler = load_scheduler(folder / SCHEDULER_SUBFOLDER)
    return {"model": model, "processor": processor, "vae": vae, "scheduler": scheduler,
            "image_generation_config": ImageGenerationConfig.from_folder(model_dir)}


def save_components(pipe, save_directory: str | os.PathLike, **save_kwargs) -> None:
    """Each component into its subfolder through its own ``save_pretrained`` (given the keywords of
    ``save_kwargs`` it takes, as diffusers does), the model's ``image_generation_config.json`` beside
    it, and ``model_index.json``."""
    out = Path(os.fspath(save_directory))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model", "processor", VAE_SUBFOLDER, SCHEDULER_SUBFOLDER):
        component = getattr(pipe, name, None)
        if component is None:
            continue
        save = component.save_pretrained
        accepted = inspect.signature(save).parameters
        kwargs = {k: v for k, v in save_kwargs.items() if k in accepted and v is not None}
        save(os.fspath(out / name), **kwargs)
    pipe.image_generation_config.save(out / "model")
    pipe.save_config(os.fspath(out))
