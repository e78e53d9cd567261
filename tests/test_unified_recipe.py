"""Recipe part 4 (janusflow.shapes.recipe.unified / assemble) and `janusflow eval shapes`: the model
built from the parts, the on-the-fly data, what trains in each phase, a stage's settings reaching the
trainer, a stage run in segments, and the eval command end to end on a tiny random model. The whole
recipe as one command: tests/test_recipe_command.py."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from janusflow.errors import ConfigError
from janusflow.shapes import FORMS, parse_prompt, questions_for_scene, sample_scene, score_image
from janusflow.shapes.recipe import streams, unified
from janusflow.shapes.recipe.config import REPO_CONFIGS, StageSpec, load_recipe
from janusflow.shapes.recipe.unified import TrainingSettings

PHASES = ("adaptation", "pretrain", "sft")
TINY_GEN = (16, 1)  # gen_channels, gen_layers of the smoke recipe
TINY = TrainingSettings(repa_layer=1, eval_prompts=1, eval_images=1, eval_questions=3)


def tiny_spec(**changes) -> StageSpec:
    return dataclasses.replace(StageSpec(kind="janusflow", phase="sft", start="parts", steps=2, segment=2,
                                         batch_size=4, lr=1e-3, warmup_steps=1, save_every=1), **changes)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_tiny_parts(parts: Path) -> Path:
    """Random parts 1-3 at the recipe's tiny sizes: tokenizer, LLM, SigLIP tower, VAE."""
    from transformers import LlamaForCausalLM, SiglipVisionModel

    from janusflow.shapes.recipe.corpus import tokenizer_corpus
    from janusflow.shapes.recipe.lm import tiny_language
    from janusflow.shapes.recipe.siglip import tiny_siglip
    from janusflow.shapes.recipe.vae import TINY_VAE, build_vae
    from janusflow.tokenizer_build import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer(tokenizer_corpus(num_scenes=30), 320, parts / "tokenizer")
    LlamaForCausalLM(tiny_language(len(tokenizer)).to_llama()).save_pretrained(parts / "llm")
    SiglipVisionModel(tiny_siglip().vision.to_siglip()).save_pretrained(parts / "und_encoder")
    vae = build_vae(TINY_VAE)
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(parts / "vae")
    return parts


@pytest.fixture(scope="module")
def tiny_parts(tmp_path_factory) -> Path:
    return write_tiny_parts(tmp_path_factory.mktemp("model") / "parts")


def test_model_from_parts_has_their_weights_and_one_token_grid(tiny_parts):
    from transformers import LlamaForCausalLM, SiglipVisionModel

    config = unified.model_config(tiny_parts, *TINY_GEN)
    assert config.und_vision.grid == config.gen_vision.latent_grid == 4  # 64 px / patch 16; latent 32 / 8
    assert config.gen_vision.upsamples == 3 and config.gen_vision.latent_size == 32
    model, processor = unified.init_from_parts(tiny_parts, *TINY_GEN)
    llm = LlamaForCausalLM.from_pretrained(tiny_parts / "llm")
    siglip = SiglipVisionModel.from_pretrained(tiny_parts / "und_encoder")
    assert torch.equal(model.language_model.lm_head.weight, llm.lm_head.weight)
    assert torch.equal(model.und_encoder.siglip.encoder.layers[0].mlp.fc1.weight,
                       siglip.encoder.layers[0].mlp.fc1.weight)
    assert processor.num_image_tokens == 16 and processor.num_gen_image_tokens == 16


def test_default_sizes_meet_the_repa_grid_and_the_speed_budget():
    from janusflow.shapes.recipe.siglip import default_vision

    und = default_vision()
    vae_dir = Path(unified.__file__).resolve().parents[2] / "default_model" / "vae"
    if not (vae_dir / "config.json").is_file():
        pytest.skip("the default model is not installed")
    sizes = load_recipe(REPO_CONFIGS / "shapes.yaml").model
    gen = unified.gen_vision_for(und, vae_dir, sizes.gen_channels, sizes.gen_layers)
    assert (gen.latent_size, gen.kernel_size, gen.latent_grid, gen.upsamples) == (16, 2, 8, 1)


