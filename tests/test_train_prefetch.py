"""Data workers (janusflow.train.prefetch) change nothing but speed; a time limit ends a run like its
last step (checkpoint and export), and the run resumes from there."""

from __future__ import annotations

import pytest
import torch

from janusflow.train import Trainer
from janusflow.train.checkpointing import latest_checkpoint, list_checkpoints
from janusflow.train.config import load_config
from janusflow.train.prefetch import Prefetcher
from janusflow.train.task import JanusFlowTask
from janusflow.train.toydata import toy_overrides, write_toy_data
from janusflow.train.trainer import Shard, TrainerConfig
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_data(tmp_path_factory.mktemp("toy"), count=12)


EXTRA = ["stage.steps=4", "stage.warmup_steps=2", "stage.ratio={und: 1, gen: 2, text: 1}", "trainer.save_every=2"]


def _run(toy, run_dir, *extra):
    config = load_config(None, toy_overrides(toy, run_dir) + EXTRA + list(extra))
    task = JanusFlowTask(config)
    return task, Trainer(task, config.trainer_config()).fit()


def _weights(run_dir):
    folder = latest_checkpoint(run_dir)
    return {name: load_file(folder / f"{name}.safetensors") for name in ("model", "ema", "optimizer")}


def test_workers_build_exactly_the_batches_of_the_training_process(toy, tmp_path):
    config = load_config(None, toy_overrides(toy, tmp_path) + EXTRA)
    task = JanusFlowTask(config)
    shard = Shard(0, 1, 2)
    own = [task.cpu_micro_batches(step, shard) for step in range(3)]
    with Prefetcher(task, shard, workers=2, first_step=0) as prefetcher:
        built = [prefetcher.get(step) for step in range(3)]
    assert task.next_step == 3
    for mine, theirs in zip(own, built):
        for a, b in zip(mine, theirs):
            for part in ("und", "text", "gen"):
                x, y = getattr(a, part), getattr(b, part)
                assert (x is None) == (y is None)
                if x is None:
                    continue
                for field in ("input_ids", "attention_mask", "labels", "pixel_values", "gen_pixels", "x0", "t"):
                    u, v = getattr(x, field, None), getattr(y, field, None)
                    if u is not None:
                        assert torch.equal(u, v), (part, field)
    assert built[0][0].gen.gen_pixels is not None and built[0][0].gen.latents is None  # encoded on the device


def test_a_run_with_data_workers_equals_one_without(toy, tmp_path):
    _run(toy, tmp_path / "plain")
    _run(toy, tmp_path / "workers", "trainer.data_workers=2")
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "workers")
    for part in a:
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_a_time_limit_ends_the_run_with_a_checkpoint_and_an_export(toy, tmp_path):
    task, result = _run(toy, tmp_path, "trainer.max_seconds=1e-9")
    assert result["out_of_time"] and not result["stopped"] and result["step"] == 1
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]
    assert (tmp_path / "export" / "config.json").is_file()
    _, result = _run(toy, tmp_path)  # no limit: resumes at step 1 and finishes
    assert result["step"] == 4 and not result["out_of_time"]


def test_bad_worker_settings_are_refused():
    from janusflow.errors import ConfigError

    with pytest.raises(ConfigError, match="data_workers"):
        TrainerConfig(data_workers=-1).validate()
    with pytest.raises(ValueError, match="workers"):
        Prefetcher(object(), Shard(0, 1, 1), workers=0, first_step=0)
