"""The paper's ablations (docs/ablations.md): `janusflow ablation shapes` end to end at the smoke recipe
(arms x a seed, shared parts, resumable, the table and the curves); the shared-encoder option (the
understanding path through the VAE and the generation encoder): its shapes, its gradients, its folder
round trip, and the default path left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from janusflow.cli import main
from janusflow.config import JanusFlowConfig
from janusflow.errors import ConfigError, InputError
from janusflow.modeling import JanusFlowModel
from janusflow.shapes.recipe.config import REPO_CONFIGS
from janusflow.shapes.recipe.curves import draw_curves, mean_curve
from janusflow.latent_encoder import VAELatentEncoder

SMOKE = REPO_CONFIGS / "shapes-smoke.yaml"
ABLATIONS = REPO_CONFIGS.parent / "ablations"


def tiny_vae_32px():
    """A random 3-level AutoencoderKL: 32 px images -> 4 x 8 x 8 latents (the tiny preset's)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 16), layers_per_block=1,
                         latent_channels=4, norm_num_groups=8, sample_size=32)


def tiny(encoder: str) -> JanusFlowModel:
    config = JanusFlowConfig.from_name("tiny")
    config.und_vision.encoder = encoder
    torch.manual_seed(0)
    return JanusFlowModel(config).eval()


def test_shared_encoder_reads_through_the_vae_and_the_generation_encoder():
    model = tiny("generation")
    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    with pytest.raises(InputError, match="has no VAE"):
        model.encode_images(pixels)
    model.latent_encoder = VAELatentEncoder(tiny_vae_32px(), model.config.gen_vision.latent_size)
    tokens = model.encode_images(pixels)
    P, D = model.config.num_und_image_tokens, model.config.hidden_size
    assert tokens.shape == (3, P, D)
    z = model.latent_encoder.encode(pixels)
    expected, _, _ = model.encode_latent(z, torch.full((3,), 1000.0))  # t = 1: the clean latent
    torch.testing.assert_close(tokens, expected, rtol=0, atol=0)
    # understanding trains the generation encoder and its aligner, not SigLIP's path
    tokens.square().mean().backward()
    assert model.gen_encoder.patch_embed.weight.grad.abs().sum() > 0
    assert model.gen_enc_aligner.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in [*model.und_encoder.parameters(), *model.und_aligner.parameters()])
    # a whole understanding forward: the image slots are filled from the generation encoder
    ids = torch.tensor([[1, 5, 6, *([7] * P), 9, 10]])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 2:3 + P] = True
    logits = model(input_ids=ids, pixel_values=pixels[:1, None], images_seq_mask=mask).logits
    assert logits.shape == (1, ids.shape[1], model.config.language.vocab_size)
    # a VAE of another image size is refused by name
    model.latent_encoder = VAELatentEncoder(tiny_vae_32px(), 8)
    with pytest.raises(InputError, match="latents"):
        model.encode_images(torch.rand(1, 3, 64, 64))


def test_default_path_unchanged_and_the_option_round_trips(tmp_path):
    model = tiny("siglip")
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.encode_images(pixels), model.und_aligner(model.und_encoder(pixels)),
                                   rtol=0, atol=0)
    model.save_pretrained(tmp_path / "decoupled")
    saved = json.loads((tmp_path / "decoupled" / "config.json").read_text())
    assert "encoder" not in saved["und_vision"]  # folders of the default read and write as before
    shared = tiny("generation")
    shared.save_pretrained(tmp_path / "shared")
    tiny_vae_32px().save_pretrained(tmp_path / "shared" / "vae")
    loaded = JanusFlowModel.from_pretrained(tmp_path / "shared")
    assert loaded.config.und_vision.encoder == "generation" and loaded.latent_encoder is not None
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_images(pixels), shared_with_vae(shared).encode_images(pixels))
    config = tiny("generation").config
    config.und_vision.encoder = "both"
    with pytest.raises(ConfigError, match="encoder must be one of"):
        config.validate()
    config.und_vision.encoder = "generation"
    config.und_vision.patch_size = 16  # 4 slots, 16 generation tokens
    with pytest.raises(ConfigError, match="shared"):
        config.validate()


def shared_with_vae(model: JanusFlowModel) -> JanusFlowModel:
    model.latent_encoder = VAELatentEncoder(tiny_vae_32px(), model.config.gen_vision.latent_size)
    return model.eval()


