"""The shapes world's self-check: a model judges its own images with its understanding path.

For a shapes-world prompt the judge asks the image the questions (forms of ``questions.py``) whose
answers the prompt fixes, and scores it by the share of checks the model's own greedy answers pass:

    category       question                                 check on the answer
    single_object  how many {shape}s are there?             not "zero"
    two_object     how many {shape}s are there?             not "zero"
                   how many {shape2}s are there?            not "zero"
    counting       how many shapes are there?               {number}
                   how many {shape}s are there?             {number}
                   how many {other}s are there?             "zero"   (each of the two other shapes)
    colors         what color is the {shape}?               {color}
                   is there a {color} {shape}?              yes
    position       how many {shape}s are there?             not "zero"
                   how many {shape2}s are there?            not "zero"
                   is the {c} {shape} {relation} the {c2} {shape2}?   yes, where c and c2 are the model's
                        answers to "what color is the {shape}?" and "... the {shape2}?" (a second round;
                        the check fails when either answer is not a colour)
    color_attr     is there a {color} {shape}?              yes
                   is there a {color2} {shape2}?            yes
                   what color is the {shape}?               {color}
                   what color is the {shape2}?              {color2}

The model counts to four (the world's scenes hold one to four objects), so a fifth object of the
counted shape goes unseen. Used by ``best_of``: ``pipe(prompt, candidates=4, judge=ShapesJudge(chat))``;
a candidate that passes every check (score ``perfect`` = 1) ends its image's search. Registered as the
judge "shapes" (:mod:`janusflow.judges`) when ``janusflow.shapes`` is imported, so a model folder's
``image_generation_config.json`` can name it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PIL import Image

from ..errors import InputError
from ..understanding import DecodingConfig
from .prompts import PromptSpec, parse_prompt
from .world import COLORS, SHAPES, number_word

MAX_ANSWER_TOKENS = 8  # every checked answer is one word

Check = tuple[str, Callable[[str], bool]]  # (question, test of the answer)


def _how_many(shape: str) -> str:
    return f"how many {shape}s are there?"


def first_round(spec: PromptSpec) -> list[Check]:
    """The checks asked of every image (for `position`, all but the relation, which needs colours)."""
    s = spec
    if s.tag == "single_object":
        return [(_how_many(s.shape), lambda a: a != "zero")]
    if s.tag in ("two_object", "position"):
        return [(_how_many(s.shape), lambda a: a != "zero"), (_how_many(s.shape2), lambda a: a != "zero")]
    if s.tag == "counting":
        word = number_word(s.number)
        return [("how many shapes are there?", lambda a: a == word), (_how_many(s.shape), lambda a: a == word),
                *[(_how_many(other), lambda a: a == "zero") for other in SHAPES if other != s.shape]]
    if s.tag == "colors":
        return [(f"what color is the {s.shape}?", lambda a: a == s.color),
                (f"is there a {s.color} {s.shape}?", lambda a: a == "yes")]
    if s.tag == "color_attr":
        return [(f"is there a {s.color} {s.shape}?", lambda a: a == "yes"),
                (f"is there a {s.color2} {s.shape2}?", lambda a: a == "yes"),
                (f"what color is the {s.shape}?", lambda a: a == s.color),
                (f"what color is the {s.shape2}?", lambda a: a == s.color2)]
    raise ValueError(f"unknown generation category {s.tag!r}")


def colour_questions(spec: PromptSpec) -> list[str]:
    """What the `position` check asks first: the colour of each named shape."""
    return [f"what color is the {spec.shape}?", f"what color is the {spec.shape2}?"] if spec.tag == "position" else []


def relation_question(spec: PromptSpec, color: str, color2: str) -> str | None:
    """The `position` check's question, given the colours the model read; None when it cannot be asked."""
    if color not in COLORS or color2 not in COLORS:
        return None
    return f"is the {color} {spec.shape} {spec.relation} the {color2} {spec.shape2}?"


class ShapesJudge:
    """``best_of.Judge`` for shapes-world prompts; ``ask(items)`` answers [(image, question), ...]."""

    perfect = 1.0  # every check passed: no candidate can score higher, so the search stops there

    def __init__(self, chat, batch_size: int = 64):
        self.chat, self.batch_size = chat, batch_size
        self.decoding = DecodingConfig(max_new_tokens=MAX_ANSWER_TOKENS)

    def __repr__(self) -> str:
        return "ShapesJudge(the model's own answers to the prompt's questions)"

    def validate(self, prompt: str) -> PromptSpec:
        try:
            return parse_prompt(prompt)
        except ValueError as e:
            raise InputError(f"the shapes self-check reads shapes-world prompts only: {e}") from None

    def ask(self, items: Sequence[tuple[Image.Image, str]]) -> list[str]:
        answers = []
        for i in range(0, len(items), self.batch_size):
            chunk = items[i:i + self.batch_size]
            answers += self.chat.ask_batch([([image], question) for image, question in chunk], config=self.decoding)
        return [a.strip().lower() for a in answers]

    def __call__(self, prompt: str, images: Sequence[Image.Image]) -> list[float]:
        spec = self.validate(prompt)
        checks, colours = first_round(spec), colour_questions(spec)
        questions = [q for q, _ in checks] + colours
        answers = self.ask([(image, q) for image in images for q in questions])
        per_image = [answers[i * len(questions):(i + 1) * len(questions)] for i in range(len(images))]
        passed = [sum(test(a) for (_, test), a in zip(checks, got)) for got in per_image]
        if not colours:
            return [n / len(checks) for n in passed]
        asked = {i: q for i, got in enumerate(per_image)
                 if (q := relation_question(spec, *got[len(checks):])) is not None}
        replies = dict(zip(asked, self.ask([(images[i], q) for i, q in asked.items()])))
        return [(n + (replies.get(i) == "yes")) / (len(checks) + 1) for i, n in enumerate(passed)]


def shapes_judge(model, processor) -> ShapesJudge:
    """The judge registered as "shapes" (:mod:`janusflow.judges`): this self-check on the model's own chat."""
    from ..understanding import JanusFlowChat

    return ShapesJudge(JanusFlowChat(model, processor))


def judge_for(pipe, chat=None):
    """The judge of a best-of-N asked of ``pipe``: the one its model folder names
    (``image_generation_config.json``), else this self-check reading with ``chat`` (default: a chat on
    the pipeline's own model)."""
    from ..understanding import JanusFlowChat

    return pipe.default_judge() or ShapesJudge(chat or JanusFlowChat(pipe.model, pipe.processor))
