"""int8 LLM linears (janusflow.quantize): what is quantized, how close the quantized model stays to
fp32, the library keyword and the command-line flags (generate, ask, serve, eval shapes), and the
clear errors around it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from inference_helpers import make_model_folder, tiny_model, tiny_processor
from janusflow.cli import build_parser, main
from janusflow.errors import CheckpointError, InputError
from janusflow.pipeline import JanusFlowPipeline, load_model_and_processor
from janusflow.quantize import is_quantized, llm_linears, quantize_model
from janusflow.sampler import VelocityField, initial_noise, with_guidance


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture(scope="module")
def quantized(model):
    return quantize_model(copy.deepcopy(model), "int8")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("q") / "tiny-model")


def guided_velocity(model, processor, t: float) -> torch.Tensor:
    batch = processor.build_generation_batch(["a red circle above a blue square", "dog"], guidance=True)
    z = initial_noise(2, model.config, torch.Generator().manual_seed(0))
    with torch.inference_mode():
        field = VelocityField(model, batch.input_ids, batch.attention_mask, model.config.num_image_tokens, True)
        return with_guidance(field, 2.0)(z, t)


def test_only_the_llm_block_linears_become_int8(model, quantized):
    names = {name for name, _ in llm_linears(quantized)}
    assert len(names) == 7 * model.config.language.num_hidden_layers  # q k v o gate up down
    for name, linear in llm_linears(quantized):
        assert type(linear.weight).__name__ == "Int8Tensor", name
    plain = {n: type(m.weight) for n, m in quantized.named_modules() if isinstance(m, nn.Linear)
             and not n.startswith("language_model.model.layers.")}
    assert plain and all(t is nn.Parameter for t in plain.values())  # LM head, aligners, SigLIP, gen enc/dec
    assert is_quantized(quantized) and not is_quantized(model)


def test_quantized_velocity_and_logits_stay_close_to_fp32_but_differ(model, quantized):
    processor = tiny_processor(model)
    for t in (0.0, 0.5):
        ref, q = guided_velocity(model, processor, t), guided_velocity(quantized, processor, t)
        err = float((q - ref).norm() / ref.norm())
        assert 1e-5 < err < 0.05, err  # really quantized, and close
    ids = torch.tensor([[0, 5, 17, 42, 99, 7]])
    with torch.inference_mode():
        ref, q = (m.forward_understanding(ids).logits for m in (model, quantized))
    assert float((q - ref).norm() / ref.norm()) < 0.05
    assert torch.equal(q[0, -1].argmax(), ref[0, -1].argmax())


def test_library_keyword_and_bad_values(model_dir, tmp_path):
    model, _ = load_model_and_processor(model_dir, "cpu", quantize="int8")
    assert is_quantized(model)
    plain, _ = load_model_and_processor(model_dir, "cpu", quantize=None)
    assert not is_quantized(plain)
    with pytest.raises(InputError, match="quantize must be one of"):
        load_model_and_processor(tmp_path / "missing", "cpu", quantize="int4")  # checked before the folder
    with pytest.raises(InputError, match="already quantized"):
        quantize_model(model, "int8")
    with pytest.raises(CheckpointError, match="cannot be saved"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_generate_with_quantize_int8_writes_what_the_quantized_pipeline_makes(capsys, model_dir, tmp_path):
    code = main(["generate", "a red circle", "--out", str(tmp_path / "o"), "--model", str(model_dir), "--steps", "2",
                 "--quantize", "int8"])
    out, err = capsys.readouterr()
    assert code == 0, err
    pipe = JanusFlowPipeline.from_pretrained(model_dir, device="cpu", quantize="int8")
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a red circle", num_inference_steps=2, generator=0).images[0]
    assert np.array_equal(np.asarray(Image.open(out.split()[0])), np.asarray(expected))
    plain = JanusFlowPipeline.from_pretrained(model_dir, device="cpu")
    plain.set_progress_bar_config(disable=True)
    assert not np.array_equal(np.asarray(plain("a red circle", num_inference_steps=2, generator=0).images[0]),
                              np.asarray(expected))  # the flag changed the model


def test_ask_with_quantize_int8_and_a_bad_value(capsys, model_dir, tmp_path):
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    code = main(["ask", str(image), "what colour?", "--model", str(model_dir), "--quantize", "int8", "--no-stream",
                 "--max-new-tokens", "3"])
    out, err = capsys.readouterr()
    assert code == 0 and out.strip(), err
    code = main(["ask", str(image), "what colour?", "--model", str(model_dir), "--quantize", "int4"])
    assert code == 2 and "--quantize" in capsys.readouterr().err


def test_serve_and_eval_accept_the_flag(model_dir):
    from janusflow.serve.engine import load_engine

    parser = build_parser()
    assert parser.parse_args(["serve", "--quantize", "int8"]).quantize == "int8"
    assert parser.parse_args(["eval", "shapes", "--quantize", "int8"]).quantize == "int8"
    assert parser.parse_args(["serve"]).quantize == "none"
    engine = load_engine(model_dir, quantize="int8")
    assert is_quantized(engine.pipe.model) and engine.chat.model is engine.pipe.model
