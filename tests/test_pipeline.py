"""JanusFlowPipeline and the VAE: end to end on a tiny random model saved to disk (ours and the
official layout), reproducibility, batching, output types, precision rules and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from inference_helpers import make_model_folder, tiny_vae
from janusflow.errors import CheckpointError, InputError
from janusflow.pipeline import JanusFlowPipeline, generate_geneval, load_model_and_processor
from janusflow.sampler import SamplerConfig, initial_noise, sample_latents
from janusflow.vae import NonFiniteLatentsError, check_finite, decode, load_vae, to_pil, vae_dtype

PROMPTS = ["a red circle", "two green triangles left of a yellow star"]



@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def pipe(folder):
    pipe = JanusFlowPipeline.from_pretrained(folder, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- VAE ------------------------------------------------------------------------------------------------

def test_vae_never_fp16(tmp_path):
    tiny_vae().save_pretrained(tmp_path / "vae")
    for requested in (torch.float16, torch.bfloat16, None, torch.float32):
        assert load_vae(tmp_path / "vae", "cpu", requested).dtype == torch.float32
    assert load_vae(tiny_vae().half(), "cpu", torch.float16).dtype == torch.float32  # an fp16 instance is upcast
    assert vae_dtype(torch.float16, "cuda") == torch.float32
    assert vae_dtype(torch.bfloat16, "cuda") == torch.bfloat16  # bf16 only when asked for, on CUDA
    assert vae_dtype(None, "cuda") == torch.float32


@pytest.mark.parametrize("shift", [None, 0.25])
def test_decode_unscales_latents(shift):
    vae = load_vae(tiny_vae(shift_factor=shift))
    z = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = vae.decode(z / 0.5 + (shift or 0.0)).sample.clamp(-1, 1)
    images = decode(vae, z)
    torch.testing.assert_close(images, expected)
    assert images.shape == (2, 3, 16, 16)
    pil = to_pil(images)
    assert pil[0].size == (16, 16) and pil[0].mode == "RGB"
    assert np.array_equal(np.asarray(pil[1]), ((expected[1].permute(1, 2, 0).numpy() + 1) / 2 * 255).astype(np.uint8))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_latents_are_reported(bad):
    z = torch.zeros(3, 4, 8, 8)
    z[1, 2, 3, 4] = bad
    with pytest.raises(NonFiniteLatentsError, match=r"image\(s\) \[1\]"):
        check_finite(z)
    with pytest.raises(NonFiniteLatentsError):
        decode(load_vae(tiny_vae()), z)


def test_vae_channel_mismatch():
    with pytest.raises(CheckpointError, match="16-channel"):
        decode(load_vae(tiny_vae(latent_channels=16)), torch.zeros(1, 4, 8, 8))


def test_missing_vae_folder(tmp_path):
    with pytest.raises(CheckpointError):
        load_vae(tmp_path / "nothing")


# -- the pipeline ---------------------------------------------------------------------------------------

def test_end_to_end_images(pipe):
    out = pipe(PROMPTS, num_inference_steps=3, num_images_per_prompt=2, generator=0)
    assert len(out.images) == 4
    side = 2 * pipe.model.config.gen_vision.latent_size
    assert all(isinstance(im, Image.Image) and im.size == (side, side) for im in out.images)
    arrays = [np.asarray(im) for im in out.images]
    assert not np.array_equal(arrays[0], arrays[1])  # two images of one prompt differ


def test_pipeline_is_the_sampler_plus_vae(pipe):
    """Prompt rows, guidance rows, noise and decode wired as documented: same latents as by hand."""
    proc, model = pipe.processor, pipe.model
    got = pipe(PROMPTS, num_inference_steps=3, guidance_scale=2.5, generator=4, output_type="latent").images
    batch = proc.build_generation_batch(PROMPTS, guidance=True)
    z0 = initial_noise(2, model.config, torch.Generator().manual_seed(4))
    ref = sample_latents(model, batch.input_ids, batch.attention_mask, z0,
                         SamplerConfig(num_steps=3, guidance_scale=2.5, use_prompt_cache=False)).latents
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    pt = pipe(PROMPTS, num_inference_steps=3, guidance_scale=2.5, generator=4, output_type="pt").images
    torch.testing.assert_close(pt, (decode(pipe.vae, ref) + 1) / 2, rtol=0, atol=1e-4)


def test_seed_reproduces_images(pipe):
    a = pipe(PROMPTS[0], num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="np").images
    b = pipe(PROMPTS[0], num_inference_steps=2, generator=3, output_type="np").images
    c = pipe(PROMPTS[0], num_inference_steps=2, generator=4, output_type="np").images
    assert a.shape == (1, 16, 16, 3) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_batching_does_not_change_results(pipe):
    kwargs = dict(num_inference_steps=2, num_images_per_prompt=2, generator=9, output_type="latent")
    together = pipe(PROMPTS, **kwargs).images
    chunked = pipe(PROMPTS, batch_size=3, **kwargs).images
    torch.testing.assert_close(together, chunked, rtol=0, atol=1e-5)
    z0 = initial_noise(4, pipe.model.config, torch.Generator().manual_seed(9))
    first = pipe(PROMPTS[0], **{**kwargs, "generator": None}, latents=z0[:2]).images  # explicit noise
    torch.testing.assert_close(first, together[:2], rtol=0, atol=1e-5)


def test_per_image_generators(pipe):
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    out = pipe(PROMPTS[0], num_inference_steps=2, num_images_per_prompt=2, generator=gens, output_type="latent")
    alone = pipe(PROMPTS[0], num_inference_steps=2, generator=2, output_type="latent")
    torch.testing.assert_close(out.images[1:], alone.images, rtol=0, atol=1e-5)


@pytest.mark.parametrize("solver", ["heun", "midpoint"])
def test_other_solvers_run(pipe, solver):
    out = pipe(PROMPTS[0], num_inference_steps=2, solver=solver, schedule="shifted", generator=0, output_type="latent")
    euler = pipe(PROMPTS[0], num_inference_steps=2, generator=0, output_type="latent")
    assert torch.isfinite(out.images).all() and not torch.allclose(out.images, euler.images)


def test_official_layout_loads_the_same(tmp_path):
    # the official config.json has no latent size: it implies the release's 48 x 48
    official = make_model_folder(tmp_path / "official", official=True, with_vae=False)
    ours = make_model_folder(tmp_path / "ours", official_latents=True, with_vae=False)
    assert "language_config" in (official / "config.json").read_text()
    kwargs = dict(num_inference_steps=1, generator=1, output_type="latent")
    out = []
    for folder in (official, ours):
        pipe = JanusFlowPipeline.from_pretrained(folder, device="cpu")
        pipe.set_progress_bar_config(disable=True)
        out.append(pipe(PROMPTS[0], **kwargs).images)
    assert out[0].shape == (1, 4, 48, 48)
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt=""), "empty"),
    (dict(prompt="   "), "empty"),
    (dict(prompt="x " * 600), "max_length"),
    (dict(prompt="ok", num_inference_steps=0), "steps"),
    (dict(prompt="ok", guidance_scale=-1.0), "guidance"),
    (dict(prompt="ok", num_images_per_prompt=0), "num_images_per_prompt"),
    (dict(prompt="ok", output_type="jpeg"), "output_type"),
    (dict(prompt="ok", batch_size=0), "batch_size"),
    (dict(prompt="ok", latents=torch.zeros(1, 4, 5, 5)), "latents"),
])
def test_bad_input(pipe, kwargs, match):
    with pytest.raises(InputError, match=match):
        pipe(**kwargs)


def test_no_vae_means_latents_only(folder):
    model, processor = load_model_and_processor(folder, "cpu")
    pipe = JanusFlowPipeline(model, processor)
    with pytest.raises(InputError, match="VAE"):
        pipe("ok", num_inference_steps=1)
    assert pipe("ok", num_inference_steps=1, output_type="latent").images.shape == (1, 4, 8, 8)


def test_non_finite_model_output_is_reported(folder):
    pipe = JanusFlowPipeline.from_pretrained(folder, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        pipe.model.gen_dec_aligner.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLatentsError):
        pipe("ok", num_inference_steps=1)


def test_model_folder_errors(tmp_path, folder):
    with pytest.raises(CheckpointError, match="not found"):
        load_model_and_processor(tmp_path / "missing")
    no_tokenizer = tmp_path / "no_tok"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_model_and_processor(no_tokenizer)


def test_geneval_layout_and_resume(pipe, tmp_path):
    import json

    meta = tmp_path / "meta.jsonl"
    lines = [{"tag": "single_object", "prompt": "a photo of a cat"}, {"tag": "colors", "prompt": "a red dog"}]
    meta.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "out"
    assert generate_geneval(pipe, meta, out, num_images=2, seed=0, show_progress=False, num_inference_steps=1) == (2, 0)
    for i, line in enumerate(lines):
        assert json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text()) == line
        assert sorted(p.name for p in (out / f"{i:05d}" / "samples").iterdir()) == ["0000.png", "0001.png"]
    # prompt i uses seed + i: the same images as a direct call
    direct = pipe("a red dog", num_images_per_prompt=2, generator=1, num_inference_steps=1).images
    assert np.array_equal(np.asarray(Image.open(out / "00001" / "samples" / "0001.png")), np.asarray(direct[1]))
    (out / "00001" / "samples" / "0001.png").unlink()
    assert generate_geneval(pipe, meta, out, num_images=2, seed=0, show_progress=False, num_inference_steps=1) == (1, 1)
    assert np.array_equal(np.asarray(Image.open(out / "00001" / "samples" / "0001.png")), np.asarray(direct[1]))
