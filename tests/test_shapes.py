"""Tests of the shapes world (spec: /work/shared/shapes-world.md)."""

from __future__ import annotations

from collections import Counter, deque
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from janusflow.shapes import (
    CATEGORIES, FORMS, PALETTE, SHAPES, Obj, PromptSpec, Scene, all_prompts, boxes_apart,
    caption_for_scene, connected_components, describe, detect_objects, parse_prompt, passes,
    questions_for_scene, relation_holds, render, render_array, sample_prompt, sample_question,
    sample_scene, scene_for_prompt, score_answer, score_generation, score_image,
    score_understanding, shape_mask, snap_colors,
)

WHITE = (255, 255, 255)


def scene(*objects: Obj) -> Scene:
    return Scene(objects).validate()


def looks(objects) -> Counter:
    return Counter((o.shape, o.color) for o in objects)


# ---------------------------------------------------------------- world and renderer


def test_palette_is_the_spec_exactly():
    assert PALETTE == {
        "red": (230, 25, 75), "green": (60, 180, 75), "blue": (0, 130, 200),
        "yellow": (255, 225, 25), "purple": (145, 30, 180), "orange": (245, 130, 48),
    }
    assert SHAPES == ("circle", "square", "triangle")


def test_render_is_64x64_rgb_with_exact_palette_pixels_and_hard_edges():
    rng = np.random.default_rng(0)
    allowed = {WHITE, *PALETTE.values()}
    for _ in range(50):
        s = sample_scene(rng)
        image = render(s)
        assert image.size == (64, 64) and image.mode == "RGB"
        pixels = np.asarray(image).reshape(-1, 3)
        assert {tuple(p) for p in np.unique(pixels, axis=0).tolist()} <= allowed
        for obj in s.objects:  # every object's pixels carry its exact colour
            assert (np.asarray(image)[shape_mask(obj)] == PALETTE[obj.color]).all()


def test_square_covers_exactly_its_box():
    array = render_array(scene(Obj("square", "blue", 10, 20, 12)))
    expected = np.zeros((64, 64), bool)
    expected[20:32, 10:22] = True  # rows y0..y0+d-1, columns x0..x0+d-1
    assert ((array != 255).any(-1) == expected).all()
    assert (array[20, 10] == (0, 130, 200)).all() and (array[19, 10] == 255).all()


@pytest.mark.parametrize("d", range(12, 21))
def test_circle_is_the_pixel_centres_within_radius(d):
    x0, y0 = 7, 30
    cx, cy, r = Fraction(2 * x0 + d, 2), Fraction(2 * y0 + d, 2), Fraction(d, 2)
    expected = {
        (x, y) for x in range(64) for y in range(64)
        if (x + Fraction(1, 2) - cx) ** 2 + (y + Fraction(1, 2) - cy) ** 2 <= r * r
    }
    mask = shape_mask(Obj("circle", "red", x0, y0, d))
    assert {(int(x), int(y)) for y, x in zip(*np.nonzero(mask))} == expected
    assert mask.sum() == len(expected)


def test_circle_pixel_count_d12():
    # hand count over one quadrant: pixel centres sit at offsets 0.5 .. 5.5 from the centre; row
    # dy keeps the dx with dx^2 <= 36 - dy^2, i.e. 6, 6, 5, 5, 4, 2 pixels -> 28 a quadrant, 112
    mask = shape_mask(Obj("circle", "red", 10, 10, 12))
    assert mask.sum() == 4 * (6 + 6 + 5 + 5 + 4 + 2)
    assert mask[10].sum() == 4 and mask[15].sum() == 12  # top row 4 px, middle row full width


@pytest.mark.parametrize("d", range(12, 21))
def test_triangle_apex_top_and_full_base(d):
    x0, y0 = 5, 9
    mask = shape_mask(Obj("triangle", "green", x0, y0, d))
    cx = Fraction(2 * x0 + d, 2)
    expected = {
        (x, y) for x in range(64) for y in range(64)
        if y + Fraction(1, 2) <= y0 + d and 2 * abs(x + Fraction(1, 2) - cx) <= y + Fraction(1, 2) - y0
    }
    assert {(int(x), int(y)) for y, x in zip(*np.nonzero(mask))} == expected
    assert mask[y0 + d - 1, x0:x0 + d].all() and mask[y0 + d - 1].sum() == d  # base: full width
    assert mask[y0].sum() == (d % 2)  # apex pixel only when the apex hits a pixel centre
    assert mask[: y0].sum() == 0 and mask[y0 + d:].sum() == 0


