"""The solvers as diffusers schedulers: the Euler scheduler against the released loop (the reference
``integrate``), the grids and shift in the scheduler config, our midpoint scheduler, diffusers' Heun
on fields with a closed form, the official parity fixture through the scheduler loop, and the
embedded model's images from the same seeds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, SchedulerMixin
from safetensors.torch import load_file

from inference_helpers import tiny_model, tiny_processor
from janusflow.checkpoint import load_model
from janusflow.flow import as_scheduler_model
from janusflow.parity import TOLERANCE
from janusflow.processor import make_uncond
from janusflow.sampler import SamplerConfig, denoise, guided_field, initial_noise, integrate, sample_latents, time_grid
from janusflow.schedulers import (
    FlowMatchMidpointScheduler, make_scheduler, release_sigmas, set_timesteps, solver_name,
)

PROMPTS = ["a red circle", "two green triangles left of a yellow star above the blue square"]
FIXTURE = Path(__file__).parent / "fixtures" / "parity-small"


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=2)


@pytest.fixture(scope="module")
def processor(model):
    return tiny_processor(model)


def run_scheduler(velocity, z0, scheduler, n):
    set_timesteps(scheduler, n)
    return denoise(as_scheduler_model(velocity, scheduler.config.num_train_timesteps), z0.float(), scheduler)


def schedule_of(shift):
    return dict(schedule="uniform") if shift == 1.0 else dict(schedule="shifted", shift=shift)


# -- the grid lives in the scheduler config ------------------------------------------------------------

@pytest.mark.parametrize("shift", [1.0, 3.0, 7.0])
@pytest.mark.parametrize("n", [1, 4, 30])
def test_scheduler_config_reproduces_the_time_grid(shift, n):
    ts = torch.tensor(time_grid(SamplerConfig(num_steps=n, **schedule_of(shift))), dtype=torch.float64)
    plain = FlowMatchEulerDiscreteScheduler(shift=shift)  # diffusers alone, fp32
    plain.set_timesteps(sigmas=release_sigmas(n))
    torch.testing.assert_close(plain.sigmas.double(), 1 - ts, rtol=0, atol=1e-6)
    ours = make_scheduler("euler", shift)
    set_timesteps(ours, n)  # the same grid, kept in float64
    assert ours.sigmas.dtype == torch.float64
    torch.testing.assert_close(ours.sigmas, 1 - ts, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.timesteps, (1 - ts[:-1]) * 1000, rtol=0, atol=1e-9)


def test_a_sigma_conversion_keeps_diffusers_own_grid():
    scheduler = FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)
    set_timesteps(scheduler, 5)
    assert scheduler.sigmas.dtype == torch.float32 and len(scheduler.sigmas) == 6


# -- Euler: the released sampler -----------------------------------------------------------------------

@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("cached", [True, False])
def test_euler_scheduler_is_the_released_loop(model, processor, shift, cached):
    batch = processor.build_generation_batch(PROMPTS, guidance=True)
    z0 = initial_noise(2, model.config, torch.Generator().manual_seed(1))
    cfg = SamplerConfig(num_steps=5, guidance_scale=2.5, use_prompt_cache=cached, **schedule_of(shift))
    ref = sample_latents(model, batch.input_ids, batch.attention_mask, z0, cfg).latents
    with torch.inference_mode():
        velocity, _ = guided_field(model, batch.input_ids, batch.attention_mask, z0, cfg)
        got = run_scheduler(velocity, z0, make_scheduler("euler", shift), 5)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    assert (got - z0).abs().max() > 0.1


def test_diffusers_fp32_grid_is_within_fp32_rounding(model, processor):
    """diffusers' own fp32 grid (no float64 refinement) still gives the released latents to ~1e-5."""
    batch = processor.build_generation_batch(PROMPTS, guidance=True)
    z0 = initial_noise(2, model.config, torch.Generator().manual_seed(1))
    cfg = SamplerConfig(num_steps=30, guidance_scale=2.0)
    ref = sample_latents(model, batch.input_ids, batch.attention_mask, z0, cfg).latents
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(sigmas=release_sigmas(30))
    with torch.inference_mode():
        velocity, _ = guided_field(model, batch.input_ids, batch.attention_mask, z0, cfg)
        got = denoise(as_scheduler_model(velocity), z0, scheduler)
    assert scheduler.sigmas.dtype == torch.float32
    assert 0 < (got - ref).abs().max() < 2e-5


