"""The shapes evaluation layouts: a perfect generator/answerer scores 1, a wrong one does not."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from janusflow.shapes import CATEGORIES, parse_prompt, render, scene_for_prompt
from janusflow.shapes.evaluate import (
    geneval_metadata, llava_questions, read_jsonl, score_geneval_folder, score_llava_answers, write_jsonl,
)


def _write_geneval(folder, lines, make_image):
    for i, line in enumerate(lines):
        sub = folder / f"{i:05d}"
        write_jsonl(sub / "metadata.jsonl", [line])
        (sub / "samples").mkdir()
        for k in range(2):
            make_image(line, k).save(sub / "samples" / f"{k:04d}.png")


def test_geneval_metadata_covers_every_category():
    lines = geneval_metadata(prompts_per_category=7, seed=3)
    assert [line["tag"] for line in lines] == [t for t in CATEGORIES for _ in range(7)]
    assert all(parse_prompt(line["prompt"]).tag == line["tag"] for line in lines)
    assert len({line["prompt"] for line in lines if line["tag"] == "single_object"}) == 3  # all of them, cycled
    assert geneval_metadata(7, seed=3) == lines


def test_geneval_scoring_of_perfect_and_blank_generators(tmp_path):
    lines = geneval_metadata(prompts_per_category=4, seed=0)
    rng = np.random.default_rng(0)
    _write_geneval(tmp_path / "good", lines, lambda line, k: render(scene_for_prompt(rng, parse_prompt(line["prompt"]))))
    scores = score_geneval_folder(tmp_path / "good")
    assert scores["overall"] == 1.0 and scores["n_images"] == 48
    _write_geneval(tmp_path / "blank", lines, lambda line, k: Image.new("RGB", (64, 64), "white"))
    assert score_geneval_folder(tmp_path / "blank")["overall"] == 0.0


def test_llava_scoring(tmp_path):
    questions, key = llava_questions(60, seed=1, image_dir=tmp_path / "images")
    assert len(questions) == 60 and (tmp_path / "images" / questions[0]["image"]).is_file()
    write_jsonl(tmp_path / "q.jsonl", questions)
    assert read_jsonl(tmp_path / "q.jsonl") == questions
    perfect = [{"question_id": q["question_id"], "text": key[q["question_id"]]["answer"]} for q in questions]
    assert score_llava_answers(perfect, key)["overall"] == 1.0
    wrong = [{"question_id": q["question_id"], "text": "purple"} for q in questions]
    assert score_llava_answers(wrong, key)["overall"] < 0.5


def test_readme_scores_are_the_shipped_models_recorded_evaluation():
    """The README's score tables say what `janusflow eval shapes` recorded for the shipped model."""
    root = Path(__file__).resolve().parent.parent
    recorded = root / "janusflow" / "default_model" / "eval_shapes.json"
    if not recorded.is_file():
        pytest.skip("no default model installed")
    results = json.loads(recorded.read_text())
    rows = [line for line in (root / "README.md").read_text().splitlines() if line.startswith("| default model |")]
    assert len(rows) == 2, "the README has one generation and one understanding row for the default model"
    gen_cells, und_cells = ([c.strip(" *") for c in row.split("|")[2:-1]] for row in rows)
    gen_order = ["single_object", "two_object", "counting", "colors", "position", "color_attr", "overall"]
    und_order = ["count", "count_of", "color_of", "shape_of", "exists", "relation", "describe", "overall"]
    for cells, order, part in ((gen_cells, gen_order, "generation"), (und_cells, und_order, "understanding")):
        shown = [float(c.split()[0].strip("*")) for c in cells]
        assert shown == [round(results[part][k], 3) for k in order], part


def test_readme_best_of_rows_are_recorded_evaluations():
    """Each README row "| default model, best of N |" shows `janusflow eval shapes --candidates N`'s
    generation scores, kept as janusflow/default_model/eval_shapes_best_of_N.json (for the model's
    default N, eval_shapes.json: what `janusflow eval shapes` records with no --candidates)."""
    from janusflow.image_generation_config import ImageGenerationConfig

    root = Path(__file__).resolve().parent.parent
    rows = [line for line in (root / "README.md").read_text().splitlines()
            if line.startswith("| default model, best of ")]
    if not (root / "janusflow" / "default_model" / "eval_shapes.json").is_file():
        pytest.skip("no default model installed")
    assert rows, "the README shows the self-check's scores"
    order = ["single_object", "two_object", "counting", "colors", "position", "color_attr", "overall"]
    for row in rows:
        cells = [c.strip(" *") for c in row.split("|")[1:-1]]
        n = int(cells[0].removeprefix("default model, best of "))
        default = ImageGenerationConfig.from_folder(root / "janusflow" / "default_model").candidates
        name = "eval_shapes.json" if n == default else f"eval_shapes_best_of_{n}.json"
        results = json.loads((root / "janusflow" / "default_model" / name).read_text())
        assert results["settings"]["candidates"] == n
        assert [float(c.split()[0]) for c in cells[1:1 + len(order)]] == [
            round(results["generation"][k], 3) for k in order], row
