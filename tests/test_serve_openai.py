"""The OpenAI-compatible routes on a real tiny random model (in process): answers equal to the
library's for the same conversation (images, turns, system prompt), token counts, stop strings,
seeds, n choices, streaming that adds up to the whole answer, image generation, /v1/models, every
refusal as an OpenAI error object with its status and param, remote images (a local HTTP server),
the API key (header, the page's form and cookie), and the queue (429) and timeouts (504) with a
fake engine. The official `openai` package and `gradio_client` drive a live server in
tests/test_serve_clients.py.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import io
import json
import threading
import time

import httpx
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("gradio")

from fastapi.testclient import TestClient  # noqa: E402

from janusflow.processor import IMAGE_TOKEN  # noqa: E402
from janusflow.serve.app import create_app  # noqa: E402
from janusflow.serve.completion import TextWatcher, settled_length  # noqa: E402
from janusflow.serve.engine import ModelEngine  # noqa: E402
from janusflow.serve.limits import ServeLimits  # noqa: E402
from janusflow.serve.tiny_model import build_tiny_model_folder  # noqa: E402
from janusflow.understanding import DecodingConfig  # noqa: E402
from serve_helpers import BlockingFakeEngine  # noqa: E402


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def data_url(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


RED, BLUE = Image.new("RGB", (40, 30), (200, 20, 20)), Image.new("RGB", (24, 24), (10, 30, 220))
KEY = "s3cret-key"


def image_part(image: Image.Image) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(png(image))}}


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> ModelEngine:
    return ModelEngine.from_folder(build_tiny_model_folder(tmp_path_factory.mktemp("tiny-model")), model_id="tiny")


@pytest.fixture(scope="module")
def limits() -> ServeLimits:
    return ServeLimits(max_question_chars=300, max_image_bytes=50_000, max_image_pixels=200 * 200, max_steps=8,
                       max_images_per_request=3, max_new_tokens=16, max_body_bytes=200_000, max_chat_images=3,
                       max_choices=3, max_chat_messages=8, remote_image_timeout_s=1.0)


@pytest.fixture(scope="module")
def client(engine, limits):
    with TestClient(create_app(engine, limits, ui=False)) as c:
        yield c


def library_answer(engine, conversation, max_new_tokens, system_prompt=None):
    """The answer and prompt length JanusFlowChat gives for the same conversation."""
    default = engine.processor.system_prompt
    if system_prompt is not None:
        engine.processor.system_prompt = system_prompt
    try:
        result = engine.chat.generate([conversation], DecodingConfig(max_new_tokens=max_new_tokens))
    finally:
        engine.processor.system_prompt = default
    return engine.processor.decode(result.tokens[0]).strip(), result.prompt_length, len(result.tokens[0])


def chat(client, messages, **fields):
    response = client.post("/v1/chat/completions", json={"messages": messages, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def stream(client, messages, **fields) -> tuple[dict[int, str], dict[int, str], list[dict]]:
    """(text of each choice, finish reason of each choice, every chunk) of a streamed request."""
    with client.stream("POST", "/v1/chat/completions", json={"messages": messages, "stream": True, **fields}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    texts, reasons = {}, {}
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk" and chunk["id"] == chunks[0]["id"]
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["delta"].get("content", "")
            if choice["finish_reason"]:
                reasons[choice["index"]] = choice["finish_reason"]
    return texts, reasons, chunks


# -- answers ---------------------------------------------------------------------------------------------

def test_chat_with_an_image_answers_as_the_library(client, engine):
    messages = [{"role": "user", "content": [image_part(RED), {"type": "text", "text": "What is in the image?"}]}]
    data = chat(client, messages, max_tokens=8, model="tiny")
    conversation = [{"role": "User", "content": f"{IMAGE_TOKEN}\nWhat is in the image?", "images": [RED]}]
    answer, prompt_tokens, written = library_answer(engine, conversation, 8)
    assert data["object"] == "chat.completion" and data["model"] == "tiny" and data["id"].startswith("chatcmpl-")
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": answer, "refusal": None}
    assert choice["finish_reason"] == ("length" if written == 8 else "stop")
    # the prompt's tokens count the image's: boi + N image tokens + eoi
    text_only = engine.processor.encode_conversation(
        [{"role": "User", "content": "What is in the image?"}, {"role": "Assistant", "content": ""}])
    assert prompt_tokens - len(text_only.input_ids) == engine.processor.num_image_tokens + 2 + 1  # + the newline
    assert data["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": written + (written < 8),
                             "total_tokens": prompt_tokens + written + (written < 8)}


def test_several_images_turns_and_a_system_prompt(client, engine):
    messages = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, image_part(RED), {"type": "text", "text": "and"},
                                     image_part(BLUE)]},
        {"role": "assistant", "content": "red, blue"},
        {"role": "user", "content": "And this one?"},
        {"role": "user", "content": [image_part(RED)]},  # joined with the previous: one turn
    ]
    data = chat(client, messages, max_completion_tokens=6)
    conversation = [
        {"role": "User", "content": f"Compare\n{IMAGE_TOKEN}\nand\n{IMAGE_TOKEN}", "images": [RED, BLUE]},
        {"role": "Assistant", "content": "red, blue"},
        {"role": "User", "content": f"And this one?\n{IMAGE_TOKEN}", "images": [RED]}]
    answer, prompt_tokens, _ = library_answer(engine, conversation, 6, system_prompt="Answer in one word.")
    assert data["choices"][0]["message"]["content"] == answer
    assert data["usage"]["prompt_tokens"] == prompt_tokens
    default = chat(client, messages[1:], max_completion_tokens=6)  # no system message: the model's own
    assert default["usage"]["prompt_tokens"] == library_answer(engine, conversation, 6)[1] != prompt_tokens
    none = chat(client, [{"role": "system", "content": ""}, *messages[1:]], max_completion_tokens=6)
    assert none["usage"]["prompt_tokens"] == library_answer(engine, conversation, 6, system_prompt="")[1]
    assert engine.processor.system_prompt.startswith("You are a helpful")  # restored after each request


def test_max_tokens_stop_strings_and_streaming_agree(client):
    messages = [{"role": "user", "content": [image_part(BLUE), {"type": "text", "text": "Describe it."}]}]
    whole = chat(client, messages, max_tokens=16)["choices"][0]
    assert whole["finish_reason"] == "length"
    text = whole["message"]["content"]
    texts, reasons, _ = stream(client, messages, max_tokens=16)
    assert texts == {0: text} and reasons == {0: "length"}
    # a stop string from the middle of the answer: the answer ends before it
    at = next(i for i in range(2, len(text) - 2) if text[i:i + 2].strip() == text[i:i + 2] and "\ufffd" not in text[i:i + 2])
    stop = text[at:at + 2]
    expected = text[:text.find(stop)].rstrip()
    cut = chat(client, messages, max_tokens=16, stop=[stop, "never-written"])
    assert cut["choices"][0] == {**whole, "message": {**whole["message"], "content": expected}, "finish_reason": "stop"}
    assert cut["usage"]["completion_tokens"] < 16
    texts, reasons, _ = stream(client, messages, max_tokens=16, stop=stop)
    assert texts == {0: expected} and reasons == {0: "stop"}


def test_seed_n_and_sampling(client):
    messages = [{"role": "user", "content": "Say something."}]
    sampled = chat(client, messages, temperature=1.0, seed=5, n=3, max_tokens=8)
    texts = [c["message"]["content"] for c in sampled["choices"]]
    assert [c["index"] for c in sampled["choices"]] == [0, 1, 2]
    assert len(set(texts)) == 3  # a random tiny model at temperature 1: three different answers
    again = chat(client, messages, temperature=1.0, seed=5, n=3, max_tokens=8)
    assert [c["message"]["content"] for c in again["choices"]] == texts  # the same seed, the same answers
    other = chat(client, messages, temperature=1.0, seed=6, n=1, max_tokens=8)
    assert other["choices"][0]["message"]["content"] != texts[0]
    streamed, _, chunks = stream(client, messages, temperature=1.0, seed=5, n=3, max_tokens=8,
                                 stream_options={"include_usage": True})
    assert streamed == dict(enumerate(texts))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == sampled["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])
    greedy = chat(client, messages, n=2, max_tokens=8)  # temperature 0: one answer, twice
    assert greedy["choices"][0]["message"] == greedy["choices"][1]["message"]
    once = chat(client, messages, max_tokens=8)
    assert greedy["choices"][0]["message"] == once["choices"][0]["message"]
    assert greedy["usage"]["completion_tokens"] == 2 * once["usage"]["completion_tokens"]
    assert greedy["usage"]["prompt_tokens"] == once["usage"]["prompt_tokens"]  # the prompt is counted once
    top_p_zero = chat(client, messages, temperature=1.0, top_p=0, max_tokens=8, seed=1)  # the likeliest token: greedy
    assert top_p_zero["choices"][0]["message"] == greedy["choices"][0]["message"]


def test_harmless_openai_fields_are_accepted(client):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "user": "u1", "frequency_penalty": 0,
            "presence_penalty": 0.0, "logprobs": False, "tools": [], "tool_choice": "none", "store": False,
            "metadata": {"a": "b"}, "response_format": {"type": "text"}, "parallel_tool_calls": True,
            "service_tier": "auto", "logit_bias": {}, "top_logprobs": 0, "modalities": ["text"], "seed": -3,
            "stream": False, "stop": None, "temperature": None, "top_p": None, "n": 1}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    turns = client.post("/v1/chat/completions", json={**body, "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "be brief"}], "name": "d"}, *body["messages"],
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}], "refusal": None, "tool_calls": []},
        {"role": "user", "content": "again", "name": "u"}]})
    assert turns.status_code == 200, turns.text
    empty = client.post("/v1/chat/completions", json={**body, "messages": [
        *body["messages"], {"role": "assistant", "content": None}, {"role": "user", "content": "again"}]})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages.1.content"


def test_models(client):
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["tiny"]
    assert listed["data"][0]["object"] == "model"
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    missing = client.get("/v1/models/gpt-4o")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_images_generations_are_the_library_images(client, engine):
    body = {"prompt": "a red circle above a blue square", "n": 2, "size": "32x32", "response_format": "b64_json",
            "num_inference_steps": 2, "guidance_scale": 1.5, "seed": 9, "model": "tiny"}
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["size"] == "32x32" and data["seed"] == 9 and len(data["data"]) == 2
    images = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in data["data"]]
    assert all(im.format == "PNG" and im.size == (32, 32) for im in images)
    direct = engine.generate(body["prompt"], 2, 2, 1.5, 9, "euler")
    assert [base64.b64decode(d["b64_json"]) for d in data["data"]] == [png(im) for im in direct]
    plain = client.post("/v1/images/generations", json={"prompt": "a green star", "num_inference_steps": 1})
    assert plain.status_code == 200 and len(plain.json()["data"]) == 1


# -- refusals --------------------------------------------------------------------------------------------

USER = [{"role": "user", "content": "hi"}]
GIF = Image.new("RGB", (8, 8))
BAD_CHAT = [
    ({}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"messages": USER, "foo": 1}, 400, "foo"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, 400, "messages.0"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, 400, "messages.0.content.0"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}]}]},
     400, "messages.0.content.0.image_url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]},
     400, "messages.0.content.0.image_url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]},
     400, "messages.0.content.0.image_url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png(GIF, "GIF"), "gif")}}]}]},
     400, "messages.0.content.0.image_url"),
    ({"messages": [{"role": "user", "content": [image_part(Image.new("RGB", (201, 200)))]}]},
     413, "messages.0.content.0.image_url"),
    ({"messages": [{"role": "user", "content": [image_part(RED)] * 4}]}, 400, "messages"),
    ({"messages": [*USER, {"role": "assistant", "content": "a"}]}, 400, "messages"),
    ({"messages": [{"role": "assistant", "content": "a"}, *USER]}, 400, "messages"),
    ({"messages": [*USER, {"role": "system", "content": "late"}, *USER]}, 400, "messages.1.role"),
    ({"messages": [{"role": "user", "content": f"{IMAGE_TOKEN} hi"}]}, 400, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "<｜end▁of▁sentence｜>"}]}, 400, "messages"),
    ({"messages": [{"role": "system", "content": "<begin_of_image>"}, *USER]}, 400, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "  "}]}, 400, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "x" * 301}]}, 400, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "long " * 60}, {"role": "assistant", "content": "long " * 60}] * 3 + USER},
     400, "messages"),  # over the tiny model's context of 512 tokens
    ({"messages": USER * 9}, 400, "messages"),
    ({"messages": USER, "max_tokens": 17}, 400, "max_tokens"),
    ({"messages": USER, "max_completion_tokens": 0}, 400, "max_completion_tokens"),
    ({"messages": USER, "max_tokens": 4, "max_completion_tokens": 5}, 400, "max_tokens"),
    ({"messages": USER, "n": 4}, 400, "n"),
    ({"messages": USER, "temperature": 2.5}, 400, "temperature"),
    ({"messages": USER, "top_p": 1.5}, 400, "top_p"),
    ({"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"messages": USER, "stop": ""}, 400, "stop"),
    ({"messages": USER, "seed": 2**64}, 400, "seed"),
    ({"messages": USER, "logprobs": True}, 400, "logprobs"),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ({"messages": USER, "response_format": {"type": "json_object"}}, 400, "response_format.type"),
    ({"messages": USER, "frequency_penalty": 1.0}, 400, "frequency_penalty"),
    ({"messages": USER, "stream_options": {"include_usage": True}}, 400, "body"),
    ({"messages": USER, "stream": "yes"}, 400, "stream"),
    ({"messages": USER, "model": "gpt-4o"}, 404, "model"),
]
BAD_IMAGES = [
    ({}, 400, "prompt"),
    ({"prompt": " "}, 400, "prompt"),
    ({"prompt": "x", "size": "1024x1024"}, 400, "size"),
    ({"prompt": "x", "response_format": "url"}, 400, "response_format"),
    ({"prompt": "x", "n": 4}, 400, "n"),
    ({"prompt": "x", "num_inference_steps": 9}, 400, "num_inference_steps"),
    ({"prompt": "x", "style": "vivid"}, 400, "style"),
    ({"prompt": "x", "quality": "hd"}, 400, "quality"),
    ({"prompt": "x", "steps": 2}, 400, "steps"),
    ({"prompt": "<begin_of_image>"}, 400, "prompt"),
    ({"prompt": "x", "model": "dall-e-3"}, 404, "model"),
]


@pytest.mark.parametrize("route, body, status, param", [("/v1/chat/completions", *c) for c in BAD_CHAT] +
                         [("/v1/images/generations", *c) for c in BAD_IMAGES],
                         ids=[f"chat-{i}" for i in range(len(BAD_CHAT))] + [f"images-{i}" for i in range(len(BAD_IMAGES))])
def test_refusals_are_openai_error_objects(client, route, body, status, param):
    response = client.post(route, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(response.json()) == {"error"} and set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"]
    assert error["type"] == {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error"}[status]


def test_body_errors_and_unknown_routes_are_openai_shaped(client, limits):
    headers = {"content-type": "application/json"}
    not_json = client.post("/v1/chat/completions", content=b'{"messages": ', headers=headers)
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
    big = client.post("/v1/chat/completions", content=b"x" * (limits.max_body_bytes + 1), headers=headers)
    assert big.status_code == 413 and big.json()["error"]["param"] == "body"
    assert client.get("/v1/embeddings").json()["error"]["code"] == "not_found"
    assert client.get("/v1/chat/completions").status_code == 405
    assert set(client.post("/v1/generate", json={}).json()) == {"error", "field"}  # today's API keeps its shape


def test_stream_refused_before_it_starts_gets_a_status(client):
    over_context = [{"role": "user", "content": "long " * 60}, {"role": "assistant", "content": "long " * 60}] * 3 + USER
    response = client.post("/v1/chat/completions", json={"messages": over_context, "stream": True})
    assert response.status_code == 400 and "max_length" in response.json()["error"]["message"]


# -- remote images ---------------------------------------------------------------------------------------

class ImageHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = {"/red.png": png(RED), "/big.png": b"\x89PNG" + b"\0" * 60_000, "/slow.png": png(RED)}.get(self.path)
        if body is None:
            self.send_error(404)
            return
        if self.path == "/slow.png":
            time.sleep(3)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if self.path != "/big.png":  # the big one says nothing of its size: it is counted as it arrives
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def image_host():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_remote_images_only_when_allowed_and_within_limits(engine, limits, client, image_host):
    def ask(http, url):
        return http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What?"}]}], "max_tokens": 4})

    refused = ask(client, f"{image_host}/red.png")
    assert refused.status_code == 400 and "--allow-remote-images" in refused.json()["error"]["message"]
    with TestClient(create_app(engine, limits, ui=False, allow_remote_images=True)) as http:
        fetched = ask(http, f"{image_host}/red.png")
        assert fetched.status_code == 200, fetched.text
        assert fetched.json()["choices"] == ask(http, data_url(png(RED))).json()["choices"]
        big = ask(http, f"{image_host}/big.png")
        assert big.status_code == 413 and big.json()["error"]["param"] == "messages.0.content.0.image_url"
        start = time.monotonic()
        slow = ask(http, f"{image_host}/slow.png")
        assert slow.status_code == 400 and "took over 1 s" in slow.json()["error"]["message"]
        assert time.monotonic() - start < 2.5
        missing = ask(http, f"{image_host}/none.png")
        assert missing.status_code == 400 and "HTTP 404" in missing.json()["error"]["message"]


# -- the API key -----------------------------------------------------------------------------------------

def test_api_key_guards_every_route_but_health(engine, limits):
    with TestClient(create_app(engine, limits, api_key=KEY)) as http:
        assert http.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
            refused = http.get("/v1/models", headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["error"]["type"] == "authentication_error"
            assert http.post("/v1/generate", json={"prompt": "x"}, headers=headers).json()["field"] is None
            assert http.get("/openapi.json", headers=headers).status_code == 401
        good = {"Authorization": f"Bearer {KEY}"}
        assert http.get("/v1/models", headers=good).status_code == 200
        spec = http.get("/openapi.json", headers=good).json()
        assert spec["components"]["securitySchemes"]["apiKey"] == {"type": "http", "scheme": "bearer"}
        assert http.get("/", headers=good).status_code == 200  # the page, with the header (gradio_client)


def test_the_page_asks_for_the_key_once(engine, limits):
    with TestClient(create_app(engine, limits, api_key=KEY), follow_redirects=False) as http:
        form = http.get("/?tab=chat", headers={"Accept": "text/html"})
        assert form.status_code == 401 and 'name="key"' in form.text and 'value="/?tab=chat"' in form.text
        wrong = http.post("/login", data={"key": "nope", "next": "/"})
        assert wrong.status_code == 401 and "wrong" in wrong.text and not http.cookies
        right = http.post("/login", data={"key": KEY, "next": "/?tab=chat"})
        assert right.status_code == 303 and right.headers["location"] == "/?tab=chat"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and KEY not in cookie
        assert http.get("/").status_code == 200  # the cookie opens the page and its assets
        assert http.get("/config").status_code == 200
        assert http.get("/v1/models").status_code == 401  # but not the API
        elsewhere = http.post("/login", data={"key": KEY, "next": "//evil.example/"})
        assert elsewhere.headers["location"] == "/"


def test_bearer_compare_is_exact():
    from janusflow.serve.auth import ApiKeyMiddleware

    guard = ApiKeyMiddleware(None, "clé-ü")
    assert guard.bearer_ok("Bearer " + "clé-ü".encode().decode("latin-1"))  # as the header arrives
    assert guard.bearer_ok("bearer " + "clé-ü".encode().decode("latin-1"))
    for header in (None, "", "Bearer", "Bearer clé", "Bearer clé-ü", "Bearer clé-üx", "Token " + "clé-ü"):
        assert not guard.bearer_ok(header)


# -- the text as it streams ------------------------------------------------------------------------------

def test_settled_text_holds_back_what_may_still_change():
    assert settled_length("a red circ", ()) == 10
    assert settled_length("a red  ", ()) == 5  # trailing whitespace: the answer is stripped
    assert settled_length("a red \ufffd", ()) == 5  # an unfinished character
    assert settled_length("a red ST", ("STOP",)) == 5  # may become the stop string
    assert settled_length("a red STX", ("STOP",)) == 9
    assert settled_length("abab", ("abc", "bz")) == 2  # the longest tail that starts a stop string


def test_watcher_stops_at_a_stop_string_and_streams_what_is_settled():
    import torch

    pieces = []
    watcher = TextWatcher(lambda ids: "".join(chr(i) for i in ids), ("END",), on_text=pieces.append)
    watcher.put(torch.tensor([[1, 2, 3]]))
    assert watcher.prompt_tokens == 3
    for ch in " hi E":
        watcher.put(torch.tensor([ord(ch)]))
    assert "".join(pieces) == "hi" and watcher.text == "hi E"
    watcher.put(torch.tensor([ord("N")]))
    with pytest.raises(Exception) as stopped:
        watcher.put(torch.tensor([ord("D")]))
    assert type(stopped.value).__name__ == "StopStringReached" and watcher.text == "hi "


# -- queue and timeouts on the new routes (fake engine) --------------------------------------------------

def test_full_queue_is_429_and_timeouts_are_504():
    engine = BlockingFakeEngine()
    app = create_app(engine, ServeLimits(max_queue=1, retry_after_s=7, request_timeout_s=30), ui=False)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            body = {"messages": USER, "max_tokens": 100}
            running = asyncio.create_task(http.post("/v1/chat/completions", json=body))
            await asyncio.to_thread(engine.started.acquire)
            queued = asyncio.create_task(http.post("/v1/images/generations", json={"prompt": "x"}))
            while app.state.worker.waiting < 1:
                await asyncio.sleep(0.01)
            refused = await http.post("/v1/chat/completions", json=body)
            engine.release.set()
            return refused, await running, await queued

    refused, running, queued = asyncio.run(scenario())
    assert refused.status_code == 429 and refused.headers["retry-after"] == "7"
    assert refused.json()["error"]["code"] == "queue_full"
    assert running.status_code == 200 and running.json()["choices"][0]["finish_reason"] == "stop"
    assert queued.status_code == 200

    engine = BlockingFakeEngine()
    app = create_app(engine, ServeLimits(request_timeout_s=0.5), ui=False)
    with TestClient(app) as http:
        for body in ({"messages": USER, "max_tokens": 512}, {"prompt": "x"}):
            route = "/v1/chat/completions" if "messages" in body else "/v1/images/generations"
            late = http.post(route, json=body)
            assert late.status_code == 504 and late.json()["error"]["code"] == "timeout"
            deadline = time.monotonic() + 5
            while app.state.worker.busy and time.monotonic() < deadline:  # cancelled at its next step
                time.sleep(0.01)
            assert not app.state.worker.busy
        # a stream that has started ends with an error event (the status is sent already)
        with http.stream("POST", "/v1/chat/completions", json={"messages": USER, "max_tokens": 512,
                                                                "stream": True}) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line]
        last = json.loads(lines[-1][6:])
        assert last["error"]["code"] == "timeout" and "did not finish within 0.5 s" in last["error"]["message"]
        assert "data: [DONE]" not in lines


# -- CUDA ------------------------------------------------------------------------------------------------

def test_openai_routes_on_cuda_in_bf16(tmp_path):
    """Sampling with a seed (a CUDA generator), streaming and images on the GPU's defaults (bf16)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    engine = ModelEngine.from_folder(build_tiny_model_folder(tmp_path / "tiny"), device="cuda")
    assert engine.pipe.model.dtype == torch.bfloat16
    with TestClient(create_app(engine, ServeLimits(max_new_tokens=8), ui=False)) as http:
        messages = [{"role": "user", "content": [image_part(RED), {"type": "text", "text": "What is it?"}]}]
        sampled = chat(http, messages, temperature=1.0, seed=4, n=2, max_tokens=8)
        assert chat(http, messages, temperature=1.0, seed=4, n=2, max_tokens=8)["choices"] == sampled["choices"]
        texts, _, _ = stream(http, messages, temperature=1.0, seed=4, n=2, max_tokens=8)
        assert texts == {c["index"]: c["message"]["content"] for c in sampled["choices"]}
        images = http.post("/v1/images/generations", json={"prompt": "a red circle", "num_inference_steps": 2, "n": 2})
        assert images.status_code == 200 and len(images.json()["data"]) == 2
