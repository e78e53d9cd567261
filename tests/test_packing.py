"""Sequence packing (janusflow/train/packing.py): packed rows give every sample the loss and the
gradient it has unpacked, through the transformers LLM with SDPA's block mask (and FlexAttention);
the planner fills rows in order, loses no sample and resumes exactly."""

from __future__ import annotations

import collections

import pytest
import torch
from safetensors.torch import load_file

from janusflow.errors import ConfigError, InputError
from janusflow.train import Shard, Trainer
from janusflow.train.checkpointing import latest_checkpoint
from janusflow.train.config import load_config
from janusflow.train.packed_attention import (FLEX, block_document_mask, dense_document_mask, resolve_attention,
                                              use_flex_attention)
from janusflow.train.packed_forward import packed_terms
from janusflow.train.packing import LOOKAHEAD
from janusflow.train.task import JanusFlowTask
from janusflow.train.toydata import toy_overrides, write_toy_data

PACKED = ["data.packing=true", "data.seq_len=256", "stage.batch_size=2", "stage.ratio={und: 1, gen: 2, text: 1}",
          "losses.prompt_dropout=0.5"]
SUMS = {"ce_tokens": 1, "ce_und_tokens": 1, "ce_text_tokens": 1, "gen_samples": 1}  # shares = the sums themselves


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_data(tmp_path_factory.mktemp("toy"), count=12)


def packed_task(toy, run_dir, *extra, stage="sft"):
    config = load_config(None, toy_overrides(toy, run_dir, stage) + PACKED + list(extra))
    return config, JanusFlowTask(config)


def _step(task, step=0):
    """A planned step's packed micro-batch, its items in row order, and the same samples unpacked
    (the same keys, so the same crops, dropouts, times and noise)."""
    plan = task.plan(step)
    items = [(name, position, key) for row in plan.rows for name, position, key, _ in row]
    packed = task.on_device(task.cpu_micro_batches(step, Shard(0, 1, 1), plan)[0])
    return packed, items


def _per_sample_packed(task, packed):
    terms = packed_terms(task.model, packed.packed, task.module.repa_head, task.config.losses.repa_layer)
    ce = collections.defaultdict(float)
    for value, (row, segment) in zip(terms.token_ce.tolist(), terms.target_document.tolist()):
        ce[row, segment] += value
    return terms, ce


def test_every_sample_has_its_unpacked_losses(toy, tmp_path):
    _, task = packed_task(toy, tmp_path)
    packed, items = _step(task)
    p = packed.packed
    assert {name for name, _, _ in items} == {"und", "gen", "text"} and 0 < int(p.dropped.sum()) < p.num_gen
    assert task.counts(packed)["skipped"] == 0  # every segment built to its measured length
    with torch.no_grad():
        terms, ce = _per_sample_packed(task, packed)
        g = 0
        starts = [(row, seg) for row in range(p.input_ids.shape[0])
                  for seg in sorted(set(p.document[row][p.segment_task[row] >= 0].tolist()))]
        assert len(starts) == len(items)
        for (row, seg), item in zip(starts, items):
            _, logs = task.module(task.on_device(task._collate([item])), SUMS)  # the unpacked reference, alone
            if item[0] == "gen":
                assert terms.flow_errors[g].item() == pytest.approx(logs["rf"], rel=1e-5)
                assert terms.repa[g].item() == pytest.approx(logs["repa"], rel=1e-5)
                g += 1
            else:
                assert ce[row, seg] == pytest.approx(logs[f"ce_{item[0]}"], rel=1e-5)
        assert g == p.num_gen


def test_a_packed_batch_gives_the_unpacked_loss_and_gradients(toy, tmp_path):
    _, task = packed_task(toy, tmp_path)
    packed, items = _step(task)
    unpacked = task.on_device(task._collate(items))
    totals = task.counts(packed)
    assert {k: v for k, v in totals.items() if k != "row_tokens"} == task.counts(unpacked)
    results = []
    for batch in (packed, unpacked):
        task.module.zero_grad()
        loss, logs = task.module(batch, totals)
        loss.backward()
        results.append((loss.item(), logs, {n: p.grad.clone() for n, p in task.module.named_parameters()
                                            if p.grad is not None}))
    (loss_p, logs_p, grads_p), (loss_u, logs_u, grads_u) = results
    assert loss_p == pytest.approx(loss_u, rel=1e-6) and logs_p == pytest.approx(logs_u, rel=1e-6)
    assert grads_p.keys() == grads_u.keys() and len(grads_p) > 50
    for name in grads_u:  # SigLIP's key biases have no gradient but rounding (1e-12): hence atol
        torch.testing.assert_close(grads_p[name], grads_u[name], rtol=1e-4, atol=1e-7, msg=name)


