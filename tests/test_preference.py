"""Online flow-DPO (experiments.preference): the loss's value and direction, the pairing,
and a two-round run of a tiny model with a judge that passes every other image, resumed."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from janusflow.checkpoint import read_safetensors
from janusflow.errors import ConfigError
from janusflow.pipeline import JanusFlowPipeline
from janusflow.serve.tiny_model import build_tiny_model_folder
from experiments.preference import (FlowDPO, PreferenceConfig, draw_prompts, main, pair_up, round_dir,
                                                run)
from janusflow.train.losses import flow_dpo_loss


def test_flow_dpo_loss_is_log2_at_the_reference_and_falls_as_the_winner_gains():
    e = torch.tensor([0.5, 0.3])
    loss, logits = flow_dpo_loss(e, e, e, e, beta=100.0)
    torch.testing.assert_close(loss, torch.full((2,), math.log(2.0)))
    assert torch.equal(logits, torch.zeros(2))
    # the policy's error fell by 0.01 on the winner and rose by 0.01 on the loser: logit = 100 * 0.02
    loss, logits = flow_dpo_loss(e - 0.01, e, e + 0.01, e, beta=100.0)
    torch.testing.assert_close(logits, torch.full((2,), 2.0))
    assert bool((loss < math.log(2.0)).all())
    loss, _ = flow_dpo_loss(e + 0.01, e, e - 0.01, e, beta=100.0)  # the other way round: worse than log 2
    assert bool((loss > math.log(2.0)).all())


def test_pair_up_pairs_passing_with_failing_only_up_to_the_cap():
    rng = random.Random(0)
    pairs = pair_up([True, False, True, False, False], cap=100, rng=rng)
    assert sorted(pairs) == [(w, l) for w in (0, 2) for l in (1, 3, 4)]
    assert len(pair_up([True, False, True, False, False], cap=4, rng=rng)) == 4
    assert pair_up([True] * 4, cap=8, rng=rng) == [] and pair_up([False] * 4, cap=8, rng=rng) == []


def test_draw_prompts_takes_distinct_prompts_of_each_category():
    specs = draw_prompts(random.Random(1), {"counting": 3, "single_object": 10})
    tags = [s.tag for s in specs]
    assert tags.count("counting") == 3 and tags.count("single_object") == 3  # single_object has only 3
    assert len({s.text for s in specs}) == len(specs)


@pytest.mark.parametrize("change", [{"prompts": {"nonsense": 2}}, {"prompts": {"counting": 0}},
                                    {"images_per_prompt": 1}, {"beta": 0.0}, {"t_max": 1.5}])
def test_bad_settings_are_refused(change):
    with pytest.raises(ConfigError):
        PreferenceConfig(**change).validate()


def test_the_policy_gradient_lowers_the_loss_on_its_pair(tmp_path):
    pipe = JanusFlowPipeline.from_pretrained(build_tiny_model_folder(tmp_path / "m", seed=1), device="cpu")
    dpo = FlowDPO(pipe.model, pipe.processor, beta=1000.0, t_max=0.5)
    gen = pipe.model.config.gen_vision
    shape = (2, gen.latent_channels, gen.latent_size, gen.latent_size)
    win, lose = torch.randn(shape, generator=torch.Generator().manual_seed(0)).chunk(2)
    opt = torch.optim.SGD(pipe.model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss, _ = dpo.loss(["a red circle"], win, lose, torch.Generator().manual_seed(3))  # the same x0, t
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[0] == pytest.approx(math.log(2.0), abs=1e-6)  # policy = reference
    assert losses[-1] < losses[0] - 0.05
    assert all(not p.requires_grad for p in dpo.reference.parameters())


def test_guided_errors_use_the_velocity_the_sampler_follows(tmp_path):
    from janusflow.flow import interpolate
    from janusflow.sampler import VelocityField, with_guidance
    from janusflow.train.losses import flow_errors

    pipe = JanusFlowPipeline.from_pretrained(build_tiny_model_folder(tmp_path / "m", seed=4), device="cpu")
    model, gen = pipe.model, pipe.model.config.gen_vision
    prompts = ["a red circle", "two blue squares"]
    g = torch.Generator().manual_seed(0)
    x0, x1 = (torch.randn(2, gen.latent_channels, gen.latent_size, gen.latent_size, generator=g) for _ in range(2))
    t = torch.full((2,), 0.3)
    batch = pipe.processor.build_generation_batch(prompts, 1, guidance=True)
    field = VelocityField(model, batch.input_ids, batch.attention_mask, gen.grid_for(gen.latent_size) ** 2,
                          use_cache=False)
    with torch.no_grad():
        sampled = with_guidance(field, 2.0)(interpolate(x0, x1, t), 0.3)
        guided = FlowDPO(model, pipe.processor, 100.0, 0.5, guidance=2.0).errors(model, prompts, x0, x1, t)
        cond = FlowDPO(model, pipe.processor, 100.0, 0.5).errors(model, prompts, x0, x1, t)
    torch.testing.assert_close(guided, flow_errors(sampled, x0, x1), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(guided, cond)


def test_two_rounds_write_model_folders_and_a_rerun_resumes(tmp_path, capsys):
    model = build_tiny_model_folder(tmp_path / "m", seed=2)
    calls = []

    def every_other(spec, image):  # random weights draw noise: a judge that passes half of it
        calls.append(spec.text)
        return len(calls) % 2 == 0

    cfg = PreferenceConfig(rounds=1, prompts={"counting": 2, "position": 1}, images_per_prompt=2,
                           pairs_per_prompt=1, steps=2, batch_pairs=2, lr=1e-3)
    out = tmp_path / "run"
    records = run(model, out, cfg, device="cpu", judge=every_other, log=lambda s: None)
    assert len(records) == 1 and records[0]["pairs"] == 3 and records[0]["ranked_right"] is None
    assert len(calls) == 6 and records[0]["pass"] == {"counting": 0.5, "position": 0.5}
    first = read_safetensors([round_dir(out, 0) / "model.safetensors"])
    start = read_safetensors([model / "model.safetensors"])
    assert first.keys() == start.keys()
    assert any(not torch.equal(first[k], start[k].float()) for k in first)  # it trained
    JanusFlowPipeline.from_pretrained(round_dir(out, 0), device="cpu")  # a loadable model folder with its VAE

    calls.clear()
    cfg.rounds = 2  # the rerun skips round 0 and starts round 1 from its weights
    records = run(model, out, cfg, device="cpu", judge=every_other, log=lambda s: None)
    assert [r["round"] for r in records] == [0, 1] and len(calls) == 6
    assert 0.0 <= records[1]["ranked_right"] <= 1.0
    assert json.loads((round_dir(out, 1) / "round.json").read_text())["pairs"] == 3
    calls.clear()
    assert run(model, out, cfg, device="cpu", judge=every_other) == records and calls == []  # all done


def test_the_cli_refuses_a_malformed_prompt_list(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run"), "--prompts", "counting=3"])
    assert "tag:count" in capsys.readouterr().err
