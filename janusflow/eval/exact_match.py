"""Exact match: an answer is right when it equals one of its reference answers.

    exact       answer.strip() == reference.strip()
    normalised  norm(answer) == norm(reference),  norm: lower-case, ASCII punctuation removed,
                runs of whitespace collapsed ("Yes." and "yes" match; "2" and "two" do not)
"""

from __future__ import annotations

import string
from collections.abc import Sequence

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def exact_match(answers: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float | int]:
    """Fractions of answers that match one of their references, exactly and after :func:`normalize`."""
    exact = sum(a.strip() in {r.strip() for r in refs} for a, refs in zip(answers, references, strict=True))
    normal = sum(normalize(a) in {normalize(r) for r in refs} for a, refs in zip(answers, references, strict=True))
    n = len(answers)
    return {"exact_match": exact / n, "exact_match_normalized": normal / n, "n": n}