def test_gradient_checkpointing_recomputes_the_packed_pass_exactly(toy, tmp_path):
    grads = []
    for checkpointing in ("false", "true"):
        _, task = packed_task(toy, tmp_path, f"trainer.gradient_checkpointing={checkpointing}")
        task.module.train()
        packed, _ = _step(task)
        task.module(packed, task.counts(packed))[0].backward()  # the block mask is recomputed with each block
        grads.append({n: p.grad.clone() for n, p in task.module.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_the_attention_choice(toy, tmp_path):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_attention("auto", cpu, 64) == "sdpa" and resolve_attention("auto", cuda, 64) == "flex"
    assert resolve_attention("auto", cuda, 8) == "sdpa"  # the compiled kernel takes heads of 16 or more
    assert resolve_attention("flex", cpu, 8) == "flex" and resolve_attention("sdpa", cuda, 64) == "sdpa"
    with pytest.raises(ValueError, match="16 or more"):
        resolve_attention("flex", cuda, 8)


def test_no_token_attends_across_segments(toy, tmp_path):
    document = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2]])
    mask = dense_document_mask(document)[0, 0]
    assert mask.tolist()[4] == [False, False, False, True, True, False, False, False]
    assert bool(mask.diagonal().all()) and not bool(mask.triu(1).any())
    additive = dense_document_mask(document, torch.float32)[0, 0]
    assert additive[4, 3] == 0 and additive[4, 2] == torch.finfo(torch.float32).min
    # changing one segment's tokens changes no other segment's hidden states
    _, task = packed_task(toy, tmp_path)
    packed, _ = _step(task)
    p = packed.packed
    with torch.no_grad():
        before = task.model.llm(inputs_embeds=task.model.embed_tokens(p.input_ids), position_ids=p.position_ids,
                                attention_mask=dense_document_mask(p.document)).last_hidden_state
        ids = p.input_ids.clone()
        ids[p.document == 1] = task.processor.eos_id
        after = task.model.llm(inputs_embeds=task.model.embed_tokens(ids), position_ids=p.position_ids,
                               attention_mask=dense_document_mask(p.document)).last_hidden_state
    same = (before - after).abs().amax(-1) == 0
    assert bool(same[p.document != 1].all()) and not bool(same[p.document == 1].all())


def test_flex_attention_gives_the_sdpa_losses(toy, tmp_path):
    from janusflow.config import JanusFlowConfig

    path = tmp_path / "config.json"  # the tiny model with heads of 16 (FlexAttention's CUDA kernel needs >= 16)
    cfg = JanusFlowConfig.from_name("tiny")
    cfg.language.num_attention_heads, cfg.language.num_key_value_heads = 2, 1  # and grouped-query attention
    cfg.save(path)
    _, task = packed_task(toy, tmp_path, "model.preset=null", f"model.config={path}")
    packed, _ = _step(task)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task.module.to(device)
    from janusflow.train.trainer import to_device

    batch = to_device(packed, device)
    block = block_document_mask(batch.packed.document)
    dense = dense_document_mask(batch.packed.document)
    assert torch.equal(block.to_dense().bool().repeat_interleave(128, -1).repeat_interleave(128, -2)[
        ..., :256, :256] | ~dense, torch.ones_like(dense))  # every allowed pair is in a kept block

    def run(grad: bool):
        task.module.zero_grad()
        with torch.set_grad_enabled(grad):
            loss, logs = task.module(batch, task.counts(packed))
            if grad:
                loss.backward()
        grads = {n: p.grad.clone() for n, p in task.module.named_parameters() if p.grad is not None}
        return loss.item(), grads

    grad = device.type == "cuda"  # FlexAttention has no backward on the CPU (torch 2.13)
    loss_sdpa, grads_sdpa = run(grad)
    use_flex_attention(task.model.language_model)
    assert task.model.language_model.config._attn_implementation == FLEX
    loss_flex, grads_flex = run(grad)
    assert loss_flex == pytest.approx(loss_sdpa, rel=1e-5)
    for name in grads_sdpa:
        torch.testing.assert_close(grads_flex[name], grads_sdpa[name], rtol=1e-3, atol=1e-6, msg=name)
    # an unpacked call under the switched implementation is plain SDPA, as before the switch
    unpacked = task.on_device(task._collate([("text", 0, (0, 0))]))
    with torch.no_grad():
        switched = task.module(to_device(unpacked, device), SUMS)[1]["ce_text"]
        task.model.language_model.set_attn_implementation("sdpa")
        plain = task.module(to_device(unpacked, device), SUMS)[1]["ce_text"]
    assert switched == pytest.approx(plain, rel=1e-6)
    if not grad:
        pytest.skip("FlexAttention's backward needs CUDA (torch 2.13 has none on the CPU); losses checked")


