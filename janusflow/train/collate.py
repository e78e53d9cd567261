"""Samples -> tensors: tokens with answer-only labels, image crops, prompt dropout, noise and times.

Understanding: the conversation is rendered with the processor's "deepseek" template, tokenized
once (with character offsets), and a token is a target exactly when it overlaps an Assistant
answer (the space after "Assistant:", its text and the EOS that closes it); system prompt, User
turns, role names and every image position (boi, image slots, eoi) get label -100. Images are
padded to square as at inference (``resize_and_pad``). Text: every token after BOS is a target,
EOS appended.

Images stay 8-bit (uint8) in a batch, a quarter of float32's bytes for data workers to hand over;
:func:`to_model_inputs`, on the training device, makes them the model's float inputs (understanding:
``normalize_pixels``, as ``preprocess_image``; the latent encoder: x / 127.5 - 1).

Generation: the image is resized (short side) and randomly cropped to a square of the latent
encoder's size; the same crop, preprocessed for understanding, is the REPA target's input. The
prompt row is in the stage's format (:func:`generation_prompt_ids`: ``plain`` "<prompt><image>" in
pre-training, ``chat`` the inference template). With probability ``prompt_dropout`` it is replaced by
its unconditional row from :func:`janusflow.processor.make_uncond`, the one function the sampler
uses for guidance, so the unconditional row follows the same format. Every
random number of a sample (crop, dropout, t, x0) comes from a generator seeded by
(seed, slot key), the slot's place in the run, so processes and resumed runs draw the same values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..flow import sample_time
from ..images import normalize_pixels, resize_and_pad
from ..processor import left_pad, load_image, make_uncond
from .samples import CaptionSample, ConversationSample, TextSample
from .sources import sample_generator

IGNORE = -100


@dataclass
class CEBatch:
    """Left-padded rows for next-token cross-entropy (understanding or text)."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T), IGNORE where no loss; label[i] is the token at position i
    pixel_values: torch.Tensor | None = None  # (B, M, 3, S, S), uint8 until to_model_inputs
    images_seq_mask: torch.Tensor | None = None  # (B, T)
    images_emb_mask: torch.Tensor | None = None  # (B, M, 1 + P)

    @property
    def num_targets(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())


@dataclass
class GenBatch:
    """Rectified-flow rows: prompts (dropped rows already unconditional), x0, t and the image."""

    input_ids: torch.Tensor  # (B, L), left padded, each row ending with the generation tag
    attention_mask: torch.Tensor  # (B, L)
    dropped: torch.Tensor  # (B,) bool, rows replaced by make_uncond
    x0: torch.Tensor  # (B, C, H, W) noise
    t: torch.Tensor  # (B,) in (0, 1)
    latents: torch.Tensor | None = None  # (B, C, H, W) x1, when cached (else encoded from gen_pixels)
    gen_pixels: torch.Tensor | None = None  # (B, 3, P, P), for the latent encoder (uint8 until to_model_inputs)
    und_pixels: torch.Tensor | None = None  # (B, 3, S, S), REPA target input (uint8 until to_model_inputs)
    und_features: torch.Tensor | None = None  # (B, N, W), cached REPA target
    weight: torch.Tensor | None = None  # (B,) 1 for real rows, 0 for a placeholder row (FSDP), None: all 1
    # the contrastive term: the rows (not dropped) whose sample has a negative caption, and those captions
    neg_rows: torch.Tensor | None = None  # (K,) row indices into the batch
    neg_ids: torch.Tensor | None = None  # (K, L'), left padded, ending with the generation tag
    neg_mask: torch.Tensor | None = None  # (K, L')


@dataclass
class JanusFlowBatch:
    und: CEBatch | None = None
    text: CEBatch | None = None
    gen: GenBatch | None = None
    skipped: int = 0
    placeholders: tuple[str, ...] = ()  # parts holding one placeholder row that adds nothing (FSDP)
    packed: "PackedBatch | None" = None  # data.packing: rows of segments of every task (packing.py)


@dataclass
class CollateConfig:
    latent_shape: tuple[int, int, int]  # (C, H, W)
    gen_image_size: int  # pixel side the latent encoder takes
    prompt_dropout: float = 0.1
    time_distribution: str = "logit_normal"
    time_mean: float = 0.0
    time_std: float = 1.0
    repa: bool = True
    max_text_tokens: int = 1024
    seed: int = 0
    prompt_format: str = "chat"  # "plain" or "chat" (generation_prompt_ids)


# -- understanding and text ------------------------------------------------------------------------

