"""The shapes world's text: what the tokenizer is built on and what the LM is pre-trained on.

Kinds of text, each a function of a random scene:

    description      the `describe the image.` answer of a scene, alone
    qa               a chat (official deepseek template; the default system prompt in a quarter of
                     them) whose user turn holds the scene as text where the image will later stand,
                     then a question; 1 to 6 questions
                         {system}\\n\\nUser: {description}\\n{question}\\n\\nAssistant: {answer}{eos}...
    prompt           a generation prompt and, as the answer, a description of a scene that passes it
                         User: {prompt}\\n\\nAssistant: {description}{eos}   (no system prompt, as for
                         generation)

The LM learns the world's grammar and its logic (counting, colour of a shape, relations read from
the left-to-right order) in text; the unified stages then put image tokens where the description
stood. `chat_text` mirrors `JanusFlowProcessor.apply_sft_template` (a test checks they agree).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..prompts import all_prompts, sample_prompt
from ..questions import describe, questions_for_scene, sample_question
from ..sampler import sample_scene, scene_for_prompt
from ..world import CATEGORIES
from ...processor import DEFAULT_SYSTEM_PROMPT, ROLES, SEP, SEP2

KINDS: tuple[str, ...] = ("description", "qa", "prompt")
# Mostly question answering: the answers are the only tokens a model can get right by reading the
# context (descriptions and prompts are random), and a first LM, on (0.1, 0.7, 0.2) with 1 to 3
# questions a chat, sat at chance on `exists` for 2,400 steps.
KIND_WEIGHTS: tuple[float, ...] = (0.05, 0.85, 0.10)
MAX_TURNS = 6  # questions about one scene in a qa chat: 1..MAX_TURNS
# The system prompt is 37 of a qa chat's ~60 tokens and never changes: a quarter of the chats carry it.
SYSTEM_SHARE = 0.25


def chat_text(turns: list[tuple[str, str]], system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> str:
    """The deepseek template for (user, assistant) turns: system + SEP, then for each turn
    "User: {u}\\n\\nAssistant: {a}" + EOS (an empty last answer gives a bare "Assistant:")."""
    text = system_prompt + SEP if system_prompt else ""
    for user, assistant in turns:
        text += f"{ROLES[0]}: {user.strip()}{SEP}"
        text += f"{ROLES[1]}: {assistant.strip()}{SEP2}" if assistant.strip() else f"{ROLES[1]}:"
    return text.strip()


def context_question(description: str, question: str) -> str:
    """The user turn of a text-only question: the scene as text, then the question."""
    return f"{description}\n{question}"


def qa_text(rng: np.random.Generator, turns: int | None = None, system_share: float = SYSTEM_SHARE,
            max_turns: int = MAX_TURNS) -> str:
    scene = sample_scene(rng)
    description = describe(scene)
    n = int(rng.integers(1, max_turns + 1)) if turns is None else turns
    qas = [sample_question(rng, scene) for _ in range(n)]
    chat = [(context_question(description, qas[0].question), qas[0].answer)]
    chat += [(qa.question, qa.answer) for qa in qas[1:]]
    with_system = system_share >= 1 or rng.random() < system_share  # no draw when always
    return chat_text(chat, DEFAULT_SYSTEM_PROMPT if with_system else "")


def prompt_text(rng: np.random.Generator) -> str:
    prompt = sample_prompt(rng, CATEGORIES[int(rng.integers(len(CATEGORIES)))])
    scene = scene_for_prompt(rng, prompt)
    return chat_text([(prompt.text, describe(scene))], system_prompt="")


def sample_text(rng: np.random.Generator) -> str:
    """One LM training document, of a kind drawn by KIND_WEIGHTS."""
    kind = KINDS[int(rng.choice(len(KINDS), p=KIND_WEIGHTS))]
    if kind == "description":
        return describe(sample_scene(rng))
    if kind == "qa":
        return qa_text(rng)
    return prompt_text(rng)


def tokenizer_corpus(num_scenes: int = 2000, seed: int = 0) -> Iterator[str]:
    """Text for the tokenizer: every prompt, the system prompt, and for `num_scenes` random scenes
    every question and answer, the description and one chat of each kind."""
    yield DEFAULT_SYSTEM_PROMPT
    yield chat_text([("hello", "hello")])
    for tag in CATEGORIES:
        for prompt in all_prompts(tag):
            yield prompt.text
    rng = np.random.default_rng(seed)
    for _ in range(num_scenes):
        scene = sample_scene(rng)
        for qa in questions_for_scene(scene):
            yield f"{qa.question} {qa.answer}"
        yield qa_text(rng, system_share=1.0, max_turns=3)  # the corpus the committed tokenizer was built on
        yield prompt_text(rng)
