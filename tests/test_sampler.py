"""The ODE sampler: exact answers for the solvers and schedules, the prompt cache against the
full-recompute reference, batching and padding, guidance, and the official parity fixture (case c)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from inference_helpers import tiny_model, tiny_processor
from janusflow.checkpoint import load_model
from janusflow.errors import InputError
from janusflow.modeling import cache_kwargs
from janusflow.parity import TOLERANCE, generation_case
from janusflow.processor import make_uncond
from janusflow.sampler import SamplerConfig, initial_noise, integrate, sample_latents, time_grid

FIXTURE = Path(__file__).parent / "fixtures" / "parity-small"
PROMPTS = ["a red circle", "two green triangles left of a yellow star above the blue square", "dog"]



@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1)


@pytest.fixture(scope="module")
def processor(model):
    return tiny_processor(model)


def rows(processor, prompts, guided: bool):
    batch = processor.build_generation_batch(prompts, guidance=guided)
    return batch.input_ids, batch.attention_mask


def noise(model, n: int, seed: int = 0) -> torch.Tensor:
    return initial_noise(n, model.config, torch.Generator().manual_seed(seed))


# -- exact answers: the ODE loop on known fields -------------------------------------------------------

@pytest.mark.parametrize("solver", ["euler", "heun", "midpoint"])
@pytest.mark.parametrize("schedule", ["uniform", "shifted"])
def test_constant_field_is_exact(solver, schedule):
    z0, c = torch.randn(2, 3), torch.randn(2, 3)
    z1, _, _ = integrate(lambda z, t: c, z0, SamplerConfig(num_steps=7, solver=solver, schedule=schedule))
    torch.testing.assert_close(z1, z0 + c, rtol=0, atol=1e-6)


def test_euler_on_linear_field_matches_its_closed_form():
    # v(z, t) = z: Euler gives (1 + 1/n)^n z0 exactly (not e * z0); a wrong dt or step count would not.
    z0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    for n in (1, 3, 10):
        z1, _, _ = integrate(lambda z, t: z, z0, SamplerConfig(num_steps=n))
        torch.testing.assert_close(z1, (1 + 1 / n) ** n * z0)
    z1, _, _ = integrate(lambda z, t: z, z0, SamplerConfig(num_steps=4, solver="heun"))
    torch.testing.assert_close(z1, (1 + 1 / 4 + 1 / 32) ** 4 * z0)  # Heun's amplification 1 + h + h^2/2


@pytest.mark.parametrize("schedule", ["uniform", "shifted"])
def test_second_order_solvers_exact_for_field_linear_in_t(schedule):
    # dz/dt = a + b t  =>  z(1) = z0 + a + b/2. Euler samples t_k only (never t = 1), so it is off.
    a, b = torch.tensor([0.3, -1.0], dtype=torch.float64), torch.tensor([2.0, 5.0], dtype=torch.float64)
    z0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    exact = z0 + a + b / 2
    field = lambda z, t: a + b * t  # noqa: E731
    for solver in ("heun", "midpoint"):
        z1, _, _ = integrate(field, z0, SamplerConfig(num_steps=3, solver=solver, schedule=schedule))
        torch.testing.assert_close(z1, exact)
    z1, _, _ = integrate(field, z0, SamplerConfig(num_steps=3, schedule=schedule))
    assert (z1 - exact).abs().max() > 0.1
    if schedule == "uniform":  # Euler's own closed form: z0 + a + b * mean(k/n) = z0 + a + b (n-1)/(2n)
        torch.testing.assert_close(z1, z0 + a + b * (3 - 1) / (2 * 3))


def test_uniform_grid_is_the_release():
    assert time_grid(SamplerConfig(num_steps=4)) == [0.0, 0.25, 0.5, 0.75, 1.0]
    seen = []
    integrate(lambda z, t: seen.append(t) or torch.zeros_like(z), torch.zeros(1), SamplerConfig(num_steps=4))
    assert seen == [0.0, 0.25, 0.5, 0.75]  # t = 1 is never evaluated by Euler


@pytest.mark.parametrize("shift", [1.5, 3.0, 7.0])
def test_shifted_schedule_monotone_from_0_to_1(shift):
    ts = time_grid(SamplerConfig(num_steps=20, schedule="shifted", shift=shift))
    assert ts[0] == 0.0 and ts[-1] == 1.0 and len(ts) == 21
    steps = [b - a for a, b in zip(ts, ts[1:])]
    assert all(s > 0 for s in steps)
    assert steps[0] < 1 / 20 < steps[-1]  # smaller steps near the noise end
    sigma = 0.5  # sigma' = s sigma / (1 + (s-1) sigma) at t = 0.5
    assert ts[10] == pytest.approx(1 - shift * sigma / (1 + (shift - 1) * sigma))


def test_shift_one_is_uniform():
    torch.testing.assert_close(torch.tensor(time_grid(SamplerConfig(num_steps=9, schedule="shifted", shift=1.0))),
                               torch.tensor(time_grid(SamplerConfig(num_steps=9))))


@pytest.mark.parametrize("bad", [dict(num_steps=0), dict(num_steps=-3), dict(num_steps=2.5), dict(guidance_scale=-0.1),
                                 dict(guidance_scale=float("nan")), dict(solver="rk4"), dict(schedule="cosine"),
                                 dict(shift=0.0)])
def test_bad_sampler_settings(bad):
    with pytest.raises(InputError):
        SamplerConfig(**bad).validate()


# -- the model: prompt cache, padding, guidance --------------------------------------------------------

@pytest.mark.parametrize("w", [2.0, 1.0])
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_cached_matches_full_recompute(model, processor, w, solver):
    tokens, mask = rows(processor, PROMPTS, guided=w != 1)
    z0 = noise(model, len(PROMPTS))
    out = {}
    for cached in (True, False):
        cfg = SamplerConfig(num_steps=3, guidance_scale=w, solver=solver, use_prompt_cache=cached)
        out[cached] = sample_latents(model, tokens, mask, z0, cfg, record=True)
    torch.testing.assert_close(out[True].trajectory, out[False].trajectory, rtol=0, atol=1e-5)
    assert (out[True].latents - z0).abs().max() > 0.1  # the latents moved


@pytest.mark.parametrize("cached", [True, False])
def test_left_padded_batch_equals_each_prompt_alone(model, processor, cached):
    cfg = SamplerConfig(num_steps=2, guidance_scale=3.0, use_prompt_cache=cached)
    tokens, mask = rows(processor, PROMPTS, guided=True)
    assert (mask == 0).any()  # the batch really is padded
    z0 = noise(model, len(PROMPTS))
    together = sample_latents(model, tokens, mask, z0, cfg).latents
    for i, prompt in enumerate(PROMPTS):
        alone = sample_latents(model, *rows(processor, [prompt], guided=True), z0[i:i + 1], cfg).latents
        torch.testing.assert_close(together[i:i + 1], alone, rtol=0, atol=1e-5)


def test_prompt_changes_the_latents(model, processor):
    cfg = SamplerConfig(num_steps=2)
    z0 = noise(model, 1)
    a = sample_latents(model, *rows(processor, [PROMPTS[0]], True), z0, cfg).latents
    b = sample_latents(model, *rows(processor, [PROMPTS[2]], True), z0, cfg).latents
    assert (a - b).abs().max() > 1e-3


def count_llm_rows(model):
    seen = []
    handle = model.llm.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["inputs_embeds"].shape[0]), with_kwargs=True)
    return seen, handle


@pytest.mark.parametrize("cached", [True, False])
def test_guidance_one_skips_the_unconditional_pass(model, processor, cached):
    z0 = noise(model, 2)
    guided_tokens, guided_mask = rows(processor, PROMPTS[:2], guided=True)
    seen, handle = count_llm_rows(model)
    try:
        out_w1 = sample_latents(model, guided_tokens, guided_mask, z0,
                                SamplerConfig(num_steps=3, guidance_scale=1.0, use_prompt_cache=cached)).latents
        rows_w1 = list(seen)
        seen.clear()
        sample_latents(model, guided_tokens, guided_mask, z0,
                       SamplerConfig(num_steps=3, guidance_scale=2.0, use_prompt_cache=cached))
        rows_w2 = list(seen)
    finally:
        handle.remove()
    calls = 3 + (1 if cached else 0)  # one call a step, plus the prompt prefill when cached
    assert rows_w1 == [2] * calls and rows_w2 == [4] * calls
    # w = 1 is the conditional velocity alone: same as giving only the conditional rows
    cond_tokens, cond_mask = rows(processor, PROMPTS[:2], guided=False)
    alone = sample_latents(model, cond_tokens, cond_mask, z0, SamplerConfig(num_steps=3, guidance_scale=1.0)).latents
    torch.testing.assert_close(out_w1, alone, rtol=0, atol=1e-6)


def test_guidance_formula_on_one_step(model, processor):
    """One Euler step with w = 2.5 equals z0 + 1 * (w v_c - (w-1) v_u), both velocities computed by hand."""
    tokens, mask = rows(processor, [PROMPTS[0]], guided=True)
    z0 = noise(model, 1)
    got = sample_latents(model, tokens, mask, z0, SamplerConfig(num_steps=1, guidance_scale=2.5)).latents
    v_c = sample_latents(model, tokens[:1], mask[:1], z0, SamplerConfig(num_steps=1, guidance_scale=1.0)).latents - z0
    u_tokens, u_mask = make_uncond(tokens[:1], mask[:1], processor.pad_id)
    v_u = sample_latents(model, u_tokens, u_mask, z0, SamplerConfig(num_steps=1, guidance_scale=1.0)).latents - z0
    torch.testing.assert_close(got, z0 + 2.5 * v_c - 1.5 * v_u, rtol=0, atol=1e-5)


def test_wrong_row_count_is_refused(model, processor):
    tokens, mask = rows(processor, PROMPTS[:2], guided=False)
    with pytest.raises(InputError, match="prompt rows"):
        sample_latents(model, tokens, mask, noise(model, 2), SamplerConfig(num_steps=1, guidance_scale=2.0))


def test_noise_shape_from_config_and_reproducible(model):
    from janusflow.config import JanusFlowConfig

    small = JanusFlowConfig.from_name("small")
    assert initial_noise(3, small).shape == (3, small.gen_vision.latent_channels, 16, 16)
    assert noise(model, 2).shape == (2, 4, model.config.gen_vision.latent_size, model.config.gen_vision.latent_size)
    torch.testing.assert_close(noise(model, 2, seed=5), noise(model, 2, seed=5), rtol=0, atol=0)
    assert not torch.equal(noise(model, 2, seed=5), noise(model, 2, seed=6))
    gens = [torch.Generator().manual_seed(s) for s in (7, 8)]
    per_image = initial_noise(2, model.config, gens)
    torch.testing.assert_close(per_image[1], noise(model, 1, seed=8)[0], rtol=0, atol=0)
    with pytest.raises(InputError):
        initial_noise(3, model.config, gens)


# -- parity: case c of the official fixture ------------------------------------------------------------

def test_euler_reproduces_parity_case_c():
    model = load_model(FIXTURE, dtype=torch.float32)
    cases = load_file(str(FIXTURE / "cases.safetensors"))
    ours = generation_case(model, cases)
    for name in ("gen.z_final", "gen.z_traj", "gen.v_cfg_traj", "gen.t_steps", "gen.attention_mask"):
        for suffix in ("", "@cached"):  # the full-recompute reference path and the prompt-cached path
            diff = (ours[name + suffix].double() - cases[name].double()).abs().max().item()
            assert diff <= TOLERANCE, (name + suffix, diff)
    assert (cases["gen.z_final"] - cases["gen.z0"]).abs().max() > 0.1  # the fixture really integrates


def test_bf16_model_keeps_fp32_state(processor):
    """The model may run in bf16 (CUDA's default); the ODE state and the update stay fp32."""
    fp32 = tiny_model(seed=1)
    bf16 = tiny_model(seed=1).to(torch.bfloat16)
    tokens, mask = rows(processor, PROMPTS[:2], guided=True)
    z0 = noise(fp32, 2)
    cfg = SamplerConfig(num_steps=3, guidance_scale=2.0)
    ref = sample_latents(fp32, tokens, mask, z0, cfg).latents
    got = sample_latents(bf16, tokens, mask, z0, cfg).latents
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - ref).abs().max() < 0.1 * ref.abs().max()  # bf16 rounding, not a different answer


def test_cache_keyword_follows_the_llm_signature(model):
    """transformers renamed the LLM's cache argument past_key_values -> cache; an older release (5.17)
    ignores an unknown cache= and builds its own, so the keyword must come from the LLM's signature."""

    class Old(torch.nn.Module):
        def forward(self, inputs_embeds=None, past_key_values=None, use_cache=None, **kwargs):
            return inputs_embeds

    class New(torch.nn.Module):
        def forward(self, inputs_embeds=None, cache=None, use_cache=None, **kwargs):
            return inputs_embeds

    assert cache_kwargs(Old(), "c") == {"past_key_values": "c"}
    assert cache_kwargs(New(), "c") == {"cache": "c"}
    for llm in (model.llm, model.language_model):
        (name,) = cache_kwargs(llm, None)
        assert name in inspect.signature(type(llm).forward).parameters
