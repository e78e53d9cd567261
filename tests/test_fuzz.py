"""Fuzz campaign (hypothesis) over the package's entry points. Every input must end in a result or a
clear error (a ``janusflow.errors.JanusFlowError``, a one-line CLI error, or a 4xx) -- never another
exception, a traceback or a hang (each input runs under a wall-clock alarm).

Entry points (image loading: tests/test_fuzz_images.py): prompts and questions (empty, whitespace, control characters,
lone surrogates, very long), prompt files with non-UTF-8 bytes, command-line arguments, config files,
checkpoint folders (missing/extra keys, wrong shapes and dtypes, a pickle posing as weights, truncated
files) and HTTP requests (today's routes and the OpenAI-compatible ones, streamed answers included). The number of inputs tried is printed at the end of the run.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from fuzzing import FUZZ, STATUSES, TRIED, alarm, encoded_images, report_inputs_tried  # noqa: F401  (autouse)
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from janusflow.checkpoint import load_model
from janusflow.config import JanusFlowConfig
from janusflow.errors import InputError, JanusFlowError
from janusflow.serve.tiny_model import build_tiny_model_folder

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model_folder(tmp_path_factory.mktemp("tiny-model"))


# =========================================================================================================
# Prompts and questions

LONE_SURROGATES = ["\ud800", "\udfff", "a\udc80b"]
SPECIAL = ["<image_placeholder>", "<begin_of_image>", "<end_of_image>", "<｜begin▁of▁generation｜>",
           "<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>", "<｜▁pad▁｜>", "User:", "\n\nAssistant:"]
texts = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), max_size=40),
    st.sampled_from(["", " ", "\t\n\r", "\x00", "\u202e", "\ufeff"] + LONE_SURROGATES + SPECIAL),
    st.lists(st.sampled_from(SPECIAL + ["a", " ", "\x00"] + LONE_SURROGATES), max_size=6).map("".join),
    st.integers(0, 4000).map(lambda n: "long " * n),
)


@pytest.fixture(scope="module")
def engine(tiny_dir):
    from janusflow.serve.engine import ModelEngine

    return ModelEngine.from_folder(tiny_dir)


def test_fuzz_generation_prompts_in_the_processor(engine):

    @settings(FUZZ, max_examples=300)
    @given(prompt=texts)
    def run(prompt):
        TRIED["prompts (processor)"] += 1
        with alarm():
            try:
                ids = engine.processor.build_generation_batch([prompt], 2, guidance=True).input_ids
            except InputError:
                return
        assert ids.shape[0] == 4

    run()


def test_fuzz_prompts_and_questions_through_the_model(engine):

    @settings(FUZZ, max_examples=40)
    @given(text=texts)
    def run(text):
        TRIED["prompts and questions (model)"] += 1
        with alarm():
            for task in ("generate", "ask"):
                try:
                    if task == "generate":
                        images = engine.generate(text, 1, 1, 2.0, 0, "euler")
                        assert len(images) == 1 and images[0].mode == "RGB"
                    else:
                        assert isinstance(engine.ask(Image.new("RGB", (8, 8)), text, 3), str)
                except JanusFlowError:
                    pass

    run()


# =========================================================================================================
# Files given to the command line: prompts and questions with any bytes


PROMPT_FILES = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from([b'{"prompt": "a cat"}', b'{"prompt": 5}', b"\xff\xfe", b"[]", b"{",
                              b'{"prompt": "\\ud800"}', b"\n", b'{"prompt": ""}', "{\"prompt\": \"\u00e9\"}".encode("latin-1")]),
             max_size=5).map(b"\n".join))


def test_fuzz_prompt_files(tmp_path):
    from janusflow.pipeline import read_geneval_metadata

    path = tmp_path / "metadata.jsonl"

    @settings(FUZZ, max_examples=80)
    @given(data=PROMPT_FILES)
    def run(data):
        TRIED["prompt files"] += 1
        path.write_bytes(data)
        with alarm():
            try:
                entries = read_geneval_metadata(path)
            except InputError:
                return
        assert entries and all(isinstance(obj["prompt"], str) for _, obj in entries)

    run()


# =========================================================================================================
# Command-line arguments

COMMANDS = ["generate", "ask", "chat", "parity", "serve", "nope", "--help", "-h", ""]
OPTIONS = ["--steps", "--cfg", "--seed", "--n-samples", "--solver", "--schedule", "--batch-size", "--out",
           "--model", "--vae", "--device", "--dtype", "--max-new-tokens", "--temperature", "--top-p",
           "--question-file", "--answers-file", "--image-folder", "--geneval-metadata", "--port", "--host",
           "--limit", "--image", "--no-stream", "--log-level", "--api-key", "--allow-remote-images", "--model-id"]
VALUES = ["0", "-1", "1", "nan", "inf", "1e309", "abc", "", " ", "\x00", "euler", "rk4", "cuda", "cpu", "bf16",
          "max_steps=0", "max_steps=abc", "x=1", "/nonexistent", "99999", "-5", "\udcff"]


@settings(FUZZ, max_examples=150)
@given(command=st.sampled_from(COMMANDS),
       rest=st.lists(st.one_of(st.sampled_from(OPTIONS), st.sampled_from(VALUES), st.text(max_size=8)), max_size=8),
       model=st.sampled_from(["missing", "broken"]))
def test_fuzz_cli_arguments(command, rest, model, tmp_path_factory, monkeypatch):
    from janusflow.cli import main

    TRIED["command lines"] += 1
    folder = tmp_path_factory.mktemp("cli")
    (folder / "broken").mkdir()
    (folder / "broken" / "config.json").write_text("{not json")
    # The model is always missing or broken, so no command can start real work (or a server).
    argv = [command, *[a for a in rest if a != "--model"], "--model", str(folder / model)]
    # Streams like a terminal's (Python's stderr uses backslashreplace: argv may hold surrogate escapes).
    err, out = (io.TextIOWrapper(io.BytesIO(), "utf-8", errors="backslashreplace") for _ in range(2))
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setattr("sys.stdout", out)
    with alarm():
        code = main([a for a in argv if a != ""] if command else rest)
    err.flush(), out.flush()
    err_text, out_text = (s.buffer.getvalue().decode() for s in (err, out))
    monkeypatch.undo()
    assert code in (0, 1, 2), code
    assert "Traceback" not in err_text and "Traceback" not in out_text
    if code != 0:
        assert err_text.strip(), "a failure must say why"
        assert len(err_text.strip().split("\n")) <= 3, err_text
        assert all(c.isprintable() for c in err_text.strip().replace("\n", "")), err_text


# =========================================================================================================
# Config files

config_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.floats(allow_nan=True), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)
SECTIONS = {"language": ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                         "num_key_value_heads", "rms_norm_eps", "tie_word_embeddings"],
            "und_vision": ["image_size", "patch_size", "width", "num_heads"],
            "gen_vision": ["latent_channels", "latent_size", "kernel_size", "stride", "upsamples"]}


@st.composite
def config_documents(draw):
    base = JanusFlowConfig.from_name("tiny").to_dict()
    kind = draw(st.sampled_from(["mutate", "mutate", "random", "official", "bytes"]))
    if kind == "bytes":
        return draw(st.one_of(st.binary(max_size=100), st.just(b"\xff\xfe{}"), st.just(b"")))
    if kind == "random":
        return json.dumps(draw(config_values)).encode()
    if kind == "official":
        document = {"language_config": draw(config_values), "vision_und_enc_config": draw(config_values),
                    "vision_gen_enc_config": draw(config_values)}
        return json.dumps(document).encode()
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(SECTIONS)))
        key = draw(st.sampled_from(SECTIONS[section] + ["unknown_key"]))
        base[section][key] = draw(st.one_of(config_values, st.integers(-3, 3)))
    if draw(st.booleans()):
        base["model_type"] = draw(st.sampled_from(["janusflow", "llama", 3]))
    return json.dumps(base).encode()


def test_fuzz_config_files(tmp_path):
    from janusflow.checkpoint import read_config

    (tmp_path / "model").mkdir()
    file = tmp_path / "model" / "config.json"

    @settings(FUZZ, max_examples=250)
    @given(document=config_documents())
    def run(document):
        TRIED["config files"] += 1
        file.write_bytes(document)
        with alarm():
            try:
                JanusFlowConfig.load(file).validate()
            except JanusFlowError:
                pass
            try:
                config, _ = read_config(file.parent)
            except JanusFlowError:
                return
        assert isinstance(config, JanusFlowConfig)

    run()


# =========================================================================================================
# Checkpoint folders


class Marker:
    """Unpickling this creates a file: proof that a pickle was (or was not) executed."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