def test_boxes_apart_means_a_gap_of_two_px():
    a = Obj("square", "red", 10, 10, 12)  # box [10, 22]
    assert boxes_apart(a, Obj("square", "red", 24, 10, 12))  # gap 2 along x
    assert not boxes_apart(a, Obj("square", "red", 23, 10, 12))  # gap 1
    assert boxes_apart(a, Obj("square", "red", 30, 24, 12))  # gap 2 along y
    assert not boxes_apart(a, Obj("square", "red", 23, 23, 12))  # diagonal, gap 1 both ways
    with pytest.raises(ValueError, match="inside the canvas"):
        Scene((Obj("square", "red", 1, 10, 12),)).validate()
    with pytest.raises(ValueError, match="apart"):
        Scene((a, Obj("circle", "blue", 23, 10, 12))).validate()


def test_sampled_scenes_are_valid_and_cover_the_ranges():
    rng = np.random.default_rng(1)
    counts, sizes = Counter(), Counter()
    for _ in range(400):
        s = sample_scene(rng)
        assert s.problems() == []
        counts[len(s.objects)] += 1
        sizes.update(o.d for o in s.objects)
        for i, a in enumerate(s.objects):
            assert 2 <= a.x0 and a.x0 + a.d <= 62 and 2 <= a.y0 and a.y0 + a.d <= 62
            for b in s.objects[:i]:
                gaps = (b.x0 - a.x0 - a.d, a.x0 - b.x0 - b.d, b.y0 - a.y0 - a.d, a.y0 - b.y0 - b.d)
                assert max(gaps) >= 2
                grown_a = np.zeros((66, 66), bool)  # pixels grown by 1 never touch
                grown_a[a.y0: a.y0 + a.d + 2, a.x0: a.x0 + a.d + 2] = True
                assert not grown_a[b.y0 + 1: b.y0 + b.d + 1, b.x0 + 1: b.x0 + b.d + 1].any()
    assert set(counts) == {1, 2, 3, 4}
    assert set(sizes) == set(range(12, 21))
    assert len(sample_scene(rng, 4).objects) == 4
    with pytest.raises(ValueError):
        sample_scene(rng, 5)


# ---------------------------------------------------------------- prompts


def test_prompt_templates_and_counts():
    expected = {"single_object": 3, "two_object": 6, "counting": 9, "colors": 18,
                "position": 24, "color_attr": 180}
    assert {tag: len(all_prompts(tag)) for tag in CATEGORIES} == expected
    texts = {p.text for tag in CATEGORIES for p in all_prompts(tag)}
    assert len(texts) == 240
    for text in ["a circle", "a square and a triangle", "two circles", "four triangles",
                 "a orange square", "a circle to the left of a square", "a triangle below a circle",
                 "a red circle and a blue square"]:
        assert text in texts
    for text in ["a circle and a circle", "one circle", "five squares", "a red circle and a red square",
                 "a square above a square", "a red circle and a blue circle"]:
        assert text not in texts


@pytest.mark.parametrize("tag", CATEGORIES)
def test_prompt_round_trip(tag):
    for spec in all_prompts(tag):
        assert spec.tag == tag
        assert parse_prompt(spec.text) == spec
        assert PromptSpec(tag, **spec.fields) == spec
        assert spec.text == spec.text.lower() and not spec.text.endswith(".")
    rng = np.random.default_rng(2)
    assert all(sample_prompt(rng, tag).tag == tag for _ in range(20))


def test_parse_prompt_rejects_invalid_text():
    for text in ["a circle.", "A circle", "a circle and a circle", "one circle", "a pink circle",
                 "a red circle and a red square", "", "a circle near a square", " a circle"]:
        with pytest.raises(ValueError, match="not a shapes-world prompt"):
            parse_prompt(text)
    with pytest.raises(ValueError):
        PromptSpec("counting", "circle", number=5)
    with pytest.raises(ValueError):
        PromptSpec("colors", "circle")  # missing colour
    with pytest.raises(ValueError):
        PromptSpec("single_object", "circle", color="red")  # field the template does not take


# ---------------------------------------------------------------- scorer


