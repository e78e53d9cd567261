"""The shapes-world data streams of recipe part 4: task -> fn(position) -> sample.

Each sample is a pure function of (seed, task, position): :func:`sample_rng` seeds a fresh generator,
so a resumed run sees exactly the samples it would have seen, with nothing stored (see unified.py's
docstring for what each task's samples hold). The negative captions of the contrastive term draw
from a stream of their own, so turning them on leaves every other sample as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import ConfigError
from ..draws import check_weights, pick
from ..prompts import NEGATIVE_KINDS, caption_for_scene, negative_prompt, parse_prompt, sample_prompt
from ..questions import FORMS, sample_question
from ..render import render
from ..sampler import sample_scene, scene_for_prompt
from ..world import CATEGORIES
from .corpus import sample_text

if TYPE_CHECKING:
    from .unified import TrainingSettings

TASK_CODES = {"und": 1, "gen": 2, "text": 3, "negative": 4}


def sample_rng(seed: int, task: str, position: int) -> np.random.Generator:
    return np.random.default_rng([seed, TASK_CODES[task], position])


def understanding_sample(rng: np.random.Generator, max_turns: int = 3, form_weights: dict[str, float] | None = None):
    """A rendered scene and 1..max_turns questions about it (forms drawn by ``form_weights``, uniform
    when empty); the image before the first question."""
    from ...train.samples import ConversationSample
    from ...tokenizer_build import IMAGE_TOKEN

    scene = sample_scene(rng)
    messages = []
    for turn in range(int(rng.integers(1, max_turns + 1))):
        qa = sample_question(rng, scene, form_weights)
        question = f"{IMAGE_TOKEN}\n{qa.question}" if turn == 0 else qa.question  # as user_message() puts it
        messages += [{"role": "User", "content": question}, {"role": "Assistant", "content": qa.answer}]
    return ConversationSample(messages, [render(scene)])


def generation_sample(rng: np.random.Generator, prompt_first_share: float = 0.75,
                      category_weights: dict[str, float] | None = None, distractor_share: float = 1.0,
                      negatives: str = "", negative_rng: np.random.Generator | None = None):
    """An image that passes its caption (a prompt of the six categories, drawn uniformly or in
    proportion to ``category_weights``, 1 for a category not listed). A prompt-first scene holds
    distractors beside what the prompt names with probability ``distractor_share``, else only that.
    ``negatives`` (the contrastive term's other caption, always false of the scene): "swap", the
    swapped twin (position and colour-attribution captions); "edits", one prompt one edit away drawn
    by ``negative_rng`` (a kind of edit uniformly: the twin, a shape, a colour or a relation
    replaced; then one of that kind; the same two categories); "all_edits", the same for a caption
    of any category (a number replaced too); "": none.
    ``rng`` draws the same whatever ``negatives`` is, so the stream of samples does not change."""
    from ...train.samples import CaptionSample

    if rng.random() < prompt_first_share:
        prompt = sample_prompt(rng, pick(rng, CATEGORIES, category_weights))
        distractors = distractor_share >= 1.0 or rng.random() < distractor_share  # 1: no draw (the old stream)
        scene = scene_for_prompt(rng, prompt, distractors)
    else:
        scene = sample_scene(rng)
        prompt = parse_prompt(caption_for_scene(rng, scene)[1])
    try:
        negative = negative_prompt(prompt, scene.objects, negatives, negative_rng) if negatives else None
    except ValueError as e:
        raise ConfigError(f"negatives: {e}") from None
    return CaptionSample(prompt.text, render(scene), negative=None if negative is None else negative.text)


def text_sample(rng: np.random.Generator):
    from ...train.samples import TextSample

    return TextSample(sample_text(rng))


def shapes_sources(seed: int, settings: TrainingSettings) -> dict[str, Any]:
    """task -> fn(position) -> sample, for ``JanusFlowTask(sources=...)``: endless and deterministic."""
    for field, names, what in (("und_form_weights", FORMS, "question forms"),
                               ("gen_category_weights", CATEGORIES, "prompt categories")):
        try:
            check_weights(getattr(settings, field), names, what)
        except ValueError as e:
            raise ConfigError(f"{field}: {e}") from None
    if settings.negatives not in NEGATIVE_KINDS:
        raise ConfigError(f"negatives must be one of {NEGATIVE_KINDS}, got {settings.negatives!r}")
    for field in ("prompt_first_share", "distractor_share"):
        if not 0.0 <= getattr(settings, field) <= 1.0:
            raise ConfigError(f"{field} is a share in 0..1, got {getattr(settings, field)}")
    forms, categories = settings.und_form_weights, settings.gen_category_weights
    return {
        "und": lambda i: understanding_sample(sample_rng(seed, "und", i), settings.max_turns, forms),
        "gen": lambda i: generation_sample(sample_rng(seed, "gen", i), settings.prompt_first_share, categories,
                                           settings.distractor_share,
                                           settings.negatives if settings.negative_weight > 0 else "",
                                           sample_rng(seed, "negative", i)),
        "text": lambda i: text_sample(sample_rng(seed, "text", i)),
    }


CONFIG_SEED = 0x5EED  # the stream seed of the config factories below (not the recipe's stage seeds)


def understanding_stream():
    """``data.und: ["python:janusflow.shapes.recipe.streams:understanding_stream"]`` in any trainer
    config: the shapes world's questions (the recipe's default forms and turns) as an endless source,
    e.g. to keep the embedded model's understanding trained while another task fine-tunes it
    (configs/reflow.yaml). The recipe's defaults: 1..3 questions a scene, every form equally often."""
    return lambda i: understanding_sample(sample_rng(CONFIG_SEED, "und", i))