@st.composite
def checkpoint_damage(draw):
    return draw(st.sampled_from(["drop-key", "extra-key", "shape", "dtype-int", "dtype-half", "dtype-bool",
                                 "pickle-as-weights", "pickle-bin-only", "truncate", "garbage", "empty-file",
                                 "bad-index", "index-missing-shard", "nan-weights"])), draw(st.integers(0, 10**6))


@settings(FUZZ, max_examples=60)
@given(damage=checkpoint_damage())
def test_fuzz_checkpoint_folders(damage, tiny_dir, tmp_path_factory):
    from safetensors.torch import load_file, save_file

    TRIED["checkpoint folders"] += 1
    kind, pick = damage
    folder = tmp_path_factory.mktemp("ckpt")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "processor_config.json"):
        if (tiny_dir / name).exists():
            shutil.copy(tiny_dir / name, folder / name)
    state = load_file(tiny_dir / "model.safetensors")
    keys = sorted(state)
    key = keys[pick % len(keys)]
    weights = folder / "model.safetensors"
    marker = folder / "pickle-ran"
    Marker.path = str(marker)
    if kind == "drop-key":
        del state[key]
    elif kind == "extra-key":
        state["surprise.weight"] = torch.zeros(2)
    elif kind == "shape":
        state[key] = torch.zeros(*state[key].shape, 2)
    elif kind == "dtype-int":
        state[key] = state[key].to(torch.int64)
    elif kind == "dtype-half":
        state[key] = state[key].to(torch.float16)
    elif kind == "dtype-bool":
        state[key] = state[key] > 0
    elif kind == "nan-weights":
        state[key] = torch.full_like(state[key], float("nan"))
    if kind in ("pickle-as-weights", "pickle-bin-only"):
        target = weights if kind == "pickle-as-weights" else folder / "pytorch_model.bin"
        target.write_bytes(pickle.dumps({"weights": Marker()}))
    elif kind in ("truncate", "garbage", "empty-file"):
        save_file(state, str(weights))
        data = weights.read_bytes()
        weights.write_bytes({"truncate": data[: pick % len(data)], "garbage": os.urandom(pick % 500),
                             "empty-file": b""}[kind])
    elif kind in ("bad-index", "index-missing-shard"):
        save_file(state, str(folder / "part-1.safetensors"))
        index = {"weight_map": {k: "part-1.safetensors" for k in keys}} if kind == "index-missing-shard" else [1]
        if kind == "index-missing-shard":
            index["weight_map"][key] = "part-2.safetensors"
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        save_file(state, str(weights))
    with alarm():
        try:
            model = load_model(folder)
        except JanusFlowError:
            model = None
    assert not marker.exists(), "a pickle was unpickled"
    if kind in ("drop-key", "extra-key", "shape", "dtype-int", "dtype-bool", "pickle-as-weights", "pickle-bin-only",
                "garbage", "empty-file", "bad-index", "index-missing-shard"):
        assert model is None, f"{kind} was accepted"
    if kind == "dtype-half":
        assert model is not None and model.dtype == torch.float32