def test_sources_are_deterministic_and_true_to_the_spec():
    sources = unified.shapes_sources(0, TrainingSettings())
    a, b = sources["und"](5), sources["und"](5)
    assert a.messages == b.messages and np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    forms, gen_tags = Counter(), Counter()
    for i in range(60):
        sample = sources["und"](i)
        assert sample.messages[0]["content"].startswith("<image_placeholder>\n")
        assert sum(m["content"].count("<image_placeholder>") for m in sample.messages) == 1
        assert [m["role"] for m in sample.messages][:2] == ["User", "Assistant"]
        scene = sample_scene(streams.sample_rng(0, "und", i))  # the sample's first draw is its scene
        truth = {qa.question: qa.answer for qa in questions_for_scene(scene)}
        for user, answer in zip(sample.messages[::2], sample.messages[1::2]):
            question = user["content"].removeprefix("<image_placeholder>\n")
            assert answer["content"] == truth[question]
            forms[next(qa.form for qa in questions_for_scene(scene) if qa.question == question)] += 1
        caption = sources["gen"](i)
        spec = parse_prompt(caption.caption)
        gen_tags[spec.tag] += 1
        assert score_image(spec, caption.image)  # every training image passes its caption
        assert sources["text"](i).text == sources["text"](i).text
    assert len(gen_tags) == 6 and set(forms) == set(FORMS)
    # category weights steer the prompt-first captions (3 of 4); the rest stay true captions of random scenes
    only_position = dict.fromkeys(("single_object", "two_object", "counting", "colors", "color_attr"), 0.0)
    settings = TrainingSettings(gen_category_weights=only_position)
    steered = Counter(parse_prompt(unified.shapes_sources(0, settings)["gen"](i).caption).tag for i in range(80))
    assert steered["position"] >= 0.6 * 80  # about 1 in 6 without weights


def test_frozen_modules_follow_the_stage(tiny_parts, tmp_path):
    from janusflow.train.task import JanusFlowTask

    start = unified.write_init(tiny_parts, tmp_path / "init", *TINY_GEN)
    names = {}
    for phase in PHASES:
        config = unified.train_config(phase, tiny_spec(), TINY, start, tmp_path / phase, 0)
        task = JanusFlowTask(config, sources=unified.shapes_sources(0, TINY))
        names[phase] = {n.removeprefix("model.").split(".")[0] for n in task.trainable_parameters()}
    assert "language_model" not in names["adaptation"] and "und_encoder" not in names["adaptation"]
    assert {"gen_encoder", "gen_decoder", "und_aligner", "repa_head"} <= names["adaptation"]
    assert "language_model" in names["pretrain"] and "und_encoder" not in names["pretrain"]
    assert "und_encoder" in names["sft"]


def test_trainable_replaces_every_stages_list(tiny_parts, tmp_path):
    from janusflow.train.task import JanusFlowTask

    settings = dataclasses.replace(TINY, repa_weight=0.0,
                                   trainable=["und_encoder", "und_aligner", "language_model.model.layers.0"])
    start = unified.write_init(tiny_parts, tmp_path / "init", *TINY_GEN)
    for phase in PHASES:
        config = unified.train_config(phase, tiny_spec(), settings, start, tmp_path / phase, 0)
        names = set(JanusFlowTask(config, sources=unified.shapes_sources(0, settings)).trainable_parameters())
        assert {n.removeprefix("model.").split(".")[0] for n in names} == {"und_encoder", "und_aligner", "language_model"}
        assert all(".layers.0." in n for n in names if "language_model" in n)
    for bad in (["und_encoders"], ["language_model..layers"], ["gen"]):
        with pytest.raises(ConfigError, match="trainable"):
            unified.train_config("sft", tiny_spec(), dataclasses.replace(settings, trainable=bad), start, tmp_path / "x", 0)


