"""The paper's stages as presets (v2's numbers), ratio phases (the stage-2 opening mix) with exact
resume across a phase boundary, and the per-stage generation-prompt format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from janusflow.errors import ConfigError
from janusflow.processor import left_pad, make_uncond
from janusflow.train import Shard, Trainer
from janusflow.train.checkpointing import latest_checkpoint
from janusflow.train.config import load_config
from janusflow.train.mixture import MixSchedule
from janusflow.train.stages import stage_preset
from janusflow.train.task import JanusFlowTask
from janusflow.train.toydata import toy_overrides, write_toy_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_data(tmp_path_factory.mktemp("toy"), count=12)


def test_the_presets_carry_v2s_numbers_the_opening_mix_and_the_prompt_formats():
    adaptation, pretrain, sft = (stage_preset(n) for n in ("adaptation", "pretrain", "sft"))
    assert (adaptation.steps, pretrain.steps, sft.steps) == (10_000, 390_000, 26_000)  # v2, Table 1
    assert (adaptation.batch_size, pretrain.batch_size, sft.batch_size) == (512, 512, 256)
    assert [(p.until_step, p.ratio) for p in pretrain.phases] == [(10_000, {"und": 30, "gen": 50, "text": 20})]
    assert pretrain.ratio == {"und": 14, "gen": 80, "text": 6} and not adaptation.phases and not sft.phases
    assert (adaptation.prompt_format, pretrain.prompt_format, sft.prompt_format) == ("plain", "plain", "chat")
    # every 1.3B config that mirrors the paper: its three stages, packed rows of 4,096 tokens
    names = {}
    for path in sorted((REPO / "configs").glob("janusflow-1.3b-*.yaml")):
        config = load_config(path)
        names[config.stage.name] = config
    for name in ("adaptation", "pretrain", "sft"):
        config = names[name]
        preset = stage_preset(name)
        assert (config.stage.steps, config.stage.batch_size, config.stage.lr) == (preset.steps, preset.batch_size,
                                                                                  preset.lr)
        assert config.data.packing and config.data.seq_len == 4096 and config.stage.phases == preset.phases


def test_a_phase_keeps_its_own_ratio_exactly_then_the_stage_takes_over():
    schedule = MixSchedule({"und": 14, "gen": 80, "text": 6}, 10, [(3, {"und": 30, "gen": 50, "text": 20})])
    assert [s[2].weights for s in schedule.segments] == [{"und": 30, "gen": 50, "text": 20},
                                                           {"und": 14, "gen": 80, "text": 6}]
    seen = {"und": [], "gen": [], "text": []}
    for step in range(13):
        slots = schedule.step_slots(step)
        assert [slot for _, _, slot in slots] == list(range(step * 10, step * 10 + 10))
        tasks = [task for task, _, _ in slots]
        if step < 3:  # every step of the opening phase holds exactly 3 : 5 : 2
            assert (tasks.count("und"), tasks.count("gen"), tasks.count("text")) == (3, 5, 2)
        assert schedule.positions(step) == {k: len(v) for k, v in seen.items()}
        for task, position, _ in slots:
            seen[task].append(position)
    # each stream is read in order, once; from step 3 on, 100 slots (10 steps) hold exactly 14 : 80 : 6
    assert all(v == list(range(len(v))) for v in seen.values())
    assert (len(seen["und"]) - 9, len(seen["gen"]) - 15, len(seen["text"]) - 6) == (14, 80, 6)
    # counted from a later base step (a re-based run), the phase begun earlier starts at the base
    rebased = MixSchedule({"und": 1, "gen": 1}, 4, [(5, {"gen": 1})])
    assert [t for t, _, _ in rebased.step_slots(2, base_step=2)] == ["gen"] * 4
    assert rebased.positions(7, base_step=2) == {"und": 4, "gen": 16, "text": 0}


def test_phases_read_from_yaml_with_fractions_and_bad_phases_are_refused(toy, tmp_path):
    base = toy_overrides(toy, tmp_path)
    config = load_config(None, base + ["stage.phases=[{until_step: 2, ratios: {und: 0.3, gen: 0.5, text: 0.2}}]"])
    assert MixSchedule(config.stage.ratio, 10, [(p.until_step, p.ratio) for p in config.stage.phases]
                       ).segments[0][2].weights == {"und": 3, "gen": 5, "text": 2}
    for bad, match in (("[{until_step: 0, ratio: {gen: 1}}]", "until_step must be above 0"),
                       ("[{until_step: 5, ratio: {gen: 1}}, {until_step: 5, ratio: {und: 1}}]", "above 5"),
                       ("[{until_step: 5, ratio: {vision: 1}}]", "unknown task"),
                       ("[{until_step: 5, ratio: {gen: -1}}]", "non-negative"),
                       ("[{until_step: 5}]", "ratio")):
        with pytest.raises(ConfigError, match=match):
            load_config(None, base + [f"stage.phases={bad}"])
    with pytest.raises(ConfigError, match="prompt_format"):
        load_config(None, base + ["stage.prompt_format=markdown"])


def _record_slots(task, log):
    draw = task.cpu_micro_batches

    def recording(step, shard):
        log[step] = task._slots(step)
        return draw(step, shard)

    task.cpu_micro_batches = recording


def test_resume_is_exact_across_a_phase_boundary(toy, tmp_path):
    # the opening phase (steps 0-2) has no text; the stage's mix (from step 3) does
    extra = ["stage.steps=5", "stage.batch_size=4", "stage.ratio={und: 1, gen: 2, text: 1}",
             "stage.phases=[{until_step: 3, ratio: {und: 1, gen: 1}}]", "trainer.save_every=1"]
    config = load_config(None, toy_overrides(toy, tmp_path / "straight") + extra)
    straight_slots: dict = {}
    task = JanusFlowTask(config)
    _record_slots(task, straight_slots)
    Trainer(task, config.trainer_config()).fit()
    assert {t for t, _, _ in straight_slots[2]} == {"und", "gen"} and "text" in {t for t, _, _ in straight_slots[3]}

    config = load_config(None, toy_overrides(toy, tmp_path / "stopped") + extra)
    task = JanusFlowTask(config)
    trainer = Trainer(task, config.trainer_config())
    draw = task.cpu_micro_batches

    def stop_before_the_boundary(step, shard):  # what SIGTERM does, at step 2 of 5 (the boundary is 3)
        trainer.stop_requested = step == 1
        return draw(step, shard)

    task.cpu_micro_batches = stop_before_the_boundary
    assert trainer.fit()["stopped"]
    resumed_slots: dict = {}
    task = JanusFlowTask(config)
    _record_slots(task, resumed_slots)
    assert Trainer(task, config.trainer_config()).fit()["step"] == 5
    assert sorted(resumed_slots) == [2, 3, 4]
    assert all(resumed_slots[s] == straight_slots[s] for s in resumed_slots)  # the same data order
    for name in ("model", "ema", "optimizer"):
        a, b = (load_file(latest_checkpoint(tmp_path / run) / f"{name}.safetensors") for run in ("straight", "stopped"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def _gen_rows(toy, tmp_path, stage, *extra):
    config = load_config(None, toy_overrides(toy, tmp_path, stage) + ["stage.ratio={gen: 1}", "stage.phases=[]",
                                                                      "stage.batch_size=12", *extra])
    task = JanusFlowTask(config)
    batch = task.micro_batches(0, Shard(0, 1, 1))[0].gen
    captions = [task.sources["gen"].read(p).caption for _, p, _ in task.mixture.step_slots(0)]
    return task, batch, captions


@pytest.mark.parametrize("stage", ["adaptation", "sft"])
def test_generation_prompts_and_their_dropout_follow_the_stage_format(toy, tmp_path, stage):
    task, batch, captions = _gen_rows(toy, tmp_path, stage, "losses.prompt_dropout=0.5")
    proc = task.processor
    if stage == "adaptation":  # the paper's pre-training rows: "<prompt><image>", no template
        rows = [[proc.bos_id] + proc.tokenizer.encode(c, add_special_tokens=False) + [proc.gen_id] for c in captions]
    else:
        rows = [proc.encode_generation_prompt(c) for c in captions]
    cond_ids, cond_mask = left_pad(rows, proc.pad_id)
    uncond_ids, uncond_mask = make_uncond(cond_ids, cond_mask, proc.pad_id)
    assert 0 < int(batch.dropped.sum()) < 12
    for row, dropped in enumerate(batch.dropped.tolist()):
        expect_ids, expect_mask = (uncond_ids, uncond_mask) if dropped else (cond_ids, cond_mask)
        assert torch.equal(batch.input_ids[row], expect_ids[row]) and torch.equal(batch.attention_mask[row],
                                                                                   expect_mask[row])
    # a plain row is the caption alone: shorter than the chat row, and "User:" is nowhere in it
    user = proc.tokenizer.encode("User:", add_special_tokens=False)[0]
    assert (user in batch.input_ids[~batch.dropped].tolist()[0]) == (stage == "sft")
    # an explicit format overrides the preset's
    _, other, _ = _gen_rows(toy, tmp_path, stage, "losses.prompt_dropout=0",
                            f"stage.prompt_format={'chat' if stage == 'adaptation' else 'plain'}")
    assert (other.input_ids.shape[1] > batch.input_ids.shape[1]) == (stage == "adaptation")


def test_the_shapes_recipe_keeps_the_format_and_mix_its_model_was_trained_with(tmp_path):
    from janusflow.shapes.recipe import unified
    from janusflow.shapes.recipe.config import REPO_CONFIGS, load_recipe

    recipe = load_recipe(REPO_CONFIGS / "shapes.yaml")
    stages = [name for name, spec in recipe.stages.items() if spec.kind == "janusflow"]
    assert {recipe.stages[name].phase for name in stages} == {"adaptation", "pretrain", "sft"}
    for name in stages:
        spec = recipe.stages[name]
        config = unified.train_config(spec.phase, spec, recipe.stage_training(name), Path("/nonexistent"),
                                      tmp_path / name, 0)
        assert config.stage.prompt_format == "chat" and config.stage.phases == [] and not config.data.packing