"""Shapes-world evaluation through the public file layouts (GenEval for generation, LLaVA for
understanding), so that the numbers we report come through exactly the path an outside checker uses.

Generation: :func:`geneval_metadata` writes prompts (every category, repeated over its distinct
prompts), ``janusflow generate --geneval-metadata`` makes ``DIR/{index:05d}/samples/{k:04d}.png``,
and :func:`score_geneval_folder` reads every image with the exact scorer.
Understanding: :func:`llava_questions` renders fresh scenes and asks one question each,
``janusflow ask --question-file`` answers in the LLaVA layout, :func:`score_llava_answers` scores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .. import jsonl
from ..errors import InputError
from ..jsonl import write_jsonl  # noqa: F401  (re-exported)
from .prompts import all_prompts, parse_prompt
from .questions import sample_question, score_answer
from .render import render
from .sampler import sample_scene
from .scorer import score_generation, score_image, score_understanding
from .world import CATEGORIES


def geneval_metadata(prompts_per_category: int = 50, seed: int = 0) -> list[dict]:
    """``prompts_per_category`` lines per category: its distinct prompts in a seeded random order,
    cycled when the category has fewer (``single_object`` has three)."""
    rng = np.random.default_rng(seed)
    lines = []
    for tag in CATEGORIES:
        specs = list(all_prompts(tag))
        order = []
        while len(order) < prompts_per_category:
            order.extend(rng.permutation(len(specs)).tolist())
        for i in order[:prompts_per_category]:
            lines.append({"tag": tag, "prompt": specs[i].text, **specs[i].fields})
    return lines


def read_jsonl(path: str | Path) -> list[dict]:
    return [obj for _, _, obj in jsonl.read_jsonl(path)]


def score_geneval_folder(folder: str | Path) -> dict:
    """Score a GenEval-layout folder; the category comes from parsing each prompt."""
    results = []
    subfolders = sorted(p for p in Path(folder).iterdir() if p.is_dir() and p.name.isdigit())
    if not subfolders:
        raise InputError(f"{folder}: no GenEval sample folders (00000/, 00001/, ...)")
    for sub in subfolders:
        meta = read_jsonl(sub / "metadata.jsonl")[0]
        spec = parse_prompt(meta["prompt"])
        for png in sorted((sub / "samples").glob("*.png")):
            with Image.open(png) as image:
                results.append((spec.tag, score_image(spec, image.convert("RGB"))))
    scores = score_generation(results)
    scores["n_images"] = len(results)
    return scores


def llava_questions(n: int, seed: int, image_dir: str | Path) -> tuple[list[dict], dict[str, dict]]:
    """(question lines, answer key): ``n`` fresh scenes rendered to PNG, one question each.

    Question lines follow the LLaVA layout ``{"question_id", "image", "text"}``; the key maps each
    question id to its form and true answer.
    """
    rng = np.random.default_rng(seed)
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    questions, key = [], {}
    for i in range(n):
        scene = sample_scene(rng)
        qa = sample_question(rng, scene)
        name = f"{i:05d}.png"
        render(scene).save(image_dir / name)
        qid = f"q{i:05d}"
        questions.append({"question_id": qid, "image": name, "text": qa.question})
        key[qid] = {"form": qa.form, "answer": qa.answer}
    return questions, key


def score_llava_answers(answers: list[dict], key: dict[str, dict]) -> dict:
    by_id = {a["question_id"]: a["text"] for a in answers}
    missing = sorted(set(key) - set(by_id))
    if missing:
        raise InputError(f"{len(missing)} question(s) have no answer, e.g. {missing[:3]}")
    results = [(k["form"], score_answer(k["form"], by_id[qid], k["answer"])) for qid, k in key.items()]
    scores = score_understanding(results)
    scores["n_questions"] = len(results)
    return scores
