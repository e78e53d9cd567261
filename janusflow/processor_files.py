"""A processor's files: what ``JanusFlowProcessor.save_pretrained`` writes and ``from_pretrained`` reads.

Written (one layout, whatever the transformers version):
  * the tokenizer's files (``tokenizer.json``, ``tokenizer_config.json``, its chat template);
  * ``preprocessor_config.json``: the ``JanusFlowImageProcessor`` (what ``AutoImageProcessor`` reads);
  * ``processor_config.json``: ``processor_class: JanusFlowProcessor`` (what ``AutoProcessor`` reads) and
    the processor's settings (``image_size`` and ``min_size`` repeated there for older readers);
  * ``chat_template.jinja``.
Read as well: folders written before (``processor_config.json`` alone, with ``image_size`` in it),
transformers' one-file layout (the image processor nested in ``processor_config.json``) and the
release's (``processor_class: VLChatProcessor``, ``VLMImageProcessor`` settings in ``preprocessor_config.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .image_processing import JanusFlowImageProcessor

PROCESSOR_CONFIG_NAME = "processor_config.json"
IMAGE_CONFIG_NAME = "preprocessor_config.json"  # the image processor's settings (ours and the release's)
CHAT_TEMPLATE_NAME = "chat_template.jinja"
IMAGE_KEYS = ("image_size", "min_size", "background_color", "image_mean", "image_std", "rescale_factor",
              "do_normalize")
SETTING_KEYS = ("num_image_tokens", "system_prompt", "sft_format", "max_length", "num_gen_image_tokens")
#: `from_pretrained` keywords that mean nothing for a local folder (hub options, AutoProcessor's bookkeeping).
_IGNORED_LOAD_KWARGS = frozenset({"cache_dir", "force_download", "local_files_only", "proxies", "revision", "token",
                                  "trust_remote_code", "_from_auto", "_from_pipeline", "code_revision", "use_fast",
                                  "resume_download", "user_agent", "repo_type", "config"})


def save_processor(processor, save_directory: str | os.PathLike) -> str:
    folder = Path(os.fspath(save_directory))
    folder.mkdir(parents=True, exist_ok=True)
    processor.tokenizer.save_pretrained(os.fspath(folder))
    processor.image_processor.save_pretrained(os.fspath(folder))
    with open(folder / PROCESSOR_CONFIG_NAME, "w", encoding="utf-8") as f:
        json.dump(processor.to_dict(), f, indent=2, ensure_ascii=False)
        f.write("\n")
    (folder / CHAT_TEMPLATE_NAME).write_text(processor.chat_template, encoding="utf-8")
    return str(folder / PROCESSOR_CONFIG_NAME)


def load_processor_parts(directory: str | os.PathLike, overrides: dict[str, Any]):
    """(tokenizer, image processor, chat template or None, other settings) of a local folder.

    The tokenizer comes from `AutoTokenizer` (local files only, no remote code); the image settings from
    `preprocessor_config.json`, then `processor_config.json`'s `image_size` / `min_size`; the other settings
    from `processor_config.json`; the template from `chat_template.jinja` when present. `overrides` (keyword
    arguments of `from_pretrained`) win over the files."""
    overrides = dict(overrides)
    path = Path(os.fspath(directory)) / (overrides.pop("subfolder", "") or "")
    for key in _IGNORED_LOAD_KWARGS & set(overrides):
        overrides.pop(key)
    if not path.is_dir():
        raise FileNotFoundError(f"no processor folder at {directory} (only local folders are loaded)")
    unknown = sorted(set(overrides) - set(IMAGE_KEYS) - set(SETTING_KEYS) - {"chat_template"})
    if unknown:
        raise TypeError(f"JanusFlowProcessor.from_pretrained: unsupported argument(s) {unknown}")
    image_settings: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    if (path / IMAGE_CONFIG_NAME).is_file():
        image_settings.update(_read_json(path / IMAGE_CONFIG_NAME))
    if (path / PROCESSOR_CONFIG_NAME).is_file():
        settings.update(_read_json(path / PROCESSOR_CONFIG_NAME))
        if isinstance(settings.get("image_processor"), dict):  # transformers' one-file layout
            image_settings.update(settings["image_processor"])
    image_settings.update({k: settings[k] for k in ("image_size", "min_size") if k in settings})
    image_settings.update({k: v for k, v in overrides.items() if k in IMAGE_KEYS})
    settings.update({k: v for k, v in overrides.items() if k not in IMAGE_KEYS})
    missing = [k for k, found in (("image_size", image_settings), ("num_image_tokens", settings)) if k not in found]
    if missing:
        raise ValueError(f"{directory}: no {' or '.join(missing)} in {PROCESSOR_CONFIG_NAME}; pass them as "
                         f"keyword arguments")
    image_processor = JanusFlowImageProcessor(**{k: image_settings[k] for k in IMAGE_KEYS if k in image_settings})
    chat_template = settings.get("chat_template")
    if chat_template is None and (path / CHAT_TEMPLATE_NAME).is_file():
        chat_template = (path / CHAT_TEMPLATE_NAME).read_text(encoding="utf-8")
    return _load_tokenizer(path), image_processor, chat_template, {k: settings[k] for k in SETTING_KEYS if k in settings}


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    # AutoTokenizer also reads config.json, whose model_type transformers may not know: it warns that the
    # config "may not be supported", which concerns models, not this tokenizer
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(os.fspath(path), local_files_only=True, trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(verbosity)


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a JSON object")
    return data