def test_curves_png(tmp_path):
    assert mean_curve([[(0, 0.0), (10, 0.5)], [(0, 0.2), (10, 0.7), (20, 1.0)]]) == [(0, 0.1), (10, 0.6)]
    path = draw_curves({"gen": {"a": [[(0, 0.1), (10, 0.5)]], "b": [[(0, 0.0), (10, 0.9)], [(10, 0.7)]]},
                        "und": {"a": [[(0, 0.3), (10, 0.4)]]}}, tmp_path / "c.png", title="t", width=300, height=200)
    image = Image.open(path)
    assert image.size[0] == 600 and image.size[1] > 200
    assert len(image.convert("RGB").getcolors(1 << 16)) > 3  # lines in colour, not a blank page


def test_ablation_command_end_to_end(tmp_path, capsys):
    config = tmp_path / "toy.yaml"
    config.write_text(f"recipe: {SMOKE}\nstage: unified\nquestion: toy\nseeds: [0]\narms:\n"
                      "  repa: {}\n  shared: {model: {und_encoder: generation}, training: {repa_weight: 0}}\n")
    out = tmp_path / "out"
    args = ["ablation", "shapes", "--config", str(config), "--out", str(out), "--device", "cpu", "--threads", "1"]
    assert main(args) == 0
    result = json.loads((out / "toy.json").read_text())
    for arm in ("repa", "shared"):
        curve = result["arms"][arm]["seeds"]["seed0"]["gen_overall"]
        assert [step for step, _ in curve] == [2 + 1, 2 + 2]  # adapt's 2 steps, then unified's evaluations
        assert set(result["arms"][arm]["final"]) == {"gen_overall", "und_overall"}
        assert result["arms"][arm]["train_late"]["rf"][2] == 1
    # the parts were built once, in the first arm's folder, and taken by the other
    assert "imported_from" not in json.loads((out / "repa/seed0/stages/vae/DONE.json").read_text())
    assert json.loads((out / "shared/seed0/stages/vae/DONE.json").read_text())["imported_from"] == "repa/seed0"
    for name in ("llm", "und_encoder", "vae", "tokenizer"):
        a, b = out / "repa/seed0/parts" / name, out / "shared/seed0/parts" / name
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    export = json.loads((out / "shared/seed0/stages/unified/export/config.json").read_text())
    assert export["und_vision"]["encoder"] == "generation"
    paired = result["paired"]["shared"]  # shared - repa, seed by seed
    rf = [c["train rf"] for c in (result["arms"]["repa"]["per_seed"]["seed0"], result["arms"]["shared"]["per_seed"]["seed0"])]
    assert paired["train rf"] == [pytest.approx(rf[1] - rf[0]), 0.0, 1]
    assert set(paired) >= {"gen_overall (last)", "und_overall (curve mean)", "train ce_und"}
    assert "| shared | 4 |" in (out / "toy.md").read_text() and "Paired by seed: arm - repa" in (out / "toy.md").read_text()
    assert Image.open(out / "toy.png").size[0] > 0
    # resumable: a rerun finds every arm done and trains nothing
    before = (out / "repa/seed0/sessions.jsonl").read_text()
    capsys.readouterr()
    assert main(args) == 0
    assert (out / "repa/seed0/sessions.jsonl").read_text() == before
    assert "| repa |" in capsys.readouterr().out
    # a finished arm's folder holds its recipe: another one for the same arm is refused, not skipped
    changed = config.read_text().replace("repa_weight: 0", "repa_weight: 0.5")
    config.write_text(changed)
    capsys.readouterr()
    assert main(args) != 0
    assert "was started with another recipe (training.repa_weight: 0.0 then, 0.5 now)" in capsys.readouterr().err
    # arms may not change the parts they share
    config.write_text(f"recipe: {SMOKE}\nstage: unified\nseeds: [0]\narms:\n  a: {{}}\n"
                      "  b: {stages: {vae: {steps: 3}}}\n")
    with pytest.raises(ConfigError, match="changes the parts"):
        from janusflow.shapes.recipe.ablation import run_ablation

        run_ablation(config, tmp_path / "out2")


@pytest.mark.parametrize("name", ["repa", "shared", "tasks", "repa-cpu", "shared-cpu", "tasks-cpu"])
def test_shipped_ablation_configs_resolve(name):
    from janusflow.shapes.recipe.ablation import arm_config, common_ground, load_ablation

    ablation, recipe = load_ablation(ABLATIONS / f"{name}.yaml")
    configs = {arm: arm_config(ablation, recipe, arm, 0) for arm in ablation.arms}
    first = next(iter(configs.values()))
    steps = {arm: [(s.steps, s.batch_size) for s in c.stages.values()] for arm, c in configs.items()}
    assert len({json.dumps(v) for v in steps.values()}) == 1  # the same budget in every arm
    assert all(common_ground(c) == common_ground(first) for c in configs.values())
    if name.startswith("shared"):
        assert configs["shared_no_repa"].model.und_encoder == "generation"