def test_distractor_share_sets_how_many_prompt_scenes_hold_more_than_the_prompt_names():
    from janusflow.shapes.prompts import parse_prompt
    from janusflow.shapes.scorer import detect_objects

    def extras(share: float) -> float:
        more = 0
        for i in range(300):
            sample = streams.generation_sample(np.random.default_rng(i), 1.0, None, share)
            spec = parse_prompt(sample.caption)
            named = spec.number if spec.tag == "counting" else 1 + (spec.shape2 is not None)
            more += len(detect_objects(np.asarray(sample.image))) > named
        return more / 300

    assert extras(0.0) == 0.0 and 0.45 < extras(1.0) < 0.8 and 0.1 < extras(0.3) < 0.4
    # a share of 1 draws nothing more: the data stream of runs made before the setting is unchanged
    from janusflow.shapes.draws import pick
    from janusflow.shapes.prompts import sample_prompt
    from janusflow.shapes.render import render
    from janusflow.shapes.sampler import scene_for_prompt
    from janusflow.shapes.world import CATEGORIES

    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    sample = streams.generation_sample(rng_a, 1.0, None, 1.0)
    rng_b.random()  # as before the setting: the prompt-first draw, the prompt, its scene
    prompt = sample_prompt(rng_b, pick(rng_b, CATEGORIES, None))
    assert sample.caption == prompt.text
    assert np.array_equal(np.asarray(sample.image), np.asarray(render(scene_for_prompt(rng_b, prompt))))
    assert rng_a.random() == rng_b.random()
    for bad in ({"distractor_share": 1.5}, {"prompt_first_share": -0.1}):
        with pytest.raises(ConfigError, match="share"):
            unified.shapes_sources(0, dataclasses.replace(TINY, **bad))


def test_task_mix_replaces_the_listed_shares_of_every_stage(tiny_parts, tmp_path):
    from janusflow.train.stages import stage_preset

    start = unified.write_init(tiny_parts, tmp_path / "init", *TINY_GEN)
    mixed = dataclasses.replace(TINY, task_mix={"und": 60.0, "text": 0.0})
    for phase in PHASES:
        paper = stage_preset(phase).ratio
        config = unified.train_config(phase, tiny_spec(), mixed, start, tmp_path / phase, 0)
        assert config.stage.ratio == {**paper, "und": 60, "text": 0} and config.stage.ratio["gen"] == paper["gen"]
        assert unified.train_config(phase, tiny_spec(), TINY, start, tmp_path / phase, 0).stage.ratio == paper
    for bad, match in (({"und": 2.5}, "ratio"), ({"vision": 3.0}, "unknown task")):
        with pytest.raises(ConfigError, match=match):
            unified.train_config("sft", tiny_spec(), dataclasses.replace(TINY, task_mix=bad), start, tmp_path / "x", 0)


def test_time_distribution_reaches_the_flow_loss(tiny_parts, tmp_path):
    start = unified.write_init(tiny_parts, tmp_path / "init", *TINY_GEN)
    early = dataclasses.replace(TINY, time_mean=-0.5, time_std=0.8)
    losses = unified.train_config("sft", tiny_spec(), early, start, tmp_path / "sft", 0).losses
    assert (losses.time_mean, losses.time_std) == (-0.5, 0.8)
    paper = unified.train_config("sft", tiny_spec(), TINY, start, tmp_path / "sft", 0).losses
    assert (paper.time_mean, paper.time_std) == (0.0, 1.0)
    with pytest.raises(ConfigError, match="time_std"):
        unified.train_config("sft", tiny_spec(), dataclasses.replace(TINY, time_std=0.0), start, tmp_path / "x", 0)


