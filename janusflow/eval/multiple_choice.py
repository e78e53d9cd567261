"""Multiple choice with MMBench's circular evaluation.

A question with n options is asked n times, its options rotated one place each time (variant k shows
options k, k+1, ..., k-1 as A, B, ...; the right letter moves with its option). A question counts as
right only when every variant is answered right:

    accuracy           = right variants / variants
    circular_accuracy  = questions whose variants are all right / questions

Variants of one question share a ``circular_group`` (:func:`circular_questions` writes it); without
one, an integer ``question_id`` belongs to group ``question_id % 1_000_000`` (MMBench numbers the
variants index + k * 1e6), any other id is a group of its own.

The option an answer chose (:func:`chosen_option`), without a judge model: the one option letter
standing alone in it ("B", "(B)", "B. green", "Answer: B"), else the one option whose text it
contains ("green"); none or several of either is no choice (wrong).
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError

LETTERS = string.ascii_uppercase
VARIANT_STRIDE = 1_000_000  # MMBench: variant k of question i has index i + k * 1e6
PROMPT_SUFFIX = "Answer with the option's letter from the given choices directly."  # LLaVA's MMBench prompt


def option_map(options: Any) -> dict[str, str]:
    """``{"A": text, ...}`` from a dict of letters or a list of option texts."""
    if isinstance(options, Mapping):
        mapping = {str(k).strip().upper(): str(v) for k, v in options.items()}
    elif isinstance(options, Sequence) and not isinstance(options, str):
        mapping = dict(zip(LETTERS, map(str, options)))
    else:
        raise InputError(f"\"options\" must be a list of texts or a dict letter -> text, got {options!r}")
    if not 2 <= len(mapping) <= len(LETTERS) or any(k not in LETTERS for k in mapping):
        raise InputError(f"\"options\" needs 2 to 26 options labelled A, B, ..., got {list(mapping)}")
    return mapping


def chosen_option(answer: str, options: Mapping[str, str]) -> str | None:
    """The letter of the option ``answer`` picks (see the module docstring), or None."""
    words = set(re.split(r"[^A-Za-z0-9]+", answer))
    letters = [letter for letter in options if letter in words]
    if len(letters) == 1:
        return letters[0]
    lowered = " ".join(answer.lower().split())
    texts = [letter for letter, text in options.items() if " ".join(text.lower().split()) in lowered]
    return texts[0] if len(texts) == 1 and not letters else None


def circular_group(question: Mapping[str, Any]) -> str:
    if "circular_group" in question:
        return str(question["circular_group"])
    qid = question["question_id"]
    if isinstance(qid, int) and not isinstance(qid, bool):
        return str(qid % VARIANT_STRIDE)
    return str(qid)


def multiple_choice_scores(rows: Sequence[tuple[Mapping[str, Any], str]]) -> dict[str, Any]:
    """``rows``: (question line with ``options`` and ``answer`` letter, the model's answer)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    categories: dict[str, str] = {}
    unread = 0
    for question, answer in rows:
        options = option_map(question.get("options"))
        reference = str(question.get("answer", "")).strip().upper()
        if reference not in options:
            raise InputError(f"question {question['question_id']!r}: \"answer\" must be one of the option letters "
                             f"{list(options)}, got {question.get('answer')!r}")
        choice = chosen_option(answer, options)
        unread += choice is None
        group = circular_group(question)
        groups[group].append(choice == reference)
        if "category" in question:
            categories.setdefault(group, str(question["category"]))
    variants = [right for rights in groups.values() for right in rights]
    result: dict[str, Any] = {
        "accuracy": sum(variants) / len(variants),
        "circular_accuracy": sum(all(r) for r in groups.values()) / len(groups),
        "questions": len(groups), "variants": len(variants), "no_option_read": unread,
    }
    if categories:
        per_category: dict[str, list[bool]] = defaultdict(list)
        for group, rights in groups.items():
            per_category[categories.get(group, "")].append(all(rights))
        result["circular_accuracy_by_category"] = {c: sum(v) / len(v) for c, v in sorted(per_category.items())}
    return result


def circular_questions(question: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A LLaVA question line for each rotation of a multiple-choice question
    ``{"question_id", "question", "options", "answer", ["image", "hint", "category"]}``: the prompt
    is the hint, the question, one "A. text" line an option, then :data:`PROMPT_SUFFIX`."""
    for key in ("question_id", "question", "options", "answer"):
        if key not in question:
            raise InputError(f"a multiple-choice question needs \"{key}\": {dict(question)!r:.200}")
    options = list(option_map(question["options"]).values())
    reference = str(question["answer"]).strip().upper()
    if reference not in LETTERS[:len(options)]:
        raise InputError(f"question {question['question_id']!r}: \"answer\" must be an option letter, "
                         f"got {question['answer']!r}")
    right, n, qid = LETTERS.index(reference), len(options), question["question_id"]
    lines = []
    for k in range(n):
        rotated = options[k:] + options[:k]
        letters = dict(zip(LETTERS, rotated))
        text = "\n".join([*([question["hint"]] if question.get("hint") else []), question["question"],
                          *(f"{letter}. {option}" for letter, option in letters.items()), PROMPT_SUFFIX])
        if isinstance(qid, int) and not isinstance(qid, bool):
            variant_id: Any = qid + k * VARIANT_STRIDE
        else:
            variant_id = qid if k == 0 else f"{qid}#{k}"
        line = {"question_id": variant_id, "text": text, "options": letters, "answer": LETTERS[(right - k) % n],
                "circular_group": str(qid)}
        for key in ("image", "category"):
            if key in question:
                line[key] = question[key]
        lines.append(line)
    return lines
