"""Recipe part 4 (janusflow.shapes.recipe.unified / assemble) and `janusflow eval shapes`: the model
built from the parts, the on-the-fly data, a smoke run of the three stages from tiny random parts,
assembly into a default-model folder, and the eval command end to end on a tiny random model."""

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
from janusflow.shapes.recipe.run import PRESETS as RECIPE_PRESETS


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

    settings = unified.PRESETS["tiny"]
    config = unified.model_config(tiny_parts, settings)
    assert config.und_vision.grid == config.gen_vision.latent_grid == 4  # 64 px / patch 16; latent 32 / 8
    assert config.gen_vision.upsamples == 3 and config.gen_vision.latent_size == 32
    model, processor = unified.init_from_parts(tiny_parts, settings)
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
    settings = unified.PRESETS["default"]
    gen = unified.gen_vision_for(und, vae_dir, settings.gen_channels, settings.gen_layers)
    assert (gen.latent_size, gen.kernel_size, gen.latent_grid, gen.upsamples) == (16, 2, 8, 1)


def test_sources_are_deterministic_and_true_to_the_spec():
    sources = unified.shapes_sources(0, unified.PRESETS["default"])
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
    settings = dataclasses.replace(unified.PRESETS["default"], gen_category_weights=only_position)
    steered = Counter(parse_prompt(unified.shapes_sources(0, settings)["gen"](i).caption).tag for i in range(80))
    assert steered["position"] >= 0.6 * 80  # about 1 in 6 without weights