def answer_spans(processor, sample: ConversationSample) -> tuple[str, list[tuple[int, int]]]:
    """The templated text and the [start, end) character span of every Assistant answer: the space
    after "Assistant:", the answer, and the EOS that closes it."""
    text = processor.apply_sft_template(sample.messages, system_prompt=sample.system)
    eos = processor.tokenizer.eos_token or ""
    spans = []
    for i, message in enumerate(sample.messages):
        if i % 2 == 0 or not message["content"].strip():
            continue
        head = processor.apply_sft_template(sample.messages[:i] + [{"role": "Assistant", "content": ""}],
                                            system_prompt=sample.system)
        start = len(head)  # the answer starts with the space after "Assistant:", which is predicted too
        answer = " " + message["content"].strip() + eos
        if text[start:start + len(answer)] != answer:
            raise InputError("could not locate an Assistant answer in the templated conversation")
        spans.append((start, start + len(answer)))
    if not spans:
        raise InputError("the conversation has no Assistant answer to learn from")
    return text, spans


def encode_conversation(processor, sample: ConversationSample) -> tuple[list[int], list[int], torch.Tensor]:
    """(ids, labels, pixel_values) with each image expanded to boi, P x image, eoi (all unlabelled);
    pixel_values (n, 3, S, S) uint8."""
    ids, labels = conversation_ids(processor, sample)
    size = processor.image_size
    pixels = (torch.stack([resize_and_pad(im, size, processor.min_size) for im in sample.images]) if sample.images
              else torch.zeros((0, 3, size, size), dtype=torch.uint8))
    return ids, labels, pixels


def conversation_ids(processor, sample: ConversationSample) -> tuple[list[int], list[int]]:
    """:func:`encode_conversation`'s (ids, labels) without reading the images."""
    text, spans = answer_spans(processor, sample)
    encoded = processor.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = [processor.bos_id], [IGNORE]
    image_block = [processor.boi_id] + [processor.image_id] * processor.num_image_tokens + [processor.eoi_id]
    for token, (lo, hi) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        if token == processor.image_id:
            ids += image_block
            labels += [IGNORE] * len(image_block)
            continue
        ids.append(token)
        labels.append(token if any(lo < end and hi > start for start, end in spans) else IGNORE)
    images = sample.images
    placeholders = encoded["input_ids"].count(processor.image_id)
    if placeholders != len(images):
        raise InputError(f"the conversation has {placeholders} image placeholders but {len(images)} images")
    if processor.max_length is not None and len(ids) > processor.max_length:
        raise InputError(f"the conversation is {len(ids)} tokens, over max_length {processor.max_length}")
    return ids, labels


def encode_text(processor, sample: TextSample, max_tokens: int) -> tuple[list[int], list[int]]:
    ids = processor.encode_text(sample.text)[: max_tokens - 1]
    if processor.eos_id is not None:
        ids.append(processor.eos_id)
    return ids, [IGNORE] + ids[1:]


def ce_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> CEBatch:
    """Text rows (ids, labels) -> a left-padded CEBatch without images."""
    ids, mask = left_pad([r[0] for r in rows], pad_id)
    labels, _ = left_pad([r[1] for r in rows], IGNORE)
    return CEBatch(ids, mask, labels)


def und_batch(processor, encoded: list[tuple[list[int], list[int], torch.Tensor]]) -> CEBatch:
    from ..processor import UnderstandingSample

    base = processor.batchify([UnderstandingSample("", torch.tensor(ids), px) for ids, _, px in encoded])
    labels, _ = left_pad([labels for _, labels, _ in encoded], IGNORE)
    return CEBatch(base.input_ids, base.attention_mask, labels, base.pixel_values, base.images_seq_mask,
                   base.images_emb_mask)


# -- generation ------------------------------------------------------------------------------------

def crop_square(image: Image.Image, size: int, generator: torch.Generator | None) -> Image.Image:
    """Resize the short side to ``size`` (bicubic), then a random ``size`` x ``size`` crop (the centre
    crop when ``generator`` is None)."""
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new != image.size:
        image = image.resize(new, Image.Resampling.BICUBIC)
    if generator is None:
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
    else:
        left = int(torch.randint(0, new[0] - size + 1, (1,), generator=generator))
        top = int(torch.randint(0, new[1] - size + 1, (1,), generator=generator))
    return image.crop((left, top, left + size, top + size))


def to_uint8(image: Image.Image) -> torch.Tensor:
    """8-bit RGB -> (3, H, W) uint8."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def latent_encoder_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [-1, 1], the VAE's input range."""
    return pixels.float() / 127.5 - 1.0


def _floats(pixels: torch.Tensor | None, convert) -> torch.Tensor | None:
    return convert(pixels) if pixels is not None and pixels.dtype == torch.uint8 else pixels


