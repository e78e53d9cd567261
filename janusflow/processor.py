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

`JanusFlowProcessor` is a transformers `ProcessorMixin` (tokenizer + `JanusFlowImageProcessor` + the Jinja
`chat_template` of :mod:`janusflow.chat_template`): `processor(text=..., images=..., return_tensors="pt")`
and `processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)`
give what `model.generate` reads; `AutoProcessor` loads it from every folder the project writes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from tokenizers import AddedToken
from transformers import BatchFeature, PreTrainedTokenizerBase, ProcessorMixin

from .batches import GenerationBatch, UnderstandingBatch, UnderstandingSample  # noqa: F401  (re-exported)
from .chat_template import CHAT_TEMPLATE, DEFAULT_SYSTEM_PROMPT, normalize_messages
from .errors import InputError
from .image_processing import JanusFlowImageProcessor, flat_images
from .images import DEFAULT_MIN_SIZE, ImageInput, load_image, preprocess_image  # noqa: F401  (re-exported)
from .processor_files import (  # noqa: F401  (re-exported)
    CHAT_TEMPLATE_NAME, IMAGE_CONFIG_NAME, PROCESSOR_CONFIG_NAME, load_processor_parts, save_processor,
)
from .prompt_rows import left_pad, make_uncond, position_ids_from_left_padding  # noqa: F401  (re-exported)
from .tokenizer_build import BOI_TOKEN, BOS_TOKEN, EOI_TOKEN, EOS_TOKEN, GEN_TOKEN, IMAGE_TOKEN, PAD_TOKEN

Message = dict[str, Any]  # {"role": "User" | "Assistant", "content": str, "images": [ImageInput, ...]}

OFFICIAL_IMAGE_CONFIG_NAME = IMAGE_CONFIG_NAME  # the release keeps image_size there too

# The "deepseek" conversation template of the official code.
ROLES = ("User", "Assistant")
SEP = "\n\n"
SEP2 = EOS_TOKEN

def _image_list(images: Any, where: str) -> list[ImageInput]:
    if images is None:
        return []
    if isinstance(images, (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)) or \
            not isinstance(images, Sequence):
        raise InputError(f"{where} must be a list of images, got {type(images).__name__}")
    return list(images)


# ----------------------------------------------------------------------------------------------------------
# Processor