# =========================================================================================================
# HTTP requests (the schemathesis test drives the spec; this one sends real images and raw bytes)


@pytest.fixture(scope="module")
def client(engine):
    from fastapi.testclient import TestClient

    from janusflow.serve.app import create_app
    from janusflow.serve.limits import ServeLimits

    limits = ServeLimits(max_steps=3, max_images_per_request=2, max_new_tokens=4, max_image_bytes=30_000,
                         max_image_pixels=100 * 100, max_body_bytes=60_000, request_timeout_s=30, max_choices=2,
                         max_chat_images=2)
    engine.model_id = "tiny"
    with TestClient(create_app(engine, limits, ui=False)) as http:
        yield http


json_values = st.one_of(st.none(), st.booleans(), st.integers(-2, 2**70), st.floats(), st.text(max_size=20),
                        st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def usually(draw, valid, other):
    """``valid`` about nine times in ten, else a draw from ``other``: a body of a dozen fields then often gets
    past validation to the model. (The valid case is hypothesis' simplest draw, 0, which it favours.)"""
    return draw(other) if draw(st.integers(0, 9)) == 9 else valid


def image_urls(draw) -> str:
    data, *_ = draw(encoded_images())
    encoded = base64.b64encode(data).decode()
    return usually(draw, f"data:image/png;base64,{encoded}", st.sampled_from([
        f"data:image/jpeg;base64,{encoded}", f"data:;base64,{encoded}", f"data:image/png,{encoded}", encoded,
        "https://127.0.0.1:9/x.png", "file:///etc/passwd", "data:image/png;base64,"]))


def user_content(draw):
    if not draw(st.booleans()):
        return usually(draw, "What is this?", st.one_of(texts, json_values))
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()):
            parts.append({"type": "image_url", "image_url": {"url": image_urls(draw), **usually(
                draw, {}, st.sampled_from([{"detail": "low"}, {"detail": 1}, {"x": 2}]))}})
        else:
            parts.append({"type": usually(draw, "text", st.sampled_from(["input_audio", "image", 3])),
                          "text": usually(draw, "What is this?", texts)})
    return parts