def test_euler_scheduler_reproduces_parity_case_c():
    """The official fixture's final latents through diffusers' Euler (prompt cache on and off)."""
    model = load_model(FIXTURE, dtype=torch.float32)
    c = load_file(str(FIXTURE / "cases.safetensors"))
    z0, n, w = c["gen.z0"], int(c["gen.num_steps"]), float(c["gen.cfg_weight"])
    cond = c["gen.input_ids"][None].expand(z0.shape[0], -1)
    uncond, uncond_mask = make_uncond(cond, torch.ones_like(cond), int(c["gen.pad_id"]))
    tokens, mask = torch.cat([cond, uncond]), torch.cat([torch.ones_like(cond), uncond_mask])
    for cached in (True, False):
        cfg = SamplerConfig(num_steps=n, guidance_scale=w, use_prompt_cache=cached)
        with torch.inference_mode():
            velocity, _ = guided_field(model, tokens, mask, z0, cfg)
            got = run_scheduler(velocity, z0, make_scheduler("euler"), n)
        assert (got - c["gen.z_final"]).abs().max() <= TOLERANCE


# -- exact answers on known fields -----------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["euler", "heun", "midpoint"])
def test_constant_field_is_exact(solver):
    z0, c = torch.randn(2, 3), torch.randn(2, 3)
    z1 = run_scheduler(lambda z, t: c, z0, make_scheduler(solver, 2.0), 6)
    torch.testing.assert_close(z1, z0 + c, rtol=0, atol=1e-5)  # Heun's fp32 divisions by sigma round


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_midpoint_scheduler_exact_for_field_linear_in_t_and_equal_to_the_reference(shift):
    a, b = torch.tensor([0.3, -1.0]), torch.tensor([2.0, 5.0])
    z0 = torch.tensor([1.0, 1.0])
    field = lambda z, t: a + b * t  # noqa: E731  dz/dt = a + b t  =>  z(1) = z0 + a + b/2
    z1 = run_scheduler(field, z0, make_scheduler("midpoint", shift), 3)
    torch.testing.assert_close(z1, z0 + a + b / 2, rtol=0, atol=1e-6)
    z_field = lambda z, t: z * (1 + t)  # noqa: E731  nonlinear in (z, t): the reference midpoint loop, step for step
    ref, _, _ = integrate(z_field, z0, SamplerConfig(num_steps=4, solver="midpoint", **schedule_of(shift)))
    torch.testing.assert_close(run_scheduler(z_field, z0, make_scheduler("midpoint", shift), 4), ref,
                               rtol=0, atol=1e-6)


def test_heun_scheduler_closed_form():
    """diffusers' Heun: trapezoid steps (exact for a field linear in t), except its last step, an Euler
    step to sigma = 0: z(1) = z0 + a + b/2 - b h^2 / 2, h the last step."""
    a, b = torch.tensor([0.3, -1.0], dtype=torch.float64), torch.tensor([2.0, 5.0], dtype=torch.float64)
    z0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    scheduler = make_scheduler("heun")
    z1 = run_scheduler(lambda z, t: a + b * t, z0, scheduler, 4)
    h = float(scheduler.sigmas[-2])
    torch.testing.assert_close(z1, z0 + a + b / 2 - b * h ** 2 / 2, rtol=0, atol=1e-5)
    assert len(scheduler.timesteps) == 2 * 4 - 1


def test_heun_on_the_model_differs_from_euler_and_is_finite(model, processor):
    batch = processor.build_generation_batch(PROMPTS[:1], guidance=True)
    z0 = initial_noise(1, model.config, torch.Generator().manual_seed(3))
    cfg = SamplerConfig(num_steps=3)
    with torch.inference_mode():
        velocity, _ = guided_field(model, batch.input_ids, batch.attention_mask, z0, cfg)
        heun, euler = (run_scheduler(velocity, z0, make_scheduler(s), 3) for s in ("heun", "euler"))
    assert torch.isfinite(heun).all() and (heun - euler).abs().max() > 1e-3


