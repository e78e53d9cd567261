"""The model behind the server: a small interface, and its implementation on a model folder.

The server and the web page only call :class:`Engine`'s three methods, so they can be tested on a
tiny random model and run on any checkpoint. :class:`ModelEngine` is the real one: it loads a model
folder (ours or the official layout), its tokenizer and a diffusers ``AutoencoderKL``, generates
with :func:`janusflow.sampler.sample_latents` and answers with the LLM's ``generate``.

Cancellation is cooperative: ``progress`` (called after every ODE step) and ``streamer.put``
(called for every new token) may raise, which stops the work at once; the server's worker uses
this to enforce its per-request timeout.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from ..errors import CheckpointError, InputError
from ..processor import IMAGE_TOKEN

Progress = Callable[[int, int], None]  # (steps done, steps in all)
Turn = tuple[str, str]  # (question, answer) of an earlier turn of the same chat


class Engine(Protocol):
    def generate(self, prompt: str, num_images: int, steps: int, guidance_scale: float, seed: int,
                 solver: str, progress: Progress | None = None) -> list[Image.Image]:
        """``num_images`` images for one prompt; the same seed gives the same images."""

    def ask(self, image: Image.Image, question: str, max_new_tokens: int, streamer=None,
            history: Sequence[Turn] = ()) -> str:
        """The answer to ``question`` about ``image``, after the earlier ``history`` turns.

        ``streamer`` is a transformers streamer (``put(token_ids)``, ``end()``) fed as tokens come.
        """

    def stream_answer(self, image: Image.Image, question: str, max_new_tokens: int,
                      history: Sequence[Turn] = ()) -> Iterator[str]:
        """The answer as it grows, one piece of text at a time."""


def conversation_for(question: str, history: Sequence[Turn] = ()) -> list[dict]:
    """The deepseek-template messages of a chat about one image: the image goes with the first question."""
    messages: list[dict] = []
    for i, (asked, answered) in enumerate([*history, (question, "")]):
        content = f"{IMAGE_TOKEN}\n{asked}" if i == 0 else asked
        messages += [{"role": "User", "content": content}, {"role": "Assistant", "content": answered}]
    return messages


def latents_to_images(vae, latents: torch.Tensor) -> list[Image.Image]:
    """VAE-decode (B, C, H, W) latents into PIL images; non-finite values are an error, not black pixels."""
    if not torch.isfinite(latents).all():
        raise FloatingPointError("the sampler produced non-finite latents")
    scale = getattr(vae.config, "scaling_factor", 1.0) or 1.0
    with torch.inference_mode():
        pixels = vae.decode(latents.to(vae.dtype) / scale).sample.float()  # (B, 3, h, w) in [-1, 1]
    if not torch.isfinite(pixels).all():
        raise FloatingPointError("the VAE produced non-finite pixels (is it running in fp16?)")
    pixels = ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]


class ModelEngine:
    """A JanusFlow model, its processor and a VAE, on one device."""

    def __init__(self, model, processor, vae):
        self.model = model.eval()
        self.processor = processor
        self.vae = vae.eval() if vae is not None else None

    @classmethod
    def from_folder(cls, model_dir: str | os.PathLike, vae_dir: str | os.PathLike | None = None,
                    device: str = "cpu") -> "ModelEngine":
        """Load ``model_dir`` (weights, config, tokenizer) and the VAE (``vae_dir`` or ``model_dir/vae``)."""
        from diffusers import AutoencoderKL

        from ..modeling import JanusFlowModel
        from ..processor import JanusFlowProcessor

        folder = Path(model_dir)
        model = JanusFlowModel.from_pretrained(folder, device=device)
        config = model.config
        try:
            processor = JanusFlowProcessor.from_pretrained(
                folder, image_size=config.und_vision.image_size, num_image_tokens=config.num_und_image_tokens,
                num_gen_image_tokens=config.num_image_tokens, max_length=config.language.max_position_embeddings)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder}: no usable tokenizer ({e})") from None
        vae_folder = Path(vae_dir) if vae_dir is not None else folder / "vae"
        if not (vae_folder / "config.json").is_file():
            raise CheckpointError(f"{vae_folder}: no VAE there (a diffusers AutoencoderKL folder); pass --vae DIR")
        try:
            vae = AutoencoderKL.from_pretrained(vae_folder, local_files_only=True, torch_dtype=torch.float32).to(device)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{vae_folder}: not a loadable AutoencoderKL ({e})") from None
        return cls(model, processor, vae)

    # -- generation ----------------------------------------------------------------------------
    def generate(self, prompt: str, num_images: int, steps: int, guidance_scale: float, seed: int,
                 solver: str, progress: Progress | None = None) -> list[Image.Image]:
        from ..sampler import SamplerConfig, sample_latents

        cfg = SamplerConfig(num_steps=steps, guidance_scale=float(guidance_scale), solver=solver)
        cfg.validate()
        batch = self.processor.build_generation_batch([prompt], num_images, guidance=cfg.guided)
        gen = self.model.config.gen_vision
        noise = torch.Generator().manual_seed(seed)
        z0 = torch.randn((num_images, gen.latent_channels, gen.latent_size, gen.latent_size), generator=noise)
        device = self.model.device
        result = sample_latents(self.model, batch.input_ids.to(device), batch.attention_mask.to(device),
                                z0.to(device), cfg, progress=progress)
        if self.vae is None:
            raise CheckpointError("this engine has no VAE, so it cannot decode images")
        return latents_to_images(self.vae, result.latents)

    # -- understanding -------------------------------------------------------------------------
    def ask(self, image: Image.Image, question: str, max_new_tokens: int, streamer=None,
            history: Sequence[Turn] = ()) -> str:
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        sample = self.processor.encode_conversation(conversation_for(question, history), images=[image])
        batch = self.processor.batchify([sample]).to(self.model.device, self.model.dtype)
        with torch.inference_mode():
            embeds = self.model.prepare_inputs_embeds(batch.input_ids, batch.pixel_values,
                                                      batch.images_seq_mask, batch.images_emb_mask)
            new_ids = self.model.language_model.generate(
                inputs_embeds=embeds, attention_mask=batch.attention_mask, max_new_tokens=max_new_tokens,
                do_sample=False, eos_token_id=self.processor.eos_id, pad_token_id=self.processor.pad_id,
                bos_token_id=self.processor.bos_id, streamer=streamer)
        return self.processor.decode(new_ids[0]).strip()

    def stream_answer(self, image: Image.Image, question: str, max_new_tokens: int,
                      history: Sequence[Turn] = ()) -> Iterator[str]:
        yield from stream_in_thread(self, image, question, max_new_tokens, history)


def text_streamer(engine, timeout: float | None = None):
    """A ``TextIteratorStreamer`` for the engine's tokenizer (new tokens only, special tokens dropped)."""
    from transformers import TextIteratorStreamer

    return TextIteratorStreamer(engine.processor.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                timeout=timeout)


def stream_in_thread(engine, image, question, max_new_tokens, history=()) -> Iterator[str]:
    """Run ``engine.ask`` in a thread and yield its text as it streams; its error is raised here."""
    streamer = text_streamer(engine)
    failure: list[BaseException] = []

    def run():
        try:
            engine.ask(image, question, max_new_tokens, streamer=streamer, history=history)
        except BaseException as e:  # re-raised in the caller's thread below
            failure.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    for piece in streamer:
        if piece:
            yield piece
    thread.join()
    if failure:
        raise failure[0]


def load_engine(model_dir: str | os.PathLike, vae_dir: str | os.PathLike | None = None,
                device: str = "cpu") -> Engine:
    """The engine the command line serves."""
    return ModelEngine.from_folder(model_dir, vae_dir, device=device)