@st.composite
def chat_messages(draw):
    if draw(st.integers(0, 2)) != 2:  # a well-formed conversation: system?, then user / assistant turns, user last
        messages = [{"role": "system", "content": usually(draw, "Be brief.", texts)}] if draw(st.booleans()) else []
        for _ in range(draw(st.integers(0, 2))):
            messages += [{"role": "user", "content": user_content(draw)},
                         {"role": "assistant", "content": usually(draw, "a red circle", texts)}]
        return messages + [{"role": "user", "content": user_content(draw)}]
    roles = st.sampled_from(["user", "assistant", "system", "developer", "tool", "", None])
    return [{"role": draw(roles), "content": user_content(draw)} for _ in range(draw(st.integers(0, 4)))]


@st.composite
def requests(draw):
    route = draw(st.sampled_from(["/v1/generate", "/v1/ask", "/health", "/v1/other", "/", "/v1/chat/completions",
                                  "/v1/chat/completions", "/v1/images/generations", "/v1/models", "/v1/models/x"]))
    if draw(st.integers(0, 9)) == 0:
        return route, draw(st.binary(max_size=200)), "raw"
    if route == "/v1/ask":
        data, *_ = draw(encoded_images())
        body = {"image": draw(st.sampled_from([base64.b64encode(data).decode(), "data:image/png;base64," +
                                               base64.b64encode(data).decode(), data.hex()])),
                "question": draw(st.one_of(st.just("What is this?"), texts)),
                "max_new_tokens": draw(st.one_of(st.just(2), st.integers(-1, 6), json_values))}
    elif route == "/v1/chat/completions":
        body = {"messages": usually(draw, draw(chat_messages()), json_values),
                "model": usually(draw, None, st.sampled_from(["tiny", "gpt-4o", "", 3])),
                "temperature": usually(draw, draw(st.sampled_from([0, 0.7, 1.0])), st.one_of(st.floats(-1, 3), json_values)),
                "top_p": usually(draw, draw(st.sampled_from([1, 0.9, 0])), st.one_of(st.floats(-0.5, 1.5), json_values)),
                draw(st.sampled_from(["max_tokens", "max_completion_tokens"])):
                    usually(draw, draw(st.integers(1, 4)), st.one_of(st.integers(-1, 6), json_values)),
                "n": usually(draw, draw(st.integers(1, 2)), st.one_of(st.integers(0, 3), json_values)),
                "stop": usually(draw, None, st.one_of(texts, st.lists(texts, max_size=5), json_values)),
                "seed": usually(draw, draw(st.integers(0, 9)), st.one_of(st.none(), st.integers(-2**64, 2**65), json_values)),
                "stream": usually(draw, draw(st.booleans()), json_values),
                "stream_options": usually(draw, None, st.sampled_from([{"include_usage": True}, {"x": 1}, 3])),
                "frequency_penalty": usually(draw, 0, st.sampled_from([0.0, 1, None, "0"])),
                "logprobs": usually(draw, False, st.sampled_from([True, None])),
                "tools": usually(draw, [], st.sampled_from([None, [{"type": "function"}]]))}
    elif route == "/v1/images/generations":
        body = {"prompt": usually(draw, "a red circle", texts),
                "n": usually(draw, 1, st.one_of(st.integers(0, 3), json_values)),
                "size": usually(draw, "32x32", st.sampled_from([None, "64x64", "auto", "", 32])),
                "response_format": usually(draw, "b64_json", st.sampled_from([None, "url", 1])),
                "num_inference_steps": usually(draw, 1, st.one_of(st.integers(0, 4), json_values)),
                "guidance_scale": usually(draw, 2.0, st.one_of(st.floats(-1, 25), json_values)),
                "seed": draw(st.one_of(st.integers(-1, 2**64), st.none())),
                "user": usually(draw, None, st.sampled_from(["u", 5]))}
    else:
        body = {"prompt": draw(st.one_of(st.just("a red circle"), texts)),
                draw(st.sampled_from(["num_images", "num_images_per_prompt"])):
                    draw(st.one_of(st.just(1), st.integers(0, 3), json_values)),
                draw(st.sampled_from(["steps", "num_inference_steps"])):
                    draw(st.one_of(st.just(1), st.integers(0, 4), json_values)),
                "guidance_scale": draw(st.one_of(st.just(2.0), st.floats(-1, 25), json_values)),
                "seed": draw(st.one_of(st.integers(-1, 2**64), st.none())),
                "solver": draw(st.sampled_from(["euler", "heun", "midpoint", "rk4", ""]))}
        if draw(st.booleans()):  # the old and the new name together, agreeing or not
            body["steps" if "num_inference_steps" in body else "num_inference_steps"] = draw(st.integers(0, 4))
    for name in draw(st.lists(st.sampled_from(sorted(body)), max_size=2)):
        body.pop(name, None)
    if draw(st.integers(0, 3)) == 0:
        body[draw(st.text(max_size=5))] = draw(json_values)
    return route, body, "json"


