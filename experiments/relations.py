"""Relation answers by direction: does a model read left/right and above/below alike?

    python -m experiments.relations [--model DIR] [--questions 800] [--seed 1]

`janusflow eval shapes` scores the ``relation`` form as a whole, over scenes of one to four objects.
This probe asks about fresh scenes of exactly two objects of different looks, the four relations in
turn, and keeps only clear cases: the two centres are at least 8 px apart along the relation's axis
(the spec's threshold), so that the answer is "yes" when the relation holds and "no" when its
opposite does. Answers are greedy, as in the evaluation.

Why it exists: after the 2026-11-26 GPU lease the default model answered left/right questions
0.98 and above/below 0.53 (chance) on these scenes, a split the form's single number (0.65) hides.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from janusflow.shapes.questions import relation_question
from janusflow.shapes.render import render
from janusflow.shapes.sampler import sample_scene
from janusflow.shapes.world import RELATION_OFFSET, RELATIONS, relation_offset

Ask = Callable[[list[tuple[list[Image.Image], str]]], list[str]]  # a batch of (images, question) -> answers


@dataclass(frozen=True)
class RelationQuestion:
    image: Image.Image
    question: str
    answer: str  # "yes" or "no"
    relation: str


def relation_questions(n: int, seed: int = 1) -> list[RelationQuestion]:
    """``n`` questions on two-object scenes, relations in turn, each a clear case (|offset| >= 8 px)."""
    rng = np.random.default_rng(seed)
    questions: list[RelationQuestion] = []
    while len(questions) < n:
        scene = sample_scene(rng, 2)
        a, b = scene.objects
        if (a.color, a.shape) == (b.color, b.shape):
            continue  # the question could not name one object
        relation = RELATIONS[len(questions) % len(RELATIONS)]
        if abs(relation_offset(a, b, relation)) < RELATION_OFFSET:
            continue
        qa = relation_question(a, b, relation)
        questions.append(RelationQuestion(render(scene), qa.question, qa.answer, relation))
    return questions


def relation_accuracy(ask: Ask, questions: Sequence[RelationQuestion], batch_size: int = 16) -> dict[str, dict]:
    """relation -> {"accuracy", "yes_share" (of the answers), "questions"}, plus "horizontal" and
    "vertical" (left/right and above/below together)."""
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        part = questions[start:start + batch_size]
        answers += ask([([q.image], q.question) for q in part])
    groups = {r: [r] for r in RELATIONS}
    groups |= {"horizontal": ["to the left of", "to the right of"], "vertical": ["above", "below"]}
    result = {}
    for name, members in groups.items():
        picked = [(q, a.strip()) for q, a in zip(questions, answers) if q.relation in members]
        if picked:
            result[name] = {"accuracy": sum(q.answer == a for q, a in picked) / len(picked),
                            "yes_share": sum(a == "yes" for _, a in picked) / len(picked),
                            "questions": len(picked)}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a model folder (default: the embedded model)")
    parser.add_argument("--questions", type=int, default=800)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.questions < 1:
        parser.error("--questions must be >= 1")
    import torch

    from janusflow.errors import JanusFlowError
    from janusflow.pipeline import DEFAULT_MODEL_DIR
    from janusflow.understanding import JanusFlowChat

    torch.set_num_threads(args.threads)
    try:
        chat = JanusFlowChat.from_pretrained(args.model or DEFAULT_MODEL_DIR)
    except JanusFlowError as e:
        parser.exit(2, f"relations: {e}\n")
    result = relation_accuracy(lambda items: chat.ask_batch(items, max_new_tokens=4),
                               relation_questions(args.questions, args.seed))
    print(f"{'relation':16s} {'accuracy':>8s} {'says yes':>8s} {'questions':>9s}")
    for name, row in result.items():
        print(f"{name:16s} {row['accuracy']:8.3f} {row['yes_share']:8.2f} {row['questions']:9d}")


if __name__ == "__main__":
    main()
