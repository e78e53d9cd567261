"""Best-of-N sampling (``best_of``) through the pipeline, and the shapes world's self-check judge
(``shapes.self_check``): its questions against an oracle that answers from the true scene, and the
embedded model judging true and wrong renders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from inference_helpers import make_model_folder
from janusflow.best_of import check_candidates, search
from janusflow.cli import main
from janusflow.errors import InputError
from janusflow.pipeline import JanusFlowPipeline, default_model_dir, generate_geneval
from janusflow.shapes import render
from janusflow.shapes.prompts import all_prompts, swapped_prompt
from janusflow.shapes.questions import questions_for_scene
from janusflow.shapes.sampler import scene_for_prompt
from janusflow.shapes.scorer import passes
from janusflow.shapes.self_check import ShapesJudge, first_round
from janusflow.shapes.world import CATEGORIES

PROMPTS = ["a red circle", "a blue square"]


class IndexJudge:
    """Scores candidate k of a prompt by ``prefer(k)``; records what it was shown."""

    def __init__(self, prefer):
        self.prefer, self.calls = prefer, []

    def validate(self, prompt):
        if prompt.startswith("bad"):
            raise InputError(f"cannot judge {prompt!r}")

    def __call__(self, prompt, images):
        self.calls.append((prompt, len(images)))
        return [self.prefer(k) for k in range(len(images))]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipe = JanusFlowPipeline.from_pretrained(make_model_folder(tmp_path_factory.mktemp("tiny") / "m"), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- best_of: the layout and the choice -------------------------------------------------------------------

class TableJudge:
    """Scores image i of a call by ``table[prompt][candidate of that image]``; ``perfect`` optional."""

    def __init__(self, table, perfect=None):
        self.table, self.calls = table, []
        if perfect is not None:
            self.perfect = perfect

    def __call__(self, prompt, images):
        self.calls.append((prompt, list(images)))
        return [self.table[prompt][row] for row in images]  # the "images" are their rows here


def drawer(log):
    def draw(rows):
        log.append(list(rows))
        return list(rows)  # stands in for the images: the judge reads the row back
    return draw


SCORES = {"p": {r: s for r, s in enumerate([0, 2, 1, 5, 5, 0])},  # 2 prompts x 2 images x 3 candidates
          "q": {r: s for r, s in zip(range(6, 12), [1, 1, 1, 0, 0, 3])}}


def test_search_layout_and_ties_in_one_round():
    log = []
    judge = TableJudge(SCORES)
    keep = search(["p", "q"], 2, 3, judge, drawer(log))
    assert keep == [1, 3, 6, 11]  # the best of each three; a tie keeps the first
    assert log == [list(range(12))]  # no perfect score: every candidate in one round
    assert [(p, rows) for p, rows in judge.calls] == [("p", [0, 1, 2, 3, 4, 5]), ("q", [6, 7, 8, 9, 10, 11])]


def test_search_stops_an_image_at_its_first_perfect_candidate():
    log = []
    keep = search(["p", "q"], 2, 3, TableJudge(SCORES, perfect=5), drawer(log))
    assert keep == [1, 3, 6, 11]  # what the full search keeps
    assert log == [[0, 3, 6, 9], [1, 7, 10], [2, 8, 11]]  # image 1 of p stopped at its perfect first candidate
    log = []
    assert search(["p"], 2, 3, TableJudge(SCORES, perfect=0), drawer(log)) == [0, 3]
    assert log == [[0, 3]]  # all perfect after one round: no second round


@pytest.mark.parametrize("seed", range(20))
def test_search_with_perfect_keeps_what_the_full_search_keeps(seed):
    rng = np.random.default_rng(seed)
    prompts, K, N = ["p", "q", "r"], int(rng.integers(1, 4)), int(rng.integers(1, 5))
    table = {p: {r: int(rng.integers(0, 3)) for r in range(i * K * N, (i + 1) * K * N)} for i, p in enumerate(prompts)}
    log = []
    assert search(prompts, K, N, TableJudge(table, perfect=2), drawer(log)) == search(prompts, K, N, TableJudge(table),
                                                                                      drawer([]))
    assert sum(map(len, log)) <= len(prompts) * K * N


def test_search_checks_counts():
    with pytest.raises(ValueError, match="drew 3 images for 4 rows"):
        search(["p"], 2, 2, TableJudge(SCORES), lambda rows: rows[:3])
    with pytest.raises(ValueError, match="returned 3 scores for 4"):
        search(["p"], 2, 2, lambda p, i: [0, 0, 0], lambda rows: rows)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_check_candidates_refuses_bad_counts(bad):
    with pytest.raises(InputError, match="candidates must be a positive integer"):
        check_candidates(bad, IndexJudge(lambda k: 0), PROMPTS)


def test_check_candidates_needs_a_judge_and_asks_it_first():
    check_candidates(1, None, PROMPTS)
    with pytest.raises(InputError, match="needs a judge"):
        check_candidates(2, None, PROMPTS)
    with pytest.raises(InputError, match="cannot judge 'bad one'"):
        check_candidates(2, IndexJudge(lambda k: 0), ["fine", "bad one"])


def test_pipeline_keeps_the_judged_candidate(pipe):
    plain = pipe(PROMPTS, num_images_per_prompt=6, generator=3, output_type="latent").images
    judge = IndexJudge(lambda k: k % 3)  # the last of each three candidates
    best = pipe(PROMPTS, num_images_per_prompt=2, candidates=3, judge=judge, generator=3, output_type="latent").images
    torch.testing.assert_close(best, plain[[2, 5, 8, 11]])  # same noise rows: candidate c of image j is row 3j + c
    assert judge.calls == [(PROMPTS[0], 6), (PROMPTS[1], 6)]
    one = pipe(PROMPTS, num_images_per_prompt=2, candidates=1, judge=judge, generator=3, output_type="latent").images
    torch.testing.assert_close(one, pipe(PROMPTS, num_images_per_prompt=2, generator=3, output_type="latent").images)
    assert len(judge.calls) == 2  # one candidate: nothing to judge
    pil = pipe(PROMPTS[0], num_images_per_prompt=2, candidates=3, judge=judge, generator=3).images
    assert len(pil) == 2 and pil[0].mode == "RGB"


def test_pipeline_stops_at_a_perfect_candidate(pipe):
    plain = pipe(PROMPTS, num_images_per_prompt=6, generator=3, output_type="latent").images
    judge = IndexJudge(lambda k: 1.0)
    judge.perfect = 1.0  # every first candidate is perfect: one round, candidate 0 of every image
    steps = []
    best = pipe(PROMPTS, num_images_per_prompt=2, candidates=3, judge=judge, generator=3, output_type="latent",
                callback=lambda k, n: steps.append(k)).images
    torch.testing.assert_close(best, plain[[0, 3, 6, 9]])
    assert judge.calls == [(PROMPTS[0], 2), (PROMPTS[1], 2)] and len(steps) == 30  # one batch of 4 rows


def test_pipeline_refuses_before_sampling(pipe):
    with pytest.raises(InputError, match="needs a judge"):
        pipe(PROMPTS, candidates=2)
    judge = IndexJudge(lambda k: 0)
    with pytest.raises(InputError, match="cannot judge"):
        pipe(["bad prompt"], candidates=2, judge=judge)
    assert judge.calls == []
    with pytest.raises(InputError, match="2 generators for 6 samples"):
        pipe(PROMPTS[0], num_images_per_prompt=2, candidates=3, judge=judge, generator=[torch.Generator()] * 2)
    no_vae = JanusFlowPipeline(pipe.model, pipe.processor)
    with pytest.raises(InputError, match="the judge reads images"):
        no_vae(PROMPTS, candidates=2, judge=judge, output_type="latent")


def test_geneval_layout_validates_every_prompt_with_the_judge(pipe, tmp_path):
    meta = tmp_path / "meta.jsonl"
    meta.write_text("\n".join(json.dumps({"prompt": p}) for p in ["a red circle", "bad prompt"]) + "\n")
    judge = IndexJudge(lambda k: 0)
    with pytest.raises(InputError, match="prompt 1 .*cannot judge"):
        generate_geneval(pipe, meta, tmp_path / "out", 2, show_progress=False, candidates=2, judge=judge)
    assert judge.calls == [] and not (tmp_path / "out" / "00000").exists()


# -- the shapes self-check ----------------------------------------------------------------------------------

class OracleChat:
    """Answers a question about a render as the spec's true answer for the scene it was drawn from
    ("none" for a question the spec does not ask of that scene)."""

    def __init__(self):
        self.scenes = {}

    def image(self, scene):
        image = render(scene)
        self.scenes[id(image)] = scene
        return image

    def ask_batch(self, items, config=None):
        answers = []
        for images, question in items:
            truth = {qa.question: qa.answer for qa in questions_for_scene(self.scenes[id(images[0])])}
            answers.append(truth.get(question, "none"))
        return answers


@pytest.mark.parametrize("tag", CATEGORIES)
def test_self_check_with_true_answers_agrees_with_the_scorer(tag):
    """With an oracle's answers the judge's full score marks exactly the scenes that pass the prompt,
    over scenes built for the prompt, for its swapped twin and for random other prompts."""
    chat, rng = OracleChat(), np.random.default_rng(7)
    judge = ShapesJudge(chat, batch_size=5)
    prompts = all_prompts(tag)
    seen = {True: 0, False: 0}
    for i in range(24):
        prompt = prompts[int(rng.integers(len(prompts)))]
        other = swapped_prompt(prompt) if i % 2 else None
        if other is None:
            pool = all_prompts(CATEGORIES[int(rng.integers(len(CATEGORIES)))])
            other = pool[int(rng.integers(len(pool)))]
        scenes = [scene_for_prompt(rng, prompt, distractors=False), scene_for_prompt(rng, other, distractors=False)]
        scores = judge(prompt.text, [chat.image(s) for s in scenes])
        for scene, score in zip(scenes, scores):
            truth = passes(prompt, scene.objects)
            assert (score == 1.0) == truth, (prompt.text, scene, score)
            seen[truth] += 1
    assert seen[True] >= 12 and seen[False] >= 4


def test_self_check_questions_are_the_spec_forms():
    forms = {"how many", "what color is the", "is there a", "is the"}
    for tag in CATEGORIES:
        for prompt in all_prompts(tag)[:5]:
            for question, _ in first_round(prompt):
                assert question.endswith("?") and any(question.startswith(f) for f in forms)


def test_self_check_refuses_other_prompts():
    with pytest.raises(InputError, match="shapes-world prompts only"):
        ShapesJudge(OracleChat()).validate("a photo of a cat")


@pytest.mark.skipif(default_model_dir() is None, reason="no embedded model")
def test_embedded_model_judges_true_renders_above_swapped_ones():
    """The shipped model's own answers rank a render of the prompt above one of its swapped twin."""
    pipe = JanusFlowPipeline.from_pretrained(default_model_dir(), device="cpu")
    from janusflow.understanding import JanusFlowChat

    judge, rng = ShapesJudge(JanusFlowChat(pipe.model, pipe.processor)), np.random.default_rng(11)
    right = 0
    prompts = [p for tag in ("color_attr", "position") for p in all_prompts(tag)[::9]][:16]
    for prompt in prompts:
        true, swapped = (render(scene_for_prompt(rng, p, distractors=False)) for p in (prompt, swapped_prompt(prompt)))
        good, bad = judge(prompt.text, [true, swapped])
        right += good > bad
    assert right >= 0.8 * len(prompts), (right, len(prompts))


# -- the command line ----------------------------------------------------------------------------------------

def test_cli_generate_candidates_errors(tmp_path, capsys):
    assert main(["generate", "a red circle", "--out", str(tmp_path), "--candidates", "0"]) == 1
    assert "--candidates must be at least 1" in capsys.readouterr().err
    if default_model_dir() is not None:
        assert main(["generate", "a photo of a cat", "--out", str(tmp_path), "--candidates", "2"]) == 1
        assert "shapes-world prompts only" in capsys.readouterr().err
        assert not any(tmp_path.iterdir())
