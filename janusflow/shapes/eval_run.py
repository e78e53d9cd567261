"""The whole shapes-world evaluation of a model folder, through the public file layouts (what
``janusflow eval shapes`` and the recipe's last stage run).

    janusflow eval shapes [--model DIR] [--out DIR] [--prompts-per-category 50] [--num-images-per-prompt 4]
                          [--questions 1000] [--seed 0] [--candidates N] [--num-inference-steps 30]
                          [--guidance-scale 2.0]

Generation: the GenEval metadata of ``evaluate.geneval_metadata`` (every category, its prompts
cycled) -> ``pipeline.generate_geneval`` (what ``janusflow generate --geneval-metadata`` runs; prompt i
draws its noise from seed + i) at the default sampler settings (30 Euler steps, guidance 2) ->
``evaluate.score_geneval_folder``; each image is the best of up to N samples by the model's own
self-check (``self_check.py``), the one-image latency included, with N from ``--candidates`` or else
the model's ``image_generation_config.json`` (what ``janusflow generate`` uses; 1: the plain sampler).
Understanding:
``evaluate.llava_questions`` (fresh scenes, one question each) -> ``eval.llava.answer_llava_questions``
(what ``janusflow ask --question-file`` runs; greedy) -> ``evaluate.score_llava_answers``. Written under OUT:

    geneval/metadata.jsonl, geneval/images/{i:05d}/samples/{k:04d}.png
    llava/questions.jsonl, llava/images/*.png, llava/answer_key.json, llava/answers.jsonl
    results.json     scores per category / form, timing, and the resolved settings

Timing: wall and CPU seconds (all threads of this process) per image and per answer, amortised
over the evaluation (images of a prompt are sampled together, questions in batches), and the
latency of one image / one answer alone (median of ``latency_repeats`` runs). CPU time is the
honest measure on a shared machine, where wall time includes waiting for the cores.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

DEFAULT_STEPS = 30  # the CLI's and the pipeline's defaults
DEFAULT_GUIDANCE = 2.0
MAX_ANSWER_TOKENS = 64  # the longest right answer (a description of four objects) is 15 tokens + EOS


class _Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def _latency(fn, repeats: int) -> dict[str, float] | None:
    """Median wall and CPU seconds of ``fn()`` over ``repeats`` runs (after one warm-up run)."""
    if repeats <= 0:
        return None
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        with _Clock() as c:
            fn()
        walls.append(c.wall)
        cpus.append(c.cpu)
    return {"wall_seconds": statistics.median(walls), "cpu_seconds": statistics.median(cpus), "repeats": repeats}


def evaluate_shapes(model: str | os.PathLike, out: str | os.PathLike, prompts_per_category: int = 50,
                    images_per_prompt: int = 4, questions: int = 1000, seed: int = 0,
                    steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE, batch_size: int = 8,
                    device: str | None = None, show_progress: bool = True, latency_repeats: int = 5,
                    candidates: int | None = None, quantize: str | None = None) -> dict[str, Any]:
    """Generate, answer and score (see the module docstring); returns what results.json holds."""
    import torch

    from ..best_of import CountingJudge
    from ..errors import InputError
    from ..pipeline import JanusFlowPipeline, generate_geneval
    from ..eval.llava import answer_llava_questions
    from ..understanding import DecodingConfig, JanusFlowChat
    from .evaluate import geneval_metadata, llava_questions, read_jsonl, score_geneval_folder, score_llava_answers
    from .evaluate import write_jsonl
    from .grid import sample_grid
    from .self_check import judge_for

    counts = (("prompts per category", prompts_per_category), ("images per prompt", images_per_prompt),
              ("questions", questions), ("batch size", batch_size), ("candidates", candidates))
    for name, value in counts:
        if value is None:  # candidates: the model's default
            continue
        if value < 1:
            raise InputError(f"the number of {name} must be at least 1, got {value}")
    model, out = Path(os.fspath(model)), Path(os.fspath(out))
    pipe = JanusFlowPipeline.from_pretrained(model, device=device, quantize=quantize)
    if pipe.vae is None:
        raise InputError(f"{model} has no vae/ folder: the images cannot be decoded")
    pipe.set_progress_bar_config(disable=True)
    chat = JanusFlowChat(pipe.model, pipe.processor)
    sampler = {"num_inference_steps": steps, "guidance_scale": guidance}
    if candidates is None:  # the model's default (image_generation_config.json), as `janusflow generate` uses it
        candidates = pipe.image_generation_config.candidates
    judge = CountingJudge(judge_for(pipe, chat)) if candidates > 1 else None
    best_of = {"candidates": candidates, "judge": judge}
    decoding = DecodingConfig(max_new_tokens=MAX_ANSWER_TOKENS)

    # generation, in the GenEval layout (a fresh folder: old images may come from another model)
    gen_dir = out / "geneval"
    shutil.rmtree(gen_dir / "images", ignore_errors=True)
    write_jsonl(gen_dir / "metadata.jsonl", geneval_metadata(prompts_per_category, seed))
    with _Clock() as gen_clock:
        generate_geneval(pipe, gen_dir / "metadata.jsonl", gen_dir / "images", images_per_prompt, seed,
                         show_progress=show_progress, **sampler, **best_of)
    generation = score_geneval_folder(gen_dir / "images")
    samples_drawn = judge.read if judge is not None else generation["n_images"]
    out.mkdir(parents=True, exist_ok=True)
    sample_grid(gen_dir / "images").save(out / "grid.png")  # the first image of 6 prompts a category

    # understanding, in the LLaVA layout
    und_dir = out / "llava"
    shutil.rmtree(und_dir, ignore_errors=True)
    lines, key = llava_questions(questions, seed, und_dir / "images")
    write_jsonl(und_dir / "questions.jsonl", lines)
    (und_dir / "answer_key.json").write_text(json.dumps(key, indent=1) + "\n", encoding="utf-8")
    with _Clock() as und_clock:
        answer_llava_questions(chat, und_dir / "questions.jsonl", und_dir / "images", und_dir / "answers.jsonl",
                               model.resolve().name, batch_size, decoding, show_progress=show_progress)
    understanding = score_llava_answers(read_jsonl(und_dir / "answers.jsonl"), key)

    n_images = generation["n_images"]
    first_image = und_dir / "images" / lines[0]["image"]
    timing = {
        "threads": torch.get_num_threads(),
        "generation": {"images": n_images, "samples_per_image": samples_drawn / n_images,
                       "wall_seconds": gen_clock.wall, "cpu_seconds": gen_clock.cpu,
                       "wall_seconds_per_image": gen_clock.wall / n_images,
                       "cpu_seconds_per_image": gen_clock.cpu / n_images,
                       "one_image": _latency(lambda: pipe("a red circle", generator=seed, **sampler, **best_of),
                                             latency_repeats)},
        "understanding": {"answers": questions, "wall_seconds": und_clock.wall, "cpu_seconds": und_clock.cpu,
                          "wall_seconds_per_answer": und_clock.wall / questions,
                          "cpu_seconds_per_answer": und_clock.cpu / questions,
                          "one_answer": _latency(lambda: chat.ask(first_image, lines[0]["text"], config=decoding),
                                                 latency_repeats)},
    }
    results = {
        "model": str(model.resolve()),
        "settings": {"prompts_per_category": prompts_per_category, "images_per_prompt": images_per_prompt,
                     "questions": questions, "seed": seed, "solver": "euler", "schedule": "uniform", **sampler,
                     "candidates": candidates,
                     "answer_batch_size": batch_size, "max_new_tokens": MAX_ANSWER_TOKENS, "decoding": "greedy",
                     "device": str(pipe.device), "dtype": str(pipe.model.dtype).removeprefix("torch."),
                     "quantize": getattr(pipe.model, "quantization_method", None) or "none",
                     "model_config": pipe.model.config.to_dict()},
        "generation": generation,
        "understanding": understanding,
        "timing": timing,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def format_results(results: dict[str, Any]) -> str:
    from .questions import FORMS
    from .world import CATEGORIES

    gen, und, timing = results["generation"], results["understanding"], results["timing"]
    s = results["settings"]
    drawn = timing["generation"].get("samples_per_image")
    best_of = (f", each the best of up to {s['candidates']} by self-check"
               + (f" ({drawn:.2f} drawn an image)" if drawn else "")) if s.get("candidates", 1) > 1 else ""
    lines = [f"generation ({gen['n_images']} images: {s['prompts_per_category']} prompts a category x "
             f"{s['images_per_prompt']}, {s['num_inference_steps']} steps, guidance {s['guidance_scale']:g}{best_of})"]
    lines += [f"  {tag:<14} {gen[tag]:.3f}" for tag in CATEGORIES if tag in gen]
    lines.append(f"  {'overall':<14} {gen['overall']:.3f}")
    lines.append(f"understanding ({und['n_questions']} questions)")
    lines += [f"  {form:<14} {und[form]:.3f}" for form in FORMS if form in und]
    lines.append(f"  {'overall':<14} {und['overall']:.3f}")
    g, u = timing["generation"], timing["understanding"]
    lines.append(f"timing ({timing['threads']} threads; CPU time counts every thread)")
    lines.append(f"  per image, amortised   wall {g['wall_seconds_per_image']:.3f} s   cpu {g['cpu_seconds_per_image']:.3f} s")
    if g["one_image"]:
        lines.append(f"  one image alone        wall {g['one_image']['wall_seconds']:.3f} s   "
                     f"cpu {g['one_image']['cpu_seconds']:.3f} s")
    lines.append(f"  per answer, amortised  wall {u['wall_seconds_per_answer']:.3f} s   cpu {u['cpu_seconds_per_answer']:.3f} s")
    if u["one_answer"]:
        lines.append(f"  one answer alone       wall {u['one_answer']['wall_seconds']:.3f} s   "
                     f"cpu {u['one_answer']['cpu_seconds']:.3f} s")
    return "\n".join(lines)
