"""The README's grid: a row per category, each image framed by the exact scorer's verdict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from janusflow.shapes.grid import FAIL, PASS, sample_grid
from janusflow.shapes.prompts import parse_prompt
from janusflow.shapes.render import render
from janusflow.shapes.sampler import scene_for_prompt


def _folder(tmp_path, items):
    for i, (prompt, image) in enumerate(items):
        sub = tmp_path / f"{i:05d}"
        (sub / "samples").mkdir(parents=True)
        (sub / "metadata.jsonl").write_text(json.dumps({"prompt": prompt}) + "\n")
        image.save(sub / "samples" / "0000.png")
    return tmp_path


def test_frames_say_pass_or_fail_and_rows_follow_the_categories(tmp_path):
    rng = np.random.default_rng(0)
    good = render(scene_for_prompt(rng, parse_prompt("a red circle")))
    blank = Image.new("RGB", (64, 64), (255, 255, 255))
    folder = _folder(tmp_path, [("a red circle", good), ("a square", blank), ("two circles", blank)])
    grid = sample_grid(folder, per_category=2, scale=1)
    cell_h = 64 + 12 + 40
    assert grid.size == (110 + 2 * (64 + 12), 3 * cell_h)  # rows: single_object, counting, colors
    assert grid.getpixel((110 + 6 - 2, 6 - 2)) == FAIL  # the blank "a square"
    assert grid.getpixel((110 + 6 - 2, cell_h + 6 - 2)) == FAIL  # the blank "two circles"
    assert grid.getpixel((110 + 6 - 2, 2 * cell_h + 6 - 2)) == PASS  # "a red circle" (colors)
    assert grid.getpixel((110 + 76 + 6 - 2, 2 * cell_h + 6 - 2)) == (255, 255, 255)  # no second image


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError):
        sample_grid(tmp_path, per_category=0)
