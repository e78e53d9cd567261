"""MME: two yes/no questions about each image, scored per task (category).

An answer is read as MME's ``calculation.py`` reads it: lower-cased; "yes" or "no" as it stands,
else "yes" when "yes" is in its first four characters, else "no" when "no" is, else "other" (wrong
either way). Per task, over its images (a question's image and task identify its pair):

    acc   = right answers / questions
    acc+  = images whose questions are all right / images
    score = 100 acc + 100 acc+                    (at most 200 a task)

and the totals are the sums of the task scores: perception over MME's ten perception tasks,
cognition over its four cognition tasks (the tasks present; others are listed but in no total).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from .yes_no import gold_label

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_label(answer: str) -> str:
    """"yes", "no" or "other", as MME's script reads an answer."""
    text = answer.lower()
    if text in ("yes", "no"):
        return text
    if "yes" in text[:4]:
        return "yes"
    return "no" if "no" in text[:4] else "other"


def mme_scores(rows: Sequence[tuple[str, str, str, str]]) -> dict:
    """``rows``: (task, image, reference "yes"/"no", answer). Per-task acc, acc+, score; and the totals."""
    images: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))  # task -> image -> rights
    for task, image, reference, answer in rows:
        images[task][image].append(mme_label(answer) == gold_label(reference))
    tasks = {}
    for task, by_image in images.items():
        rights = [r for answers in by_image.values() for r in answers]
        acc = sum(rights) / len(rights)
        acc_plus = sum(all(answers) for answers in by_image.values()) / len(by_image)
        tasks[task] = {"acc": acc, "acc_plus": acc_plus, "score": 100 * acc + 100 * acc_plus,
                       "questions": len(rights), "images": len(by_image)}
    all_rights = [r for by_image in images.values() for answers in by_image.values() for r in answers]
    all_images = [all(answers) for by_image in images.values() for answers in by_image.values()]
    return {
        "acc": sum(all_rights) / len(all_rights),
        "acc_plus": sum(all_images) / len(all_images),
        "perception": sum(t["score"] for name, t in tasks.items() if name in PERCEPTION),
        "cognition": sum(t["score"] for name, t in tasks.items() if name in COGNITION),
        "tasks": dict(sorted(tasks.items())),
        "n": len(all_rights),
    }