def bfs_components(classes: np.ndarray) -> np.ndarray:
    """Reference: plain BFS labelling, label = smallest flat index of the component."""
    h, w = classes.shape
    labels = -np.ones((h, w), int)
    for start in range(h * w):
        y, x = divmod(start, w)
        if labels[y, x] >= 0:
            continue
        labels[y, x] = start
        queue = deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                if 0 <= ny < h and 0 <= nx < w and labels[ny, nx] < 0 and classes[ny, nx] == classes[y, x]:
                    labels[ny, nx] = start
                    queue.append((ny, nx))
    return labels


def test_connected_components_match_bfs():
    rng = np.random.default_rng(3)
    for shape, k in [((20, 20), 2), ((17, 23), 3), ((32, 32), 2)]:
        classes = rng.integers(0, k, size=shape)
        assert (connected_components(classes) == bfs_components(classes)).all()
    spiral = np.zeros((15, 15), int)  # one long snake needs many propagation steps
    spiral[1::4, 1:-1] = 1
    spiral[3::4, -2] = 1
    spiral[5::4, 1] = 1
    assert (connected_components(spiral) == bfs_components(spiral)).all()


def test_snap_noise_and_connectivity():
    array = np.full((64, 64, 3), 255, np.uint8)
    array[2:6, 2:6] = (228, 30, 70)  # 16 px of near-red: noise, ignored
    array[10:14, 2:7] = (228, 30, 70)  # 20 px: kept, read as red square
    array[30:40, 30:40] = (0, 130, 200)
    array[40:50, 40:50] = (0, 130, 200)  # touches the first only at a corner: two components
    found = detect_objects(array)
    assert looks(found) == Counter({("square", "red"): 1, ("square", "blue"): 2})
    assert snap_colors(np.array([[[250, 250, 250], [10, 120, 210]]], np.uint8)).tolist() == [[0, 3]]
    with pytest.raises(ValueError):
        detect_objects(np.zeros((64, 64, 3), np.float32))


def test_scorer_reads_its_own_renders_exactly():
    rng = np.random.default_rng(4)
    for _ in range(300):
        s = sample_scene(rng)
        found = detect_objects(render(s))
        assert looks(found) == looks(s.objects)
        # every object is read at its exact box centre
        assert sorted((o.shape, o.color, o.cx, o.cy) for o in s.objects) == sorted(
            (d.shape, d.color, d.cx, d.cy) for d in found)
        tag, text = caption_for_scene(rng, s)
        spec = parse_prompt(text)
        assert spec.tag == tag and passes(spec, found) and passes(spec, s.objects)


def test_triangle_position_is_read_exactly_at_the_relation_threshold():
    # even-d triangle: its apex row holds no pixel, yet its box centre is read exactly
    s = scene(Obj("triangle", "red", 10, 10, 12), Obj("square", "blue", 30, 18, 12))  # cy 16, 24
    assert relation_holds(s.objects[0], s.objects[1], "above")  # offset exactly 8
    assert score_image(parse_prompt("a triangle above a square"), render(s))
    s = scene(Obj("triangle", "red", 10, 10, 12), Obj("square", "blue", 30, 17, 12))  # offset 7
    assert not score_image(parse_prompt("a triangle above a square"), render(s))


@pytest.mark.parametrize("tag", CATEGORIES)
def test_scene_for_prompt_passes_its_prompt(tag):
    rng = np.random.default_rng(5)
    for spec in all_prompts(tag)[:30]:
        for _ in range(2):
            s = scene_for_prompt(rng, spec)
            assert s.problems() == []
            assert score_image(spec, render(s)), (spec.text, s)


@pytest.mark.parametrize("tag", CATEGORIES)
def test_scene_for_prompt_without_distractors_holds_only_what_the_prompt_names(tag):
    rng = np.random.default_rng(6)
    sizes = Counter()
    for spec in all_prompts(tag)[:30]:
        with_extras = scene_for_prompt(rng, spec)
        sizes[len(with_extras.objects)] += 1
        s = scene_for_prompt(rng, spec, distractors=False)
        named = Counter(x for x in (spec.shape, spec.shape2) if x is not None)
        if tag == "counting":
            named = Counter({spec.shape: spec.number})
        assert Counter(o.shape for o in s.objects) == named, (spec.text, s)
        if spec.color is not None:
            assert looks(s.objects)[(spec.shape, spec.color)] == 1
        assert score_image(spec, render(s)), (spec.text, s)
    if tag != "counting":  # by default the same prompts also get scenes with more objects
        assert max(sizes) > (1 if tag in ("single_object", "colors") else 2)


