"""The contrastive term on negative captions (train/losses.py): its math, its data path, its value
against an independent computation, and the shapes recipe's swapped twins."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from janusflow.errors import ConfigError, InputError
from janusflow.flow import TIME_SCALE, interpolate
from janusflow.processor import position_ids_from_left_padding
from janusflow.shapes.prompts import PromptSpec, edited_prompts, parse_prompt, swapped_prompt
from janusflow.shapes.scorer import detect_objects, passes
from janusflow.train import Shard
from janusflow.train.config import load_config
from janusflow.train.losses import flow_errors, negative_prompt_sum
from janusflow.train.samples import CaptionSample, caption_from_record
from janusflow.train.task import JanusFlowTask
from janusflow.train.toydata import draw, toy_overrides, write_toy_data


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_data(tmp_path_factory.mktemp("toy"), count=6)


def test_the_soft_hinge_has_the_stated_values_and_gradients():
    m = 0.01
    e_true = torch.tensor([0.3, 0.3, 0.3, 0.9], requires_grad=True)
    e_neg = torch.tensor([0.3, 0.9, 0.0, 0.0], requires_grad=True)
    per_row = [negative_prompt_sum(e_true[i:i + 1], e_neg[i:i + 1], m).item() for i in range(4)]
    assert per_row[0] == pytest.approx(m * math.log(2))  # no difference: m log 2
    assert per_row[1] == pytest.approx(0.0, abs=1e-12)  # the true caption far better: nothing
    assert per_row[2] == pytest.approx(0.3, rel=1e-3)  # far worse: the gap itself
    masked = negative_prompt_sum(e_true, e_neg, m, active=torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert masked.item() == pytest.approx(per_row[0] + per_row[2], rel=1e-6)
    masked.backward()
    assert e_true.grad[0] == pytest.approx(0.5) and e_neg.grad[0] == pytest.approx(-0.5)  # sigmoid(0)
    assert e_true.grad[1] == 0 and e_neg.grad[3] == 0  # masked rows get nothing


def test_records_read_a_negative_and_refuse_bad_ones():
    sample = caption_from_record({"image": "a.png", "caption": "a red square", "negative": "a blue square"})
    assert sample.negative == "a blue square"
    assert caption_from_record({"image": "a.png", "caption": "a red square"}).negative is None
    with pytest.raises(InputError, match="non-empty"):
        caption_from_record({"image": "a.png", "caption": "a red square", "negative": " "})
    with pytest.raises(InputError, match="its own caption"):
        caption_from_record({"image": "a.png", "caption": "a red square", "negative": "a red square"})


def test_loss_settings_are_checked(toy, tmp_path):
    for bad in ("losses.negative_weight=-1", "losses.negative_margin=0", "losses.negative_max_t=0",
                "losses.negative_max_t=1.5"):
        with pytest.raises(ConfigError, match="negative"):
            load_config(None, toy_overrides(toy, tmp_path) + [bad]).validate()


SAMPLES = [("a red square", "a blue square", "red", "square"), ("a green circle", "a green square", "green", "circle"),
           ("a blue circle", "a yellow circle", "blue", "circle")]


def _task(toy, run_dir, samples, *extra):
    config = load_config(None, toy_overrides(toy, run_dir) + [
        "stage.ratio={gen: 1}", f"stage.batch_size={len(samples)}", "losses.prompt_dropout=0", "losses.repa_weight=0",
        "data.shuffle=false", *extra])
    torch.manual_seed(0)
    return JanusFlowTask(config, sources={"gen": samples})


def _loss_and_logs(task):
    batch = task.micro_batches(0, Shard(0, 1, 1))[0]
    with torch.no_grad():
        loss, logs = task.module(batch, task.counts(batch))
    return batch, float(loss), logs


def test_the_term_equals_the_hinge_of_two_independent_flow_losses(toy, tmp_path):
    with_neg = [CaptionSample(c, draw(col, shape), negative=n) for c, n, col, shape in SAMPLES]
    task = _task(toy, tmp_path / "a", with_neg, "losses.negative_weight=2", "losses.negative_max_t=1")
    batch, loss, logs = _loss_and_logs(task)
    assert batch.gen.neg_rows.tolist() == [0, 1, 2]
    # each row alone, once with its caption and once with its negative as the caption: the same x0
    # and t (they are drawn from the run's seed and the row's slot, not from the caption)
    errors = {}
    for which in ("caption", "negative"):
        for row, (c, n, col, shape) in enumerate(SAMPLES):
            others = [CaptionSample(s[0], draw(s[2], s[3])) for s in SAMPLES]
            others[row] = CaptionSample(c if which == "caption" else n, draw(col, shape))
            alone = _task(toy, tmp_path / f"{which}{row}", others)
            alone.module.load_state_dict(task.module.state_dict())
            b = alone.micro_batches(0, Shard(0, 1, 1))[0]
            assert torch.equal(b.gen.x0, batch.gen.x0) and torch.equal(b.gen.t, batch.gen.t)
            g = b.gen
            L = g.input_ids.shape[1]
            N = task.model.config.num_image_tokens
            ones = torch.ones(len(SAMPLES), 1 + N, dtype=g.attention_mask.dtype)
            mask = torch.cat([g.attention_mask[:, : L - 1], ones], 1)
            with torch.no_grad():
                v = alone.model.forward_generation(
                    alone.model.embed_prompt(g.input_ids), interpolate(g.x0, g.latents, g.t), g.t * TIME_SCALE,
                    attention_mask=mask, position_ids=position_ids_from_left_padding(mask)).velocity
            errors[which, row] = float(flow_errors(v, g.x0, g.latents)[row])
    hinge = [0.01 * math.log1p(math.exp((errors["caption", r] - errors["negative", r]) / 0.01)) for r in range(3)]
    assert logs["neg"] == pytest.approx(sum(hinge) / 3, rel=1e-4)
    wins = sum(errors["caption", r] < errors["negative", r] for r in range(3)) / 3
    assert logs["neg_win"] == pytest.approx(wins)
    # the loss is the flow loss plus weight x the term; with the weight at 0 the term is gone
    off = _task(toy, tmp_path / "off", with_neg)
    off.module.load_state_dict(task.module.state_dict())
    _, loss_off, logs_off = _loss_and_logs(off)
    assert "neg" not in logs_off and off.micro_batches(0, Shard(0, 1, 1))[0].gen.neg_rows is not None
    assert loss == pytest.approx(loss_off + 2 * logs["neg"], rel=1e-5)


def test_only_rows_below_max_t_and_not_dropped_count(toy, tmp_path):
    samples = [CaptionSample(c, draw(col, shape), negative=n) for c, n, col, shape in SAMPLES * 4]
    task = _task(toy, tmp_path, samples, "losses.negative_weight=1", "losses.prompt_dropout=0.5",
                 "losses.negative_max_t=0.5")
    g = task.micro_batches(0, Shard(0, 1, 1))[0].gen
    kept = [i for i in range(len(samples)) if not g.dropped[i]]
    assert g.neg_rows.tolist() == kept and len(kept) < len(samples)  # dropped rows have no prompt to contrast
    assert g.neg_ids.shape[0] == len(kept) and g.neg_mask.shape == g.neg_ids.shape
    assert task.counts(task.micro_batches(0, Shard(0, 1, 1))[0])["neg_samples"] == sum(
        float(g.t[i]) < 0.5 for i in kept)


# -- the shapes recipe's negatives ----------------------------------------------------------------

def test_swapped_prompts_swap_the_binding_only():
    assert swapped_prompt(parse_prompt("a circle above a square")).text == "a square above a circle"
    assert swapped_prompt(parse_prompt("a red circle and a blue square")).text == "a blue circle and a red square"
    for text in ("a circle", "a circle and a square", "three circles", "a red circle"):
        assert swapped_prompt(parse_prompt(text)) is None
    spec = PromptSpec("position", "triangle", shape2="circle", relation="to the left of")
    assert swapped_prompt(swapped_prompt(spec)) == spec


def test_shapes_generation_samples_carry_a_negative_false_of_their_image():
    from janusflow.shapes.recipe.streams import generation_sample

    seen = 0
    for i in range(60):
        weights = {"position": 5, "color_attr": 5}
        sample = generation_sample(np.random.default_rng([7, i]), 0.75, weights, 1.0, negatives="swap")
        plain = generation_sample(np.random.default_rng([7, i]), 0.75, weights, 1.0)
        assert sample.caption == plain.caption and np.array_equal(np.asarray(sample.image), np.asarray(plain.image))
        assert plain.negative is None
        found = detect_objects(sample.image)
        assert passes(parse_prompt(sample.caption), found)
        if sample.negative is not None:
            seen += 1
            negative = parse_prompt(sample.negative)
            assert negative == swapped_prompt(parse_prompt(sample.caption))
            assert not passes(negative, found)
    assert seen >= 20


def test_edited_prompts_are_one_edit_away_and_grouped_by_kind():
    prompt = parse_prompt("a red circle and a blue square")
    edits = edited_prompts(prompt)
    assert set(edits) == {"swap", "shape", "color"}
    assert [p.text for p in edits["swap"]] == ["a blue circle and a red square"]
    assert sorted(p.text for p in edits["shape"]) == ["a red circle and a blue triangle", "a red triangle and a blue square"]
    assert len(edits["color"]) == 2 * 4  # each colour by one of the 4 others that are not the other colour
    for kind, group in edits.items():
        for edit in group:
            changed = [k for k, v in edit.fields.items() if v != prompt.fields[k]]
            assert len(changed) == (2 if kind == "swap" else 1)
    position = edited_prompts(parse_prompt("a circle above a square"))
    assert set(position) == {"swap", "shape", "relation"} and len(position["relation"]) == 3
    assert edited_prompts(parse_prompt("three circles")) == {}
    counting = edited_prompts(parse_prompt("three circles"), binding_only=False)
    assert {k: sorted(p.text for p in v) for k, v in counting.items()} == {
        "shape": ["three squares", "three triangles"], "number": ["four circles", "two circles"]}
    assert set(edited_prompts(parse_prompt("a red circle"), binding_only=False)) == {"shape", "color"}
    assert set(edited_prompts(parse_prompt("a circle and a square"), binding_only=False)) == {"shape"}


def test_all_edits_negatives_cover_every_category_and_are_false():
    from janusflow.shapes.recipe.streams import generation_sample

    kinds, tags = set(), set()
    for i in range(60):
        sample = generation_sample(np.random.default_rng([3, i]), 1.0, None, 0.0, "all_edits",
                                   np.random.default_rng([4, i]))
        edits_only = generation_sample(np.random.default_rng([3, i]), 1.0, None, 0.0, "edits",
                                       np.random.default_rng([4, i]))
        prompt = parse_prompt(sample.caption)
        if prompt.tag not in ("position", "color_attr"):
            assert edits_only.negative is None
        if sample.negative is not None:
            negative = parse_prompt(sample.negative)
            kinds.add(next(k for k, group in edited_prompts(prompt, binding_only=False).items() if negative in group))
            tags.add(prompt.tag)
            assert negative.tag == prompt.tag and not passes(negative, detect_objects(sample.image))
    assert kinds >= {"shape", "color", "number"} and tags >= {"counting", "single_object", "two_object", "colors"}


def test_edit_negatives_are_drawn_from_their_own_stream():
    from janusflow.shapes.recipe.streams import generation_sample

    kinds = set()
    for i in range(40):
        args = (0.75, {"position": 5, "color_attr": 5}, 1.0)
        sample = generation_sample(np.random.default_rng([7, i]), *args, "edits", np.random.default_rng([9, i]))
        again = generation_sample(np.random.default_rng([7, i]), *args, "edits", np.random.default_rng([9, i]))
        plain = generation_sample(np.random.default_rng([7, i]), *args)
        assert (sample.caption, sample.negative) == (again.caption, again.negative) and sample.caption == plain.caption
        if sample.negative is not None:
            prompt, negative = parse_prompt(sample.caption), parse_prompt(sample.negative)
            kind = next(k for k, group in edited_prompts(prompt).items() if negative in group)
            kinds.add(kind)
            assert not passes(negative, detect_objects(sample.image))
    assert kinds == {"swap", "shape", "color", "relation"}
    with pytest.raises(ConfigError, match="negatives"):
        generation_sample(np.random.default_rng(0), 0.75, None, 1.0, "everything")
