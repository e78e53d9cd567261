"""Img2img and inpainting (``pipeline_img2img``): where the flow starts, strength 1 is text-to-image
from the same noise, the kept region's latents, bad input; and on the shapes world with the exact
scorer: low strength reads the input scene back, inpainting keeps every object outside the mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from inference_helpers import make_model_folder
from janusflow.errors import InputError
from janusflow.pipeline import JanusFlowPipeline, default_model_dir
from janusflow.pipeline_img2img import JanusFlowImg2ImgPipeline, JanusFlowInpaintPipeline
from janusflow.sampler import SamplerConfig, guided_field, initial_noise
from janusflow.vae import encode

PROMPTS = ["a red circle", "two green triangles left of a yellow star"]


@pytest.fixture(scope="module")
def img2img(tmp_path_factory):
    pipe = JanusFlowImg2ImgPipeline.from_pretrained(make_model_folder(tmp_path_factory.mktemp("tiny") / "m"),
                                                    device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def picture(seed: int, side: int = 16) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def run(pipe, **kwargs):
    kwargs = {"num_inference_steps": 4, "generator": 0, "output_type": "latent", **kwargs}
    return pipe(PROMPTS, **kwargs).images


@pytest.mark.parametrize("solver", ["euler", "heun", "midpoint"])
def test_strength_one_is_text_to_image_from_the_same_noise(img2img, solver):
    text = JanusFlowPipeline.from_pipe(img2img)
    expected = run(text, solver=solver, num_images_per_prompt=2)
    got = run(img2img, image=[picture(0), picture(1)], strength=1.0, solver=solver, num_images_per_prompt=2)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    inpaint = JanusFlowInpaintPipeline.from_pipe(img2img)
    everything = Image.new("L", (16, 16), 255)  # paint everywhere: nothing kept
    torch.testing.assert_close(run(inpaint, image=picture(0), mask_image=everything, solver=solver,
                                   num_images_per_prompt=2), expected, rtol=0, atol=0)


def test_the_flow_starts_on_the_straight_path_at_one_minus_strength(img2img):
    """strength 0.25 of 4 steps: one Euler step from x_0.75 = 0.75 x1 + 0.25 x0."""
    image = picture(2)
    x1 = img2img.encode_images(["p"], image)
    z0 = initial_noise(2, img2img.model.config, torch.Generator().manual_seed(0))
    seen = []
    got = run(img2img, image=image, strength=0.25,
              callback_on_step_end=lambda p, i, t, tensors: seen.append(float(t)) or {})
    assert seen == [250.0] and img2img.num_timesteps == 1
    batch = img2img.processor.build_generation_batch(PROMPTS, guidance=True)
    start = 0.75 * x1 + 0.25 * z0
    with torch.inference_mode():
        velocity, _ = guided_field(img2img.model, batch.input_ids, batch.attention_mask, z0,
                                   SamplerConfig(num_steps=4, guidance_scale=2.0))
        expected = start + 0.25 * velocity(start, 0.75)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_strength_picks_the_nearest_grid_point(img2img):
    steps = []
    run(img2img, image=picture(0), strength=0.3, num_inference_steps=10,
        callback_on_step_end=lambda p, i, t, tensors: steps.append(round(float(t), 3)) or {})
    assert steps == [300.0, 200.0, 100.0]  # t = 0.7, 0.8, 0.9: three of ten steps


def test_strength_zero_is_the_image_latent(img2img):
    images = [picture(3), picture(4)]
    got = run(img2img, image=images, strength=0.0)
    pixels = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]).float() / 127.5 - 1
    torch.testing.assert_close(got, encode(img2img.vae, pixels), rtol=0, atol=1e-5)


def test_inpainting_reimposes_the_kept_latents(img2img):
    inpaint = JanusFlowInpaintPipeline.from_pipe(img2img)
    image, mask = picture(5), np.zeros((16, 16), np.uint8)
    mask[:8, :5] = 255  # latent cells (rows 0..3, cols 0..2) painted: cols 0-1 fully, col 2 partly
    got = run(inpaint, image=image, mask_image=Image.fromarray(mask), solver="heun")
    x1 = img2img.encode_images(["p"], image)  # (1, C, 8, 8)
    torch.testing.assert_close(  # diffusers' image processor: pixels / 255 * 2 - 1
        x1, encode(img2img.vae, torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1),
        rtol=0, atol=1e-5)
    painted = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    painted[..., :4, :3] = True
    kept = (~painted).expand_as(got)
    torch.testing.assert_close(got[kept], x1.expand_as(got)[kept], rtol=0, atol=0)
    assert (got - x1)[painted.expand_as(got)].abs().max() > 0.1


@pytest.mark.parametrize("kwargs, match", [
    (dict(image=None), "no image"),
    (dict(strength=1.5), "strength"),
    (dict(strength=-0.1), "strength"),
    (dict(strength=True), "strength"),
    (dict(image=[picture(0)] * 3), "3 images for 2 prompts"),
    (dict(image="not an image"), "image"),
])
def test_img2img_bad_input(img2img, kwargs, match):
    with pytest.raises(InputError, match=match):
        run(img2img, **{"image": picture(0), **kwargs})


def test_inpaint_bad_input_and_no_vae(img2img):
    inpaint = JanusFlowInpaintPipeline.from_pipe(img2img)
    with pytest.raises(InputError, match="mask_image"):
        run(inpaint, image=picture(0))
    with pytest.raises(InputError, match="3 mask_images for 2 prompts"):
        run(inpaint, image=picture(0), mask_image=[picture(0)] * 3)
    with pytest.raises(InputError, match="VAE"):
        run(JanusFlowImg2ImgPipeline(img2img.model, img2img.processor), image=picture(0))


# -- the shapes world, exact scorer -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes_pipe():
    if default_model_dir() is None:
        pytest.skip("no embedded model")
    pipe = JanusFlowImg2ImgPipeline.from_pretrained(default_model_dir(), device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def objects(image):
    from janusflow.shapes import detect_objects

    return sorted((d.shape, d.color, round(d.cx), round(d.cy)) for d in detect_objects(image))


def test_low_strength_reads_the_input_scene_back(shapes_pipe):
    from janusflow.shapes import describe, render, sample_scene

    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(4)]
    renders = [render(s) for s in scenes]
    out = shapes_pipe([describe(s) for s in scenes], image=renders, strength=0.3, generator=1, candidates=1).images
    for scene, before, after in zip(scenes, renders, out):
        assert objects(after) == objects(before), describe(scene)
        assert len(objects(before)) == len(scene.objects)


def test_inpainting_keeps_every_object_outside_the_mask(shapes_pipe):
    from janusflow.shapes import render, sample_scene

    inpaint = JanusFlowInpaintPipeline.from_pipe(shapes_pipe)
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng, 3) for _ in range(4)]
    masks = []
    for scene in scenes:  # white over the first object's box, 2 px around it
        o, mask = scene.objects[0], np.zeros((64, 64), np.uint8)
        mask[max(0, o.y0 - 2):o.y0 + o.d + 2, max(0, o.x0 - 2):o.x0 + o.d + 2] = 255
        masks.append(Image.fromarray(mask))
    renders = [render(s) for s in scenes]
    out = inpaint(["a purple square"] * 4, image=renders, mask_image=masks, generator=2, candidates=1).images
    changed = 0
    for scene, before, after in zip(scenes, renders, out):
        outside = [d for d in objects(render(type(scene)(scene.objects[1:])))]
        assert set(outside) <= set(objects(after)), (outside, objects(after))
        changed += objects(after) != objects(before)
    assert changed >= 2  # the model did paint inside the masks
