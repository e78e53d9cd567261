"""The JanusFlow objectives, stages and data on the tiny model (fast: one process, a few steps)."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch

from janusflow import processor as processor_module
from janusflow.errors import ConfigError
from janusflow.processor import make_uncond
from janusflow.train import Shard, Trainer
from janusflow.train.collate import IGNORE, encode_conversation
from janusflow.train.config import load_config
from janusflow.train.losses import rectified_flow_sum, repa_sum
from janusflow.train.samples import CaptionSample, ConversationSample
from janusflow.train.sources import Mixture, TarShardSource
from janusflow.train.task import JanusFlowTask
from janusflow.train.toydata import draw, toy_overrides, write_toy_data


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_data(tmp_path_factory.mktemp("toy"), count=12)


def make_task(toy, run_dir, *extra, stage="sft"):
    config = load_config(None, toy_overrides(toy, run_dir, stage) + list(extra))
    return config, JanusFlowTask(config)


# -- the math ----------------------------------------------------------------------------------------

def test_rectified_flow_and_repa_sums_have_the_stated_values():
    x0, x1 = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    assert rectified_flow_sum(x1 - x0, x0, x1) == 0  # the exact velocity costs nothing
    v = torch.stack([torch.full((1, 2, 2), 3.0), torch.ones(1, 2, 2)])  # errors 2 and 0
    assert rectified_flow_sum(v, x0, x1) == pytest.approx(4.0)  # per-sample means summed: 4 + 0
    a = torch.randn(2, 3, 5)
    assert repa_sum(a, 2 * a) == pytest.approx(0.0, abs=1e-6)  # 1 - cos, cos = 1
    assert repa_sum(a, -a) == pytest.approx(4.0)  # 2 per sample


def test_ce_labels_only_answer_tokens(toy, tmp_path):
    _, task = make_task(toy, tmp_path)
    proc = task.processor
    sample = ConversationSample([{"role": "User", "content": "<image_placeholder>\nWhat colour?"},
                                 {"role": "Assistant", "content": "red"},
                                 {"role": "User", "content": "And the shape?"},
                                 {"role": "Assistant", "content": "a square"}], [draw("red", "square")])
    ids, labels, pixels = encode_conversation(proc, sample)
    assert pixels.shape == (1, 3, proc.image_size, proc.image_size)
    targets = [i for i, label in zip(ids, labels) if label != IGNORE]
    # exactly the two answers and the EOS closing each; no prompt, role, system or image position
    tok = proc.tokenizer
    assert targets == (tok.encode(" red", add_special_tokens=False) + [proc.eos_id]
                       + tok.encode(" a square", add_special_tokens=False) + [proc.eos_id])
    image_positions = [i for i, t in enumerate(ids) if t in (proc.image_id, proc.boi_id, proc.eoi_id)]
    assert len(image_positions) == proc.num_image_tokens + 2
    assert all(labels[i] == IGNORE for i in image_positions)
    assert labels == [t if lab != IGNORE else IGNORE for t, lab in zip(ids, labels)]  # a label is its token
    # the same ids as the inference processor builds
    assert ids == proc.encode_conversation(sample.messages, sample.images).input_ids.tolist()


def test_prompt_dropout_rows_come_from_make_uncond(toy, tmp_path, monkeypatch):
    calls = []

    def spy(tokens, mask, pad_id):
        calls.append(1)
        return make_uncond(tokens, mask, pad_id)

    from janusflow.train import collate

    monkeypatch.setattr(collate, "make_uncond", spy)
    _, task = make_task(toy, tmp_path, "losses.prompt_dropout=0.5", "stage.ratio={gen: 1}", "stage.batch_size=12")
    batch = task.micro_batches(0, Shard(0, 1, 1))[0].gen
    assert calls and 0 < int(batch.dropped.sum()) < 12
    # rebuild the conditional rows and check each dropped row is exactly make_uncond's row
    captions = [task.sources["gen"].read(p).caption for _, p, _ in task.mixture.step_slots(0)]
    cond_ids, cond_mask = processor_module.left_pad([task.processor.encode_generation_prompt(c) for c in captions],
                                                    task.processor.pad_id)
    uncond_ids, uncond_mask = make_uncond(cond_ids, cond_mask, task.processor.pad_id)
    for row, dropped in enumerate(batch.dropped.tolist()):
        expect_ids, expect_mask = (uncond_ids, uncond_mask) if dropped else (cond_ids, cond_mask)
        assert torch.equal(batch.input_ids[row], expect_ids[row])
        assert torch.equal(batch.attention_mask[row], expect_mask[row])


def test_repa_grids_must_match(toy, tmp_path):
    from janusflow.config import JanusFlowConfig

    path = tmp_path / "config.json"
    cfg = JanusFlowConfig.from_name("tiny")
    cfg.und_vision.image_size = 64  # 8x8 understanding grid against a 4x4 latent grid
    cfg.save(path)
    with pytest.raises(ConfigError, match="same token grid"):
        make_task(toy, tmp_path, "model.preset=null", f"model.config={path}")
    make_task(toy, tmp_path, "model.preset=null", f"model.config={path}", "losses.repa_weight=0")  # allowed


# -- stages --------------------------------------------------------------------------------------------

def _fixed_batch_logs(task, batch):
    with torch.no_grad():
        counts = task.counts(batch)
        return task.module(batch, counts)[1]


@pytest.mark.parametrize("stage", ["adaptation", "pretrain", "sft"])
def test_every_stage_overfits_a_fixed_batch_and_freezes_what_it_should(toy, tmp_path, stage):
    # a fixed batch: the data is exactly one batch, read in the same order every step
    config, task = make_task(toy, tmp_path, "stage.steps=12", "stage.batch_size=8", "stage.lr=3e-3",
                             "stage.ratio={und: 1, gen: 2, text: 1}", "data.shuffle=false", "trainer.ema_decay=0",
                             "losses.prompt_dropout=0", stage=stage)
    task.sources = {k: _Fixed(v, n) for k, v, n in ((k, v, {"und": 2, "gen": 4, "text": 2}[k])
                                                  for k, v in task.sources.items())}
    batch = task.micro_batches(0, Shard(0, 1, 1))[0]
    before = _fixed_batch_logs(task, batch)
    initial = {k: v.detach().clone() for k, v in task.module.state_dict().items()}
    grads = {}
    hooks = [p.register_hook(lambda g, n=n: grads.__setitem__(n, g))
             for n, p in task.module.model.und_encoder.named_parameters()]
    Trainer(task, config.trainer_config()).fit()
    for h in hooks:
        h.remove()
    after = _fixed_batch_logs(task, batch)
    for term in ("ce_und", "rf", "repa") + (("ce_text",) if stage != "adaptation" else ()):
        assert after[term] < before[term], (stage, term, before[term], after[term])
    if stage == "adaptation":  # text touches only the frozen LLM: its loss cannot move at all
        assert after["ce_text"] == before["ce_text"]
    final = task.module.state_dict()
    moved = {k for k in initial if not torch.equal(initial[k], final[k])}
    trainable = set(task.trainable_parameters())
    assert moved <= trainable and {k for k in trainable if "repa_head" in k} <= moved
    llm = {k for k in initial if k.startswith("model.language_model.")}
    und_encoder = {k for k in initial if k.startswith("model.und_encoder.")}
    if stage == "adaptation":
        assert not moved & (llm | und_encoder)
        assert {k.split(".")[1] for k in moved} == {"und_aligner", "boi_embedding", "gen_encoder", "gen_enc_aligner",
                                                   "gen_decoder", "gen_dec_aligner_norm", "gen_dec_aligner", "net"}
    if stage == "pretrain":
        assert not moved & und_encoder and moved & llm
        assert not grads  # REPA's target encoder gets no gradient while frozen
    if stage == "sft":
        assert moved & und_encoder and moved & llm


class _Fixed:
    """The first n positions of a source, over and over, in order."""

    def __init__(self, source, n):
        self.source, self.n, self.task, self.length = source, n, source.task, None

    def read(self, position):
        return self.source.source.read(position % self.n)


def test_repa_sends_no_gradient_into_the_understanding_encoder(toy, tmp_path):
    _, task = make_task(toy, tmp_path, "stage.ratio={gen: 1}")  # SFT: the encoder is trainable
    batch = task.micro_batches(0, Shard(0, 1, 1))[0]
    loss, _ = task.module(batch, task.counts(batch))
    loss.backward()
    assert all(p.grad is None for p in task.module.model.und_encoder.parameters())
    assert task.module.repa_head.net[0].weight.grad.abs().sum() > 0


# -- data ------------------------------------------------------------------------------------------------

def test_mixture_keeps_the_ratio_exactly():
    m = Mixture({"und": 14, "gen": 80, "text": 6}, 10)
    tasks = [t for s in range(10) for t, _, _ in m.step_slots(s)]
    assert (tasks.count("und"), tasks.count("gen"), tasks.count("text")) == (14, 80, 6)
    assert m.positions(10) == {"und": 14, "gen": 80, "text": 6}


def test_corrupt_samples_are_skipped_and_counted(toy, tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "ok.png").write_bytes(open(toy["und"].replace("und.jsonl", "images/0000.png"), "rb").read())
    (root / "truncated.png").write_bytes((root / "ok.png").read_bytes()[:40])
    lines = [json.dumps({"image": "ok.png", "caption": "a red square"}),
             json.dumps({"image": "missing.png", "caption": "a blue circle"}),
             "{not json",
             json.dumps({"image": "truncated.png", "caption": "a green square"}),
             json.dumps({"image": "ok.png"})]  # no caption
    (root / "gen.jsonl").write_text("\n".join(lines) + "\n")
    config, task = make_task(toy, tmp_path / "run", f"data.gen=[{root / 'gen.jsonl'}]", "stage.ratio={gen: 1}",
                             "stage.batch_size=5", "stage.steps=2", "data.shuffle=false")
    result = Trainer(task, config.trainer_config()).fit()
    assert not result["stopped"] and result["step"] == 2
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    assert float(last[header.index("total_skipped")]) == 8  # 4 bad of 5, twice
    assert float(last[header.index("total_gen_samples")]) == 2


def test_tar_shards_and_in_memory_sources(toy, tmp_path):
    shard = tmp_path / "gen-000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, (colour, shape) in enumerate([("red", "square"), ("blue", "circle")]):
            png = io.BytesIO()
            draw(colour, shape).save(png, format="PNG")
            for ext, data in (("png", png.getvalue()), ("txt", f"a {colour} {shape}".encode())):
                info = tarfile.TarInfo(f"{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    source = TarShardSource("gen", [shard])
    assert source.length == 2 and source.read(1).caption == "a blue circle"
    und_shard = tmp_path / "und-000.tar"
    with tarfile.open(und_shard, "w") as tar:
        png = io.BytesIO()
        draw("green", "circle").save(png, format="PNG")
        record = {"conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "green"}]}
        for ext, data in (("jpg", png.getvalue()), ("json", json.dumps(record).encode())):
            info = tarfile.TarInfo(f"sub/k1.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    conversation = TarShardSource("und", [und_shard]).read(0)
    assert conversation.messages[1] == {"role": "Assistant", "content": "green"}
    assert len(conversation.images) == 1 and conversation.messages[0]["content"].startswith("<image_placeholder>")

    def shapes(position):  # e.g. the shapes world, rendering on the fly
        shape = ("square", "circle")[position % 2]
        return CaptionSample(f"a red {shape}", draw("red", shape))

    config, task = make_task(toy, tmp_path / "run", f"data.gen=[{shard}]", "stage.ratio={gen: 1, text: 1}")
    assert task.micro_batches(0, Shard(0, 1, 1))[0].gen.input_ids.shape[0] == 3
    config = load_config(None, toy_overrides(toy, tmp_path / "run2") + ["stage.ratio={gen: 1}"])
    task = JanusFlowTask(config, sources={"gen": shapes})
    batch = task.micro_batches(0, Shard(0, 1, 1))[0]
    assert batch.skipped == 0 and batch.gen.latents.shape == (6, 4, 8, 8)


def test_config_errors_name_the_key(toy, tmp_path):
    with pytest.raises(ConfigError, match="stage: unknown key.*stepz"):
        load_config(None, toy_overrides(toy, tmp_path) + ["stage.stepz=3"])
    with pytest.raises(ConfigError, match="stage.batch_size"):
        load_config(None, toy_overrides(toy, tmp_path) + ["stage.batch_size=many"])
    with pytest.raises(ConfigError, match="repa_layer"):
        make_task(toy, tmp_path, "losses.repa_layer=6")  # the tiny LLM has 2 blocks


def red_squares():  # a factory named in a config as python:tests.test_train_janusflow:red_squares
    return lambda position: CaptionSample("a red square", draw("red", "square"))


def test_a_config_can_name_a_python_source(toy, tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    config = load_config(None, toy_overrides(toy, tmp_path) + ["stage.ratio={gen: 1}",
                                                              "data.gen=python:tests.test_train_janusflow:red_squares"])
    batch = JanusFlowTask(config).micro_batches(0, Shard(0, 1, 1))[0]
    assert batch.gen.input_ids.shape[0] == 6 and batch.skipped == 0
    assert "tests.test_train_janusflow" in sys.modules


def test_example_configs_parse():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 5
    stages = {load_config(path).stage.name for path in configs}
    assert {"adaptation-small", "pretrain-small", "sft-small", "sft"} <= stages


def test_latent_cache_is_used_and_matches_the_live_encoder(toy, tmp_path):
    from janusflow.train.cache import build_cache

    extra = [f"data.cache={tmp_path / 'cache'}", "stage.ratio={gen: 1}", "data.shuffle=false"]
    config = load_config(None, toy_overrides(toy, tmp_path / "a", "pretrain") + extra)
    task = JanusFlowTask(config, use_cache=False)
    folder = build_cache(task, config)
    assert (folder / "gen.safetensors").is_file()
    cached = JanusFlowTask(config)  # pretrain: the understanding encoder is frozen, so REPA targets are cached
    sample = cached.sources["gen"].read(0)
    assert sample.image is None and sample.latent.shape == (4, 8, 8) and sample.und_features.shape == (16, 16)
    # the cached latent is the live encoder's latent of the centre crop
    from janusflow.processor import load_image
    from janusflow.train.collate import crop_square, latent_encoder_pixels, to_uint8

    image = task.sources["gen"].read(0).image
    live = task.latent_encoder.encode(latent_encoder_pixels(to_uint8(crop_square(load_image(image), 16, None)))[None])[0]
    assert torch.allclose(sample.latent, live, atol=1e-5)
    batch = cached.micro_batches(0, Shard(0, 1, 1))[0]
    assert batch.gen.und_features is not None and batch.gen.und_pixels is None
    assert torch.isfinite(cached.module(batch, cached.counts(batch))[0])
    # SFT trains the encoder: the cached REPA targets are not used, the live ones are of the same crop
    config = load_config(None, toy_overrides(toy, tmp_path / "b") + extra)
    sft = JanusFlowTask(config).micro_batches(0, Shard(0, 1, 1))[0]
    assert sft.gen.und_features is None and sft.gen.und_pixels is not None and sft.gen.latents is not None


def test_fsdp_placeholder_rows_add_nothing(toy, tmp_path):
    _, task = make_task(toy, tmp_path, "stage.ratio={und: 1, gen: 1, text: 1}", "stage.batch_size=3")
    shard = Shard(0, 3, 1)  # this process gets one slot of the three tasks
    plain = task.micro_batches(0, shard)[0]
    task.pad_parts = True
    padded = task.micro_batches(0, shard)[0]
    assert len(padded.placeholders) == 2 and not plain.placeholders
    assert task.counts(plain) == task.counts(padded)
    totals = {k: v * 3 for k, v in task.counts(plain).items()}  # as if the other processes had theirs
    with torch.no_grad():
        assert task.module(plain, totals)[0] == task.module(padded, totals)[0]


def test_gradient_checkpointing_gives_the_same_gradients(toy, tmp_path):
    grads = []
    for checkpointing in ("false", "true"):
        _, task = make_task(toy, tmp_path, f"trainer.gradient_checkpointing={checkpointing}")
        task.module.train()
        batch = task.micro_batches(0, Shard(0, 1, 1))[0]
        task.module(batch, task.counts(batch))[0].backward()
        grads.append({n: p.grad.clone() for n, p in task.module.named_parameters() if p.grad is not None})
    assert task.model.language_model.model.gradient_checkpointing
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][k], grads[1][k], atol=1e-6) for k in grads[0])


def test_janusflow_train_command(tmp_path, capsys):
    from janusflow.cli import main

    assert main(["train", "toy-data", str(tmp_path / "toy")]) == 0
    assert (tmp_path / "toy" / "gen.jsonl").is_file() and (tmp_path / "toy" / "tokenizer").is_dir()
    assert main(["train", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read the config" in capsys.readouterr().err


def test_changing_the_mix_on_resume_continues_each_stream(toy, tmp_path):
    _, task = make_task(toy, tmp_path, "stage.ratio={und: 1, gen: 1}", "stage.batch_size=4")
    for step in range(3):
        task.micro_batches(step, Shard(0, 1, 1))
    state = json.loads(json.dumps(task.state_dict()))  # as stored in trainer_state.json
    assert state["positions"] == {"und": 6, "gen": 6, "text": 0}
    _, changed = make_task(toy, tmp_path, "stage.ratio={und: 1, gen: 3}", "stage.batch_size=4")
    changed.load_state_dict(state)
    slots = changed._slots(3)
    assert sorted((t, p) for t, p, _ in slots) == [("gen", 6), ("gen", 7), ("gen", 8), ("und", 6)]
    assert len({key for _, _, key in slots + task._slots(0)}) == 8  # fresh random keys after the rebase


def test_a_micro_batch_without_samples_is_harmless(toy, tmp_path):
    config, task = make_task(toy, tmp_path, "stage.batch_size=1", "trainer.grad_accum=2", "stage.steps=2")
    assert task.micro_batches(0, Shard(0, 1, 2))[1].und is None  # the second micro-batch is empty
    result = Trainer(task, config.trainer_config()).fit()
    assert result["step"] == 2 and all(v == v for v in result["logs"].values())  # finite, no NaN
