"""The LLaVA evaluation layout: question files in, answer files out, split for parallel runs.

A question file has one JSON object a line, ``{"question_id", "image", "text"}`` (``image``
relative to an image folder, optional; LLaVA's ``<image>`` marker in ``text`` places the image).
Each answer line is what LLaVA's ``model_vqa_loader.py`` writes, in its key order:

    {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}

``prompt`` is the question's text, ``text`` the answer, ``answer_id`` a unique 22-character id
(shortuuid's alphabet), ``metadata`` the decoding settings. ``--num-chunks n --chunk-idx k`` answer
the k-th of n consecutive chunks of ceil(len / n) questions, as LLaVA's ``split_list`` /
``get_chunk`` cut them; the scripts then concatenate the chunk files in order.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..errors import InputError

T = TypeVar("T")

SHORTUUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # 57 symbols, no 0/O, 1/I/l


def answer_id() -> str:
    """A random 128-bit id written in base 57, 22 characters (the form of LLaVA's ``shortuuid.uuid()``)."""
    value, digits = uuid.uuid4().int, []
    for _ in range(22):  # 57**22 > 2**128
        value, digit = divmod(value, len(SHORTUUID_ALPHABET))
        digits.append(SHORTUUID_ALPHABET[digit])
    return "".join(reversed(digits))


def split_list(items: Sequence[T], n: int) -> list[Sequence[T]]:
    """LLaVA's split: consecutive chunks of ceil(len / n) items. There may be fewer than n chunks
    (9 items in 4 chunks: 3, 3, 3), never more; the last may be shorter."""
    size = max(1, math.ceil(len(items) / n))
    return [items[i:i + size] for i in range(0, len(items), size)]


def get_chunk(items: Sequence[T], n: int, k: int) -> Sequence[T]:
    """The k-th chunk of :func:`split_list`; an empty one where the split makes fewer than n chunks
    (LLaVA's raises IndexError there; the concatenated answers are the same)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"the number of chunks must be a positive integer, got {n!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n:
        raise InputError(f"the chunk index must be in 0..{n - 1}, got {k!r}")
    chunks = split_list(items, n)
    return chunks[k] if k < len(chunks) else items[:0]


def read_llava_questions(question_file: str | os.PathLike, image_folder: str | os.PathLike | None) -> list[dict]:
    """Lines ``{"question_id", "image", "text"}``: the image as a path inside ``image_folder``, or None."""
    from ..jsonl import read_jsonl

    path = Path(os.fspath(question_file))
    questions = []
    for number, _, item in read_jsonl(path, "question file"):
        if "question_id" not in item or not isinstance(item.get("text"), str):
            raise InputError(f"{path}:{number}: each line needs \"question_id\" and a string \"text\"")
        image = item.get("image")
        if image is not None:
            if image_folder is None:
                raise InputError(f"{path}:{number}: the question has an image; pass the image folder")
            image = Path(os.fspath(image_folder)) / image
            if not image.is_file():
                raise InputError(f"{path}:{number}: image file not found: {image}")
        questions.append({"question_id": item["question_id"], "text": item["text"], "image": image})
    if not questions:
        raise InputError(f"{path}: no questions")
    return questions


def answer_llava_questions(chat, question_file, image_folder, answers_file, model_id: str, batch_size: int = 8,
                           config=None, show_progress: bool = True, generator=None, num_chunks: int = 1,
                           chunk_idx: int = 0) -> int:
    """Answer chunk ``chunk_idx`` of ``num_chunks`` of a LLaVA question file in batches of ``batch_size``,
    in input order (see the module docstring); returns the number of answers written."""
    from tqdm.auto import tqdm

    from ..processor import IMAGE_TOKEN
    from ..understanding import DecodingConfig, user_message

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    config = config or DecodingConfig()
    config.validate()
    questions = get_chunk(read_llava_questions(question_file, image_folder), num_chunks, chunk_idx)
    metadata = decoding_metadata(config, generator, num_chunks, chunk_idx)
    out = Path(os.fspath(answers_file))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f, tqdm(total=len(questions), desc="questions", unit="q",
                                                        disable=not show_progress) as bar:
        for start in range(0, len(questions), batch_size):
            batch = questions[start:start + batch_size]
            conversations = [[user_message(q["text"].replace("<image>", IMAGE_TOKEN),
                                           [q["image"]] if q["image"] is not None else [])] for q in batch]
            answers = chat.answer(conversations, config, generator)
            for q, text in zip(batch, answers):
                line = {"question_id": q["question_id"], "prompt": q["text"], "text": text,
                        "answer_id": answer_id(), "model_id": model_id, "metadata": metadata}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(batch))
    return len(questions)


def decoding_metadata(config, generator, num_chunks: int, chunk_idx: int) -> dict[str, Any]:
    """What decided the answers: the decoding settings, the seed when one was given, the chunk."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "use_cache"}  # use_cache: speed only
    if isinstance(generator, int) and not isinstance(generator, bool):
        settings["seed"] = generator
    return {**settings, "num_chunks": num_chunks, "chunk_idx": chunk_idx}


def read_llava_answers(answers_file: str | os.PathLike) -> dict[str, dict]:
    """Answer lines by ``str(question_id)``; each needs a ``question_id`` and a string ``text``, once."""
    from ..jsonl import read_jsonl

    path = Path(os.fspath(answers_file))
    answers: dict[str, dict] = {}
    for number, _, item in read_jsonl(path, "answers file"):
        if "question_id" not in item or not isinstance(item.get("text"), str):
            raise InputError(f"{path}:{number}: each line needs \"question_id\" and a string \"text\"")
        key = str(item["question_id"])
        if key in answers:
            raise InputError(f"{path}:{number}: question_id {item['question_id']!r} is answered twice")
        answers[key] = item
    return answers


def paired(questions_file: str | os.PathLike, answers_file: str | os.PathLike) -> list[tuple[dict, str]]:
    """(question line, answer text) for every question, matched on ``question_id`` (as text: 7 and "7"
    are one id). Every question needs exactly one answer and every answer a question."""
    from ..jsonl import read_jsonl

    qpath = Path(os.fspath(questions_file))
    answers = read_llava_answers(answers_file)
    pairs, seen = [], set()
    for number, _, item in read_jsonl(qpath, "question file"):
        if "question_id" not in item:
            raise InputError(f"{qpath}:{number}: each line needs a \"question_id\"")
        key = str(item["question_id"])
        if key in seen:
            raise InputError(f"{qpath}:{number}: question_id {item['question_id']!r} appears twice")
        seen.add(key)
        if key in answers:
            pairs.append((item, answers[key]["text"]))
    missing = len(seen) - len(pairs)
    if not seen:
        raise InputError(f"{qpath}: no questions")
    if missing:
        first = next(k for k in (str(i["question_id"]) for _, _, i in read_jsonl(qpath)) if k not in answers)
        raise InputError(f"{missing} question(s) of {qpath} have no answer in {answers_file} (first: {first})")
    extra = [k for k in answers if k not in seen]
    if extra:
        raise InputError(f"{len(extra)} answer(s) in {answers_file} match no question of {qpath} (first: {extra[0]})")
    return pairs
