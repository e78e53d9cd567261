"""Understanding metrics from a questions file and an answers file (the LLaVA layout, matched on
``question_id``). The reference lives in the question line (docs/evaluation.md has every format):

    exact-match      "answer": a string, or a list of acceptable strings
    pope             "label" (POPE's name) or "answer": "yes" / "no"; optional "category" (e.g. random,
                     popular, adversarial) adds the numbers per category
    mme              "answer": "Yes" / "No", "image", "category" (the MME task)
    multiple-choice  "options", "answer" (a letter), optional "circular_group", "category"
    cider            "answer": the reference captions (a list, or one string)
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InputError
from .cider import cider_d
from .exact_match import exact_match
from .llava import paired, read_llava_answers
from .mme import mme_scores
from .multiple_choice import multiple_choice_scores
from .yes_no import yes_no_scores


def _field(question: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in question:
            return question[key]
    raise InputError(f"question {question['question_id']!r} has no reference: it needs "
                     + " or ".join(f"\"{k}\"" for k in keys))


def _strings(question: Mapping[str, Any], value: Any) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise InputError(f"question {question['question_id']!r}: the reference must be a string or a non-empty "
                         f"list of strings, got {value!r}")
    return values


def _by_category(rows, score: Callable[[list], dict]) -> dict[str, Any]:
    """``score(rows)`` over all rows, and per question "category" when the questions have one."""
    result = score(rows)
    groups = defaultdict(list)
    for row in rows:
        if "category" in row[0]:
            groups[str(row[0]["category"])].append(row)
    if groups:
        result["by_category"] = {c: score(g) for c, g in sorted(groups.items())}
    return result


def _exact_match(rows):
    return exact_match([a for _, a in rows], [_strings(q, _field(q, "answer")) for q, _ in rows])


def _pope(rows):
    return yes_no_scores([a for _, a in rows], [_field(q, "label", "answer") for q, _ in rows])


def _mme(rows):
    return mme_scores([(str(_field(q, "category")), str(_field(q, "image")), _field(q, "answer", "label"), a)
                       for q, a in rows])


def _cider(rows):
    score, per_caption = cider_d([a for _, a in rows], [_strings(q, _field(q, "answer")) for q, _ in rows])
    return {"cider": score, "n": len(per_caption)}


METRICS: dict[str, Callable[[list], dict]] = {
    "exact-match": lambda rows: _by_category(rows, _exact_match),
    "pope": lambda rows: _by_category(rows, _pope),
    "mme": _mme,
    "multiple-choice": multiple_choice_scores,
    "cider": _cider,
}


def score_understanding(metric: str, questions_file: str | os.PathLike, answers_file: str | os.PathLike) -> dict:
    """``metric``'s numbers for the answers of a questions file."""
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
    rows = paired(questions_file, answers_file)
    return {"metric": metric, **METRICS[metric](rows), "questions_file": os.fspath(questions_file),
            "answers_file": os.fspath(answers_file), "answered_by": answered_by(answers_file)}


def answered_by(answers_file: str | os.PathLike) -> dict[str, list]:
    """The distinct ``model_id`` and ``metadata`` (decoding settings, chunk keys aside) of the answers,
    to be kept beside the numbers."""
    models, settings = [], []
    for line in read_llava_answers(answers_file).values():
        model = line.get("model_id")
        meta = {k: v for k, v in line.get("metadata", {}).items() if k not in ("num_chunks", "chunk_idx")} \
            if isinstance(line.get("metadata"), dict) else line.get("metadata")
        if model not in models:
            models.append(model)
        if meta not in settings:
            settings.append(meta)
    return {"model_id": models, "metadata": settings}
