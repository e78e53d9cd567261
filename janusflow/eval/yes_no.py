"""POPE: yes/no questions scored as binary classification, "yes" the positive class.

An answer is read as POPE's evaluation script reads it: keep the text before the first ".", drop
commas, split on spaces; the answer is "no" when a word is exactly "No", "no" or "not", else "yes"
(so "Not sure" counts as yes, and anything without those words, even an empty answer, as yes).
With TP, FP, TN, FN over the questions:

    accuracy  = (TP + TN) / (TP + FP + TN + FN)
    precision = TP / (TP + FP)        recall = TP / (TP + FN)        (0 when the denominator is 0)
    F1        = 2 precision recall / (precision + recall)
    yes_ratio = (TP + FP) / n         the share of answers read as yes
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError


def pope_label(answer: str) -> str:
    """"yes" or "no", as POPE's script reads a free-form answer."""
    first_sentence = answer.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def gold_label(label: str) -> str:
    value = label.strip().lower() if isinstance(label, str) else None
    if value not in ("yes", "no"):
        raise InputError(f"a yes/no reference must be \"yes\" or \"no\", got {label!r}")
    return value


def yes_no_scores(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float | int]:
    """POPE's numbers for free-form answers against "yes"/"no" labels (see the module docstring)."""
    predicted = [pope_label(a) == "yes" for a in answers]
    actual = [gold_label(label) == "yes" for label in labels]
    if len(predicted) != len(actual):
        raise InputError(f"{len(answers)} answers for {len(labels)} labels")
    tp = sum(p and a for p, a in zip(predicted, actual))
    fp = sum(p and not a for p, a in zip(predicted, actual))
    tn = sum(not p and not a for p, a in zip(predicted, actual))
    fn = sum(not p and a for p, a in zip(predicted, actual))
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / n, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n}
