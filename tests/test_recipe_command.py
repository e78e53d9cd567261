"""`janusflow recipe shapes` end to end at the smoke preset (configs/recipe/shapes-smoke.yaml): every
stage from nothing, the records, the shipped layout; a run stopped after a stage and at a deadline and
then continued equals one uninterrupted run; a pack carries finished stages to another folder; bad
configs and changed configs are refused in one line."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from janusflow.cli import main
from janusflow.errors import ConfigError
from janusflow.shapes.recipe.config import REPO_CONFIGS, load_recipe, stage_seed

SMOKE = str(REPO_CONFIGS / "shapes-smoke.yaml")
STAGES = ["vae", "tokenizer", "siglip", "lm", "adapt", "unified", "sft", "contrast", "contrast_a", "contrast_b",
          "soup", "assemble", "eval"]


def recipe(out: Path, *more: str) -> int:
    return main(["recipe", "shapes", "--config", SMOKE, "--out", str(out), "--device", "cpu", "--threads", "1", *more])


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recipe") / "run"
    assert recipe(out) == 0
    return out


def test_one_command_builds_every_stage_and_records_it(smoke_run, capsys):
    out = smoke_run
    record = json.loads((out / "recipe.json").read_text())
    assert record["complete"] and list(record["stages"]) == STAGES
    assert all(s["status"] == "done" for s in record["stages"].values())
    assert record["seed"] == 0 and record["stages"]["adapt"]["seed"] == stage_seed(0, "adapt") != stage_seed(1, "adapt")
    assert all(record["stages"][s]["wall_seconds"] > 0 for s in ("vae", "siglip", "lm", "adapt", "eval"))
    session = record["sessions"][0]
    assert session["command"].startswith("janusflow recipe shapes --out ") and "--config" in session["command"]
    assert "CPU" in session["device"] and session["ran"] == STAGES and session["ended"] == "done"
    assert set(record["scores"]) == {"best_of_4", "best_of_1"}
    # the model folder is what ships: its layout, its records, fp16 weights, no path of this machine
    model = out / "model"
    assert json.loads((model / "recipe.json").read_text()) == record
    assert json.loads((model / "image_generation_config.json").read_text()) == {"candidates": 4, "judge": "shapes"}
    default, once = (json.loads((model / n).read_text()) for n in ("eval_shapes.json", "eval_shapes_best_of_1.json"))
    assert default["settings"]["candidates"] == 4 and once["settings"]["candidates"] == 1
    assert default["generation"]["n_images"] == 6 and default["understanding"]["n_questions"] == 2
    assert record["scores"]["best_of_1"]["generation"] == once["generation"]
    assert {t.dtype for t in weights(model).values()} == {torch.float16}
    assert "_name_or_path" not in json.loads((model / "vae" / "config.json").read_text())
    from janusflow.pipeline import JanusFlowPipeline
    from janusflow.understanding import JanusFlowChat

    assert JanusFlowPipeline.from_pretrained(model).vae is not None
    assert isinstance(JanusFlowChat.from_pretrained(model).ask([], "how many shapes are there?", max_new_tokens=3), str)
    # the parts: fp16 VAE with its measured scale, the tokenizer, the SigLIP tower, the LLM
    from diffusers import AutoencoderKL
    from transformers import AutoTokenizer, LlamaForCausalLM, SiglipVisionModel

    parts = out / "parts"
    assert {t.dtype for t in load_file(parts / "vae" / "diffusion_pytorch_model.safetensors").values()} == {torch.float16}
    vae_record = record["stages"]["vae"]["result"]
    assert AutoencoderKL.from_pretrained(parts / "vae").config.scaling_factor == pytest.approx(vae_record["scaling_factor"])
    tokenizer = AutoTokenizer.from_pretrained(parts / "tokenizer")
    assert tokenizer.decode(tokenizer.encode("a red circle", add_special_tokens=False)) == "a red circle"
    encoder = SiglipVisionModel.from_pretrained(parts / "und_encoder")
    assert encoder(pixel_values=torch.zeros(1, 3, 64, 64, dtype=encoder.dtype)).last_hidden_state.shape[1] == 16
    assert LlamaForCausalLM.from_pretrained(parts / "llm").config.vocab_size == len(tokenizer)
    # each stage trained as configured: unified in two evaluated segments; the contrastive stage's own settings
    stages = out / "stages"
    assert [json.loads(line)["step"] for line in (stages / "unified" / "eval.jsonl").read_text().splitlines()] == [1, 2]
    contrast = (stages / "contrast" / "config.yaml").read_text()
    assert "negative_weight: 5.0" in contrast and "repa_weight: 0.0" in contrast and "relation: 8.0" in contrast
    assert "repa_weight: 1.0" in (stages / "sft" / "config.yaml").read_text()
    # the soup is the mean of its two ingredients
    a, b, s = (weights(stages / n / json.loads((stages / n / "DONE.json").read_text())["model"])
               for n in ("contrast_a", "contrast_b", "soup"))
    key = "language_model.lm_head.weight"
    assert torch.allclose(s[key], (a[key] + b[key]) / 2)
    # a finished run: the same command again runs nothing
    capsys.readouterr()
    assert recipe(out) == 0
    assert capsys.readouterr().out.count("done already") == len(STAGES)
    sessions = (out / "sessions.jsonl").read_text().splitlines()
    assert len(sessions) == 2 and json.loads(sessions[-1])["ran"] == []


def test_a_stopped_run_continued_equals_one_run_and_a_pack_moves_it(smoke_run, tmp_path, capsys):
    out, pack_dir = tmp_path / "run", tmp_path / "pack"
    assert recipe(out, "--until", "lm", "--pack", str(pack_dir)) == 0
    assert "stopped after lm (--until)" in capsys.readouterr().out
    record = json.loads((out / "recipe.json").read_text())
    assert not record["complete"] and [s for s in STAGES if record["stages"][s]["status"] == "done"] == STAGES[:4]
    # a pack holds the records and the parts a later stage reads, never a checkpoint
    files = sorted(pack_dir.glob("recipe.tar.*"))
    assert files and all(f.stat().st_size <= 15 * 2**20 for f in files)
    with tarfile.open(fileobj=io.BytesIO(b"".join(f.read_bytes() for f in files))) as tar:
        members = tar.getnames()
    assert "config.yaml" in members and "parts/llm/model.safetensors" in members
    assert "stages/lm/DONE.json" in members and not any("checkpoints" in m for m in members)
    # another folder (another machine) goes on from the pack: its adaptation equals the one-run's
    moved = tmp_path / "moved"
    assert recipe(moved, "--unpack", str(pack_dir), "--only", "adapt") == 0
    assert same_weights(moved / "stages" / "adapt" / "export", smoke_run / "stages" / "adapt" / "export")
    # the first folder: a session with a deadline stops (at a stage's end or inside its training), the
    # next one finishes, and the model is the uninterrupted run's, bit for bit
    assert recipe(out, "--time-limit", "1.5") == 0
    assert "stopped" in json.loads((out / "sessions.jsonl").read_text().splitlines()[-1])["ended"]
    assert recipe(out) == 0
    record = json.loads((out / "recipe.json").read_text())
    assert record["complete"] and len(record["sessions"]) == 3
    assert same_weights(out / "model", smoke_run / "model")
    for name in ("eval_shapes.json", "eval_shapes_best_of_1.json"):
        ours, theirs = (json.loads((d / "model" / name).read_text()) for d in (out, smoke_run))
        assert (ours["generation"], ours["understanding"]) == (theirs["generation"], theirs["understanding"])


def test_redo_forgets_a_stage_and_every_later_one(smoke_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(smoke_run, out)
    before = (out / "model" / "model.safetensors").read_bytes()
    assert recipe(out, "--redo", "assemble", "--until", "assemble") == 0
    record = json.loads((out / "recipe.json").read_text())
    assert record["stages"]["assemble"]["status"] == "done" and record["stages"]["eval"]["status"] == "pending"
    assert not list((out / "model").glob("eval_shapes*.json")) and record["stages"]["soup"]["status"] == "done"
    assert (out / "model" / "model.safetensors").read_bytes() == before  # the same soup, assembled again


def test_the_train_stage_stops_at_a_deadline_inside_training_and_resumes_exactly(tmp_path):
    from janusflow.shapes.recipe.config import StageSpec
    from janusflow.shapes.recipe.run import Stopped, train_stage
    from janusflow.shapes.recipe.vae import TINY_VAE, VAETask

    spec = StageSpec(kind="vae", steps=30, segment=30, batch_size=2, lr=1e-3, warmup_steps=1, save_every=1000)

    def run(folder: Path, deadline: float | None = None):
        torch.manual_seed(0)
        task = VAETask(TINY_VAE, batch_size=2, seed=3, scale_scenes=4)
        return train_stage("vae", task, spec, folder, lambda e: {"score": 0.0}, "score", {}, deadline=deadline)

    with pytest.raises(Stopped, match="stopped at step"):
        run(tmp_path / "stopped", deadline=time.monotonic() + 0.3)
    from janusflow.train.checkpointing import latest_checkpoint

    assert 0 < int(latest_checkpoint(tmp_path / "stopped").name.split("-")[-1]) < 30  # inside the training
    export, last = run(tmp_path / "stopped")
    assert last["step"] == 30
    whole, _ = run(tmp_path / "whole")
    a = load_file(export / "diffusion_pytorch_model.safetensors")
    b = load_file(whole / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(Stopped, match="time is up"):
        run(tmp_path / "late", deadline=time.monotonic() - 1)


def test_configs_that_cannot_run_are_refused_in_one_line(smoke_run, tmp_path, capsys):
    def error(*args: str) -> str:
        capsys.readouterr()
        assert recipe(tmp_path / "bad", *args) == 1
        err = capsys.readouterr().err
        assert err.startswith("janusflow: error: ") and err.count("\n") == 1
        return err

    assert "stages.adapt: unknown key(s) ['stepz']" in error("--set", "stages.adapt.stepz=3")
    assert "kind must be one of" in error("--set", "stages.adapt.kind=diffusion")
    assert "start must be" in error("--set", "stages.adapt.start=sft")
    assert "two or more" in error("--set", "stages.soup.models=[contrast_a]")
    assert "repa_weightt" in error("--set", "stages.sft.training={repa_weightt: 0}")
    assert "no stage 'nothing'" in error("--until", "nothing")
    assert "contrast needs sft" in error("--only", "contrast")
    capsys.readouterr()
    assert recipe(smoke_run, "--seed", "1") == 1  # a folder keeps the recipe it was started with
    assert "another recipe (seed: 0 then, 1 now)" in capsys.readouterr().err


def test_a_config_starts_from_another_and_names_only_what_it_changes(tmp_path):
    smoke = load_recipe(SMOKE)
    full = load_recipe(REPO_CONFIGS / "shapes.yaml")
    assert list(smoke.stages) == list(full.stages)  # the smoke preset is the recipe, smaller
    assert smoke.stages["contrast"].training == full.stages["contrast"].training
    assert smoke.stage_training("contrast").negative_weight == 5 and smoke.stage_training("sft").negative_weight == 0
    assert smoke.stages["unified"].lr == full.stages["unified"].lr and smoke.stages["unified"].steps == 2
    (tmp_path / "ablation.yaml").write_text(f"base: {SMOKE}\ntraining: {{repa_weight: 0}}\n")
    ablation = load_recipe(tmp_path / "ablation.yaml", ["stages.unified.steps=5", "seed=3"])
    assert ablation.training.repa_weight == 0 and ablation.training.repa_layer == 1
    assert ablation.stages["unified"].steps == 5 and ablation.seed == 3
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="include each other"):
        load_recipe(tmp_path / "a.yaml")
