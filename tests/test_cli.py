"""The ``janusflow`` command, run in-process (``janusflow.cli.main``) on a tiny model folder: parity,
generate (plain and GenEval layouts), ask (one question and the LLaVA layout), chat, the default
model, and one-line errors with a non-zero exit for each kind of bad input."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from inference_helpers import make_model_folder
from janusflow import pipeline as pipeline_module
from janusflow.cli import main
from janusflow.pipeline import JanusFlowPipeline
from janusflow.understanding import JanusFlowChat

FIXTURE = Path(__file__).parent / "fixtures" / "parity-small"



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("cli") / "tiny-model")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- parity ---------------------------------------------------------------------------------------------

def test_parity_passes_on_the_fixture(capsys):
    code, out, _ = run(capsys, "parity", FIXTURE)
    lines = out.strip().splitlines()
    assert code == 0 and lines[-1].startswith("27/27")  # case (c) also through the pipeline's Euler scheduler
    assert any(line.startswith("gen.z_final@scheduler ") and line.endswith("ok") for line in lines)
    assert any(line.startswith("gen.z_final ") and line.endswith("ok") for line in lines)


def test_parity_fails_on_a_wrong_fixture(capsys, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(FIXTURE, bad)
    cases = load_file(str(bad / "cases.safetensors"))
    cases["gen.z_final"] = cases["gen.z_final"] + 1e-3
    save_file(cases, str(bad / "cases.safetensors"))
    code, out, _ = run(capsys, "parity", bad)
    assert code == 1
    failed = [line for line in out.splitlines() if line.endswith("FAIL")]
    assert len(failed) == 3 and all(line.startswith("gen.z_final") for line in failed)  # @cached, @scheduler


# -- generate -------------------------------------------------------------------------------------------

def test_generate_writes_pngs(capsys, model_dir, tmp_path):
    code, out, err = run(capsys, "generate", "a red circle", "--out", tmp_path / "o", "--model", model_dir,
                         "--steps", 2, "--n-samples", 2, "--seed", 5, "--cfg", 3.0)
    assert code == 0, err
    paths = [tmp_path / "o" / "0000.png", tmp_path / "o" / "0001.png"]
    assert out.split() == [str(p) for p in paths]
    pipe = JanusFlowPipeline.from_pretrained(model_dir, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a red circle", num_inference_steps=2, guidance_scale=3.0, num_images_per_prompt=2,
                    generator=5).images
    for path, image in zip(paths, expected):
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(image))


def test_generate_new_flag_names_equal_the_old_spellings(capsys, model_dir, tmp_path):
    old = run(capsys, "generate", "a red circle", "--out", tmp_path / "old", "--model", model_dir,
              "--steps", 2, "--n-samples", 2, "--cfg", 3.0)
    new = run(capsys, "generate", "a red circle", "--out", tmp_path / "new", "--model", model_dir,
              "--num-inference-steps", 2, "--num-images-per-prompt", 2, "--guidance-scale", 3.0)
    assert old[0] == new[0] == 0
    for k in range(2):
        assert (tmp_path / "old" / f"000{k}.png").read_bytes() == (tmp_path / "new" / f"000{k}.png").read_bytes()


def test_generate_negative_prompt_and_guidance_interval(capsys, model_dir, tmp_path):
    pipe = JanusFlowPipeline.from_pretrained(model_dir, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    code, _, err = run(capsys, "generate", "a red circle", "--out", tmp_path / "o", "--model", model_dir,
                       "--num-inference-steps", 3, "--negative-prompt", "a blue square",
                       "--guidance-interval", 0.2, 0.8)
    assert code == 0, err
    expected = pipe("a red circle", num_inference_steps=3, negative_prompt="a blue square", guidance_interval=(0.2, 0.8),
                    generator=0).images[0]
    plain = pipe("a red circle", num_inference_steps=3, generator=0).images[0]
    got = np.asarray(Image.open(tmp_path / "o" / "0000.png"))
    assert np.array_equal(got, np.asarray(expected)) and not np.array_equal(got, np.asarray(plain))
    code, _, err = run(capsys, "generate", "x", "--out", tmp_path / "o2", "--model", model_dir,
                       "--guidance-interval", 0.8, 0.2)
    assert code == 1 and "guidance_interval" in err
    code, _, err = run(capsys, "generate", "x", "--out", tmp_path / "o3", "--model", model_dir,
                       "--candidates", 2, "--judge", "nobody")
    assert code == 1 and "no judge named 'nobody'" in err


def test_version(capsys):
    from janusflow import __version__

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"janusflow {__version__}"


def test_help_names_the_new_flags_and_their_aliases(capsys):
    for command in (["generate"], ["demo"], ["eval", "shapes"]):
        code, out, _ = run(capsys, *command, "--help")
        flat = " ".join(out.split())
        assert code == 0
        assert "--num-inference-steps N, --steps N" in flat, command
        if command != ["demo"]:
            assert "--guidance-scale W, --cfg W" in flat, command
    assert "--num-images-per-prompt K, --n-samples K" in " ".join(run(capsys, "generate", "--help")[1].split())
    assert "--num-images-per-prompt K, --images-per-prompt K" in " ".join(run(capsys, "eval", "shapes", "--help")[1].split())


def test_eval_shapes_takes_the_sampler_flags(capsys, model_dir, tmp_path):
    code, _, err = run(capsys, "eval", "shapes", "--model", model_dir, "--out", tmp_path / "e", "--prompts-per-category",
                       1, "--num-images-per-prompt", 1, "--questions", 2, "--num-inference-steps", 1,
                       "--guidance-scale", 1.5, "--threads", 1, "--candidates", 1)
    assert code == 0, err
    settings = json.loads((tmp_path / "e" / "results.json").read_text())["settings"]
    assert (settings["num_inference_steps"], settings["guidance_scale"], settings["images_per_prompt"]) == (1, 1.5, 1)
    assert run(capsys, "eval", "shapes", "--model", model_dir, "--out", tmp_path / "e2", "--steps", 0)[0] == 1


def test_generate_geneval_layout(capsys, model_dir, tmp_path):
    lines = ['{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}',
             '{"tag": "colors", "prompt": "a photo of a blue dog"}']
    meta = tmp_path / "evaluation_metadata.jsonl"
    meta.write_text("\n".join(lines) + "\n")
    out_dir = tmp_path / "geneval"
    code, out, err = run(capsys, "generate", "--geneval-metadata", meta, "--out", out_dir, "--n-samples", 3,
                         "--model", model_dir, "--steps", 1)
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir() if p.is_dir()) == ["00000", "00001"]
    for i, line in enumerate(lines):
        folder = out_dir / f"{i:05d}"
        assert (folder / "metadata.jsonl").read_text().strip() == line
        assert json.load(open(folder / "metadata.jsonl")) == json.loads(line)  # GenEval reads it with json.load
        names = sorted(p.name for p in (folder / "samples").iterdir())
        assert names == ["0000.png", "0001.png", "0002.png"]
        assert Image.open(folder / "samples" / "0002.png").size == (16, 16)


# -- ask and chat ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat(model_dir):
    return JanusFlowChat.from_pretrained(model_dir, device="cpu")


@pytest.mark.parametrize("stream", [True, False])
def test_ask_prints_the_answer(capsys, model_dir, image, chat, stream):
    flags = [] if stream else ["--no-stream"]
    code, out, err = run(capsys, "ask", image, "What color is it?", "--model", model_dir, "--max-new-tokens", 6,
                         *flags)
    assert code == 0, err
    expected = chat.ask([image], "What color is it?", max_new_tokens=6)
    assert expected and out == expected + "\n"


def test_ask_llava_layout(capsys, model_dir, image, chat, tmp_path):
    questions = [{"question_id": i, "image": image.name, "text": q}
                 for i, q in enumerate(["What color?", "How many shapes are there?", "Describe it."])]
    qfile = tmp_path / "questions.jsonl"
    qfile.write_text("".join(json.dumps(q) + "\n" for q in questions))
    answers_file = tmp_path / "answers" / "a.jsonl"
    code, out, err = run(capsys, "ask", "--question-file", qfile, "--image-folder", image.parent,
                         "--answers-file", answers_file, "--model", model_dir, "--batch-size", 2,
                         "--max-new-tokens", 4)
    assert code == 0, err
    answers = [json.loads(line) for line in answers_file.read_text().splitlines()]
    assert [list(a) for a in answers] == [["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]] * 3
    assert [a["question_id"] for a in answers] == [0, 1, 2] and answers[0]["model_id"] == "tiny-model"
    assert answers[1]["text"] == chat.ask([image], "How many shapes are there?", max_new_tokens=4)


def test_chat_session(capsys, model_dir, image, chat, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"/image {image}\nWhat color?\n\n/image /nope.png\nAnd now?\n"))
    code, out, err = run(capsys, "chat", "--model", model_dir, "--max-new-tokens", 4)
    assert code == 0
    first = chat.ask([image], "What color?", max_new_tokens=4)
    assert out.startswith("Assistant: " + first + "\n") and out.count("Assistant: ") == 2
    assert "image file not found: /nope.png" in err  # a bad image keeps the chat going


# -- the default model ----------------------------------------------------------------------------------

def test_no_default_model(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline_module, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    code, out, err = run(capsys, "generate", "a cat", "--out", tmp_path / "o")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "no default model is installed yet" in err and "--model" in err


def test_default_model_is_used(capsys, monkeypatch, model_dir, tmp_path, image):
    monkeypatch.setattr(pipeline_module, "DEFAULT_MODEL_DIR", model_dir)
    code, _, err = run(capsys, "generate", "a cat", "--out", tmp_path / "o", "--steps", 1)
    assert code == 0, err
    assert (tmp_path / "o" / "0000.png").is_file()
    code, out, err = run(capsys, "ask", image, "What?", "--max-new-tokens", 2)
    assert code == 0 and out.strip(), err


# -- bad input: one line, non-zero, no traceback --------------------------------------------------------

BAD = {
    "missing model": (["generate", "x", "--out", "{tmp}/o", "--model", "{tmp}/nope"], 1, "not found"),
    "missing image": (["ask", "{tmp}/missing.png", "What?", "--model", "{model}"], 1, "image file not found"),
    "unreadable image": (["ask", "{tmp}/broken.png", "What?", "--model", "{model}"], 1, "cannot read image"),
    "zero steps": (["generate", "x", "--out", "{tmp}/o", "--model", "{model}", "--steps", "0"], 1, "steps"),
    "negative steps": (["generate", "x", "--out", "{tmp}/o", "--model", "{model}", "--steps", "-2"], 1, "steps"),
    "non-integer steps": (["generate", "x", "--out", "{tmp}/o", "--steps", "abc"], 2, "invalid int"),
    "negative guidance": (["generate", "x", "--out", "{tmp}/o", "--model", "{model}", "--cfg", "-1"], 1, "guidance"),
    "empty prompt": (["generate", "  ", "--out", "{tmp}/o", "--model", "{model}"], 1, "empty"),
    "prompt past the context": (["generate", "word " * 600, "--out", "{tmp}/o", "--model", "{model}"], 1,
                                "max_length"),
    "no prompt": (["generate", "--out", "{tmp}/o", "--model", "{model}"], 1, "prompt"),
    "zero samples": (["generate", "x", "--out", "{tmp}/o", "--model", "{model}", "--n-samples", "0"], 1, "n-samples"),
    "unknown solver": (["generate", "x", "--out", "{tmp}/o", "--model", "{model}", "--solver", "rk9"], 1, "solver"),
    "missing metadata": (["generate", "--geneval-metadata", "{tmp}/none.jsonl", "--out", "{tmp}/o"], 1, "not found"),
    "bad metadata line": (["generate", "--geneval-metadata", "{tmp}/bad.jsonl", "--out", "{tmp}/o"], 1,
                          "bad.jsonl:2"),
    "long geneval prompt": (["generate", "--geneval-metadata", "{tmp}/long.jsonl", "--out", "{tmp}/o",
                             "--model", "{model}"], 1, "prompt 1"),
    "empty question": (["ask", "{image}", "  ", "--model", "{model}"], 1, "empty"),
    "question past the context": (["ask", "{image}", "word " * 600, "--model", "{model}"], 1, "max_length"),
    "missing question file": (["ask", "--question-file", "{tmp}/q.jsonl", "--answers-file", "{tmp}/a.jsonl",
                               "--model", "{model}"], 1, "not found"),
    "negative temperature": (["ask", "{image}", "What?", "--temperature", "-1"], 1, "temperature"),
    "no vae": (["generate", "x", "--out", "{tmp}/o", "--model", "{novae}"], 1, "VAE"),
    "missing fixture": (["parity", "{tmp}/nofixture"], 1, "not found"),
    "unknown command": (["frobnicate"], 2, "invalid choice"),
}


@pytest.fixture(scope="module")
def no_vae_dir(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("novae") / "m", with_vae=False)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_error(capsys, tmp_path, model_dir, no_vae_dir, image, case):
    argv, expected_code, needle = BAD[case]
    (tmp_path / "broken.png").write_text("not a png")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    long_lines = [json.dumps({"prompt": "ok"}), json.dumps({"prompt": "w " * 600})]
    (tmp_path / "long.jsonl").write_text("\n".join(long_lines) + "\n")
    argv = [a.format(tmp=tmp_path, model=model_dir, image=image, novae=no_vae_dir) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == expected_code
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and needle in lines[0], err
    assert not (tmp_path / "o").exists()  # nothing written


def test_help_and_module_entry_point(capsys):
    assert run(capsys, "--help")[0] == 0
    done = subprocess.run([sys.executable, "-m", "janusflow", "generate", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--geneval-metadata" in done.stdout


def test_seed_changes_images(capsys, model_dir, tmp_path):
    for seed in (0, 1):
        assert run(capsys, "generate", "a cat", "--out", tmp_path / str(seed), "--model", model_dir, "--steps", 1,
                   "--seed", seed)[0] == 0
    a, b = (np.asarray(Image.open(tmp_path / s / "0000.png")) for s in ("0", "1"))
    assert not np.array_equal(a, b)
    torch.manual_seed(0)  # the global RNG plays no part
    assert run(capsys, "generate", "a cat", "--out", tmp_path / "again", "--model", model_dir, "--steps", 1)[0] == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again" / "0000.png")), a)


def test_official_layout_with_separate_vae(capsys, model_dir, tmp_path):
    """--model reads the official layout (no vae/ inside, as the release); --vae names the VAE folder."""
    official = make_model_folder(tmp_path / "JanusFlow-official", official=True, with_vae=False)
    code, out, err = run(capsys, "generate", "a cat", "--out", tmp_path / "o", "--model", official,
                         "--vae", model_dir / "vae", "--steps", 1)
    assert code == 0, err
    assert Image.open(tmp_path / "o" / "0000.png").size == (96, 96)  # 48 x 48 latents, x2 tiny VAE
    code, out, err = run(capsys, "generate", "a cat", "--out", tmp_path / "o2", "--model", official, "--steps", 1)
    assert code == 1 and "--vae" in err and err.count("\n") == 1