def check_event_stream(text: str) -> None:
    """A streamed chat completion: JSON chunks, then [DONE] (or an error event last)."""
    events = [line[len("data: "):] for line in text.splitlines() if line]
    assert events and all(line.startswith("data: ") for line in text.splitlines() if line), text[:300]
    if events[-1] != "[DONE]":
        assert set(json.loads(events[-1])["error"]) == {"message", "type", "param", "code"}
        events = events[:-1]
    else:
        events = events[:-1]
    for event in events:
        assert json.loads(event)["object"] == "chat.completion.chunk"


@settings(FUZZ, max_examples=300)
@given(request_=requests())
def test_fuzz_http_requests(client, request_):
    route, body, kind = request_
    TRIED["HTTP requests"] += 1
    with alarm():
        if kind == "raw":
            response = client.post(route, content=body, headers={"content-type": "application/json"})
        else:
            try:
                payload = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
            except (ValueError, TypeError):
                assume(False)
            method = "GET" if route == "/health" or route.startswith("/v1/models") else "POST"
            response = client.request(method, route, content=payload, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    streamed = response.headers.get("content-type", "").startswith("text/event-stream")
    STATUSES[f"{route} {response.status_code}{' stream' if streamed else ''}"] += 1
    if streamed:
        assert response.status_code == 200
        check_event_stream(response.text)
    elif route in ("/v1/generate", "/v1/ask") and response.status_code >= 400:
        error = response.json()
        assert set(error) == {"error", "field"} and error["error"]
    elif route.startswith("/v1/") and response.status_code >= 400:  # the OpenAI-compatible routes
        error = response.json()
        assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}
        assert error["error"]["message"] and error["error"]["type"]
