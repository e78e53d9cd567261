"""The CUDA paths (skipped without a GPU): generation and understanding on CUDA agree with the CPU
in fp32, run in bf16 (the CUDA default) with finite results, best of N judges there, a training step and a preference round run on CUDA."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from janusflow.serve.tiny_model import build_tiny_model_folder

    return build_tiny_model_folder(tmp_path_factory.mktemp("tiny"))


def _latents(folder, device, dtype, **kw):
    from janusflow.pipeline import JanusFlowPipeline

    pipe = JanusFlowPipeline.from_pretrained(folder, device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(["a red circle", "two blue squares"], num_inference_steps=6, generator=0, output_type="latent", **kw)
    return out.images.float().cpu()


@pytest.mark.parametrize("use_prompt_cache", [True, False])
def test_generation_on_cuda_matches_the_cpu_in_fp32(tiny, use_prompt_cache):
    cpu = _latents(tiny, "cpu", torch.float32, use_prompt_cache=use_prompt_cache)
    gpu = _latents(tiny, "cuda", torch.float32, use_prompt_cache=use_prompt_cache)
    assert torch.allclose(cpu, gpu, atol=1e-3, rtol=1e-3), (cpu - gpu).abs().max()


def test_generation_in_bf16_on_cuda_is_close_and_decodes(tiny):
    from janusflow.pipeline import JanusFlowPipeline

    ref = _latents(tiny, "cpu", torch.float32)
    bf16 = _latents(tiny, "cuda", torch.bfloat16)
    assert torch.isfinite(bf16).all()
    assert (bf16 - ref).abs().mean() < 0.1 * ref.abs().mean() + 0.05
    pipe = JanusFlowPipeline.from_pretrained(tiny, device="cuda")  # the defaults on CUDA
    assert pipe.model.dtype == torch.bfloat16
    image = pipe("a red circle", num_inference_steps=3, generator=0).images[0]
    assert isinstance(image, Image.Image)


def test_best_of_on_cuda_in_bf16(tiny):
    """Best of N (the shapes self-check judging on the same GPU model) runs in bf16 on CUDA."""
    from janusflow.pipeline import JanusFlowPipeline
    from janusflow.shapes.self_check import ShapesJudge
    from janusflow.understanding import JanusFlowChat

    pipe = JanusFlowPipeline.from_pretrained(tiny, device="cuda")
    pipe.set_progress_bar_config(disable=True)
    judge = ShapesJudge(JanusFlowChat(pipe.model, pipe.processor))
    images = pipe("a circle above a square", num_inference_steps=3, num_images_per_prompt=2, candidates=3,
                  judge=judge, generator=0).images
    assert len(images) == 2 and all(isinstance(im, Image.Image) for im in images)


def test_understanding_on_cuda_answers_as_on_the_cpu(tiny):
    from janusflow.pipeline import load_model_and_processor
    from janusflow.understanding import DecodingConfig, JanusFlowChat

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    answers = {}
    for device in ("cpu", "cuda"):
        model, processor = load_model_and_processor(tiny, device=device, dtype=torch.float32)
        chat = JanusFlowChat(model, processor)
        answers[device] = [chat.ask(image, "what colour is it?", config=DecodingConfig(max_new_tokens=8, use_cache=c))
                           for c in (True, False)]
    assert answers["cuda"][0] == answers["cuda"][1] == answers["cpu"][0]
    model, processor = load_model_and_processor(tiny, device="cuda")  # bf16
    assert isinstance(JanusFlowChat(model, processor).ask(image, "what is it?",
                                                          config=DecodingConfig(max_new_tokens=4)), str)


def test_training_steps_on_cuda_with_data_workers(tmp_path):
    from janusflow.train import Trainer
    from janusflow.train.config import load_config
    from janusflow.train.task import JanusFlowTask
    from janusflow.train.toydata import toy_overrides, write_toy_data

    toy = write_toy_data(tmp_path / "toy", count=12)
    extra = ["stage.steps=6", "stage.ratio={und: 1, gen: 2, text: 1}", "trainer.device=cuda",
             "trainer.data_workers=2", "trainer.ema_decay=0"]
    config = load_config(None, toy_overrides(toy, tmp_path / "run") + extra)
    task = JanusFlowTask(config)
    result = Trainer(task, config.trainer_config()).fit()
    assert result["step"] == 6 and not result["stopped"]
    assert next(task.module.parameters()).device.type == "cuda"
    assert all(torch.isfinite(torch.tensor(v)) for v in result["logs"].values())


def test_a_preference_round_runs_on_cuda(tiny, tmp_path):
    from experiments.preference import PreferenceConfig, round_dir, run

    calls = []

    def every_other(spec, image):
        calls.append(spec.text)
        return len(calls) % 2 == 0

    cfg = PreferenceConfig(rounds=2, prompts={"counting": 2}, images_per_prompt=2, steps=2, batch_pairs=2,
                           guidance=2.0)
    records = run(tiny, tmp_path / "run", cfg, device="cuda", judge=every_other, log=lambda s: None)
    assert [r["pairs"] for r in records] == [2, 2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert (round_dir(tmp_path / "run", 1) / "model.safetensors").is_file()
