"""The fixed-shape cached step (janusflow.fast_step) against the sampler's eager paths. The CUDA graph
and compiled modes are checked on a GPU by benchmarks/bench_gpu.py (and tests/test_cuda.py when one is
present); on the CPU the eager mode checks the static cache, the 4-D mask and the buffer reuse."""

from __future__ import annotations

import pytest
import torch

from inference_helpers import tiny_model, tiny_processor
from janusflow.errors import InputError
from janusflow.fast_step import StaticStep, sample_latents_static, step_mask
from janusflow.sampler import SamplerConfig, VelocityField, initial_noise, sample_latents

PROMPTS = ["a red circle", "two green triangles left of a yellow star above the blue square", "dog"]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=2)


@pytest.fixture(scope="module")
def processor(model):
    return tiny_processor(model)


def rows(processor, prompts, guided=True):
    batch = processor.build_generation_batch(prompts, guidance=guided)
    return batch.input_ids, batch.attention_mask


def test_step_mask_is_causal_over_the_step_and_keeps_the_prompt_padding():
    key_mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 0, 0, 1, 1, 1]])  # P = 3 prompt columns, Q = 3
    mask = step_mask(key_mask, 3, torch.float32, "sdpa")
    assert mask.shape == (2, 1, 3, 6) and mask.dtype == torch.bool
    expected_row0 = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask[0, 0], expected_row0)
    assert torch.equal(mask[1, 0, 0], torch.tensor([1, 0, 0, 1, 0, 0], dtype=torch.bool))
    additive = step_mask(key_mask, 3, torch.float32, "eager")
    assert torch.equal(additive == 0, mask) and additive.min() == torch.finfo(torch.float32).min


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("w", [2.0, 1.0])
def test_static_step_matches_the_cached_and_the_full_recompute_paths(model, processor, attn, w):
    before = model.language_model.config._attn_implementation
    model.language_model.config._attn_implementation = attn
    try:
        tokens, mask = rows(processor, PROMPTS, guided=w != 1)
        assert (mask == 0).any()  # left padded, and the unconditional rows mask their text
        z0 = initial_noise(len(PROMPTS), model.config, torch.Generator().manual_seed(0))
        out = {}
        for cached in (True, False):
            cfg = SamplerConfig(num_steps=3, guidance_scale=w, use_prompt_cache=cached)
            out[cached] = sample_latents(model, tokens, mask, z0, cfg, record=True).trajectory
        static = sample_latents_static(model, tokens, mask, z0, SamplerConfig(num_steps=3, guidance_scale=w),
                                       StaticStep(model, "eager"), record=True).trajectory
    finally:
        model.language_model.config._attn_implementation = before
    torch.testing.assert_close(static, out[True], rtol=0, atol=1e-5)
    torch.testing.assert_close(static, out[False], rtol=0, atol=1e-5)
    assert (static[-1] - z0).abs().max() > 0.1  # the latents moved


def test_buffers_are_reused_across_prompts_of_one_shape_and_give_each_prompt_its_velocity(model, processor):
    step = StaticStep(model, "eager")
    z = initial_noise(2, model.config, torch.Generator().manual_seed(1))
    N = model.config.num_image_tokens
    results, shapes = [], set()
    for prompts in (["a red circle", "dog"], ["a blue square", "cat"], ["a red circle", "dog"]):
        tokens, mask = rows(processor, prompts, guided=False)
        shapes.add(tuple(tokens.shape))
        with torch.inference_mode():
            field = VelocityField(model, tokens, mask, N, use_cache=True)
            fast = step.bind(field)(z, 0.25)
            results.append((fast, field(z, 0.25)))
    assert len(step._buffers) == len(shapes)  # one set of buffers per shape, not per prompt
    for fast, reference in results:
        torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)
    assert (results[0][0] - results[1][0]).abs().max() > 1e-3  # the second prompt was really read
    torch.testing.assert_close(results[2][0], results[0][0], rtol=0, atol=1e-6)  # and the first again


def test_outputs_do_not_alias_the_step_buffers(model, processor):
    tokens, mask = rows(processor, ["a red circle"], guided=False)
    with torch.inference_mode():
        field = VelocityField(model, tokens, mask, model.config.num_image_tokens, use_cache=True)
        velocity = StaticStep(model, "eager").bind(field)
        z = initial_noise(1, model.config, torch.Generator().manual_seed(2))
        first = velocity(z, 0.1)
        kept = first.clone()
        velocity(z * 2, 0.9)
    assert torch.equal(first, kept)


def test_bad_use_is_refused(model, processor):
    with pytest.raises(InputError, match="CUDA"):
        StaticStep(model, "cuda_graph")
    with pytest.raises(InputError, match="mode"):
        StaticStep(model, "fast")
    tokens, mask = rows(processor, ["dog"], guided=False)
    with torch.inference_mode():
        field = VelocityField(model, tokens, mask, model.config.num_image_tokens, use_cache=False)
    with pytest.raises(InputError, match="prompt cache"):
        StaticStep(model, "eager").bind(field)
    z0 = initial_noise(1, model.config)
    with pytest.raises(InputError, match="prompt rows"):
        sample_latents_static(model, tokens, mask, z0, SamplerConfig(num_steps=1), StaticStep(model, "eager"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replays_the_cached_step(model, processor):
    import copy

    gpu = copy.deepcopy(model).cuda()
    step = StaticStep(gpu, "cuda_graph")
    cfg = SamplerConfig(num_steps=4, guidance_scale=2.0)
    for prompts in (["a red circle", "dog"], ["a blue square", "cat"]):  # the second replays the first's graph
        tokens, mask = (x.cuda() for x in rows(processor, prompts))
        z0 = initial_noise(2, gpu.config, torch.Generator().manual_seed(0), device="cuda")
        reference = sample_latents(gpu, tokens, mask, z0, cfg).latents
        replayed = sample_latents_static(gpu, tokens, mask, z0, cfg, step).latents
        torch.testing.assert_close(replayed, reference, rtol=0, atol=1e-4)
    assert len(step.records) == len({tuple(rows(processor, p)[0].shape) for p in (["a red circle", "dog"],
                                                                                 ["a blue square", "cat"])})
