"""The generic trainer on a toy objective: exact resume, accumulation, signals, checkpoint files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from janusflow.errors import ConfigError
from janusflow.train import Shard, Trainer, TrainerConfig, share
from janusflow.train.trainer import lr_schedule
from janusflow.train.checkpointing import list_checkpoints


class _Regression(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.frozen = nn.Linear(4, 4)

    def forward(self, batch, totals):
        x, y = batch
        err = ((self.body(self.frozen(x)).squeeze(-1) - y) ** 2).sum()
        loss = share(err, totals, "samples")
        return loss, {"mse": float(loss.detach())}


class ToyTask:
    """The smallest TrainTask: y = sum(x) regression, 8 samples a step, drawn from (seed, step)."""

    def __init__(self, batch_size: int = 8):
        self.module = _Regression()
        self.batch_size = batch_size
        self.exported = None

    def trainable_parameters(self):
        return {n: p for n, p in self.module.named_parameters() if n.startswith("body.")}

    def micro_batches(self, step, shard: Shard):
        g = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(self.batch_size, 4, generator=g)
        items = list(zip(x, x.sum(-1)))
        return [(torch.stack([a for a, _ in part]), torch.stack([b for _, b in part])) for part in shard.split(items)]

    def counts(self, batch):
        return {"samples": float(len(batch[1]))}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def export(self, directory):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "done.json").write_text(json.dumps({"ok": True}))
        self.exported = directory


def _train(run_dir: Path, steps: int, **kw) -> ToyTask:
    task = ToyTask()
    cfg = TrainerConfig(run_dir=str(run_dir), steps=steps, lr=1e-2, warmup_steps=2, progress=False,
                        save_every=kw.pop("save_every", 100), **kw)
    Trainer(task, cfg).fit()
    return task


def _weights(task):
    return {k: v.detach().clone() for k, v in task.module.state_dict().items()}


def test_shard_split_is_the_same_for_processes_and_accumulation():
    items = list(range(7))
    one = Shard(0, 1, 2).split(items)
    two = [Shard(r, 2, 1).split(items)[0] for r in range(2)]
    assert one == two == [[0, 1, 2, 3], [4, 5, 6]]


def test_resume_is_exact_and_frozen_weights_do_not_move(tmp_path):
    straight = _train(tmp_path / "a", 6)
    _train(tmp_path / "b", 3)  # stops at 3 (a complete run of 3 steps) ...
    resumed_task = ToyTask()
    Trainer(resumed_task, TrainerConfig(run_dir=str(tmp_path / "b"), steps=6, lr=1e-2, warmup_steps=2,
                                        progress=False)).fit()  # ... and continues to 6
    a, b = _weights(straight), _weights(resumed_task)
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = _Regression().state_dict()
    assert torch.equal(a["frozen.weight"], fresh["frozen.weight"])
    assert not torch.equal(a["body.0.weight"], fresh["body.0.weight"])


def test_accumulation_matches_one_big_batch(tmp_path):
    a = _weights(_train(tmp_path / "a", 3, grad_accum=1))
    b = _weights(_train(tmp_path / "b", 3, grad_accum=4))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_checkpoint_files_rotation_and_log(tmp_path):
    task = _train(tmp_path, 5, save_every=1, keep_last=2)
    kept = list_checkpoints(tmp_path)
    assert [p.name for p in kept] == ["step-00000004", "step-00000005"]
    names = {p.name for p in kept[-1].iterdir()}
    assert {"model.safetensors", "ema.safetensors", "optimizer.safetensors", "optimizer.json",
            "rng-rank0.json", "trainer_state.json"} <= names
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary folders left
    state = json.loads((kept[-1] / "trainer_state.json").read_text())
    assert state["step"] == 5 and state["cumulative"]["samples"] == 40
    rows = (tmp_path / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,lr,mse,loss,grad_norm,samples_per_s,tokens_per_s") and len(rows) == 6
    assert (task.exported / "done.json").is_file() and (tmp_path / "export-raw" / "done.json").is_file()


def test_stop_request_writes_a_checkpoint_and_returns(tmp_path):
    task = ToyTask()
    trainer = Trainer(task, TrainerConfig(run_dir=str(tmp_path), steps=50, progress=False))
    original = task.micro_batches

    def interrupted(step, shard):
        if step == 2:
            trainer.stop_requested = True  # what the SIGTERM handler does
        return original(step, shard)

    task.micro_batches = interrupted
    result = trainer.fit()
    assert result["stopped"] and result["step"] == 3
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003"]
    assert task.exported is None


def test_bad_config_is_refused():
    from janusflow.errors import ConfigError

    with pytest.raises(ConfigError):
        TrainerConfig(precision="fp16").validate()


def test_a_resumed_run_takes_the_new_learning_rate(tmp_path):
    _train(tmp_path, 3)
    task = ToyTask()
    cfg = TrainerConfig(run_dir=str(tmp_path), steps=5, lr=5e-3, warmup_steps=2, progress=False)
    Trainer(task, cfg).fit()
    rows = (tmp_path / "log.csv").read_text().strip().splitlines()
    lrs = [float(r.split(",")[1]) for r in rows[1:]]
    assert lrs == [5e-3, 1e-2, 1e-2, 5e-3, 5e-3]  # warm-up 0.5, 1, 1 at 1e-2; then the new rate


def test_lr_schedule_warms_up_holds_and_cools_down_to_zero():
    f = lr_schedule(warmup_steps=2, total_steps=10, decay_steps=4)
    assert [round(f(s), 4) for s in range(10)] == [0.5, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]
    assert f(10) == 0.0
    constant = lr_schedule(warmup_steps=0)
    assert all(constant(s) == 1.0 for s in range(5))


def test_segments_keep_the_whole_runs_cool_down(tmp_path):
    """A run trained in segments (steps < schedule_steps each time) follows the whole run's schedule."""
    kw = dict(decay_steps=4, schedule_steps=6, save_every=1)
    straight = _train(tmp_path / "a", 6, **kw)
    _train(tmp_path / "b", 3, **kw)
    segmented = _train(tmp_path / "b", 6, **kw)
    a, b = _weights(straight), _weights(segmented)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "a" / "log.csv").read_text().splitlines()
    lrs = [float(r.split(",")[1]) for r in rows[1:]]
    assert lrs == pytest.approx([5e-3, 1e-2, 1e-2, 7.5e-3, 5e-3, 2.5e-3])
    with pytest.raises(ConfigError, match="decay_steps"):
        TrainerConfig(run_dir=str(tmp_path / "c"), steps=6, decay_steps=7).validate()