def test_a_stage_in_segments_keeps_one_schedule_and_records_its_settings(tiny_parts, tmp_path):
    """Each segment is one trainer run; the cool-down spans them. The stage's settings reach the
    trainer's config.yaml, and the chosen export and its REPA projector are left for the next stage."""
    start = unified.write_init(tiny_parts, tmp_path / "init", *TINY_GEN)
    settings = dataclasses.replace(TINY, und_form_weights={"relation": 3.0}, negative_weight=2.0, negatives="edits")
    spec = tiny_spec(steps=4, segment=2, decay_steps=2)
    export, last = unified.run_stage("sft", "sft", spec, settings, start, tmp_path / "sft", seed=5)
    rows = (tmp_path / "sft" / "log.csv").read_text().splitlines()
    lrs = {int(r.split(",")[0]): float(r.split(",")[1]) for r in rows[1:]}
    assert lrs == pytest.approx({2: 1e-3, 4: 0.5e-3})
    evals = [json.loads(line) for line in (tmp_path / "sft" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4] and all(0 <= e["gen_overall"] <= 1 for e in evals)
    assert export == tmp_path / "sft" / last["weights"] and (export / "vae" / "config.json").is_file()
    config = (tmp_path / "sft" / "config.yaml").read_text()
    assert "und_form_weights:\n    relation: 3.0" in config and "negative_weight: 2.0" in config
    assert "\n  seed: 5\n" in config and "batch_size: 4" in config
    assert (tmp_path / "sft" / unified.REPA_HEAD).is_file()
    # the next stage starts its projector there: the carried head equals the saved one
    from janusflow.train.task import JanusFlowTask

    config = unified.train_config("sft", tiny_spec(), TINY, export, tmp_path / "next", 0)
    task = JanusFlowTask(config, sources=unified.shapes_sources(0, TINY))
    assert unified.carry_repa_head(task, tmp_path / "sft")
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "sft" / unified.REPA_HEAD)
    assert all(torch.equal(v, task.module.repa_head.state_dict()[k]) for k, v in saved.items())
    with pytest.raises(ConfigError, match="decay_steps"):
        unified.train_config("sft", tiny_spec(decay_steps=3), TINY, start, tmp_path / "bad", 0)
    with pytest.raises(ConfigError, match="unknown question form"):
        unified.shapes_sources(0, dataclasses.replace(TINY, und_form_weights={"colour": 3.0}))
    with pytest.raises(ConfigError, match="unknown prompt categories"):
        unified.shapes_sources(0, dataclasses.replace(TINY, gen_category_weights={"shapes": 3.0}))


def test_assemble_refuses_a_folder_without_vae(tmp_path):
    from janusflow.errors import CheckpointError
    from janusflow.shapes.recipe.assemble import assemble

    (tmp_path / "src").mkdir()
    with pytest.raises(CheckpointError, match="vae"):
        assemble(tmp_path / "src", tmp_path / "out")


def test_eval_shapes_command_end_to_end(tmp_path, capsys):
    from janusflow.cli import main
    from janusflow.serve.tiny_model import build_tiny_model_folder

    model = build_tiny_model_folder(tmp_path / "tiny")
    out = tmp_path / "eval"
    code = main(["eval", "shapes", "--model", str(model), "--out", str(out), "--prompts-per-category", "1",
                 "--images-per-prompt", "2", "--questions", "4", "--seed", "3", "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "color_attr" in printed and "per image" in printed and "per answer" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["generation"]["n_images"] == 12 and results["understanding"]["n_questions"] == 4
    assert set(results["generation"]) >= {"single_object", "two_object", "counting", "colors", "position",
                                          "color_attr", "overall"}
    assert results["settings"]["seed"] == 3 and results["settings"]["guidance_scale"] == 2.0
    assert len((out / "llava" / "answers.jsonl").read_text().splitlines()) == 4
    assert (out / "geneval" / "images" / "00005" / "samples" / "0001.png").is_file()
    from PIL import Image

    with Image.open(out / "grid.png") as grid:  # a row per category
        assert grid.height == 6 * (2 * 64 + 12 + 40)
    # the layouts are the public commands' own: `janusflow generate --geneval-metadata` reads the metadata
    meta = [json.loads(line) for line in (out / "geneval" / "metadata.jsonl").read_text().splitlines()]
    assert [m["tag"] for m in meta] == ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
    assert main(["eval", "shapes", "--model", str(model), "--out", str(out), "--questions", "0"]) == 1


def test_eval_shapes_best_of_candidates(tmp_path, capsys):
    """`--candidates 2`: the same layouts and image count, each image judged among two, recorded."""
    from janusflow.cli import main
    from janusflow.serve.tiny_model import build_tiny_model_folder

    model = build_tiny_model_folder(tmp_path / "tiny")
    out = tmp_path / "eval"
    args = ["eval", "shapes", "--model", str(model), "--out", str(out), "--prompts-per-category", "1",
            "--images-per-prompt", "1", "--questions", "2", "--threads", "1"]
    assert main([*args, "--candidates", "2"]) == 0
    assert "each the best of up to 2 by self-check (" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["generation"]["n_images"] == 6 and results["settings"]["candidates"] == 2
    assert 1 <= results["timing"]["generation"]["samples_per_image"] <= 2
    assert len(list((out / "geneval" / "images").glob("*/samples/*.png"))) == 6
    assert main([*args, "--candidates", "0"]) == 1
    assert "candidates must be at least 1" in capsys.readouterr().err
