"""Understanding metrics (janusflow/eval/): exact match, POPE, MME, MMBench's circular evaluation, and
`janusflow eval understanding` / `janusflow eval circular-questions`, on worked examples computed by
hand in the comments."""

from __future__ import annotations

import json

import pytest

from janusflow.cli import main
from janusflow.errors import InputError
from janusflow.eval.exact_match import exact_match
from janusflow.eval.mme import mme_label, mme_scores
from janusflow.eval.multiple_choice import chosen_option, circular_questions, multiple_choice_scores
from janusflow.eval.understanding import score_understanding
from janusflow.eval.yes_no import pope_label, yes_no_scores


def write(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_exact_match():
    answers = ["Yes.", "two", " Red ", "blue"]
    references = [["yes"], ["2"], ["red"], ["navy", "blue"]]
    # exact (strip only): only "blue"; normalised (lower, no punctuation): yes, red, blue -> 3/4
    assert exact_match(answers, references) == {"exact_match": 0.25, "exact_match_normalized": 0.75, "n": 4}


# -- POPE -----------------------------------------------------------------------------------------------

POPE_ANSWERS = ["Yes, there is.", "No.", "yes", "There is no cat.", "no", "I think yes. But no", "Not sure",
                "The answer is yes"]
POPE_LABELS = ["yes", "yes", "yes", "no", "no", "no", "no", "yes"]


def test_pope_reads_answers_as_its_script():
    # first sentence, commas dropped, split on spaces: "no" iff a word is "No", "no" or "not"
    # "I think yes. But no" -> "I think yes" -> yes;  "Not sure": "Not" is none of the three -> yes
    assert [pope_label(a) for a in POPE_ANSWERS] == ["yes", "no", "yes", "no", "no", "yes", "yes", "yes"]
    assert pope_label("") == "yes" and pope_label("nothing, not at all") == "no"


def test_pope_scores_worked_example():
    # labels yes yes yes no no no no yes / read yes no yes no no yes yes yes
    # TP = 3 (1, 3, 8), FN = 1 (2), TN = 2 (4, 5), FP = 2 (6, 7)
    # precision 3/5, recall 3/4, F1 = 2 * 0.6 * 0.75 / 1.35 = 2/3, accuracy 5/8, yes ratio 5/8
    s = yes_no_scores(POPE_ANSWERS, POPE_LABELS)
    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (3, 2, 2, 1)
    assert s["precision"] == pytest.approx(0.6) and s["recall"] == pytest.approx(0.75)
    assert s["f1"] == pytest.approx(2 / 3) and s["accuracy"] == pytest.approx(0.625)
    assert s["yes_ratio"] == pytest.approx(0.625)
    # no yes at all: precision and recall 0 (not a division by zero), F1 0
    none = yes_no_scores(["no", "no"], ["yes", "no"])
    assert none["precision"] == none["recall"] == none["f1"] == 0.0 and none["accuracy"] == 0.5
    with pytest.raises(InputError, match="\"yes\" or \"no\""):
        yes_no_scores(["yes"], ["maybe"])


# -- MME ------------------------------------------------------------------------------------------------

def test_mme_paired_scoring():
    assert [mme_label(a) for a in ["Yes", "no.", "Yes, it is", "I can't tell", "nope", "No"]] == \
        ["yes", "no", "yes", "other", "no", "no"]
    rows = [("color", "a.png", "Yes", "Yes"), ("color", "a.png", "No", "no."),         # image a: both right
            ("color", "b.png", "Yes", "Yes, it is"), ("color", "b.png", "No", "I can't tell"),  # b: one right
            ("count", "c.png", "Yes", "nope"), ("count", "c.png", "No", "No"),         # c: one right
            ("code_reasoning", "d.png", "Yes", "yes"), ("code_reasoning", "d.png", "No", "No")]
    s = mme_scores(rows)
    # color: acc 3/4, acc+ 1/2 -> 75 + 50 = 125; count: acc 1/2, acc+ 0 -> 50; code_reasoning: 200
    assert s["tasks"]["color"]["score"] == pytest.approx(125) and s["tasks"]["count"]["score"] == pytest.approx(50)
    assert s["perception"] == pytest.approx(175) and s["cognition"] == pytest.approx(200)
    assert s["acc"] == pytest.approx(6 / 8) and s["acc_plus"] == pytest.approx(2 / 4)


# -- multiple choice, circular ---------------------------------------------------------------------------

def test_chosen_option():
    options = {"A": "red", "B": "green", "C": "blue"}
    assert [chosen_option(a, options) for a in ["B", "(C)", "A. red", "Answer: B", "green", "It is blue."]] == \
        ["B", "C", "A", "B", "B", "C"]
    assert chosen_option("A or B", options) is None and chosen_option("red or green", options) is None
    assert chosen_option("purple", options) is None


def test_circular_questions_rotate_the_options():
    lines = circular_questions({"question_id": 5, "question": "Which color?", "options": ["red", "green", "blue"],
                                "answer": "B", "image": "x.png"})
    assert [line["question_id"] for line in lines] == [5, 1_000_005, 2_000_005]
    assert [list(line["options"].values()) for line in lines] == [["red", "green", "blue"], ["green", "blue", "red"],
                                                                   ["blue", "red", "green"]]
    assert [line["answer"] for line in lines] == ["B", "A", "C"]  # green moves with its option
    assert lines[1]["text"] == ("Which color?\nA. green\nB. blue\nC. red\n"
                                "Answer with the option's letter from the given choices directly.")
    assert all(line["image"] == "x.png" and line["circular_group"] == "5" for line in lines)
    assert [x["question_id"] for x in circular_questions({"question_id": "q", "question": "?", "options": ["a", "b"],
                                                          "answer": "A"})] == ["q", "q#1"]


def test_circular_accuracy():
    q1 = circular_questions({"question_id": 1, "question": "Which color?", "options": ["red", "green", "blue"],
                             "answer": "B", "category": "color"})
    q2 = circular_questions({"question_id": 2, "question": "Which shape?", "options": ["circle", "square"],
                             "answer": "A", "category": "shape"})
    # q1's variants want B, A, C: answered B, "A. green", "(B)" -> the last is wrong;
    # q2's want A, B (circle, then square shown first): both right
    answers = ["B", "A. green", "(B)", "A", "circle"]
    s = multiple_choice_scores(list(zip(q1 + q2, answers)))
    assert s["accuracy"] == pytest.approx(4 / 5) and s["circular_accuracy"] == pytest.approx(1 / 2)
    assert s["circular_accuracy_by_category"] == {"color": 0.0, "shape": 1.0}
    # without circular_group an integer id groups as MMBench's index % 1e6
    plain = [{k: v for k, v in q.items() if k != "circular_group"} for q in q1]
    assert multiple_choice_scores(list(zip(plain, ["B", "A", "C"])))["circular_accuracy"] == 1.0
    with pytest.raises(InputError, match="option letters"):
        multiple_choice_scores([({"question_id": 1, "options": ["a", "b"], "answer": "C"}, "A")])


# -- from files, and the command ------------------------------------------------------------------------

def test_score_files_and_the_command(tmp_path, capsys):
    questions = write(tmp_path / "q.jsonl", [{"question_id": i, "text": "Is there a cat?", "label": label,
                                              "category": "random" if i < 4 else "popular"}
                                             for i, label in enumerate(POPE_LABELS)])
    answers = write(tmp_path / "a.jsonl", [{"question_id": i, "prompt": "", "text": a, "answer_id": "x",
                                            "model_id": "m", "metadata": {}}
                                           for i, a in reversed(list(enumerate(POPE_ANSWERS)))])
    result = score_understanding("pope", questions, answers)
    assert result["f1"] == pytest.approx(2 / 3)
    # random: questions 0-3, labels yes yes yes no, read yes no yes no -> TP 2, FN 1, TN 1: accuracy 3/4
    assert result["by_category"]["random"]["accuracy"] == pytest.approx(0.75)
    assert result["answered_by"] == {"model_id": ["m"], "metadata": [{}]}

    out = tmp_path / "r" / "pope.json"
    code = main(["eval", "understanding", "--metric", "pope", "--questions", str(questions), "--answers",
                 str(answers), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "f1                       0.6667" in printed
    assert json.loads(out.read_text())["precision"] == pytest.approx(0.6)

    captions_q = write(tmp_path / "c.jsonl", [{"question_id": "1", "text": "Describe.", "answer": ["a cat"]},
                                              {"question_id": "2", "text": "Describe.", "answer": "a dog"}])
    captions_a = write(tmp_path / "ca.jsonl", [{"question_id": "1", "text": "A cat."},
                                               {"question_id": 2, "text": "a dog"}])
    assert score_understanding("cider", captions_q, captions_a)["cider"] == pytest.approx(5.0)

    code = main(["eval", "understanding", "--metric", "exact-match", "--questions", str(captions_q), "--answers",
                 str(answers)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "6 answer(s)" in err and "match no question" in err


def test_circular_questions_command(tmp_path, capsys):
    source = write(tmp_path / "mc.jsonl", [{"question_id": 3, "question": "Which?", "options": {"A": "x", "B": "y"},
                                            "answer": "B"}])
    out = tmp_path / "circular.jsonl"
    assert main(["eval", "circular-questions", str(source), str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["question_id"], x["answer"]) for x in lines] == [(3, "B"), (1_000_003, "A")]
    write(source, [{"question_id": 3, "question": "Which?", "options": ["x", "y"], "answer": "E"}])
    capsys.readouterr()
    assert main(["eval", "circular-questions", str(source), str(out)]) == 1
    assert "mc.jsonl:1: question 3" in capsys.readouterr().err