def to_model_inputs(batch: JanusFlowBatch) -> JanusFlowBatch:
    """The batch's 8-bit images as the model's float inputs, where they are (the training device);
    a batch already converted is returned unchanged."""
    if batch.und is not None:
        batch.und.pixel_values = _floats(batch.und.pixel_values, normalize_pixels)
    for part in (batch.gen, batch.packed):
        if part is not None:
            part.gen_pixels = _floats(part.gen_pixels, latent_encoder_pixels)
            part.und_pixels = _floats(part.und_pixels, normalize_pixels)
    if batch.packed is not None:
        batch.packed.pixel_values = _floats(batch.packed.pixel_values, normalize_pixels)
    return batch


def generation_prompt_ids(processor, prompt: str, prompt_format: str) -> list[int]:
    """A generation prompt's ids, BOS first and the generation tag last (its slot takes t_emb):
        chat:  BOS "User: {prompt}\\n\\nAssistant:" GEN   (the inference processor's row)
        plain: BOS "{prompt}" GEN                        (the paper's pre-training "<prompt><image>")"""
    if prompt_format == "chat":
        return processor.encode_generation_prompt(prompt)
    if prompt_format != "plain":
        raise InputError(f"unknown prompt format {prompt_format!r}; formats are plain and chat")
    processor.generation_prompt_text(prompt)  # the chat row's checks: a string, not empty, no reserved token
    ids = processor.encode_text(prompt.strip()) + [processor.gen_id]
    total = len(ids) + processor.num_gen_image_tokens
    if processor.max_length is not None and total > processor.max_length:
        raise InputError(f"the prompt is {len(ids)} tokens; with the {processor.num_gen_image_tokens} image tokens "
                         f"the sequence is {total}, over max_length = {processor.max_length}")
    return ids


def prompt_dropped(generator: torch.Generator, cfg: CollateConfig) -> bool:
    """The first draw of a generation sample's generator (seeded by (seed, "gen", slot)): is its prompt
    replaced by the unconditional row?"""
    return bool(torch.rand(1, generator=generator) < cfg.prompt_dropout)


class GenItem:
    """One prepared generation row (prompt ids, random draws, pixels or cached tensors)."""

    def __init__(self, processor, sample: CaptionSample, cfg: CollateConfig, slot):
        g = sample_generator(cfg.seed, "gen", slot)
        self.ids = generation_prompt_ids(processor, sample.caption, cfg.prompt_format)
        self.latent, self.features = sample.latent, sample.und_features
        self.gen_pixels = self.und_pixels = None
        if self.latent is None or (cfg.repa and self.features is None):
            if sample.image is None:
                raise InputError("a generation sample needs an image or a cached latent")
            # a cached latent is of the centre crop: its live REPA target must be of the same crop
            crop_g = sample_generator(cfg.seed, "crop", slot) if self.latent is None else None
            crop = crop_square(load_image(sample.image), cfg.gen_image_size, crop_g)
            self.gen_pixels = to_uint8(crop) if self.latent is None else None
            if cfg.repa and self.features is None:
                self.und_pixels = resize_and_pad(crop, processor.image_size, processor.min_size)
        self.dropped = prompt_dropped(g, cfg)
        self.t = sample_time(1, cfg.time_distribution, cfg.time_mean, cfg.time_std, generator=g)
        self.x0 = torch.randn(cfg.latent_shape, generator=g)
        # no random draw: the stream of every other field is the same with or without negatives
        negative = getattr(sample, "negative", None)
        self.neg_ids = (generation_prompt_ids(processor, negative, cfg.prompt_format)
                        if negative and not self.dropped else None)


def gen_batch(processor, items: list[GenItem]) -> GenBatch:
    ids, mask = left_pad([item.ids for item in items], processor.pad_id)
    dropped = torch.tensor([item.dropped for item in items])
    uncond_ids, uncond_mask = make_uncond(ids, mask, processor.pad_id)
    ids = torch.where(dropped[:, None], uncond_ids, ids)
    mask = torch.where(dropped[:, None], uncond_mask, mask)

    def stack(name):
        values = [getattr(item, name) for item in items]
        if all(v is None for v in values):
            return None
        if any(v is None for v in values):  # some rows cached and some not: the cache is all or nothing
            raise InputError(f"mixed cached and uncached {name} in one batch")
        return torch.stack(values)

    weight = torch.tensor([getattr(item, "weight", 1.0) for item in items])
    batch = GenBatch(ids, mask, dropped, torch.stack([i.x0 for i in items]), torch.cat([i.t for i in items]),
                     latents=stack("latent"), gen_pixels=stack("gen_pixels"), und_pixels=stack("und_pixels"),
                     und_features=stack("features"), weight=None if bool((weight == 1).all()) else weight)
    rows = [i for i, item in enumerate(items) if getattr(item, "neg_ids", None) is not None]
    if rows:
        batch.neg_rows = torch.tensor(rows, dtype=torch.long)
        batch.neg_ids, batch.neg_mask = left_pad([items[i].neg_ids for i in rows], processor.pad_id)
    return batch
