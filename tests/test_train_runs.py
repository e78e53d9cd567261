"""Whole runs of the tiny model: exact resume, SIGTERM, 2 processes on gloo, LoRA export."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from janusflow.modeling import JanusFlowModel
from janusflow.processor import JanusFlowProcessor
from janusflow.train import Trainer
from janusflow.train.checkpointing import latest_checkpoint, list_checkpoints
from janusflow.train.config import load_config
from janusflow.train.task import JanusFlowTask
from janusflow.train.toydata import toy_overrides, write_toy_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_data(tmp_path_factory.mktemp("toy"), count=12)


def _checkpoint(run_dir) -> dict[str, dict[str, torch.Tensor]]:
    folder = latest_checkpoint(run_dir)
    return {name: load_file(folder / f"{name}.safetensors") for name in ("model", "ema", "optimizer")}


def _assert_same(a, b, atol=0.0):
    for part in a:
        assert a[part].keys() == b[part].keys()
        worst = max((a[part][k] - b[part][k]).abs().max().item() for k in a[part])
        assert worst <= atol, (part, worst)


def test_resume_gives_the_same_weights_as_not_stopping(toy, tmp_path):
    extra = ["stage.steps=4", "stage.warmup_steps=2", "stage.ratio={und: 1, gen: 2, text: 1}", "trainer.save_every=1"]
    config = load_config(None, toy_overrides(toy, tmp_path / "straight") + extra)
    Trainer(JanusFlowTask(config), config.trainer_config()).fit()

    config = load_config(None, toy_overrides(toy, tmp_path / "stopped") + extra)
    task = JanusFlowTask(config)
    trainer = Trainer(task, config.trainer_config())
    draw = task.cpu_micro_batches  # what the trainer builds batches with (on_device then runs on them)

    def stop_after_two(step, shard):  # what SIGTERM does, at step 2 of 4
        trainer.stop_requested = step == 1
        return draw(step, shard)

    task.cpu_micro_batches = stop_after_two
    assert trainer.fit()["stopped"]
    assert [p.name for p in list_checkpoints(tmp_path / "stopped")] == ["step-00000001", "step-00000002"]
    result = Trainer(JanusFlowTask(config), config.trainer_config()).fit()  # a fresh start on the same folder
    assert result["step"] == 4 and not result["stopped"]
    # resume is exact: every random draw comes from (seed, slot), the data position from the step
    _assert_same(_checkpoint(tmp_path / "straight"), _checkpoint(tmp_path / "stopped"))

    # the export (model, processor, VAE) loads with the inference pipeline and generates
    from janusflow.pipeline import JanusFlowPipeline

    pipe = JanusFlowPipeline.from_pretrained(tmp_path / "stopped" / "export", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red square", num_inference_steps=2, generator=0).images[0]
    assert image.size == (16, 16)  # latent 8 x the tiny VAE's factor 2
    assert isinstance(pipe.processor, JanusFlowProcessor) and isinstance(pipe.model, JanusFlowModel)


def _write_config(toy, run_dir, path, *extra):
    """A YAML config equal to toy_overrides + extra, for subprocess runs."""
    config = load_config(None, toy_overrides(toy, run_dir) + list(extra))
    path.write_text(yaml.safe_dump(config.to_dict()))
    return path


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    env.pop("RANK", None)
    return env


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(toy, tmp_path):
    cfg = _write_config(toy, tmp_path / "run", tmp_path / "run.yaml", "stage.steps=10000", "trainer.save_every=10000")
    proc = subprocess.Popen([sys.executable, "-m", "janusflow.train", str(cfg)], cwd=tmp_path, env=_env(1),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 3):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "interrupted at step" in err
    folder = latest_checkpoint(tmp_path / "run")
    assert folder is not None and 2 <= int(folder.name.split("-")[1]) < 10000
    assert not (tmp_path / "run" / "export").exists()


def test_two_processes_on_gloo_equal_one_process_with_the_same_global_batch(toy, tmp_path):
    extra = ["stage.steps=3", "stage.batch_size=6", "stage.ratio={und: 1, gen: 2, text: 1}", "trainer.save_every=10"]
    one = _write_config(toy, tmp_path / "one", tmp_path / "one.yaml", *extra, "trainer.grad_accum=2")
    # one thread per process on both sides: the same matmul reduction order, so the comparison is exact
    subprocess.run([sys.executable, "-m", "janusflow.train", str(one)], cwd=tmp_path, env=_env(1), check=True,
                   capture_output=True)
    reference = _checkpoint(tmp_path / "one")
    # DDP all-reduces (2 g0 + 2 g1) / 2 = g0 + g1 exactly, the sum one process accumulates: equal bits.
    # FSDP reduce-scatters the average (g0 + g1) / 2 and the loss scale makes it g0 + g1 again, but in
    # another order of fp32 operations: equal to rounding (1e-7 measured), so 1e-5 after three steps.
    for strategy, atol in (("ddp", 0.0), ("fsdp", 1e-5)):
        cfg = _write_config(toy, tmp_path / strategy, tmp_path / f"{strategy}.yaml", *extra,
                            f"trainer.distributed={strategy}")
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "-m", "janusflow.train", str(cfg)], cwd=tmp_path, env=_env(1), capture_output=True,
                             text=True)
        assert run.returncode == 0, run.stderr[-3000:]
        _assert_same(reference, _checkpoint(tmp_path / strategy), atol)
        exports = [load_file(tmp_path / run / "export-raw" / "model.safetensors") for run in ("one", strategy)]
        _assert_same({"export": exports[0]}, {"export": exports[1]}, atol)


def test_lora_trains_adapters_only_and_merges_on_export(toy, tmp_path):
    config = load_config(None, toy_overrides(toy, tmp_path) + ["lora.enabled=true", "lora.r=4", "stage.steps=3",
                                                               "trainer.ema_decay=0"])
    task = JanusFlowTask(config)
    base_before = task.model.language_model.model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    Trainer(task, config.trainer_config()).fit()
    q_proj = task.model.language_model.model.layers[0].self_attn.q_proj
    assert torch.equal(q_proj.base_layer.weight, base_before)  # the LLM itself is frozen
    assert q_proj.lora_B["default"].weight.abs().sum() > 0  # its adapters trained

    plain = JanusFlowModel.from_pretrained(tmp_path / "export")  # no peft involved in loading
    assert not any("lora" in k for k in plain.state_dict())
    ids = torch.tensor([[0, 10, 20, 30, 40]])
    with torch.no_grad():
        expected = task.model.eval().forward_understanding(ids).logits
        merged = plain.forward_understanding(ids).logits
    assert torch.allclose(expected, merged, atol=1e-5)
    assert not torch.allclose(plain.language_model.model.layers[0].self_attn.q_proj.weight, base_before)
