"""The main job for a fresh machine: generate images for a prompt and answer a question about an
image, with the embedded default model, and say what happened.

When no trained default model is installed (``janusflow/default_model/config.json`` absent), the
demo builds a freshly initialised ``small`` model with the shapes-world tokenizer and a random VAE,
runs the same steps and says plainly that the weights are random.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PARTS = Path(__file__).resolve().parent / "default_model" / "parts"
DEMO_PROMPT = "a red circle and a blue square"
DEMO_SEED = 0


def build_random_model(folder: Path) -> Path:
    """A randomly initialised ``small`` JanusFlow + tokenizer + VAE, saved like a real model folder."""
    from diffusers import AutoencoderKL

    from .config import JanusFlowConfig
    from .modeling import JanusFlowModel
    from .processor import JanusFlowProcessor
    from .shapes.recipe.corpus import tokenizer_corpus
    from .tokenizer_build import build_tokenizer

    if (PARTS / "tokenizer" / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(PARTS / "tokenizer")
    else:
        tokenizer = build_tokenizer(tokenizer_corpus(num_scenes=300), vocab_size=512)
    config = JanusFlowConfig.from_name("small")
    config.language.vocab_size = max(config.language.vocab_size, len(tokenizer))
    torch.manual_seed(DEMO_SEED)
    model = JanusFlowModel(config)
    model.save_pretrained(folder)
    JanusFlowProcessor(tokenizer, image_size=config.und_vision.image_size,
                       num_image_tokens=config.num_und_image_tokens, system_prompt="").save_pretrained(folder)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32),
                        layers_per_block=1, latent_channels=config.gen_vision.latent_channels, norm_num_groups=8,
                        sample_size=4 * config.gen_vision.latent_size)
    vae.save_pretrained(folder / "vae")
    return folder


def run_demo(model_dir: str | Path | None, out_dir: str | Path, prompt: str = DEMO_PROMPT,
             num_images: int = 4, steps: int | None = None, log=print) -> dict:
    """Generate ``num_images`` images for ``prompt`` into ``out_dir`` and answer one question about a
    freshly drawn shapes-world scene; return what happened (also printed through ``log``)."""
    from .best_of import CountingJudge
    from .pipeline import JanusFlowPipeline, default_model_dir
    from .shapes import describe, detect_objects, parse_prompt, passes, render, sample_scene
    from .understanding import JanusFlowChat

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    random_weights = False
    with tempfile.TemporaryDirectory() as tmp:
        if model_dir is None:
            model_dir = default_model_dir()
        if model_dir is None:
            random_weights = True
            log("No trained default model is installed yet (janusflow/default_model/); this run uses a freshly "
                "initialised 'small' JanusFlow with RANDOM weights, so its images and answers are noise.")
            model_dir = build_random_model(Path(tmp) / "random-small")
        log(f"model: {model_dir if not random_weights else 'random small preset'}")
        pipe = JanusFlowPipeline.from_pretrained(model_dir)
        pipe.set_progress_bar_config(disable=True)
        n_steps = steps or 30
        candidates, judge = pipe.resolve_candidates([prompt], None, None)  # the model's default
        judge = CountingJudge(judge) if judge is not None else None
        start = time.perf_counter()
        images = pipe(prompt, num_inference_steps=n_steps, num_images_per_prompt=num_images,
                      generator=DEMO_SEED, candidates=candidates, judge=judge).images
        seconds = time.perf_counter() - start
        paths = []
        for k, image in enumerate(images):
            paths.append(out / f"generated_{k}.png")
            image.save(paths[-1])
        how = f"{n_steps} Euler steps, guidance 2.0"
        if judge is not None:
            how += f"; each the best of up to {candidates} by the model's own answers, {judge.read} drawn in all"
        log(f"generate: {num_images} image(s) for {prompt!r} ({how}) in "
            f"{seconds:.2f} s -> {', '.join(str(p) for p in paths)}")
        report = {"prompt": prompt, "images": [str(p) for p in paths], "generate_seconds": seconds,
                  "random_weights": random_weights}
        try:
            spec = parse_prompt(prompt)
        except ValueError:
            spec = None
        if spec is not None:
            passed = [passes(spec, detect_objects(image)) for image in images]
            report["passed"] = passed
            log(f"scored by the shapes world's exact scorer: {sum(passed)}/{len(passed)} image(s) show the prompt")

        scene = sample_scene(np.random.default_rng(DEMO_SEED))
        image_path = out / "question_image.png"
        render(scene).save(image_path)
        question = "describe the image."
        chat = JanusFlowChat(pipe.model, pipe.processor)
        start = time.perf_counter()
        answer = chat.ask([image_path], question, max_new_tokens=48)
        seconds = time.perf_counter() - start
        log(f"ask: {question!r} about {image_path} -> {answer!r} in {seconds:.2f} s (truth: {describe(scene)!r})")
        report.update(question=question, answer=answer, truth=describe(scene), ask_seconds=seconds)
    return report
