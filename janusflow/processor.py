"""JanusFlow processor: chat template, tokenization with image tokens, image preprocessing, CFG rows.

What goes into the LLM, as the official `VLChatProcessor` (deepseek-ai/Janus, janus/janusflow) builds it:

* Understanding: the conversation is rendered with the "deepseek" template and the default system prompt,
  tokenized with BOS first, and every `<image_placeholder>` id is replaced by
  `<begin_of_image>`, N x `<image_placeholder>`, `<end_of_image>` (N = `num_image_tokens`). The model puts
  `beg_of_und_embed` at the boi position and the N aligned SigLIP tokens at the image positions, hence
  `images_seq_mask = (ids == image) | (ids == boi)` and N + 1 True values per image in `images_emb_mask`.
* Generation: "User: {prompt}\\n\\nAssistant:" (empty system prompt) + `<｜begin▁of▁generation｜>`, BOS first.
  The sampler drops the embedding of that last tag and puts the time embedding in its slot.
* Classifier-free guidance: `make_uncond` (:mod:`janusflow.prompt_rows`) is the single place that builds the
  unconditional rows.

Batches are LEFT padded with the pad id and attention mask 0, so every prompt ends in the last column.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .errors import InputError
from .images import DEFAULT_MIN_SIZE, ImageInput, load_image, preprocess_image  # noqa: F401  (re-exported)
from .prompt_rows import left_pad, make_uncond, position_ids_from_left_padding  # noqa: F401  (re-exported)
from .tokenizer_build import BOI_TOKEN, BOS_TOKEN, EOI_TOKEN, EOS_TOKEN, GEN_TOKEN, IMAGE_TOKEN, PAD_TOKEN

Message = dict[str, Any]  # {"role": "User" | "Assistant", "content": str, "images": [ImageInput, ...]}

PROCESSOR_CONFIG_NAME = "processor_config.json"
OFFICIAL_IMAGE_CONFIG_NAME = "preprocessor_config.json"  # the release keeps image_size here

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)

# The "deepseek" conversation template of the official code.
ROLES = ("User", "Assistant")
SEP = "\n\n"
SEP2 = EOS_TOKEN

# ----------------------------------------------------------------------------------------------------------
# Batches


@dataclass
class UnderstandingSample:
    """One conversation, tokenized with its images expanded to boi, N x image, eoi."""

    sft_format: str
    input_ids: torch.Tensor  # (T,) int64
    pixel_values: torch.Tensor  # (num_images, 3, S, S) float32


@dataclass
class UnderstandingBatch:
    """Left-padded understanding batch in the official layout (B rows, T columns, up to M images a row)."""

    sft_format: list[str]
    input_ids: torch.Tensor  # (B, T) int64
    attention_mask: torch.Tensor  # (B, T) int64, 1 = attend, 0 = left padding
    pixel_values: torch.Tensor  # (B, M, 3, S, S), zeros where a row has fewer images
    images_seq_mask: torch.Tensor  # (B, T) bool, True at boi and image ids
    images_emb_mask: torch.Tensor  # (B, M, N + 1) bool, True for each real image (beg_of_und_embed + N tokens)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "UnderstandingBatch":
        """Move every tensor to `device`; `dtype` applies to `pixel_values` only."""
        self.input_ids = self.input_ids.to(device)
        self.attention_mask = self.attention_mask.to(device)
        self.images_seq_mask = self.images_seq_mask.to(device)
        self.images_emb_mask = self.images_emb_mask.to(device)
        self.pixel_values = self.pixel_values.to(device=device, dtype=dtype)
        return self


@dataclass
class GenerationBatch:
    """Prompt rows for text-to-image sampling: conditional rows first, then their unconditional rows.

    With P prompts and K images per prompt the conditional rows are p0 x K, p1 x K, ... (R_c = P*K rows);
    with guidance the next R_c rows are `make_uncond` of those, in the same order.
    """

    input_ids: torch.Tensor  # (R, L) int64, left padded with pad_id, every row ends with the generation tag
    attention_mask: torch.Tensor  # (R, L) int64
    prompt_lengths: torch.Tensor  # (R,) int64, unpadded length of each row
    num_cond_rows: int
    sft_format: list[str]  # the text of each conditional row

    @property
    def guidance(self) -> bool:
        return self.input_ids.shape[0] > self.num_cond_rows

    def to(self, device: torch.device | str) -> "GenerationBatch":
        self.input_ids = self.input_ids.to(device)
        self.attention_mask = self.attention_mask.to(device)
        self.prompt_lengths = self.prompt_lengths.to(device)
        return self


def _image_list(images: Any, where: str) -> list[ImageInput]:
    if images is None:
        return []
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)) or \
            not isinstance(images, Sequence):
        raise InputError(f"{where} must be a list of images, got {type(images).__name__}")
    return list(images)


# ----------------------------------------------------------------------------------------------------------
# Processor


class JanusFlowProcessor:
    """Tokenizer + "deepseek" chat template + image preprocessing for JanusFlow.

    Args:
        tokenizer: any Hugging Face tokenizer. Missing special tokens (`<image_placeholder>`,
            `<begin_of_image>`, `<end_of_image>`, `<｜begin▁of▁generation｜>`, and BOS if the tokenizer has none)
            are added as the official processor does, with a warning: resize the model's embeddings then.
        image_size: side S of the understanding encoder's input (384 in the release).
        num_image_tokens: N, understanding-encoder tokens per image (576 in the release).
        system_prompt: understanding system prompt (generation always uses none).
        sft_format: chat template; only "deepseek" exists.
        max_length: longest sequence the model may see (e.g. its context size), checked for every
            understanding conversation (after image expansion) and generation prompt (prompt ids plus the
            generated image tokens); None = unlimited. A plain attribute, settable.
        num_gen_image_tokens: image tokens the generation path appends after a prompt, used only by the
            `max_length` check; None = same as `num_image_tokens` (576 both in the release).
        min_size: the official resize's minimum short side.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_size: int,
        num_image_tokens: int,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        sft_format: str = "deepseek",
        max_length: int | None = None,
        num_gen_image_tokens: int | None = None,
        min_size: int = DEFAULT_MIN_SIZE,
    ) -> None:
        if sft_format != "deepseek":
            raise ValueError(f"unknown sft_format {sft_format!r}; only 'deepseek' is implemented")
        for name, value in (("image_size", image_size), ("num_image_tokens", num_image_tokens),
                            ("min_size", min_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(system_prompt, str):
            raise ValueError(f"system_prompt must be a string, got {type(system_prompt).__name__}")
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.num_image_tokens = num_image_tokens
        self.num_gen_image_tokens = num_image_tokens if num_gen_image_tokens is None else num_gen_image_tokens
        self.system_prompt = system_prompt
        self.sft_format = sft_format
        self.min_size = min_size
        if max_length is not None and (not isinstance(max_length, int) or max_length <= 0):
            raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
        self.max_length = max_length

        if tokenizer.bos_token is None:
            tokenizer.add_special_tokens({"bos_token": BOS_TOKEN})
            warnings.warn(f"the tokenizer has no BOS token; added {BOS_TOKEN} (id {tokenizer.bos_token_id}); "
                          f"resize the model's embeddings to len(tokenizer) = {len(tokenizer)}", stacklevel=2)
        self._ids = {token: self._special_token_id(token)
                     for token in (tokenizer.bos_token, IMAGE_TOKEN, BOI_TOKEN, EOI_TOKEN, GEN_TOKEN)}
        vocab = tokenizer.get_vocab()
        if PAD_TOKEN in vocab:
            # As the official processor: the pad token is <｜▁pad▁｜> when the vocabulary has it, else EOS.
            tokenizer.pad_token = PAD_TOKEN
            self._pad_id = vocab[PAD_TOKEN]
        elif tokenizer.eos_token_id is not None:
            self._pad_id = tokenizer.eos_token_id
        else:
            raise ValueError(f"the tokenizer has neither {PAD_TOKEN} nor an EOS token to pad with")
        # Strings that may not appear inside message text: they would forge the template's structure.
        self._reserved = tuple(dict.fromkeys(
            t for t in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, BOI_TOKEN, EOI_TOKEN, GEN_TOKEN, tokenizer.bos_token,
                        tokenizer.eos_token) if t))

    def _special_token_id(self, token: str) -> int:
        """Id of `token`, registering it as a never-split special token when the tokenizer lacks it."""
        vocab_id = self.tokenizer.get_vocab().get(token)
        if vocab_id is not None and self.tokenizer.encode(token, add_special_tokens=False) == [vocab_id]:
            return vocab_id
        self.tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
        new_id = self.tokenizer.get_vocab()[token]
        if vocab_id is None:
            warnings.warn(f"added {token} to the tokenizer as id {new_id}; resize the model's embeddings to "
                          f"len(tokenizer) = {len(self.tokenizer)}", stacklevel=3)
        else:
            warnings.warn(f"{token} (id {vocab_id}) was split by the tokenizer; registered it as a special token",
                          stacklevel=3)
        return new_id

    # -- special ids --------------------------------------------------------------------------------------

    @property
    def bos_id(self) -> int:
        return self._ids[self.tokenizer.bos_token]

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def image_id(self) -> int:
        return self._ids[IMAGE_TOKEN]

    @property
    def boi_id(self) -> int:
        return self._ids[BOI_TOKEN]

    @property
    def eoi_id(self) -> int:
        return self._ids[EOI_TOKEN]

    @property
    def gen_id(self) -> int:
        return self._ids[GEN_TOKEN]

    # -- text ---------------------------------------------------------------------------------------------

    def apply_sft_template(self, conversation: Sequence[Message], system_prompt: str | None = None) -> str:
        """Render a conversation with the official "deepseek" template.

        ret = "" if the system prompt is empty, else system_prompt + "\\n\\n"; then for message i (content
        stripped): role + ": " + content + ("\\n\\n" if i is even else EOS) when the content is non-empty,
        else role + ":"; the result is stripped. `system_prompt=None` means `self.system_prompt`.

        Roles must alternate User, Assistant, User, ... ("user"/"assistant" are accepted); only the last
        message may be empty, and only if it is the Assistant's.
        """
        system_prompt = self.system_prompt if system_prompt is None else system_prompt
        messages = self._check_conversation(conversation)
        text = system_prompt + SEP if system_prompt else ""
        separators = (SEP, SEP2)
        for i, (role, content) in enumerate(messages):
            text += f"{role}: {content}{separators[i % 2]}" if content else f"{role}:"
        return text.strip()

    def _check_conversation(self, conversation: Sequence[Message]) -> list[tuple[str, str]]:
        if isinstance(conversation, (str, bytes)) or not isinstance(conversation, Sequence) or not conversation:
            raise InputError("a conversation must be a non-empty list of {'role': ..., 'content': ...} messages")
        messages = []
        for i, message in enumerate(conversation):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise InputError(f"message {i} must be a dict with 'role' and 'content', got {message!r:.80}")
            role, content = message["role"], message["content"]
            expected = ROLES[i % 2]
            if not isinstance(role, str) or role.capitalize() != expected:
                raise InputError(f"message {i} has role {role!r}; roles must alternate User, Assistant, ...")
            if not isinstance(content, str):
                raise InputError(f"message {i} content must be a string, got {type(content).__name__}")
            content = content.strip()
            if not content and not (i == len(conversation) - 1 and expected == "Assistant"):
                raise InputError(f"message {i} ({expected}) is empty; only the final Assistant message may be")
            reserved = [t for t in self._reserved if t in content]
            if expected == "Assistant" and IMAGE_TOKEN in content:
                reserved.append(IMAGE_TOKEN)
            if reserved:
                raise InputError(f"message {i} contains reserved token(s) {reserved}")
            messages.append((expected, content))
        return messages

    def encode_text(self, text: str) -> list[int]:
        """Token ids of `text` with BOS first (prepended here, whatever the tokenizer's post-processor does)."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates ("\ud800") are valid JSON but not text
            raise InputError(f"text is not valid Unicode ({e.reason} at position {e.start})") from None
        return [self.bos_id] + self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    # -- understanding ------------------------------------------------------------------------------------

    def encode_conversation(
        self, conversation: Sequence[Message], images: Sequence[ImageInput] | None = None
    ) -> UnderstandingSample:
        """One conversation -> ids with each `<image_placeholder>` expanded to boi, N x image, eoi, and pixels.

        Images come from `images` or, when it is None, from each message's "images" list in order; their
        number must equal the number of `<image_placeholder>` in the text.
        """
        sft_format = self.apply_sft_template(conversation)
        in_messages = []
        for i, message in enumerate(conversation):
            in_messages.extend(_image_list(message.get("images"), f"message {i} 'images'"))
        if images is not None and in_messages:
            raise InputError("images were given both as an argument and inside the messages; use one")
        image_list = _image_list(images, "images") if images is not None else in_messages

        ids = self.encode_text(sft_format)
        num_placeholders = ids.count(self.image_id)
        if num_placeholders != len(image_list):
            raise InputError(f"the conversation has {num_placeholders} {IMAGE_TOKEN} but {len(image_list)} "
                             f"image(s) were given; they must match")
        expanded: list[int] = []
        image_block = [self.boi_id] + [self.image_id] * self.num_image_tokens + [self.eoi_id]
        for token in ids:
            expanded.extend(image_block if token == self.image_id else (token,))
        if self.max_length is not None and len(expanded) > self.max_length:
            raise InputError(f"the conversation is {len(expanded)} tokens ({len(image_list)} image(s) of "
                             f"{self.num_image_tokens + 2} tokens included), over max_length = {self.max_length}")

        if image_list:
            pixel_values = torch.stack([preprocess_image(image, self.image_size, self.min_size)
                                        for image in image_list])  # (n, 3, S, S)
        else:
            pixel_values = torch.zeros((0, 3, self.image_size, self.image_size))
        return UnderstandingSample(sft_format, torch.tensor(expanded, dtype=torch.int64), pixel_values)

    def batchify(self, samples: Sequence[UnderstandingSample]) -> UnderstandingBatch:
        """Left-pad samples into one batch, as the official `VLChatProcessor.batchify`."""
        if not samples:
            raise InputError("cannot batch zero conversations")
        input_ids, attention_mask = left_pad([s.input_ids.tolist() for s in samples], self.pad_id)
        batch_size, max_images = len(samples), max(1, max(len(s.pixel_values) for s in samples))
        size = self.image_size
        dtype = next((s.pixel_values.dtype for s in samples if len(s.pixel_values)), torch.float32)
        pixel_values = torch.zeros((batch_size, max_images, 3, size, size), dtype=dtype)  # as the samples'
        images_emb_mask = torch.zeros((batch_size, max_images, self.num_image_tokens + 1), dtype=torch.bool)
        for i, sample in enumerate(samples):
            num_images = len(sample.pixel_values)
            pixel_values[i, :num_images] = sample.pixel_values
            images_emb_mask[i, :num_images] = True
        images_seq_mask = ((input_ids == self.image_id) | (input_ids == self.boi_id)) & (attention_mask == 1)
        return UnderstandingBatch(
            sft_format=[s.sft_format for s in samples],
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            images_seq_mask=images_seq_mask,
            images_emb_mask=images_emb_mask,
        )

    def build_understanding_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        images: Sequence[Sequence[ImageInput] | None] | None = None,
    ) -> UnderstandingBatch:
        """Several conversations (each a list of messages) -> one left-padded `UnderstandingBatch`."""
        if isinstance(conversations, (str, bytes)) or not isinstance(conversations, Sequence) or not conversations:
            raise InputError("conversations must be a non-empty list of conversations")
        if isinstance(conversations[0], dict):
            raise InputError("conversations must be a list of conversations; wrap a single conversation in a list")
        if images is not None and len(images) != len(conversations):
            raise InputError(f"{len(images)} image lists for {len(conversations)} conversations")
        per_row = images if images is not None else [None] * len(conversations)
        return self.batchify([self.encode_conversation(c, im) for c, im in zip(conversations, per_row)])

    # -- generation ---------------------------------------------------------------------------------------

    def generation_prompt_text(self, prompt: str) -> str:
        """"User: {prompt}\\n\\nAssistant:<｜begin▁of▁generation｜>" (deepseek template, no system prompt)."""
        if not isinstance(prompt, str):
            raise InputError(f"a generation prompt must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise InputError("the generation prompt is empty")
        if IMAGE_TOKEN in prompt:
            raise InputError(f"a generation prompt may not contain {IMAGE_TOKEN}")
        conversation = [{"role": "User", "content": prompt}, {"role": "Assistant", "content": ""}]
        return self.apply_sft_template(conversation, system_prompt="") + GEN_TOKEN

    def encode_generation_prompt(self, prompt: str) -> list[int]:
        """Prompt ids: BOS, the templated prompt, the generation tag last."""
        ids = self.encode_text(self.generation_prompt_text(prompt))
        total = len(ids) + self.num_gen_image_tokens
        if self.max_length is not None and total > self.max_length:
            raise InputError(f"the prompt is {len(ids)} tokens; with the {self.num_gen_image_tokens} generated "
                             f"image tokens the sequence is {total}, over max_length = {self.max_length}")
        return ids

    def build_generation_batch(
        self, prompts: Sequence[str], num_images_per_prompt: int = 1, guidance: bool = True
    ) -> GenerationBatch:
        """Conditional rows (each prompt `num_images_per_prompt` times, in order), then with `guidance` the
        unconditional rows from `make_uncond`, in the same order. Left padded with `pad_id`, mask 0."""
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise InputError("prompts must be a list of strings; wrap a single prompt in a list")
        if not prompts:
            raise InputError("no prompts given")
        if not isinstance(num_images_per_prompt, int) or isinstance(num_images_per_prompt, bool) \
                or num_images_per_prompt < 1:
            raise InputError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
        texts = [self.generation_prompt_text(p) for p in prompts for _ in range(num_images_per_prompt)]
        rows = [self.encode_generation_prompt(p) for p in prompts for _ in range(num_images_per_prompt)]
        input_ids, attention_mask = left_pad(rows, self.pad_id)
        prompt_lengths = torch.tensor([len(row) for row in rows], dtype=torch.int64)
        num_cond_rows = len(rows)
        if guidance:
            uncond_ids, uncond_mask = make_uncond(input_ids, attention_mask, self.pad_id)
            input_ids = torch.cat([input_ids, uncond_ids])
            attention_mask = torch.cat([attention_mask, uncond_mask])
            prompt_lengths = torch.cat([prompt_lengths, prompt_lengths])
        return GenerationBatch(input_ids, attention_mask, prompt_lengths, num_cond_rows, texts)

    # -- save / load --------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "processor_class": type(self).__name__,
            "image_size": self.image_size,
            "num_image_tokens": self.num_image_tokens,
            "num_gen_image_tokens": self.num_gen_image_tokens,
            "min_size": self.min_size,
            "system_prompt": self.system_prompt,
            "sft_format": self.sft_format,
            "max_length": self.max_length,
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Write the tokenizer files and `processor_config.json` into `save_directory`."""
        os.makedirs(save_directory, exist_ok=True)
        self.tokenizer.save_pretrained(os.fspath(save_directory))
        with open(Path(save_directory) / PROCESSOR_CONFIG_NAME, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, ensure_ascii=False)
            f.write("\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any) -> "JanusFlowProcessor":
        """Load from a local folder: the tokenizer with `AutoTokenizer` (local files only, no remote code),
        settings from `processor_config.json` (ours or the release's), falling back to the release's
        `preprocessor_config.json` for image_size / min_size. Keyword arguments override the files."""
        path = Path(directory)
        if not path.is_dir():
            raise FileNotFoundError(f"no processor folder at {directory} (only local folders are loaded)")
        settings: dict[str, Any] = {}
        official_image = path / OFFICIAL_IMAGE_CONFIG_NAME
        if official_image.is_file():
            image_config = json.loads(official_image.read_text(encoding="utf-8"))
            settings.update({k: image_config[k] for k in ("image_size", "min_size") if k in image_config})
        config_file = path / PROCESSOR_CONFIG_NAME
        if config_file.is_file():
            settings.update(json.loads(config_file.read_text(encoding="utf-8")))
        settings.update(overrides)
        known = ("image_size", "num_image_tokens", "system_prompt", "sft_format", "max_length",
                 "num_gen_image_tokens", "min_size")
        kwargs = {k: settings[k] for k in known if k in settings}
        missing = [k for k in ("image_size", "num_image_tokens") if k not in kwargs]
        if missing:
            raise ValueError(f"{directory}: no {' or '.join(missing)} in {PROCESSOR_CONFIG_NAME}; pass them as "
                             f"keyword arguments")
        from transformers.utils import logging as hf_logging

        # AutoTokenizer also reads config.json, whose model_type ("janusflow") transformers does not know:
        # it warns that the config "may not be supported", which concerns models, not this tokenizer
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            tokenizer = AutoTokenizer.from_pretrained(os.fspath(path), local_files_only=True, trust_remote_code=False)
        finally:
            hf_logging.set_verbosity(verbosity)
        return cls(tokenizer, **kwargs)
