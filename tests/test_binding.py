"""The binding probe (experiments.binding): failure kinds read from renders, the swap gap."""

from __future__ import annotations

import numpy as np
import pytest

from janusflow.shapes.prompts import parse_prompt
from experiments import binding
from janusflow.shapes.render import render
from janusflow.shapes.scorer import detect_objects
from janusflow.shapes.world import Obj, Scene


def _read(*objects):
    return detect_objects(render(Scene(tuple(objects))))


def test_failure_kinds_of_rendered_scenes():
    above = parse_prompt("a circle above a square")
    circle_up = Obj("circle", "red", 26, 6, 12)
    square_down = Obj("square", "blue", 26, 44, 12)
    assert binding.failure_kind(above, _read(circle_up, square_down)) == "pass"
    swapped = (Obj("circle", "red", 26, 44, 12), Obj("square", "blue", 26, 6, 12))
    assert binding.failure_kind(above, _read(*swapped)) == "swapped"
    assert binding.failure_kind(above, _read(circle_up)) == "missing"
    side_by_side = (Obj("circle", "red", 6, 26, 12), Obj("square", "blue", 44, 26, 12))
    assert binding.failure_kind(above, _read(*side_by_side)) == "other"  # both there, neither relation holds

    colours = parse_prompt("a red circle and a blue square")
    assert binding.failure_kind(colours, _read(circle_up, square_down)) == "pass"
    for kind, looks in (("swapped", [("circle", "blue"), ("square", "red")]),
                        ("missing", [("circle", "red"), ("circle", "blue")]),
                        ("other", [("circle", "red"), ("square", "green")])):
        objects = [Obj(shape, colour, x, 26, 12) for (shape, colour), x in zip(looks, (6, 44))]
        assert binding.failure_kind(colours, _read(*objects)) == kind
    with pytest.raises(ValueError, match="no binding"):
        binding.failure_kind(parse_prompt("a red circle"), [])


def test_swap_gap_on_the_default_model_is_seeded_and_consistent():
    from janusflow.pipeline import DEFAULT_MODEL_DIR, JanusFlowPipeline

    pipe = JanusFlowPipeline.from_pretrained(DEFAULT_MODEL_DIR, device="cpu")
    first = binding.swap_gaps(pipe, scenes=6, times=(0.2, 0.6), seed=3)
    assert set(first) == {"position", "color_attr"}
    for rows in first.values():
        for row in rows.values():
            assert row["gap"] == pytest.approx(row["twin_error"] - row["error"], abs=1e-6)
            assert any(row["wins"] == pytest.approx(k / 6) for k in range(7))  # a share of the 6 scenes
        assert rows[0.6]["error"] < rows[0.2]["error"]  # closer to the data, the velocity is easier
    assert binding.swap_gaps(pipe, scenes=6, times=(0.2, 0.6), seed=3) == first
