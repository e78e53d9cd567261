"""The relation probe (experiments.relations): clear two-object cases, scored by direction."""

from __future__ import annotations

import re

import pytest

from experiments import relations
from janusflow.shapes.scorer import detect_objects
from janusflow.shapes.world import RELATIONS

QUESTION = re.compile(r"is the (\w+) (\w+) (to the left of|to the right of|above|below) the (\w+) (\w+)\?")


def test_questions_are_clear_cases_with_true_answers_read_from_the_image():
    questions = relations.relation_questions(40, seed=3)
    assert [q.relation for q in questions[:8]] == list(RELATIONS) * 2
    assert {q.answer for q in questions} == {"yes", "no"}
    for q in questions:
        color, shape, relation, color2, shape2 = QUESTION.fullmatch(q.question).groups()
        assert relation == q.relation and (color, shape) != (color2, shape2)
        objects = detect_objects(q.image)
        assert len(objects) == 2
        (a,) = [o for o in objects if (o.color, o.shape) == (color, shape)]
        (b,) = [o for o in objects if (o.color, o.shape) == (color2, shape2)]
        dx, dy = b.cx - a.cx, b.cy - a.cy
        offset = {"to the left of": dx, "to the right of": -dx, "above": dy, "below": -dy}[relation]
        assert abs(offset) >= 8 and q.answer == ("yes" if offset > 0 else "no")
    assert relations.relation_questions(40, seed=3)[5].question == questions[5].question  # seeded


def test_accuracy_by_direction():
    questions = relations.relation_questions(24, seed=0)
    truth = {(id(q.image), q.question): q.answer for q in questions}  # a text can recur
    asked = []

    def oracle(items):
        asked.append(len(items))
        return [truth[id(images[0]), text] for images, text in items]

    right = relations.relation_accuracy(oracle, questions, batch_size=5)
    assert asked == [5, 5, 5, 5, 4]
    assert all(row["accuracy"] == 1.0 for row in right.values())
    assert right["horizontal"]["questions"] == right["vertical"]["questions"] == 12

    def reads_only_left_right(items):  # answers vertical questions "yes" whatever the image
        return [truth[id(images[0]), text] if ("left" in text or "right" in text) else "yes" for images, text in items]

    split = relations.relation_accuracy(reads_only_left_right, questions)
    assert split["horizontal"]["accuracy"] == 1.0 and split["vertical"]["yes_share"] == 1.0
    vertical = [q for q in questions if q.relation in ("above", "below")]
    assert split["vertical"]["accuracy"] == pytest.approx(sum(q.answer == "yes" for q in vertical) / len(vertical))


def test_command_runs_on_the_default_model(capsys):
    relations.main(["--questions", "8"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["relation", "accuracy", "says", "yes", "questions"]
    assert {line.split()[0] for line in out.splitlines()[1:]} >= {"above", "below", "horizontal", "vertical"}


def test_command_says_plainly_when_the_model_is_missing(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        relations.main(["--model", str(tmp_path / "nowhere"), "--questions", "4"])
    assert stop.value.code == 2 and "model folder not found" in capsys.readouterr().err