def test_the_planner_fills_rows_in_order_and_loses_no_sample(toy, tmp_path):
    _, task = packed_task(toy, tmp_path, "stage.batch_size=3", "data.seq_len=300")
    read = collections.defaultdict(list)
    fill = []
    for step in range(6):
        plan = task.plan(step)
        for row in plan.rows:
            assert sum(item[3] for item in row) <= 300
            fill.append(sum(item[3] for item in row) / 300)
            for name, position, _, _ in row:
                read[name].append(position)
        assert len(task.packer.state["waiting"]) <= LOOKAHEAD
    waiting = collections.defaultdict(list)
    for name, position, _, _ in task.packer.state["waiting"]:
        waiting[name].append(position)
    for name in ("und", "gen", "text"):  # every position read once: placed, or still waiting its turn
        assert sorted(read[name] + waiting[name]) == list(range(task.packer.state["positions"][name]))
    assert sum(fill) / len(fill) > 0.8
    # the slots follow the mix (1 : 2 : 1) in order
    positions = task.packer.state["positions"]
    assert positions["gen"] in (2 * positions["und"] - 1, 2 * positions["und"], 2 * positions["und"] + 1)
    # asking for a planned step again gives the same plan
    assert task.plan(2).rows == task.plan(2).rows


def test_resume_is_exact_with_packing_across_a_phase_boundary_and_with_workers(toy, tmp_path):
    extra = ["stage.steps=5", "stage.phases=[{until_step: 3, ratio: {und: 1, gen: 1}}]", "trainer.save_every=1"]
    config = load_config(None, toy_overrides(toy, tmp_path / "straight") + PACKED + extra)
    Trainer(JanusFlowTask(config), config.trainer_config()).fit()

    config = load_config(None, toy_overrides(toy, tmp_path / "stopped") + PACKED + extra)
    task = JanusFlowTask(config)
    trainer = Trainer(task, config.trainer_config())
    draw = task.cpu_micro_batches

    def stop_before_the_boundary(step, shard, plan=None):
        trainer.stop_requested = step == 1
        return draw(step, shard, plan)

    task.cpu_micro_batches = stop_before_the_boundary
    assert trainer.fit()["stopped"]
    state = latest_checkpoint(tmp_path / "stopped")
    assert state.name == "step-00000002"
    # the rest with two data workers: the planner runs here, the workers build the planned rows
    config = load_config(None, toy_overrides(toy, tmp_path / "stopped") + PACKED + extra + ["trainer.data_workers=2"])
    assert Trainer(JanusFlowTask(config), config.trainer_config()).fit()["step"] == 5
    for name in ("model", "ema", "optimizer"):
        a, b = (load_file(latest_checkpoint(tmp_path / run) / f"{name}.safetensors") for run in ("straight", "stopped"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_fsdp_placeholder_rows_add_nothing(toy, tmp_path):
    _, task = packed_task(toy, tmp_path, "stage.batch_size=3", "data.seq_len=230")  # an und sample fills a row
    plan = task.plan(0)
    in_step = {item[0] for row in plan.rows for item in row}
    # a process (one row of the three) whose row lacks a task of the step
    shard, missing = next((s, in_step - {item[0] for item in s.split(plan.rows)[0][0]})
                          for s in (Shard(r, 3, 1) for r in range(3)) if in_step - {i[0] for i in s.split(plan.rows)[0][0]})
    plain = task.cpu_micro_batches(0, shard, plan)[0]
    task.pad_parts = True
    padded = task.cpu_micro_batches(0, shard, plan)[0]
    assert padded.packed.input_ids.shape[0] == plain.packed.input_ids.shape[0] + 1
    assert padded.packed.placeholders == len(missing)
    counts = task.counts(task.on_device(padded))
    assert counts.pop("row_tokens") == 2 * 230 and counts.pop("tokens") > task.counts(plain)["tokens"]
    assert counts == {k: v for k, v in task.counts(task.on_device(plain)).items() if k not in ("row_tokens", "tokens")}
    totals = {k: v * 3 for k, v in task.counts(plain).items()}
    with torch.no_grad():
        assert task.module(plain, totals)[0] == pytest.approx(task.module(padded, totals)[0].item(), rel=1e-6)


def test_packing_settings_are_checked(toy, tmp_path):
    with pytest.raises(ConfigError, match="data.attention"):
        packed_task(toy, tmp_path, "data.attention=xformers")
    with pytest.raises(ConfigError, match="contrastive"):
        packed_task(toy, tmp_path, "losses.negative_weight=1")
    # rows shorter than every und and gen sample: each is skipped and counted, then the run stops
    _, task = packed_task(toy, tmp_path, "data.seq_len=12", "stage.ratio={und: 1, gen: 1}")
    with pytest.raises(InputError, match="unreadable"):
        task.plan(0)
    assert task.skip_count > 25
