"""Reflow (janusflow.train.reflow) on a tiny model: the pair file's round trip and its errors, the
generation rows' x0 and x1 taken from the pairs (not fresh noise), and a few steps of training on the
pairs lowering their flow loss and straightening the model's own ODE paths from the same noise."""

from __future__ import annotations

import json

import torch
import pytest

from inference_helpers import tiny_model, tiny_processor
from janusflow.cli import main
from janusflow.errors import ConfigError, InputError
from janusflow.flow import TIME_SCALE, interpolate
from janusflow.prompt_rows import generation_mask, position_ids_from_left_padding
from janusflow.sampler import SamplerConfig, sample_latents
from janusflow.train import Shard, Trainer
from janusflow.train.config import load_config
from janusflow.train.losses import flow_errors
from janusflow.train.reflow import (Pairs, ReflowTask, concat_pairs, generate_pairs, judge_pairs, keep_judged,
                                    path_straightness, read_pair_files, read_pairs, write_pairs)
from janusflow.train.toydata import toy_overrides, write_toy_data

CAPTIONS = ["a red circle", "a blue square", "two green circles", "a yellow square above a red circle",
            "a blue circle", "three red squares"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_data(tmp_path_factory.mktemp("toy"))


def config_for(toy, run_dir, *extra):
    return load_config(None, toy_overrides(toy, run_dir) + [
        "stage.ratio={gen: 1}", "losses.repa_weight=0", "losses.prompt_dropout=0", "trainer.ema_decay=0",
        "data.shuffle=false", f"stage.batch_size={len(CAPTIONS)}", "trainer.save_every=1000", *extra])


@pytest.fixture(scope="module")
def drawn():
    model = tiny_model(seed=4)
    processor = tiny_processor(model)
    pairs = generate_pairs(model, processor, CAPTIONS, SamplerConfig(num_steps=8, guidance_scale=1.0), seed=3,
                           batch_size=4)
    return model, processor, pairs


def test_pairs_are_the_models_own_samples_and_survive_the_file(drawn, tmp_path):
    model, processor, pairs = drawn
    assert pairs.x0.shape == pairs.x1.shape == (len(CAPTIONS), 4, 8, 8)
    batch = processor.build_generation_batch(CAPTIONS[4:5], guidance=False)  # pair 4, drawn in the second batch
    alone = sample_latents(model, batch.input_ids, batch.attention_mask, pairs.x0[4:5],
                           SamplerConfig(num_steps=8, guidance_scale=1.0)).latents
    torch.testing.assert_close(alone, pairs.x1[4:5], rtol=0, atol=1e-5)
    back = read_pairs(write_pairs(tmp_path / "p" / "pairs.safetensors", pairs))
    assert back.captions == CAPTIONS and back.sampler["num_steps"] == 8 and back.sampler["seed"] == 3
    assert torch.equal(back.x0, pairs.x0) and torch.equal(back.x1, pairs.x1)


def test_bad_pair_files_are_refused(drawn, tmp_path):
    from safetensors.torch import save_file

    _, _, pairs = drawn
    with pytest.raises(InputError, match="no reflow pair file"):
        read_pairs(tmp_path / "missing.safetensors")
    save_file({"x0": pairs.x0}, tmp_path / "other.safetensors")
    with pytest.raises(InputError, match="not a reflow pair file"):
        read_pairs(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="cannot read"):
        read_pairs(tmp_path / "junk.safetensors")
    with pytest.raises(InputError, match="M = 5 captions"):
        write_pairs(tmp_path / "bad.safetensors", Pairs(CAPTIONS[:5], pairs.x0, pairs.x1, {}))


def test_the_loss_uses_the_stored_x0_and_x1(toy, drawn, tmp_path):
    model, processor, pairs = drawn
    task = ReflowTask(config_for(toy, tmp_path / "run"), pairs, model=model, processor=processor)
    batch = task.micro_batches(0, Shard(0, 1, 1))[0]
    g = batch.gen
    assert torch.equal(g.x0, pairs.x0) and torch.equal(g.latents, pairs.x1)  # in order (no shuffle), not fresh noise
    totals = task.counts(batch)
    with torch.no_grad():
        _, logs = task.module(batch, totals)
        N = model.config.num_image_tokens
        mask = generation_mask(g.attention_mask, N)
        x_t = interpolate(pairs.x0, pairs.x1, g.t)
        v = model.forward_generation(model.embed_prompt(g.input_ids), x_t, g.t * TIME_SCALE, attention_mask=mask,
                                     position_ids=position_ids_from_left_padding(mask)).velocity
    assert logs["rf"] == pytest.approx(float(flow_errors(v, pairs.x0, pairs.x1).mean()), rel=1e-5)


def pair_loss(model, processor, pairs) -> float:
    """Mean flow loss over the pairs at t = 0.1 .. 0.9."""
    batch = processor.build_generation_batch(pairs.captions, guidance=False)
    N = model.config.num_image_tokens
    mask = generation_mask(batch.attention_mask, N)
    losses = []
    with torch.no_grad():
        for t in torch.linspace(0.1, 0.9, 5):
            tt = t.expand(len(pairs.captions))
            v = model.forward_generation(model.embed_prompt(batch.input_ids), interpolate(pairs.x0, pairs.x1, tt),
                                         tt * TIME_SCALE, attention_mask=mask,
                                         position_ids=position_ids_from_left_padding(mask)).velocity
            losses.append(float(flow_errors(v, pairs.x0, pairs.x1).mean()))
    return sum(losses) / len(losses)


def straightness(model, processor, pairs) -> float:
    batch = processor.build_generation_batch(pairs.captions, guidance=False)
    out = sample_latents(model, batch.input_ids, batch.attention_mask, pairs.x0,
                         SamplerConfig(num_steps=8, guidance_scale=1.0), record=True)
    return float(path_straightness(out.trajectory, out.velocities).mean())


def test_a_few_steps_lower_the_pair_loss_and_straighten_the_paths(toy, drawn, tmp_path):
    _, processor, pairs = drawn
    model = tiny_model(seed=4)  # a fresh copy of the model that drew the pairs
    before = pair_loss(model, processor, pairs), straightness(model, processor, pairs)
    config = config_for(toy, tmp_path / "run", "stage.steps=12", "stage.lr=3e-3", "trainer.grad_clip=0")
    Trainer(ReflowTask(config, pairs, model=model, processor=processor), config.trainer_config()).fit()
    after = pair_loss(model, processor, pairs), straightness(model, processor, pairs)
    assert before[1] > 0.05  # the tiny model's paths start curved
    assert after[0] < 0.7 * before[0], (before, after)
    assert after[1] < 0.7 * before[1], (before, after)


def test_reflow_needs_repa_off_and_matching_latents(toy, drawn, tmp_path):
    model, processor, pairs = drawn
    with pytest.raises(ConfigError, match="repa_weight=0"):
        ReflowTask(config_for(toy, tmp_path / "r", "losses.repa_weight=1"), pairs, model=model, processor=processor)
    wrong = Pairs(pairs.captions, pairs.x0[:, :, :4, :4], pairs.x1[:, :, :4, :4], {})
    with pytest.raises(InputError, match="the model's"):
        ReflowTask(config_for(toy, tmp_path / "r"), wrong, model=model, processor=processor)


def test_reflow_pairs_command(capsys, tmp_path):
    from inference_helpers import make_model_folder

    folder = make_model_folder(tmp_path / "model", with_vae=False)
    (folder / "image_generation_config.json").write_text('{"candidates": 3, "judge": "shapes"}')
    prompts = tmp_path / "captions.txt"
    prompts.write_text("a red circle\n\na blue square\n")
    code = main(["reflow-pairs", "--model", str(folder), "--prompts", str(prompts), "--out",
                 str(tmp_path / "pairs.safetensors"), "--steps", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    pairs = read_pairs(out.strip())
    assert pairs.captions == ["a red circle", "a blue square"] and pairs.sampler["guidance_scale"] == 2.0
    config = tmp_path / "reflow.yaml"
    config.write_text(f"run_dir: {tmp_path / 'run'}\nmodel: {{path: {folder}}}\nstage: {{steps: 2, batch_size: 2, "
                      "ratio: {gen: 1}}\nlosses: {repa_weight: 0, prompt_dropout: 0}\ntrainer: {progress: false}\n")
    assert main(["reflow-train", out.strip(), str(config)]) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    # the fine-tune keeps its base folder's best-of-N defaults
    assert json.loads((tmp_path / "run" / "export" / "image_generation_config.json").read_text()) == \
        {"candidates": 3, "judge": "shapes"}
    assert main(["reflow-train", out.strip(), str(config), "losses.repa_weight=1"]) == 1
    assert "repa_weight=0" in capsys.readouterr().err
    assert main(["reflow-pairs", "--model", str(folder), "--prompts", str(tmp_path / "none.txt"), "--out",
                 str(tmp_path / "x.safetensors")]) == 1
    assert "no prompts file" in capsys.readouterr().err


def test_pair_files_join_in_name_order_and_refuse_mixed_shapes(drawn, tmp_path):
    _, _, pairs = drawn
    halves = [Pairs(pairs.captions[:2], pairs.x0[:2], pairs.x1[:2], pairs.sampler),
              Pairs(pairs.captions[2:], pairs.x0[2:], pairs.x1[2:], {**pairs.sampler, "seed": 99})]
    write_pairs(tmp_path / "shards" / "part-1.safetensors", halves[1])  # written first, read second
    write_pairs(tmp_path / "shards" / "part-0.safetensors", halves[0])
    for spec in (tmp_path / "shards", str(tmp_path / "shards" / "part-*.safetensors"),
                 [tmp_path / "shards" / "part-0.safetensors", tmp_path / "shards" / "part-1.safetensors"]):
        joined = read_pair_files(spec)
        assert joined.captions == CAPTIONS and torch.equal(joined.x0, pairs.x0) and torch.equal(joined.x1, pairs.x1)
        assert joined.sampler == {"parts": [pairs.sampler, {**pairs.sampler, "seed": 99}]}
    assert concat_pairs([pairs]).sampler == pairs.sampler
    small = Pairs(CAPTIONS[:1], pairs.x0[:1, :, :4, :4], pairs.x1[:1, :, :4, :4], {})
    with pytest.raises(InputError, match="different latent shapes"):
        concat_pairs([pairs, small])
    with pytest.raises(InputError, match="no reflow pair file at"):
        read_pair_files(tmp_path / "empty-*.safetensors")


class RedJudge:
    """Accepts the images of captions naming red; records what it was shown."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompt, images):
        self.calls.append((prompt, [image.size for image in images]))
        return [1.0 if "red" in prompt else 0.5] * len(images)


def test_judged_pairs_keep_the_images_the_judge_accepts(drawn):
    from janusflow.train.latents import tiny_vae

    _, _, pairs = drawn
    vae = tiny_vae(4, seed=0)
    judge = RedJudge()
    scores = judge_pairs(pairs, judge, vae, batch_size=1)
    assert scores.tolist() == [1.0 if "red" in c else 0.5 for c in CAPTIONS]
    assert [p for p, _ in judge.calls] == CAPTIONS and all(sizes == [(16, 16)] for _, sizes in judge.calls)
    kept = keep_judged(pairs, scores, 1.0, "red")
    red = [i for i, c in enumerate(CAPTIONS) if "red" in c]
    assert kept.captions == [CAPTIONS[i] for i in red] and torch.equal(kept.x0, pairs.x0[red])
    assert torch.equal(kept.x1, pairs.x1[red])
    assert kept.sampler == {**pairs.sampler, "judge": "red", "min_score": 1.0, "drawn": 6, "kept": len(red)}
    assert len(keep_judged(pairs, scores, 0.5, "red").captions) == 6
    with pytest.raises(InputError, match="scored no pair at least 2"):
        keep_judged(pairs, scores, 2.0, "red")


def test_reflow_pairs_and_filter_commands_with_a_judge(capsys, tmp_path):
    from inference_helpers import make_model_folder
    from janusflow.judges import register_judge

    register_judge("test_red_only", lambda model, processor: RedJudge())
    folder = make_model_folder(tmp_path / "model")
    prompts = tmp_path / "captions.txt"
    prompts.write_text("a red circle\na blue square\nthree red squares\n")
    drawn_file = tmp_path / "all.safetensors"
    assert main(["reflow-pairs", "--model", str(folder), "--prompts", str(prompts), "--out", str(drawn_file),
                 "--steps", "2"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    code = main(["reflow-filter", str(drawn_file), "--model", str(folder), "--judge", "test_red_only",
                 "--out", str(tmp_path / "kept.safetensors")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "kept 2 of 3 pairs" in err
    kept = read_pairs(out.strip())
    assert kept.captions == ["a red circle", "three red squares"] and kept.sampler["judge"] == "test_red_only"
    assert torch.equal(kept.x0, read_pairs(drawn_file).x0[[0, 2]])
    assert main(["reflow-pairs", "--model", str(folder), "--prompts", str(prompts), "--out",
                 str(tmp_path / "direct.safetensors"), "--steps", "2", "--judge", "test_red_only"]) == 0
    direct = read_pairs(capsys.readouterr().out.strip())
    assert direct.captions == kept.captions and torch.equal(direct.x1, kept.x1)
    assert main(["reflow-filter", str(drawn_file), "--model", str(folder), "--out", str(tmp_path / "x")]) == 1
    assert "needs --judge" in capsys.readouterr().err
    assert main(["reflow-filter", str(drawn_file), "--model", str(folder), "--judge", "nobody_registered",
                 "--out", str(tmp_path / "x")]) == 1
    assert "no judge named 'nobody_registered'" in capsys.readouterr().err
    no_vae = make_model_folder(tmp_path / "novae", with_vae=False)
    assert main(["reflow-filter", str(drawn_file), "--model", str(no_vae), "--judge", "test_red_only",
                 "--out", str(tmp_path / "x")]) == 1
    assert "has no vae/ folder" in capsys.readouterr().err


def test_the_shapes_understanding_stream_is_a_config_source():
    from janusflow.train.samples import ConversationSample
    from janusflow.train.sources import open_source

    source = open_source("und", ["python:janusflow.shapes.recipe.streams:understanding_stream"])
    first, again = source.read(5), open_source("und", "python:janusflow.shapes.recipe.streams:understanding_stream").read(5)
    assert isinstance(first, ConversationSample) and len(first.images) == 1
    assert first.messages == again.messages and first.messages[0]["content"].startswith("<image_placeholder>")
    assert source.read(6).messages != first.messages
