"""The LLaVA layout (janusflow/eval/llava.py): the answer lines LLaVA's model_vqa_loader.py writes,
its split of a question file into chunks, and matching answers to questions for scoring."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from inference_helpers import make_model_folder, tiny_model, tiny_processor
from janusflow.cli import main
from janusflow.errors import InputError
from janusflow.eval.llava import (
    SHORTUUID_ALPHABET, answer_id, answer_llava_questions, get_chunk, paired, split_list,
)
from janusflow.understanding import DecodingConfig, JanusFlowChat

RED = Image.new("RGB", (40, 30), (200, 10, 10))
BLUE = Image.new("RGB", (20, 36), (20, 60, 220))
ANSWER_KEYS = ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]  # LLaVA's order


@pytest.fixture(scope="module")
def chat():
    model = tiny_model(seed=2)
    return JanusFlowChat(model, tiny_processor(model))


@pytest.fixture()
def question_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    RED.save(images / "red.png")
    BLUE.save(images / "blue.jpg")
    questions = [{"question_id": "q1", "image": "red.png", "text": "What color?"},
                 {"question_id": 7, "image": "blue.jpg", "text": "<image>\nDescribe it."},
                 {"question_id": "q3", "image": "red.png", "text": "Is it round?\nAnswer with one word."},
                 {"question_id": "q4", "text": "hello"}]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return qfile, images, questions


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- LLaVA's split ----------------------------------------------------------------------------------------

def test_split_matches_llavas_ceil_sized_chunks():
    # 10 questions in 3 chunks: ceil(10/3) = 4 a chunk -> 4, 4, 2 (not 4, 3, 3)
    assert split_list(list(range(10)), 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # 9 in 4: ceil(9/4) = 3 -> three chunks of 3; LLaVA's chunk 3 does not exist, ours is empty
    assert split_list(list(range(9)), 4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert get_chunk(list(range(9)), 4, 3) == []
    assert get_chunk(list(range(10)), 3, 2) == [8, 9]
    assert get_chunk(list(range(5)), 1, 0) == list(range(5))
    for n_items in range(0, 30):
        items = list(range(n_items))
        for n in range(1, 9):
            chunks = [get_chunk(items, n, k) for k in range(n)]
            assert sum(chunks, []) == items  # in order, each question once


@pytest.mark.parametrize("n,k", [(0, 0), (2, 2), (2, -1), (3, 1.0), (True, 0)])
def test_bad_chunks(n, k):
    with pytest.raises(InputError, match="chunk"):
        get_chunk([1, 2, 3], n, k)


def test_answer_ids_look_like_shortuuid():
    ids = {answer_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and set(i) <= set(SHORTUUID_ALPHABET) for i in ids)
    assert len(SHORTUUID_ALPHABET) == 57


# -- answering --------------------------------------------------------------------------------------------

def test_answer_lines(chat, question_file, tmp_path):
    qfile, images, questions = question_file
    answers_file = tmp_path / "out" / "a.jsonl"
    config = DecodingConfig(max_new_tokens=5)
    n = answer_llava_questions(chat, qfile, images, answers_file, "tiny", batch_size=3, config=config,
                               show_progress=False, generator=3)
    answers = read_lines(answers_file)
    assert n == 4 and [list(a) for a in answers] == [ANSWER_KEYS] * 4
    assert [a["question_id"] for a in answers] == ["q1", 7, "q3", "q4"]
    assert [a["prompt"] for a in answers] == [q["text"] for q in questions]
    assert all(a["model_id"] == "tiny" for a in answers) and len({a["answer_id"] for a in answers}) == 4
    assert answers[0]["metadata"] == {"max_new_tokens": 5, "temperature": 0.0, "top_p": 1.0, "top_k": 0,
                                      "repetition_penalty": 1.0, "num_beams": 1, "seed": 3,
                                      "num_chunks": 1, "chunk_idx": 0}
    expected = chat.ask([images / "red.png"], "Is it round?\nAnswer with one word.", max_new_tokens=5)
    assert answers[2]["text"] == expected
    assert answers[3]["text"] == chat.ask([], "hello", max_new_tokens=5)


def test_chunks_concatenate_to_the_whole_run(chat, question_file, tmp_path):
    qfile, images, _ = question_file
    config = DecodingConfig(max_new_tokens=4)
    whole = tmp_path / "all.jsonl"
    answer_llava_questions(chat, qfile, images, whole, "m", config=config, show_progress=False)
    parts = []
    for k in range(3):  # 4 questions in 3 chunks: ceil(4/3) = 2 -> 2, 2, 0
        part = tmp_path / f"3_{k}.jsonl"
        n = answer_llava_questions(chat, qfile, images, part, "m", config=config, show_progress=False,
                                   num_chunks=3, chunk_idx=k)
        assert n == [2, 2, 0][k]
        parts += read_lines(part)
    assert [(a["question_id"], a["text"]) for a in parts] == [(a["question_id"], a["text"]) for a in read_lines(whole)]
    assert [a["metadata"]["chunk_idx"] for a in parts] == [0, 0, 1, 1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("llava") / "tiny-model")


def test_ask_question_file_chunk(capsys, model_dir, question_file, tmp_path):
    qfile, images, _ = question_file
    out = tmp_path / "answers" / "2_1.jsonl"
    code = main(["ask", "--question-file", str(qfile), "--image-folder", str(images), "--answers-file", str(out),
                 "--model", str(model_dir), "--max-new-tokens", "3", "--num-chunks", "2", "--chunk-idx", "1"])
    assert code == 0, capsys.readouterr().err
    answers = read_lines(out)
    assert [a["question_id"] for a in answers] == ["q3", "q4"]
    assert [list(a) for a in answers] == [ANSWER_KEYS] * 2 and answers[0]["model_id"] == "tiny-model"
    assert answers[0]["metadata"]["chunk_idx"] == 1 and answers[0]["metadata"]["num_chunks"] == 2

    capsys.readouterr()
    code = main(["ask", "--question-file", str(qfile), "--image-folder", str(images), "--answers-file",
                 str(tmp_path / "x.jsonl"), "--model", str(model_dir), "--num-chunks", "2", "--chunk-idx", "2"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "chunk index must be in 0..1" in err
    assert not (tmp_path / "x.jsonl").exists()


# -- matching answers to questions ------------------------------------------------------------------------

def write(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_paired_matches_on_question_id(tmp_path):
    q = write(tmp_path / "q.jsonl", [{"question_id": 1, "text": "a"}, {"question_id": "x", "text": "b"}])
    a = write(tmp_path / "a.jsonl", [{"question_id": "x", "text": "B"}, {"question_id": "1", "text": "A"}])
    assert [(item["text"], text) for item, text in paired(q, a)] == [("a", "A"), ("b", "B")]

    write(a, [{"question_id": "x", "text": "B"}])
    with pytest.raises(InputError, match=r"1 question\(s\) .* have no answer .*\(first: 1\)"):
        paired(q, a)
    write(a, [{"question_id": "x", "text": "B"}, {"question_id": 1, "text": "A"}, {"question_id": 2, "text": "?"}])
    with pytest.raises(InputError, match=r"1 answer\(s\) .* match no question .*\(first: 2\)"):
        paired(q, a)
    write(a, [{"question_id": "x", "text": "B"}, {"question_id": "x", "text": "C"}])
    with pytest.raises(InputError, match="answered twice"):
        paired(q, a)
    write(a, [{"question_id": "x"}])
    with pytest.raises(InputError, match="a string \"text\""):
        paired(q, a)
