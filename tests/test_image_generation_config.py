"""A model folder's image generation defaults (``image_generation_config.json``) and how the
pipeline, the command line and the server apply them: the folder's best-of-N where it can apply,
plain sampling otherwise."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from inference_helpers import make_model_folder
from janusflow.cli import main
from janusflow.errors import ConfigError
from janusflow.image_generation_config import FILENAME, ImageGenerationConfig
from janusflow.pipeline import JanusFlowPipeline, default_model_dir
from janusflow.shapes.self_check import ShapesJudge

PROMPT = "a circle above a square"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = make_model_folder(tmp_path_factory.mktemp("tiny") / "m")
    ImageGenerationConfig(candidates=3, judge="shapes").save(folder)
    return folder


@pytest.fixture(scope="module")
def pipe(folder):
    pipe = JanusFlowPipeline.from_pretrained(folder, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, prompt=PROMPT, **kwargs):
    return pipe(prompt, num_inference_steps=2, num_images_per_prompt=2, generator=5, output_type="latent",
                **kwargs).images


def test_a_folder_without_the_file_samples_as_released(tmp_path):
    assert ImageGenerationConfig.from_folder(tmp_path) == ImageGenerationConfig(candidates=1, judge=None)
    assert ImageGenerationConfig.from_folder(tmp_path).make_judge(None, None) is None


def test_the_file_round_trips(tmp_path):
    config = ImageGenerationConfig(candidates=4, judge="shapes")
    assert json.loads(config.save(tmp_path).read_text()) == {"candidates": 4, "judge": "shapes"}
    assert ImageGenerationConfig.from_folder(tmp_path) == config


@pytest.mark.parametrize("text, message", [
    ("{", "not readable JSON"),
    ("[4]", "expected a JSON object"),
    ('{"candidates": 4, "judge": "shapes", "steps": 20}', r"unknown field\(s\) \['steps'\]"),
    ('{"candidates": 0}', "candidates must be a positive integer"),
    ('{"candidates": "4", "judge": "shapes"}', "candidates must be a positive integer"),
    ('{"candidates": true}', "candidates must be a positive integer"),
    ('{"candidates": 4}', "needs a judge"),
    ('{"candidates": 2, "judge": "clip"}', "judge must be one of"),
])
def test_a_wrong_file_is_refused_with_its_path(tmp_path, text, message):
    (tmp_path / FILENAME).write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        ImageGenerationConfig.from_folder(tmp_path)
    assert FILENAME in str(info.value)


def test_the_pipeline_refuses_a_folder_with_a_wrong_file(tmp_path):
    folder = make_model_folder(tmp_path / "m")
    (folder / FILENAME).write_text('{"candidates": 2}')
    with pytest.raises(ConfigError, match="needs a judge"):
        JanusFlowPipeline.from_pretrained(folder, device="cpu")


def test_the_folders_default_is_its_best_of_n(pipe):
    assert pipe.image_generation_config == ImageGenerationConfig(candidates=3, judge="shapes")
    assert isinstance(pipe.default_judge(), ShapesJudge) and pipe.default_judge() is pipe.default_judge()
    default = run(pipe)
    torch.testing.assert_close(default, run(pipe, candidates=3, judge=ShapesJudge(pipe.default_judge().chat)))
    torch.testing.assert_close(default, run(pipe, candidates=3))  # asked for, with the folder's judge
    assert pipe.resolve_candidates([PROMPT], None, None)[0] == 3
    assert pipe.resolve_candidates([PROMPT], 1, None) == (1, None)


def test_the_default_falls_back_to_plain_sampling_where_it_cannot_apply(pipe):
    plain = run(pipe, candidates=1)
    with pytest.warns(UserWarning, match="best of 3.*shapes-world prompts only"):
        other = run(pipe, "a red car")
    torch.testing.assert_close(other, run(pipe, "a red car", candidates=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pipe.resolve_candidates([PROMPT], None, None, pinned_noise=True) == (1, None)
        pinned = pipe(PROMPT, num_inference_steps=2, num_images_per_prompt=2, output_type="latent",
                      generator=[torch.Generator().manual_seed(5) for _ in range(2)]).images
    assert pinned.shape == plain.shape  # one generator an image: one sample an image
    no_vae = JanusFlowPipeline(pipe.model, pipe.processor, image_generation_config=pipe.image_generation_config)
    assert no_vae.resolve_candidates([PROMPT], None, None) == (1, None)


def test_generate_command_uses_the_folders_default(folder, tmp_path, capsys):
    args = ["generate", PROMPT, "--model", str(folder), "--steps", "2", "--n-samples", "2"]
    assert main([*args, "--out", str(tmp_path / "default")]) == 0
    assert main([*args, "--out", str(tmp_path / "three"), "--candidates", "3"]) == 0
    assert main([*args, "--out", str(tmp_path / "one"), "--candidates", "1"]) == 0
    read = {name: [(tmp_path / name / f"000{k}.png").read_bytes() for k in range(2)]
            for name in ("default", "three", "one")}
    assert read["default"] == read["three"]
    assert main([*args, "--out", str(tmp_path / "zero"), "--candidates", "0"]) == 1
    assert main(["eval", "shapes", "--model", str(folder), "--out", str(tmp_path / "e"), "--candidates", "0"]) == 1
    assert "candidates must be at least 1" in capsys.readouterr().err
    assert main(["generate", "a red car", *args[2:], "--out", str(tmp_path / "car")]) == 0
    err = capsys.readouterr().err
    assert "janusflow: note: one sample an image (the model's default is the best of 3)" in err and "a red car" in err
    assert (tmp_path / "car" / "0001.png").is_file()


def test_the_embedded_model_draws_the_best_of_four():
    model = default_model_dir()
    if model is None:
        pytest.skip("no default model installed")
    assert ImageGenerationConfig.from_folder(model) == ImageGenerationConfig(candidates=4, judge="shapes")


def test_the_server_engine_offers_the_folders_default(folder, pipe):
    from janusflow.serve.engine import ModelEngine

    engine = ModelEngine.from_folder(folder, device="cpu")
    assert engine.default_candidates == 3
    default = engine.generate(PROMPT, 2, 2, 2.0, 5, "euler")
    assert [im.tobytes() for im in default] == [im.tobytes() for im in engine.generate(PROMPT, 2, 2, 2.0, 5, "euler",
                                                                                          candidates=3)]
    assert [im.tobytes() for im in default] == [
        im.tobytes() for im in pipe(PROMPT, num_inference_steps=2, num_images_per_prompt=2, generator=5).images]


def test_a_transformers_generation_config_is_not_ours(tmp_path):
    """A released folder may carry transformers' generation_config.json (text decoding); it is left alone."""
    folder = make_model_folder(tmp_path / "m")
    (folder / "generation_config.json").write_text('{"bos_token_id": 0, "eos_token_id": 1}')
    pipe = JanusFlowPipeline.from_pretrained(folder, device="cpu")
    assert pipe.image_generation_config == ImageGenerationConfig()
