"""JanusFlowPipeline as a diffusers pipeline: components, save/load round trips (model_index.json),
``to()`` and dtypes, scheduler swaps, callbacks, ``return_dict``, output types, negative prompts,
the guidance interval, the prompt cache against full recompute, and CPU offload (CUDA only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from PIL import Image

from inference_helpers import make_model_folder
from janusflow.errors import InputError
from janusflow.image_generation_config import ImageGenerationConfig
from janusflow.pipeline import JanusFlowPipeline, JanusFlowPipelineOutput
from janusflow.prompt_rows import left_pad, make_uncond
from janusflow.sampler import SamplerConfig, initial_noise, sample_latents
from janusflow.schedulers import FlowMatchMidpointScheduler

PROMPTS = ["a red circle", "two green triangles left of a yellow star"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def pipe(folder):
    pipe = JanusFlowPipeline.from_pretrained(folder, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents_of(pipe, prompt=PROMPTS, **kwargs):
    kwargs = {"num_inference_steps": 3, "generator": 0, "output_type": "latent", **kwargs}
    return pipe(prompt, **kwargs).images


def by_hand(pipe, tokens, mask, seed=0, steps=3, **cfg):
    z0 = initial_noise(tokens.shape[0] // 2, pipe.model.config, torch.Generator().manual_seed(seed))
    return sample_latents(pipe.model, tokens, mask, z0, SamplerConfig(num_steps=steps, **cfg)).latents


def count_llm_rows(model):
    seen = []
    handle = model.llm.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    return seen, handle


# -- components, saving, loading --------------------------------------------------------------------------

def test_is_a_diffusion_pipeline_with_registered_components(pipe):
    assert isinstance(pipe, DiffusionPipeline)
    assert sorted(pipe.components) == ["model", "processor", "scheduler", "vae"]
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 1.0
    assert list(pipe.config["scheduler"]) == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert list(pipe.config["vae"]) == ["diffusers", "AutoencoderKL"]
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "JanusFlowPipeline"
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index["model"][0].startswith("janusflow") and index["processor"][0].startswith("janusflow")
    assert DiffusionPipeline.load_config(str(tmp_path / "saved"))["vae"] == ["diffusers", "AutoencoderKL"]
    for name in ("model/config.json", "processor/tokenizer.json", "vae/config.json", "scheduler/scheduler_config.json"):
        assert (tmp_path / "saved" / name).is_file(), name
    again = JanusFlowPipeline.from_pretrained(tmp_path / "saved", device="cpu")
    again.set_progress_bar_config(disable=True)
    torch.testing.assert_close(latents_of(again), latents_of(pipe), rtol=0, atol=0)
    np.testing.assert_array_equal(again(PROMPTS[0], num_inference_steps=2, generator=1, output_type="np").images,
                                  pipe(PROMPTS[0], num_inference_steps=2, generator=1, output_type="np").images)


@pytest.mark.parametrize("scheduler_class", [FlowMatchHeunDiscreteScheduler, FlowMatchMidpointScheduler])
def test_a_swapped_scheduler_is_saved_and_used(folder, tmp_path, scheduler_class):
    pipe = JanusFlowPipeline.from_pretrained(folder, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    euler = latents_of(pipe)
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, shift=2.0)
    swapped = latents_of(pipe)
    assert not torch.allclose(swapped, euler)
    pipe.save_pretrained(tmp_path / "saved")
    again = JanusFlowPipeline.from_pretrained(tmp_path / "saved", device="cpu")
    assert type(again.scheduler) is scheduler_class and again.scheduler.config.shift == 2.0
    again.set_progress_bar_config(disable=True)
    torch.testing.assert_close(latents_of(again), swapped, rtol=0, atol=0)
    solver = "heun" if scheduler_class is FlowMatchHeunDiscreteScheduler else "midpoint"
    fresh = JanusFlowPipeline.from_pretrained(folder, device="cpu")
    fresh.set_progress_bar_config(disable=True)
    torch.testing.assert_close(latents_of(fresh, solver=solver, schedule="shifted", shift=2.0), swapped, rtol=0, atol=0)


def test_the_image_generation_config_travels_with_the_saved_pipeline(folder, tmp_path):
    pipe = JanusFlowPipeline.from_pretrained(folder, device="cpu")
    pipe.image_generation_config = ImageGenerationConfig(candidates=2, judge="shapes")
    pipe.save_pretrained(tmp_path / "saved")
    assert JanusFlowPipeline.from_pretrained(tmp_path / "saved").image_generation_config.candidates == 2


def test_a_model_folder_may_carry_a_scheduler(folder, tmp_path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(copy / "scheduler")
    assert JanusFlowPipeline.from_pretrained(copy, device="cpu").scheduler.config.shift == 3.0


def test_loading_refuses_foreign_components(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    index = tmp_path / "saved" / "model_index.json"
    data = json.loads(index.read_text())
    data["model"] = ["os", "system"]
    index.write_text(json.dumps(data))
    with pytest.raises(Exception, match="diffusers and janusflow only"):
        JanusFlowPipeline.from_pretrained(tmp_path / "saved")
    with pytest.raises(InputError, match="unexpected argument"):
        JanusFlowPipeline.from_pretrained(tmp_path / "saved", revision="main")


def test_torch_dtype_and_to(folder):
    pipe = JanusFlowPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
    assert pipe.model.dtype == torch.bfloat16 and pipe.vae.dtype == torch.float32  # the VAE: never half on CPU
    pipe.to(torch.float32)
    assert pipe.model.dtype == torch.float32
    pipe.to(torch.float16)
    assert pipe.model.dtype == torch.float16 and pipe.vae.dtype == torch.float32
    assert pipe.to("cpu") is pipe


def test_from_pipe_shares_the_components(pipe):
    other = JanusFlowPipeline.from_pipe(pipe)
    assert other.model is pipe.model and other.scheduler is pipe.scheduler
    assert other.image_generation_config == pipe.image_generation_config


# -- the call's diffusers options --------------------------------------------------------------------------

def test_return_dict_and_output_types(pipe):
    out = pipe(PROMPTS[0], num_inference_steps=2, generator=3)
    assert isinstance(out, JanusFlowPipelineOutput) and isinstance(out.images[0], Image.Image)
    (images,) = pipe(PROMPTS[0], num_inference_steps=2, generator=3, return_dict=False)
    assert np.array_equal(np.asarray(images[0]), np.asarray(out.images[0]))
    pt = pipe(PROMPTS[0], num_inference_steps=2, generator=3, output_type="pt").images
    arr = pipe(PROMPTS[0], num_inference_steps=2, generator=3, output_type="np").images
    assert pt.shape == (1, 3, 16, 16) and arr.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr)


def test_callback_on_step_end_sees_and_replaces_latents(pipe):
    seen = []

    def record(p, i, timestep, tensors):
        assert p is pipe and set(tensors) == {"latents"}
        seen.append((i, float(timestep), tensors["latents"].clone()))
        return {}

    final = latents_of(pipe, num_inference_steps=4, callback_on_step_end=record)
    assert [i for i, _, _ in seen] == [0, 1, 2, 3] and seen[0][1] == 1000.0
    torch.testing.assert_close(seen[-1][2], final)

    def zero_at_the_end(p, i, timestep, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 3 else {}

    assert latents_of(pipe, num_inference_steps=4, callback_on_step_end=zero_at_the_end).abs().max() == 0

    def restart_from_step_two(p, i, timestep, tensors):  # replaced latents are what the next step reads
        return {"latents": seen[1][2]} if i == 1 else {}

    torch.testing.assert_close(latents_of(pipe, num_inference_steps=4, callback_on_step_end=restart_from_step_two),
                               final, rtol=0, atol=0)
    with pytest.raises(InputError, match="not among"):
        latents_of(pipe, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_interrupt_skips_the_remaining_steps(pipe):
    calls = []

    def stop(p, i, timestep, tensors):
        calls.append((i, tensors["latents"].clone()))
        if i == 1:
            p._interrupt = True  # what diffusers' callbacks set
        return {}

    out = latents_of(pipe, num_inference_steps=5, callback_on_step_end=stop)
    assert [i for i, _ in calls] == [0, 1]
    torch.testing.assert_close(out, calls[-1][1], rtol=0, atol=0)
    assert latents_of(pipe, num_inference_steps=5).shape == out.shape and not pipe.interrupt  # reset by a call


# -- negative prompts ---------------------------------------------------------------------------------------

def test_negative_prompt_rows_replace_the_unconditional_rows(pipe):
    proc = pipe.processor
    negatives = ["a blue square", "a green circle"]
    got = latents_of(pipe, negative_prompt=negatives, guidance_scale=3.0)
    tokens, mask = left_pad([proc.encode_generation_prompt(p) for p in PROMPTS + negatives], proc.pad_id)
    torch.testing.assert_close(got, by_hand(pipe, tokens, mask, guidance_scale=3.0), rtol=0, atol=1e-5)
    assert not torch.allclose(got, latents_of(pipe, guidance_scale=3.0))
    one = latents_of(pipe, negative_prompt="a blue square", guidance_scale=3.0)
    tokens, mask = left_pad([proc.encode_generation_prompt(p) for p in PROMPTS + ["a blue square"] * 2], proc.pad_id)
    torch.testing.assert_close(one, by_hand(pipe, tokens, mask, guidance_scale=3.0), rtol=0, atol=1e-5)


def test_empty_negative_prompt_keeps_the_release_pad_rows(pipe):
    proc = pipe.processor
    torch.testing.assert_close(latents_of(pipe, negative_prompt="", guidance_scale=3.0),
                               latents_of(pipe, guidance_scale=3.0), rtol=0, atol=1e-6)
    mixed = latents_of(pipe, negative_prompt=["", "a blue square"], guidance_scale=3.0)
    tokens, mask = left_pad([proc.encode_generation_prompt(p) for p in PROMPTS + [PROMPTS[0], "a blue square"]],
                            proc.pad_id)
    u_tokens, u_mask = make_uncond(tokens[2:3], mask[2:3], proc.pad_id)
    tokens[2:3], mask[2:3] = u_tokens, u_mask
    torch.testing.assert_close(mixed, by_hand(pipe, tokens, mask, guidance_scale=3.0), rtol=0, atol=1e-5)


def test_negative_prompt_checks(pipe):
    with pytest.raises(InputError, match="1 negative prompts for 2 prompts"):
        latents_of(pipe, negative_prompt=["x"])
    with pytest.raises(InputError, match="negative_prompt must be"):
        latents_of(pipe, negative_prompt=[1, 2])
    with pytest.raises(InputError, match="max_length"):
        latents_of(pipe, negative_prompt="x " * 600)
    # no guidance, no unconditional rows: the negative prompt is not read
    torch.testing.assert_close(latents_of(pipe, negative_prompt="a blue square", guidance_scale=1.0),
                               latents_of(pipe, guidance_scale=1.0), rtol=0, atol=0)


# -- guidance interval ---------------------------------------------------------------------------------------

def test_guidance_interval_runs_the_unconditional_rows_only_inside(pipe):
    seen, handle = count_llm_rows(pipe.model)
    try:
        latents_of(pipe, PROMPTS[0], num_inference_steps=4, guidance_interval=(0.3, 0.6))
    finally:
        handle.remove()
    # t = 0, 0.25, 0.5, 0.75: guided at 0.5 only (after the prompt prefill of 2 rows)
    assert seen == [2, 1, 1, 2, 1]


def test_full_guidance_interval_equals_the_default_and_a_partial_one_differs(pipe):
    default = latents_of(pipe, guidance_scale=3.0)
    torch.testing.assert_close(latents_of(pipe, guidance_scale=3.0, guidance_interval=(0.0, 1.0)), default,
                               rtol=0, atol=0)
    partial = latents_of(pipe, guidance_scale=3.0, guidance_interval=(0.5, 1.0))
    assert not torch.allclose(partial, default)
    batch = pipe.processor.build_generation_batch(PROMPTS, guidance=True)
    torch.testing.assert_close(partial, by_hand(pipe, batch.input_ids, batch.attention_mask, guidance_scale=3.0,
                                                guidance_interval=(0.5, 1.0)), rtol=0, atol=1e-5)
    never = latents_of(pipe, guidance_scale=3.0, guidance_interval=(0.9, 0.95))  # no grid point inside
    torch.testing.assert_close(never, latents_of(pipe, guidance_scale=1.0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [(0.5, 0.2), (-0.1, 0.5), (0.0, 1.5), (0.1,), "early", (float("nan"), 1.0)])
def test_bad_guidance_interval(pipe, bad):
    with pytest.raises(InputError, match="guidance_interval"):
        latents_of(pipe, guidance_interval=bad)


# -- the prompt cache and its reference ---------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["euler", "heun", "midpoint"])
def test_prompt_cache_equals_full_recompute_through_the_pipeline(pipe, solver):
    kwargs = dict(solver=solver, guidance_scale=2.5, negative_prompt=["a blue square", ""])
    atol = 1e-4 if solver == "heun" else 1e-5  # Heun's (sample - denoised) / sigma cancels in fp32 at small sigma
    torch.testing.assert_close(latents_of(pipe, use_prompt_cache=True, **kwargs),
                               latents_of(pipe, use_prompt_cache=False, **kwargs), rtol=0, atol=atol)


# -- CPU offload ----------------------------------------------------------------------------------------------

class FirstPerfect:
    perfect = 1.0

    def validate(self, prompt):
        pass

    def __call__(self, prompt, images):
        return [0.5] * len(images)  # never perfect: every round runs, the model comes back for each


def test_offload_hooks_keep_the_results(folder):
    """accelerate's offload hooks with the CPU as "execution device" (the plumbing the CUDA test below
    checks for real): the same images, best-of rounds (decode between samplings) and img2img included.
    (accelerate re-places the VAE's weights, and the CPU's conv kernels then round differently: 1e-6.)"""
    from janusflow.pipeline_img2img import JanusFlowImg2ImgPipeline

    pipe = JanusFlowPipeline.from_pretrained(folder, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=2, generator=0, candidates=2, judge=FirstPerfect(), output_type="np")
    plain = pipe(PROMPTS, **kwargs).images
    pipe.enable_model_cpu_offload(device="cpu")
    assert hasattr(pipe.model, "_hf_hook") and pipe._execution_device == torch.device("cpu", 0)
    np.testing.assert_allclose(pipe(PROMPTS, **kwargs).images, plain, rtol=0, atol=1e-5)
    image = Image.new("RGB", (16, 16), (10, 200, 10))
    offloaded = JanusFlowImg2ImgPipeline.from_pipe(pipe)(PROMPTS[0], image=image, num_inference_steps=2, generator=0,
                                                         output_type="np").images
    fresh = JanusFlowImg2ImgPipeline.from_pretrained(folder, device="cpu")
    fresh.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(offloaded, fresh(PROMPTS[0], image=image, num_inference_steps=2, generator=0,
                                                output_type="np").images, rtol=0, atol=1e-5)


# -- CUDA -------------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="CPU offload needs an accelerator")
def test_model_cpu_offload_gives_the_same_images(folder):
    pipe = JanusFlowPipeline.from_pretrained(folder, device="cuda", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    on_gpu = latents_of(pipe).cpu()
    pipe.enable_model_cpu_offload()
    offloaded = latents_of(pipe).cpu()
    assert pipe.model.device.type == "cpu"  # put back after the call
    torch.testing.assert_close(offloaded, on_gpu, rtol=0, atol=1e-5)
    assert pipe(PROMPTS[0], num_inference_steps=2, generator=0).images[0].size == (16, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_to_cuda_and_the_cuda_default_dtypes(folder):
    from janusflow.pipeline_img2img import JanusFlowImg2ImgPipeline, JanusFlowInpaintPipeline

    on_cuda = JanusFlowPipeline.from_pretrained(folder, device="cuda", torch_dtype=torch.float32)
    on_cuda.set_progress_bar_config(disable=True)
    moved = JanusFlowPipeline.from_pretrained(folder, device="cpu").to("cuda")
    moved.set_progress_bar_config(disable=True)
    assert moved.device.type == "cuda" and moved.vae.device.type == "cuda" and moved.vae.dtype == torch.float32
    torch.testing.assert_close(latents_of(moved).cpu(), latents_of(on_cuda).cpu(), rtol=0, atol=1e-5)
    default = JanusFlowPipeline.from_pretrained(folder)  # CUDA: bf16 model, fp32 VAE
    default.set_progress_bar_config(disable=True)
    assert default.model.dtype == torch.bfloat16 and default.vae.dtype == torch.float32
    image = Image.new("RGB", (16, 16), (200, 30, 30))
    everything = Image.new("L", (16, 16), 255)
    for cls, extra in ((JanusFlowImg2ImgPipeline, {}), (JanusFlowInpaintPipeline, {"mask_image": everything})):
        z = latents_of(cls.from_pipe(default), image=image, **extra)
        assert z.device.type == "cuda" and torch.isfinite(z).all()
