"""The shapes recipe's parts 1-3 (janusflow.shapes.recipe): losses, labels and data. Every stage run
through the shared trainer, with resume: tests/test_recipe_command.py."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from janusflow.shapes import Obj, Scene, describe, render_array, sample_scene
from janusflow.shapes.recipe.corpus import chat_text, tokenizer_corpus
from janusflow.shapes.recipe.data import batch_rng, read_matches, scene_images, to_pixels, to_uint8
from janusflow.shapes.recipe.siglip import caption_is_true, sigmoid_loss, true_matrix
from janusflow.shapes.recipe.vae import TINY_VAE, build_vae, edge_mask, measure_scaling_factor, vae_loss_terms

SCENE = Scene((Obj("circle", "red", 4, 6, 16), Obj("square", "blue", 30, 30, 14)))


def test_batches_are_a_function_of_seed_and_step():
    _, a = scene_images(batch_rng(1, 7), 4)
    _, b = scene_images(batch_rng(1, 7), 4)
    _, c = scene_images(batch_rng(1, 8), 4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (4, 3, 64, 64) and a.min() == -1 and a.max() == 1


def test_pixels_round_trip_exactly():
    image = render_array(SCENE)[None]
    assert np.array_equal(to_uint8(to_pixels(image)), image)


def test_read_matches_needs_the_objects_and_their_places():
    image = render_array(SCENE)
    assert read_matches(SCENE, image)
    shifted = np.roll(image, 2, axis=1)  # everything 2 px to the right
    assert not read_matches(SCENE, shifted, tolerance=1.0)
    assert read_matches(SCENE, shifted, tolerance=2.0)
    recoloured = Scene((Obj("circle", "green", 4, 6, 16), SCENE.objects[1]))
    assert not read_matches(recoloured, image)


def test_edge_mask_marks_both_sides_of_a_colour_change():
    pixels = -torch.ones(1, 3, 6, 6)
    pixels[..., 2:4, 2:4] = 1.0  # a 2 x 2 block
    mask = edge_mask(pixels)[0, 0]
    assert mask[2:4, 2:4].all()  # the block's pixels all touch white
    assert mask[1, 2] == 1 and mask[2, 1] == 1 and mask[1, 1] == 0  # 4-neighbours only
    assert mask.sum() == 4 + 8


def test_vae_shapes_loss_terms_and_scaling_factor():
    torch.manual_seed(0)
    vae = build_vae(TINY_VAE)
    _, pixels = scene_images(batch_rng(0, 0), 3)
    assert vae.encode(pixels).latent_dist.mode().shape == (3, 4, 32, 32)  # (8, 16): one downsampling
    terms = vae_loss_terms(vae, pixels, TINY_VAE)
    assert all(v.shape == (3,) for v in terms.values())
    expected = (terms["l1"] + TINY_VAE.mse_weight * terms["mse"] + TINY_VAE.edge_weight * terms["edge"]
                + TINY_VAE.kl_weight * terms["kl"])
    assert torch.allclose(terms["loss"], expected)
    scale = measure_scaling_factor(vae, num_scenes=8, batch_size=8, seed=5)
    _, pixels = scene_images(np.random.default_rng(5), 8)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode()
    assert float((latents * scale).std()) == pytest.approx(1.0, rel=1e-4)


def test_sigmoid_loss_matches_the_formula():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    labels = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    want = [-(math.log(sig(2.0)) + math.log(sig(1.0))), -(math.log(sig(-0.5)) + math.log(sig(3.0)))]
    assert torch.allclose(sigmoid_loss(logits, labels), torch.tensor(want))


def test_caption_labels_are_the_truth():
    from janusflow.shapes.recipe.siglip import description_caption

    other = Scene((Obj("circle", "green", 40, 6, 16),))
    mine = description_caption(describe(SCENE))
    assert mine == "describe the image. a red circle and a blue square"
    assert caption_is_true(mine, SCENE) and not caption_is_true(mine, other)
    assert not caption_is_true("describe the image. a blue square and a red circle", SCENE)  # order counts
    bigger = Scene(SCENE.objects + (other.objects[0],))
    assert caption_is_true("a red circle and a blue square", bigger)  # a prompt: holds in any superset
    assert not caption_is_true(mine, bigger)  # a description: exactly these objects
    assert caption_is_true("a circle", SCENE) and caption_is_true("a circle", other)
    assert not caption_is_true("a red circle", other)
    labels = true_matrix([SCENE, other], [mine, "a circle", "a green circle"])
    assert labels.tolist() == [[1, 1, -1], [-1, 1, 1]]


def test_near_misses_are_valid_false_descriptions():
    from janusflow.shapes import parse_description
    from janusflow.shapes.recipe.siglip import near_miss

    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(200):
        scene = sample_scene(rng)
        text = near_miss(rng, scene)
        assert text.startswith("describe the image. ") and not caption_is_true(text, scene)
        named, true = parse_description(text.removeprefix("describe the image. ")), parse_description(describe(scene))
        assert named is not None  # still a well-formed description
        kinds.add("same multiset" if named == true else "other multiset")
    assert kinds == {"same multiset", "other multiset"}  # order swaps and object edits both occur


def test_patch_labels_name_the_owner_of_each_patch():
    from janusflow.shapes.recipe.siglip import patch_labels

    square = Scene((Obj("square", "blue", 8, 8, 16), Obj("circle", "red", 40, 40, 12)))
    labels = patch_labels([square], patch=8)[0].view(8, 8)
    blue_square = 1 + 3 * 2 + 1  # COLORS.index("blue") = 2, SHAPES.index("square") = 1
    assert (labels[1:3, 1:3] == blue_square).all()
    # the circle (box 40..52) owns patch (5, 5) fully and at least half of no other patch
    assert labels[5, 5] == 1 + 3 * 0 + 0 and int((labels > 0).sum()) == 5


def test_siglip_batch_holds_hard_negatives():
    from janusflow.shapes.recipe.siglip import SiglipTask, tiny_siglip
    from janusflow.train import Shard
    from janusflow.tokenizer_build import build_tokenizer

    tokenizer = build_tokenizer(list(tokenizer_corpus(num_scenes=20)), 300)
    task = SiglipTask(tokenizer, dataclasses.replace(tiny_siglip(), max_text_tokens=64), batch_size=16)
    (batch,) = task.micro_batches(0, Shard(0, 1, 1))
    extra = batch["ids"].shape[0] - 16
    assert extra > 0 and batch["labels"].shape == (16, 16 + extra)
    assert (batch["labels"].diagonal() == 1).all()
    loss, _ = task.module(batch, task.counts(batch))
    loss.backward()


def test_chat_text_is_the_processors_template():
    from janusflow.processor import JanusFlowProcessor
    from janusflow.tokenizer_build import build_tokenizer

    tokenizer = build_tokenizer(list(tokenizer_corpus(num_scenes=20)), 300)
    processor = JanusFlowProcessor(tokenizer, image_size=64, num_image_tokens=64)
    turns = [("a red circle\nhow many shapes are there?", "one"), ("is there a red circle?", "yes")]
    conversation = [{"role": r, "content": c} for u, a in turns for r, c in (("User", u), ("Assistant", a))]
    assert chat_text(turns) == processor.apply_sft_template(conversation)
    open_turn = [{"role": "User", "content": "a red circle"}, {"role": "Assistant", "content": ""}]
    assert chat_text([("a red circle", "")], system_prompt="") == processor.apply_sft_template(open_turn, "")


def test_lm_answer_mask_and_weighted_loss():
    from janusflow.shapes.recipe.lm import LMObjective, answer_mask, tiny_language
    from janusflow.tokenizer_build import build_tokenizer

    tokenizer = build_tokenizer(list(tokenizer_corpus(num_scenes=20)), 300)
    text = chat_text([("a red circle\nhow many shapes are there?", "one"), ("is there a red circle?", "yes")], "")
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode(text, add_special_tokens=False)])
    mask = answer_mask(tokenizer, ids)
    answers = tokenizer.decode(ids[0][mask[0]], skip_special_tokens=False)
    assert answers == f" one{tokenizer.eos_token} yes{tokenizer.eos_token}"

    torch.manual_seed(0)
    plain, weighted = LMObjective(tiny_language(len(tokenizer))), LMObjective(tiny_language(len(tokenizer)), 4.0)
    weighted.load_state_dict(plain.state_dict())
    batch = {"ids": ids, "answer": mask}
    n, a = ids.shape[1] - 1, float(mask[:, 1:].sum())
    totals = {"ce_tokens": n, "answer_tokens": a}
    loss, logs = plain(batch, {**totals, "ce_weight": n})
    assert float(loss.detach()) == pytest.approx(logs["ce"])
    loss4, logs4 = weighted(batch, {**totals, "ce_weight": n + 4 * a})
    # (sum ce + 4 sum_answers ce) / (n + 4 a)
    assert float(loss4.detach()) == pytest.approx((logs["ce"] * n + 4 * logs["ce_answers"] * a) / (n + 4 * a), rel=1e-5)