def test_blank_image_fails_every_prompt():
    blank = Image.new("RGB", (64, 64), WHITE)
    assert detect_objects(blank) == []
    assert not any(score_image(p, blank) for tag in CATEGORIES for p in all_prompts(tag))


def test_scorer_fails_wrong_images():
    def ok(text, *objects):
        return score_image(parse_prompt(text), render(scene(*objects)))

    red_circle = Obj("circle", "red", 10, 10, 16)
    assert ok("a red circle", red_circle) and not ok("a blue circle", red_circle)
    assert not ok("a square", red_circle)
    # colors: every circle must have the colour
    assert not ok("a red circle", red_circle, Obj("circle", "blue", 40, 10, 16))
    # counting: exact number, nothing else
    three = [Obj("circle", "red", 4, 4, 14), Obj("circle", "blue", 30, 4, 14), Obj("circle", "red", 4, 30, 14)]
    assert ok("three circles", *three)
    assert not ok("two circles", *three) and not ok("four circles", *three)
    assert not ok("two circles", *three[:2], Obj("square", "red", 40, 40, 12))
    # position: reversed relation fails
    pair = [Obj("circle", "red", 4, 20, 14), Obj("square", "blue", 40, 20, 14)]
    assert ok("a circle to the left of a square", *pair) and ok("a square to the right of a circle", *pair)
    assert not ok("a circle to the right of a square", *pair)
    assert not ok("a square to the left of a circle", *pair)
    assert not ok("a circle above a square", *pair)
    # color_attr: swapped colours fail
    assert ok("a red circle and a blue square", *pair)
    assert not ok("a blue circle and a red square", *pair)
    both_blue = [Obj("circle", "blue", 4, 20, 14), Obj("square", "blue", 40, 20, 14)]
    assert not ok("a red circle and a blue square", *both_blue)
    # two_object needs both
    assert ok("a circle and a square", *pair) and not ok("a circle and a triangle", *pair)


def test_score_generation_overall_is_the_mean_of_categories():
    results = [("single_object", True)] * 9 + [("single_object", False)]  # 0.9
    results += [("two_object", True), ("two_object", False)]  # 0.5
    results += [("counting", False)] * 3  # 0.0
    results += [("colors", True)] * 4  # 1.0
    results += [("position", True), ("position", False), ("position", False), ("position", False)]  # 0.25
    results += [("color_attr", True), ("color_attr", False)]  # 0.5
    scores = score_generation(results)
    assert scores["single_object"] == pytest.approx(0.9) and scores["position"] == pytest.approx(0.25)
    assert scores["overall"] == pytest.approx((0.9 + 0.5 + 0.0 + 1.0 + 0.25 + 0.5) / 6)
    assert scores["overall"] != pytest.approx(np.mean([ok for _, ok in results]))
    with pytest.raises(ValueError):
        score_generation([("nonsense", True)])


# ---------------------------------------------------------------- understanding


@pytest.fixture
def four_objects() -> Scene:
    return scene(
        Obj("circle", "red", 4, 4, 12),  # (10, 10)
        Obj("square", "blue", 30, 4, 12),  # (36, 10)
        Obj("triangle", "green", 4, 40, 16),  # (12, 48)
        Obj("square", "red", 40, 40, 14),  # (47, 47)
    )


def test_questions_for_hand_built_scene(four_objects):
    qa = {q: (form, a) for form, q, a in questions_for_scene(four_objects)}
    assert qa["how many shapes are there?"] == ("count", "four")
    assert qa["how many circles are there?"] == ("count_of", "one")
    assert qa["how many squares are there?"] == ("count_of", "two")
    assert qa["how many triangles are there?"] == ("count_of", "one")
    assert qa["what color is the circle?"] == ("color_of", "red")
    assert qa["what color is the triangle?"] == ("color_of", "green")
    assert "what color is the square?" not in qa  # two squares
    assert qa["what shape is the blue object?"] == ("shape_of", "square")
    assert qa["what shape is the green object?"] == ("shape_of", "triangle")
    assert "what shape is the red object?" not in qa  # two red objects
    assert "what shape is the yellow object?" not in qa  # none
    assert qa["is there a red circle?"] == ("exists", "yes")
    assert qa["is there a blue circle?"] == ("exists", "no")
    assert sum(form == "exists" for form, _ in qa.values()) == 18
    assert qa["is the red circle to the left of the blue square?"] == ("relation", "yes")
    assert qa["is the blue square to the right of the red circle?"] == ("relation", "yes")
    assert qa["is the red circle above the blue square?"] == ("relation", "no")  # same cy
    assert qa["is the green triangle below the red circle?"] == ("relation", "yes")
    assert qa["is the red circle to the left of the green triangle?"] == ("relation", "no")  # 2 px
    assert sum(form == "relation" for form, _ in qa.values()) == 4 * 3 * 4
    assert qa["describe the image."] == (
        "describe", "a red circle, a green triangle, a blue square and a red square")