def test_three_stages_smoke_run_resume_and_assembly(tiny_parts, tmp_path):
    from janusflow.pipeline import JanusFlowPipeline
    from janusflow.understanding import JanusFlowChat

    run_dir = tmp_path / "runs"
    tiny = RECIPE_PRESETS["tiny"]
    for stage in unified.STAGE_ORDER:
        unified.STAGES[stage](tiny, run_dir, tiny_parts)
        evals = [json.loads(line) for line in (run_dir / stage / "eval.jsonl").read_text().splitlines()]
        plan = getattr(unified.PRESETS["tiny"], stage)
        assert [e["step"] for e in evals] == list(range(plan.segment, plan.steps + 1, plan.segment))
        assert all(0 <= e["gen_overall"] <= 1 and 0 <= e["und_overall"] <= 1 for e in evals)
        assert (run_dir / stage / "DONE.json").is_file()
    # each stage started from the previous one's chosen export, and trained what its preset says
    done = json.loads((run_dir / "unified" / "DONE.json").read_text())
    assert done["start"].startswith(str(run_dir / "adapt" / "export"))
    # a finished stage returns at once (resume): no new evaluation line
    unified.STAGES["sft"](tiny, run_dir, tiny_parts)
    assert len((run_dir / "sft" / "eval.jsonl").read_text().splitlines()) == 1
    # the assembled model sits beside the parts and loads with no arguments but its folder
    model_dir = tiny_parts.parent
    assert (model_dir / "parts" / "llm").is_dir() and (model_dir / "config.json").is_file()
    results = json.loads((model_dir / "eval_shapes.json").read_text())
    assert results["settings"]["num_inference_steps"] == 30 and results["generation"]["n_images"] == 6
    # it ships its sampling defaults: each image the best of up to 4 by its own self-check
    assert json.loads((model_dir / "image_generation_config.json").read_text()) == {"candidates": 4, "judge": "shapes"}
    assert results["settings"]["candidates"] == 4 and 1 <= results["timing"]["generation"]["samples_per_image"] <= 4
    from safetensors import safe_open

    with safe_open(model_dir / "model.safetensors", framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    # no path of the machine that built it is recorded in the shipped VAE's config
    assert "_name_or_path" not in json.loads((model_dir / "vae" / "config.json").read_text())
    pipe = JanusFlowPipeline.from_pretrained(model_dir)
    assert pipe.model.dtype == torch.float32 and pipe.vae is not None
    assert isinstance(JanusFlowChat.from_pretrained(model_dir).ask([], "how many shapes are there?",
                                                                   max_new_tokens=4), str)


def test_frozen_modules_follow_the_stage(tiny_parts, tmp_path):
    from janusflow.train.task import JanusFlowTask

    settings = unified.PRESETS["tiny"]
    start = unified.write_init(tiny_parts, tmp_path / "init", settings)
    names = {}
    for stage in unified.STAGE_ORDER:
        config = unified.train_config(stage, getattr(settings, stage), settings, start, tmp_path / stage, 0)
        task = JanusFlowTask(config, sources=unified.shapes_sources(0, settings))
        names[stage] = {n.removeprefix("model.").split(".")[0] for n in task.trainable_parameters()}
    assert "language_model" not in names["adapt"] and "und_encoder" not in names["adapt"]
    assert {"gen_encoder", "gen_decoder", "und_aligner", "repa_head"} <= names["adapt"]
    assert "language_model" in names["unified"] and "und_encoder" not in names["unified"]
    assert "und_encoder" in names["sft"]


def test_trainable_replaces_every_stages_list(tiny_parts, tmp_path):
    from janusflow.train.task import JanusFlowTask

    settings = dataclasses.replace(unified.PRESETS["tiny"], repa_weight=0.0,
                                   trainable=["und_encoder", "und_aligner", "language_model.model.layers.0"])
    start = unified.write_init(tiny_parts, tmp_path / "init", settings)
    for stage in unified.STAGE_ORDER:
        config = unified.train_config(stage, getattr(settings, stage), settings, start, tmp_path / stage, 0)
        names = set(JanusFlowTask(config, sources=unified.shapes_sources(0, settings)).trainable_parameters())
        assert {n.removeprefix("model.").split(".")[0] for n in names} == {"und_encoder", "und_aligner", "language_model"}
        assert all(".layers.0." in n for n in names if "language_model" in n)
    for bad in (["und_encoders"], ["language_model..layers"], ["gen"]):
        with pytest.raises(ConfigError, match="trainable"):
            unified.train_config("sft", settings.sft, dataclasses.replace(settings, trainable=bad), start, tmp_path / "x", 0)


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
    settings = unified.PRESETS["tiny"]
    for bad in ({"distractor_share": 1.5}, {"prompt_first_share": -0.1}):
        with pytest.raises(ConfigError, match="share"):
            unified.shapes_sources(0, dataclasses.replace(settings, **bad))


def test_task_mix_replaces_the_listed_shares_of_every_stage(tiny_parts, tmp_path):
    from janusflow.train.stages import stage_preset

    settings = unified.PRESETS["tiny"]
    start = unified.write_init(tiny_parts, tmp_path / "init", settings)
    mixed = dataclasses.replace(settings, task_mix={"und": 60.0, "text": 0.0})
    for stage in unified.STAGE_ORDER:
        paper = stage_preset(unified.STAGE_PRESETS[stage]).ratio
        config = unified.train_config(stage, getattr(settings, stage), mixed, start, tmp_path / stage, 0)
        assert config.stage.ratio == {**paper, "und": 60, "text": 0} and config.stage.ratio["gen"] == paper["gen"]
        assert unified.train_config(stage, getattr(settings, stage), settings, start, tmp_path / stage, 0).stage.ratio == paper
    for bad, match in (({"und": 2.5}, "ratio"), ({"vision": 3.0}, "unknown task")):
        with pytest.raises(ConfigError, match=match):
            unified.train_config("sft", settings.sft, dataclasses.replace(settings, task_mix=bad), start, tmp_path / "x", 0)


def test_set_parses_switches_numbers_and_tables_of_the_whole_recipe():
    import argparse

    from janusflow.shapes.recipe.run import with_overrides

    parser = argparse.ArgumentParser()
    tiny = unified.PRESETS["tiny"]
    changed = with_overrides(tiny, ["final_eval=false", "seed=7", "task_mix.und=60", "sft.lr=5e-5"], parser)
    assert (changed.final_eval, changed.seed, changed.task_mix, changed.sft.lr) == (False, 7, {"und": 60.0}, 5e-5)
    assert with_overrides(changed, ["final_eval=True"], parser).final_eval is True
    assert with_overrides(tiny, ["trainable=und_encoder, und_aligner"], parser).trainable == ["und_encoder", "und_aligner"]
    assert with_overrides(tiny, ["trainable="], parser).trainable == []
    assert with_overrides(tiny, ["negatives=edits"], parser).negatives == "edits"  # a word, checked where used
    with pytest.raises(ConfigError, match="negatives"):
        unified.shapes_sources(0, with_overrides(tiny, ["negatives=all"], parser))
    for bad in ("final_eval=maybe", "seed=-1", "sft.colour=3", "sft.lr=-1e-4", "time_mean=nan", "time_std=-1"):
        with pytest.raises(SystemExit):
            with_overrides(tiny, [bad], parser)


def test_time_distribution_reaches_the_flow_loss(tiny_parts, tmp_path):
    import argparse

    from janusflow.shapes.recipe.run import with_overrides

    tiny = unified.PRESETS["tiny"]
    start = unified.write_init(tiny_parts, tmp_path / "init", tiny)
    early = with_overrides(tiny, ["time_mean=-0.5", "time_std=0.8"], argparse.ArgumentParser())
    losses = unified.train_config("sft", early.sft, early, start, tmp_path / "sft", 0).losses
    assert (losses.time_mean, losses.time_std) == (-0.5, 0.8)
    paper = unified.train_config("sft", tiny.sft, tiny, start, tmp_path / "sft", 0).losses
    assert (paper.time_mean, paper.time_std) == (0.0, 1.0)
    with pytest.raises(ConfigError, match="time_std"):
        unified.train_config("sft", tiny.sft, dataclasses.replace(tiny, time_std=0.0), start, tmp_path / "x", 0)


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


def test_entry_point_snapshot_parts_and_a_step_override(tiny_parts, tmp_path, capsys):
    """`unified snapshot-parts` takes finished parts from the parts folder; `unified train --steps`
    overrides a stage's budget; a second call skips the finished stage."""
    parts = tmp_path / "model" / "parts"
    unified.main(["snapshot-parts", "--recipe-dir", str(tmp_path / "nothing"), "--parts-dir", str(tiny_parts),
                  "--out", str(parts)])
    assert json.loads((parts / "SNAPSHOT.json").read_text())["llm"] == str(tiny_parts / "llm")
    args = ["train", "--preset", "tiny", "--stages", "adapt", "--run-dir", str(tmp_path / "runs"),
            "--parts-dir", str(parts), "--steps", "adapt=1"]
    unified.main(args)
    evals = [json.loads(line) for line in (tmp_path / "runs" / "adapt" / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [1]
    unified.main(args)
    assert "already done" in capsys.readouterr().out


def test_start_continues_a_model_folder_and_a_budget_in_seconds(tiny_parts, tmp_path, capsys):
    """`unified train --start DIR` trains the first listed stage from DIR (a shipped model, say);
    `--budget STAGE=SECONDS` ends the stage at that much training time."""
    parts = tmp_path / "model" / "parts"
    unified.main(["snapshot-parts", "--recipe-dir", str(tmp_path / "nothing"), "--parts-dir", str(tiny_parts),
                  "--out", str(parts)])
    base = ["train", "--preset", "tiny", "--parts-dir", str(parts)]
    unified.main(base + ["--stages", "adapt", "--run-dir", str(tmp_path / "first")])
    exported = tmp_path / "first" / "adapt" / "export"
    unified.main(base + ["--stages", "unified", "--run-dir", str(tmp_path / "again"), "--start", str(exported),
                         "--steps", "unified=50", "--budget", "unified=1e-6"])
    done = json.loads((tmp_path / "again" / "unified" / "DONE.json").read_text())
    assert done["start"] == str(exported) and done["train"]["step"] == 1  # stopped by the time budget
    with pytest.raises(SystemExit):
        unified.main(base + ["--stages", "unified", "--start", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit):
        unified.main(base + ["--stages", "unified", "--budget", "unified=-1"])
    for bad in ("unified.batch_size=-2", "unified.colour=3", "nothing.lr=1", "unified.lr=abc", "repa_weight=-1",
                "unified=3"):
        with pytest.raises(SystemExit):
            unified.main(base + ["--stages", "unified", "--set", bad])
    # a stage's setting changed from the command line: a batch of 3 instead of the preset's 4
    unified.main(base + ["--stages", "unified", "--run-dir", str(tmp_path / "batch"), "--start", str(exported),
                         "--set", "unified.batch_size=3", "--set", "unified.steps=1"])
    config = (tmp_path / "batch" / "unified" / "config.yaml").read_text()
    assert "batch_size: 3" in config and "repa_weight: 1.0" in config
    # a recipe-wide setting: REPA off (say, to continue a model whose REPA projector was not kept)
    unified.main(base + ["--stages", "unified", "--run-dir", str(tmp_path / "norepa"), "--start", str(exported),
                         "--set", "repa_weight=0", "--set", "unified.steps=1"])
    assert "repa_weight: 0.0" in (tmp_path / "norepa" / "unified" / "config.yaml").read_text()
    # a table entry: train more on one question form; a form that does not exist is a clear error
    unified.main(base + ["--stages", "unified", "--run-dir", str(tmp_path / "forms"), "--start", str(exported),
                         "--set", "und_form_weights.relation=3", "--set", "unified.steps=1"])
    assert "und_form_weights:\n    relation: 3.0" in (tmp_path / "forms" / "unified" / "config.yaml").read_text()
    unified.main(base + ["--stages", "unified", "--run-dir", str(tmp_path / "cats"), "--start", str(exported),
                         "--set", "gen_category_weights.position=2", "--set", "unified.steps=1", "--set", "seed=5"])
    config = (tmp_path / "cats" / "unified" / "config.yaml").read_text()
    assert "gen_category_weights:\n    position: 2.0" in config and "\n  seed: 5\n" in config  # fresh data: seed 5
    with pytest.raises(ConfigError, match="unknown prompt categories"):
        unified.main(base + ["--stages", "unified", "--run-dir", str(tmp_path / "badcat"), "--start", str(exported),
                             "--set", "gen_category_weights.shapes=3"])
    with pytest.raises(ConfigError, match="unknown question form"):
        unified.main(base + ["--stages", "unified", "--run-dir", str(tmp_path / "badform"), "--start", str(exported),
                             "--set", "und_form_weights.colour=3"])
    # a cool-down over the stage's last steps spans its segments (each segment is one trainer run)
    unified.main(base + ["--stages", "unified", "--run-dir", str(tmp_path / "cool"), "--start", str(exported),
                         "--set", "unified.steps=4", "--set", "unified.segment=2", "--set", "unified.decay_steps=2"])
    rows = (tmp_path / "cool" / "unified" / "log.csv").read_text().splitlines()
    lrs = {int(r.split(",")[0]): float(r.split(",")[1]) for r in rows[1:]}
    assert lrs == pytest.approx({2: 1e-3, 4: 0.5e-3})
    with pytest.raises(ConfigError, match="decay_steps"):
        unified.main(base + ["--stages", "unified", "--run-dir", str(tmp_path / "bad"), "--start", str(exported),
                             "--set", "unified.decay_steps=3"])