# -- the midpoint scheduler is a diffusers scheduler ------------------------------------------------------

def test_midpoint_scheduler_round_trip_and_protocol(tmp_path):
    scheduler = FlowMatchMidpointScheduler(shift=2.5)
    assert isinstance(scheduler, SchedulerMixin) and scheduler.order == 2 and solver_name(scheduler) == "midpoint"
    scheduler.save_pretrained(tmp_path)
    again = FlowMatchMidpointScheduler.from_pretrained(tmp_path)
    assert again.config.shift == 2.5 and type(again) is FlowMatchMidpointScheduler
    again.set_timesteps(3)
    s = again.sigmas.tolist()
    assert len(again.timesteps) == 6 and s[-1] == 0.0
    assert s[0::2][:3] == pytest.approx([2.5 * x / (1 + 1.5 * x) for x in (1, 2 / 3, 1 / 3)])
    assert s[1] == pytest.approx((s[0] + s[2]) / 2)
    heun = FlowMatchHeunDiscreteScheduler.from_config(again.config)  # a swap keeps the shift
    assert heun.config.shift == 2.5
    with pytest.raises(ValueError, match="sigmas for"):
        again.set_timesteps(2, sigmas=[1.0, 0.5, 0.2])


# -- the embedded model: the same images from the same seeds --------------------------------------------

def test_embedded_model_gives_the_released_images():
    """The pipeline (diffusers' Euler scheduler) and the reference loop of the previous sampler give the
    same PNG bytes from the same seeds on the shipped model, guided and not."""
    from janusflow.pipeline import JanusFlowPipeline, default_model_dir
    from janusflow.vae import decode, to_pil

    if default_model_dir() is None:
        pytest.skip("no embedded model")
    pipe = JanusFlowPipeline.from_pretrained(default_model_dir(), device="cpu")
    pipe.set_progress_bar_config(disable=True)

    def digests(images):
        return [hashlib.sha256(np.asarray(im).tobytes()).hexdigest() for im in images]

    prompts = ["a red circle", "a blue square above a green triangle"]
    for w, steps in ((2.0, 30), (1.0, 8)):
        got = pipe(prompts, num_inference_steps=steps, guidance_scale=w, generator=7, candidates=1).images
        batch = pipe.processor.build_generation_batch(prompts, guidance=w != 1)
        z0 = initial_noise(2, pipe.model.config, torch.Generator().manual_seed(7))
        ref = sample_latents(pipe.model, batch.input_ids, batch.attention_mask, z0,
                             SamplerConfig(num_steps=steps, guidance_scale=w)).latents
        assert digests(got) == digests(to_pil(decode(pipe.vae, ref)))


def test_embedded_model_best_of_n_keeps_the_released_choice():
    """The folder's default (best of 4 by the model's own answers) through the pipeline picks the same
    image as the search over candidates sampled by the reference loop."""
    from janusflow.best_of import search
    from janusflow.pipeline import JanusFlowPipeline, default_model_dir
    from janusflow.vae import decode, to_pil

    if default_model_dir() is None:
        pytest.skip("no embedded model")
    pipe = JanusFlowPipeline.from_pretrained(default_model_dir(), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    prompt, n = "a red triangle and a blue circle", pipe.image_generation_config.candidates
    got = pipe(prompt, generator=0).images  # the default: best of n
    z0 = initial_noise(n, pipe.model.config, torch.Generator().manual_seed(0))  # candidate c is row c

    def draw(rows):
        batch = pipe.processor.build_generation_batch([prompt] * len(rows), guidance=True)
        z = sample_latents(pipe.model, batch.input_ids, batch.attention_mask, z0[rows], SamplerConfig()).latents
        return to_pil(decode(pipe.vae, z))

    (kept,) = search([prompt], 1, n, pipe.default_judge(), draw)
    assert kept > 0  # this seed's first candidate fails a check: the search went on
    assert np.array_equal(np.asarray(got[0]), np.asarray(draw([kept])[0]))