def test_relation_questions_need_unique_objects():
    s = scene(Obj("circle", "red", 4, 4, 12), Obj("circle", "red", 40, 4, 12), Obj("square", "blue", 20, 40, 12))
    relation_qs = [q for form, q, _ in questions_for_scene(s) if form == "relation"]
    assert relation_qs == []  # only the blue square is unique
    assert "what color is the circle?" not in {q for _, q, _ in questions_for_scene(s)}


def test_describe_formats_and_ties():
    a = Obj("circle", "red", 4, 4, 12)
    assert describe(scene(a)) == "a red circle"
    assert describe(scene(Obj("square", "blue", 30, 4, 12), a)) == "a red circle and a blue square"
    # same cx: top object first
    tie = scene(Obj("triangle", "yellow", 10, 40, 12), Obj("square", "orange", 10, 10, 12))
    assert describe(tie) == "a orange square and a yellow triangle"


def test_score_answer():
    truth = "a red circle, a blue square and a green triangle"
    assert score_answer("describe", "a green triangle, a red circle and a blue square", truth)
    assert score_answer("describe", " A Blue Square and a red circle, a green triangle. ", truth)
    assert not score_answer("describe", "a red circle and a blue square", truth)  # missing one
    assert not score_answer("describe", "a red circle, a red circle and a green triangle", truth)
    assert not score_answer("describe", "a red circle, a blue square and a green triangle and a red circle", truth)
    assert not score_answer("describe", "three shapes", truth)
    assert score_answer("describe", "a red circle and a red circle", "a red circle and a red circle")
    assert not score_answer("describe", "a red circle", "a red circle and a red circle")
    assert score_answer("count", " Two ", "two") and not score_answer("count", "2", "two")
    assert score_answer("exists", "yes", "yes") and not score_answer("exists", "no", "yes")
    assert not score_answer("color_of", "red.", "red")
    with pytest.raises(ValueError):
        score_answer("bogus", "a", "a")


def test_sample_question_covers_every_form_and_balances_yes_no():
    rng = np.random.default_rng(6)
    seen, answers = Counter(), Counter()
    for _ in range(1500):
        s = sample_scene(rng)
        form, question, answer = sample_question(rng, s)
        assert (form, question, answer) in questions_for_scene(s)
        seen[form] += 1
        if form in ("exists", "relation"):
            answers[(form, answer)] += 1
    assert set(seen) == set(FORMS)
    for form in ("exists", "relation"):
        yes, no = answers[(form, "yes")], answers[(form, "no")]
        assert 0.35 < yes / (yes + no) < 0.65


def test_sample_question_form_weights_shift_the_mix_and_are_checked():
    rng = np.random.default_rng(7)
    scenes = [sample_scene(rng, 4) for _ in range(300)]  # four objects: every form is allowed
    weighted = Counter(sample_question(rng, s, {"describe": 5, "count": 0}).form for s in scenes)
    assert weighted["count"] == 0 and weighted["describe"] > 2 * max(weighted[f] for f in FORMS if f != "describe")
    # no weights (or empty ones) draw exactly as before: the same questions from the same generator
    a, b = np.random.default_rng(8), np.random.default_rng(8)
    assert [sample_question(a, s) for s in scenes[:50]] == [sample_question(b, s, {}) for s in scenes[:50]]
    for bad in ({"colour": 1.0}, {"count": -1.0}, {"count": float("nan")}):
        with pytest.raises(ValueError):
            sample_question(rng, scenes[0], bad)


def test_score_understanding():
    scores = score_understanding([("count", True), ("count", False), ("describe", True), ("exists", True)])
    assert scores["count"] == 0.5 and scores["describe"] == 1.0
    assert scores["overall"] == pytest.approx(3 / 4)