class JanusFlowProcessor(ProcessorMixin):
    """Tokenizer + "deepseek" chat template + image preprocessing for JanusFlow (a transformers processor).

    Args:
        tokenizer: any Hugging Face tokenizer. Missing special tokens (`<image_placeholder>`,
            `<begin_of_image>`, `<end_of_image>`, `<｜begin▁of▁generation｜>`, and BOS if the tokenizer has none)
            are added as the official processor does, with a warning: resize the model's embeddings then.
            A tokenizer without a chat template gets this processor's.
        image_size: side S of the understanding encoder's input (384 in the release); sets the image processor's.
        num_image_tokens: N, understanding-encoder tokens per image (576 in the release).
        system_prompt: understanding system prompt (generation always uses none).
        sft_format: chat template; only "deepseek" exists.
        max_length: longest sequence the model may see (e.g. its context size), checked for every
            understanding conversation (after image expansion) and generation prompt (prompt ids plus the
            generated image tokens); None = unlimited. A plain attribute, settable.
        num_gen_image_tokens: image tokens the generation path appends after a prompt, used only by the
            `max_length` check; None = same as `num_image_tokens` (576 both in the release).
        min_size: the official resize's minimum short side; sets the image processor's.
        image_processor: a `JanusFlowImageProcessor` (default: the release's settings at `image_size`).
        chat_template: the Jinja template (default: :data:`janusflow.chat_template.CHAT_TEMPLATE`).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase | None = None,
        image_size: int | None = None,
        num_image_tokens: int | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        sft_format: str = "deepseek",
        max_length: int | None = None,
        num_gen_image_tokens: int | None = None,
        min_size: int | None = None,
        image_processor: JanusFlowImageProcessor | None = None,
        chat_template: str | None = None,
    ) -> None:
        if tokenizer is None:
            raise ValueError("a tokenizer is required")
        if sft_format != "deepseek":
            raise ValueError(f"unknown sft_format {sft_format!r}; only 'deepseek' is implemented")
        if image_processor is None:
            if image_size is None:
                raise ValueError("image_size (or an image_processor) is required")
            image_processor = JanusFlowImageProcessor(image_size=image_size,
                                                      min_size=DEFAULT_MIN_SIZE if min_size is None else min_size)
        elif not isinstance(image_processor, JanusFlowImageProcessor):
            raise ValueError(f"image_processor must be a JanusFlowImageProcessor, got {type(image_processor).__name__}")
        for name, value in (("image_size", image_size), ("num_image_tokens", num_image_tokens), ("min_size", min_size)):
            if value is None and name != "num_image_tokens":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(system_prompt, str):
            raise ValueError(f"system_prompt must be a string, got {type(system_prompt).__name__}")
        super().__init__(tokenizer=tokenizer, image_processor=image_processor,
                         chat_template=CHAT_TEMPLATE if chat_template is None else chat_template)
        if image_size is not None:
            image_processor.image_size = image_size
        if min_size is not None:
            image_processor.min_size = min_size
        self.num_image_tokens = num_image_tokens
        self.num_gen_image_tokens = num_image_tokens if num_gen_image_tokens is None else num_gen_image_tokens
        self.system_prompt = system_prompt
        self.sft_format = sft_format
        if max_length is not None and (not isinstance(max_length, int) or max_length <= 0):
            raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
        self.max_length = max_length
        if getattr(tokenizer, "chat_template", None) is None:
            tokenizer.chat_template = self.chat_template

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

    @property
    def image_size(self) -> int:
        return self.image_processor.image_size

    @image_size.setter
    def image_size(self, value: int) -> None:
        self.image_processor.image_size = value

    @property
    def min_size(self) -> int:
        return self.image_processor.min_size

    @min_size.setter
    def min_size(self, value: int) -> None:
        self.image_processor.min_size = value

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "images_seq_mask", "images_emb_mask"]

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
        self, conversation: Sequence[Message], images: Sequence[ImageInput] | None = None,
        system_prompt: str | None = None,
    ) -> UnderstandingSample:
        """One conversation -> ids with each `<image_placeholder>` expanded to boi, N x image, eoi, and pixels.

        Images come from `images` or, when it is None, from each message's "images" list in order; their
        number must equal the number of `<image_placeholder>` in the text. `system_prompt`: as for
        `apply_sft_template` (None: the processor's own).
        """
        sft_format = self.apply_sft_template(conversation, system_prompt)
        in_messages = []
        for i, message in enumerate(conversation):
            in_messages.extend(_image_list(message.get("images"), f"message {i} 'images'"))
        if images is not None and in_messages:
            raise InputError("images were given both as an argument and inside the messages; use one")
        image_list = _image_list(images, "images") if images is not None else in_messages

        return self.encode_prompt(sft_format, image_list)

    def encode_prompt(self, text: str, images: Sequence[ImageInput] = (), add_bos: bool = True) -> UnderstandingSample:
        """A rendered prompt (the chat template's text, one `<image_placeholder>` per image) -> ids with BOS
        first and each placeholder expanded to boi, N x image, eoi; and the images' pixels (n, 3, S, S)."""
        if self.tokenizer.bos_token and text.startswith(self.tokenizer.bos_token):
            text = text[len(self.tokenizer.bos_token):]  # BOS is added here, once
        ids = self.encode_text(text) if add_bos else self.encode_text(text)[1:]
        image_list = list(images)
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
        pixel_values = self.image_processor.preprocess(image_list)["pixel_values"]  # (n, 3, S, S)
        return UnderstandingSample(text, torch.tensor(expanded, dtype=torch.int64), pixel_values)

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
        system_prompt: str | None = None,
    ) -> UnderstandingBatch:
        """Several conversations (each a list of messages) -> one left-padded `UnderstandingBatch`, each
        under `system_prompt` (None: the processor's own; "" none)."""
        if isinstance(conversations, (str, bytes)) or not isinstance(conversations, Sequence) or not conversations:
            raise InputError("conversations must be a non-empty list of conversations")
        if isinstance(conversations[0], dict):
            raise InputError("conversations must be a list of conversations; wrap a single conversation in a list")
        if images is not None and len(images) != len(conversations):
            raise InputError(f"{len(images)} image lists for {len(conversations)} conversations")
        per_row = images if images is not None else [None] * len(conversations)
        return self.batchify([self.encode_conversation(c, im, system_prompt) for c, im in zip(conversations, per_row)])

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

    # -- transformers' processor API -------------------------------------------------------------------

    def __call__(self, images: Any = None, text: str | Sequence[str] | None = None, videos: Any = None,
                 audio: Any = None, return_tensors: str | None = "pt", add_special_tokens: bool = True,
                 padding: bool | str = True, **kwargs: Any) -> BatchFeature:
        """Rendered prompts (``text``, e.g. from ``apply_chat_template``) and their images -> the inputs of
        ``model.generate``: ``input_ids`` and ``attention_mask`` (left padded), and when there are images
        ``pixel_values`` (B, n, 3, S, S), ``images_seq_mask`` (B, T) and ``images_emb_mask`` (B, n, 1 + N).

        ``images``: one image, a list (in placeholder order, across the texts), or a list per text. Without
        ``text``, the image processor's output. Batches are always padded (on the left)."""
        if videos is not None or audio is not None:
            raise InputError("JanusFlow reads images and text only")
        unknown = sorted(set(kwargs) - {"truncation", "max_length", "return_attention_mask", "images_kwargs",
                                        "text_kwargs", "padding_side"})
        if unknown:
            raise TypeError(f"unsupported processor argument(s) {unknown}")
        if padding is False:
            raise InputError("JanusFlow batches are always left padded; padding=False is not supported")
        if text is None:
            if images is None:
                raise InputError("pass text, images or both")
            return self.image_processor(images, return_tensors=return_tensors)
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise InputError("text must be a string or a non-empty list of strings")
        samples = [self.encode_prompt(t, row, add_special_tokens)
                   for t, row in zip(texts, self._images_per_text(images, texts))]
        batch = self.batchify(samples)
        data: dict[str, Any] = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if any(len(sample.pixel_values) for sample in samples):
            data.update(pixel_values=batch.pixel_values, images_seq_mask=batch.images_seq_mask,
                        images_emb_mask=batch.images_emb_mask)
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        return BatchFeature(data, tensor_type="np" if return_tensors == "np" else "pt")

    def _images_per_text(self, images: Any, texts: list[str]) -> list[list[ImageInput]]:
        counts = [t.count(IMAGE_TOKEN) for t in texts]
        if images is None:
            return [[] for _ in texts]
        if isinstance(images, (list, tuple)) and len(images) == len(texts) and len(texts) > 1 \
                and all(isinstance(row, (list, tuple)) for row in images):
            return [list(row) for row in images]
        flat = flat_images(images)
        if len(flat) != sum(counts):
            raise InputError(f"the text has {sum(counts)} {IMAGE_TOKEN} but {len(flat)} image(s) were given; "
                             "they must match")
        rows, start = [], 0
        for count in counts:
            rows.append(flat[start:start + count])
            start += count
        return rows

    def apply_chat_template(self, conversation: Sequence[Any], chat_template: str | None = None,
                            add_generation_prompt: bool = False, tokenize: bool = False, return_dict: bool = False,
                            return_tensors: str | None = "pt", continue_final_message: bool = False,
                            processor_kwargs: dict[str, Any] | None = None, images: Any = None,
                            **template_kwargs: Any):
        """Render one conversation (or a list of them) with the Jinja chat template; with ``tokenize`` also
        encode it with its images (from ``{"type": "image", "image" | "url" | "path": ...}`` parts, today's
        ``"images"`` lists, or ``images=``) into the inputs of ``model.generate``.

        Messages are today's (``{"role": "User", "content": "<image_placeholder>\\n...", "images": [...]}``)
        or transformers' (``{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ...}]}``);
        a leading ``system`` message replaces the default system prompt. Returns the text (a list for a
        batch); with ``tokenize``, ``input_ids``, or the whole ``BatchFeature`` with ``return_dict``.
        """
        batched = isinstance(conversation, (list, tuple)) and bool(conversation) \
            and isinstance(conversation[0], (list, tuple))
        conversations = list(conversation) if batched else [conversation]
        template = chat_template if chat_template is not None else self.chat_template
        prompts, found_images = [], []
        for conv in conversations:
            system, messages, found = normalize_messages(conv)
            ends_with_user = bool(messages) and messages[-1]["role"] == "User"
            self._check_conversation(messages + ([{"role": "Assistant", "content": ""}]
                                                 if add_generation_prompt and ends_with_user else []))
            prompts.append(self.tokenizer.apply_chat_template(
                list(conv), chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                **{"default_system_prompt": self.system_prompt, **template_kwargs}))
            found_images.append(found)
        if not tokenize:
            return prompts if batched else prompts[0]
        if images is not None:
            if any(found_images):
                raise InputError("images were given both as an argument and inside the messages; use one")
            found_images = [images] if not batched else images
        out = self(text=prompts, images=found_images if any(found_images) else None, return_tensors=return_tensors,
                   **(processor_kwargs or {}))
        return out if return_dict else out["input_ids"]

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

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> list[str]:
        """Write the tokenizer files, ``preprocessor_config.json`` (the image processor),
        ``processor_config.json`` (these settings, ``processor_class``: what ``AutoProcessor`` reads) and
        ``chat_template.jinja`` into ``save_directory``."""
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported; save to a folder and upload it")
        return [save_processor(self, save_directory)]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **overrides: Any) -> "JanusFlowProcessor":
        """Load from a local folder (any layout :func:`janusflow.processor_files.load_processor_parts` reads);
        keyword arguments override the files."""
        tokenizer, image_processor, chat_template, settings = load_processor_parts(pretrained_model_name_or_path,
                                                                                   overrides)
        return cls(tokenizer, image_processor=image_processor, chat_template=chat_template, **settings)
