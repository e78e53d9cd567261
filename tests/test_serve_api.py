"""The HTTP API on a real tiny random model: routes, limits (4xx JSON naming the field, never 500),
the bounded queue (503 + Retry-After), timeouts that cancel the work, /health, the OpenAPI spec,
the access log, and `janusflow serve`'s argument checks.

Only the queue and timeout tests use a fake engine (``BlockingFakeEngine``): they need a model that
blocks until told to go on, which a real model cannot be made to do.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import logging
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("gradio")

from fastapi.testclient import TestClient  # noqa: E402

from janusflow.cli import main as cli_main  # noqa: E402
from janusflow.errors import ConfigError  # noqa: E402
from janusflow.serve.app import create_app  # noqa: E402
from janusflow.serve.engine import ModelEngine, conversation_for  # noqa: E402
from janusflow.serve.limits import ServeLimits  # noqa: E402
from janusflow.serve.tiny_model import build_tiny_model_folder  # noqa: E402
from janusflow.serve.ui import stream_on_worker, turns_of  # noqa: E402
from janusflow.serve.worker import ModelWorker, QueueFull, RequestTimeout  # noqa: E402
from serve_helpers import BlockingFakeEngine  # noqa: E402


def png_bytes(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (a decompression bomb's shape), with a tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


RED = Image.new("RGB", (40, 30), (200, 20, 20))


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> ModelEngine:
    return ModelEngine.from_folder(build_tiny_model_folder(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="module")
def limits() -> ServeLimits:
    return ServeLimits(max_prompt_chars=200, max_question_chars=300, max_image_bytes=50_000, max_image_pixels=200 * 200,
                       max_steps=8, max_images_per_request=3, max_new_tokens=16, max_body_bytes=100_000)


@pytest.fixture(scope="module")
def client(engine, limits):
    with TestClient(create_app(engine, limits, ui=False)) as c:
        yield c


# -- the two tasks ----------------------------------------------------------------------------------------

def test_generate_returns_png_images_reproducible_by_seed(client):
    body = {"prompt": "a red circle above a blue square", "num_images": 2, "steps": 3, "guidance_scale": 2.0,
            "seed": 7, "solver": "heun"}
    first = client.post("/v1/generate", json=body)
    assert first.status_code == 200, first.text
    data = first.json()
    assert data["seed"] == 7 and len(data["images"]) == 2
    images = [Image.open(io.BytesIO(base64.b64decode(s))) for s in data["images"]]
    assert all(im.format == "PNG" and im.size == (32, 32) and im.mode == "RGB" for im in images)
    assert data["images"][0] != data["images"][1]  # two noises, two images
    again = client.post("/v1/generate", json=body).json()
    assert again["images"] == data["images"]
    other = client.post("/v1/generate", json={**body, "seed": 8}).json()
    assert other["images"] != data["images"]


def test_generate_takes_the_library_vocabulary_and_the_old_names(client):
    new = {"prompt": "a red circle", "num_inference_steps": 2, "guidance_scale": 1.5, "num_images_per_prompt": 2,
           "seed": 11}
    old = {"prompt": "a red circle", "steps": 2, "guidance_scale": 1.5, "num_images": 2, "seed": 11}
    first = client.post("/v1/generate", json=new)
    assert first.status_code == 200, first.text
    assert len(first.json()["images"]) == 2
    assert client.post("/v1/generate", json=old).json()["images"] == first.json()["images"]
    both = client.post("/v1/generate", json={**new, "steps": 2, "num_images": 2})  # the same values twice
    assert both.json()["images"] == first.json()["images"]
    for old_name, value in (("steps", 3), ("num_images", 1), ("steps", 2.0), ("num_images", True)):
        clash = client.post("/v1/generate", json={**new, old_name: value})
        assert clash.status_code == 400, clash.text
        assert clash.json()["field"] == old_name and "disagree" in clash.json()["error"]


def test_generate_without_seed_reports_the_seed_it_drew(client):
    body = {"prompt": "a green triangle", "steps": 2}
    data = client.post("/v1/generate", json=body).json()
    assert isinstance(data["seed"], int) and len(data["images"]) == 1
    assert client.post("/v1/generate", json={**body, "seed": data["seed"]}).json()["images"] == data["images"]


def test_generate_matches_the_library_pipeline(client, engine):
    body = {"prompt": "two shapes", "num_images": 1, "steps": 2, "guidance_scale": 1.5, "seed": 3, "solver": "euler"}
    served = client.post("/v1/generate", json=body).json()["images"][0]
    direct = engine.pipe("two shapes", num_inference_steps=2, guidance_scale=1.5, generator=3).images[0]
    assert base64.b64decode(served) == png_bytes(direct)


def test_generate_best_of_candidates_is_the_library_best_of(client, engine):
    from janusflow.shapes.self_check import ShapesJudge

    body = {"prompt": "a circle above a square", "num_images": 2, "steps": 2, "seed": 5, "candidates": 3}
    served = client.post("/v1/generate", json=body)
    assert served.status_code == 200, served.text
    direct = engine.pipe(body["prompt"], num_inference_steps=2, num_images_per_prompt=2, generator=5, candidates=3,
                         judge=ShapesJudge(engine.chat)).images
    assert [base64.b64decode(s) for s in served.json()["images"]] == [png_bytes(im) for im in direct]
    refused = client.post("/v1/generate", json={**body, "prompt": "two shapes"})  # not a shapes-world prompt
    assert refused.status_code == 422 and "shapes-world prompts only" in refused.json()["error"]
    over = client.post("/v1/generate", json={**body, "candidates": 5})
    assert over.status_code == 422 and over.json()["field"] == "candidates"


@pytest.mark.parametrize("encode", ["png", "jpeg", "data-url"])
def test_ask_answers_like_the_library(client, engine, encode):
    data = png_bytes(RED, "JPEG" if encode == "jpeg" else "PNG")
    image = b64(data) if encode != "data-url" else "data:image/png;base64," + b64(data)
    response = client.post("/v1/ask", json={"image": image, "question": "What is in the image?", "max_new_tokens": 6})
    assert response.status_code == 200, response.text
    decoded = Image.open(io.BytesIO(data)).convert("RGB")
    assert response.json()["answer"] == engine.ask(decoded, "What is in the image?", 6)
    assert response.json()["answer"]  # the tiny model's greedy answer is not empty


def test_streamed_answer_is_the_answer(engine, limits):
    expected = engine.ask(RED, "Describe the image.", 8)
    assert "".join(engine.stream_answer(RED, "Describe the image.", 8)).strip() == expected
    worker = ModelWorker(limits.max_queue, 30)
    try:
        assert "".join(stream_on_worker(worker, engine, RED, "Describe the image.", 8)).strip() == expected
    finally:
        worker.close()


def test_several_turns_keep_the_image_in_the_first_question(engine):
    messages = conversation_for(RED, "and the colour?", [("what shape?", "a square")])
    assert [m["role"] for m in messages] == ["User", "Assistant", "User"]
    assert len(messages[0]["images"]) == 1 and not messages[2]["images"]
    assert isinstance(engine.ask(RED, "and the colour?", 4, history=[("what shape?", "a square")]), str)
    chat = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
            {"role": "user", "content": [{"type": "text", "text": "q2"}]}, {"role": "assistant", "content": "a2"}]
    assert turns_of(chat) == [("q1", "a1"), ("q2", "a2")]


# -- refusals: 4xx JSON naming the field ------------------------------------------------------------------

GOOD_ASK = {"image": b64(png_bytes(RED)), "question": "what?", "max_new_tokens": 4}

BAD_REQUESTS = [
    ("/v1/generate", {}, 422, "prompt"),
    ("/v1/generate", {"prompt": ""}, 422, "prompt"),
    ("/v1/generate", {"prompt": " \t\n"}, 422, "prompt"),
    ("/v1/generate", {"prompt": "x" * 201}, 422, "prompt"),
    ("/v1/generate", {"prompt": 5}, 422, "prompt"),
    ("/v1/generate", {"prompt": "<begin_of_image> a"}, 422, "prompt"),  # a reserved token, refused by the processor
    ("/v1/generate", {"prompt": "x", "steps": 0}, 422, "steps"),
    ("/v1/generate", {"prompt": "x", "num_inference_steps": 9}, 422, "num_inference_steps"),
    ("/v1/generate", {"prompt": "x", "num_images_per_prompt": 4}, 422, "num_images_per_prompt"),
    ("/v1/generate", {"prompt": "x", "steps": 9}, 422, "steps"),
    ("/v1/generate", {"prompt": "x", "steps": "3"}, 422, "steps"),
    ("/v1/generate", {"prompt": "x", "steps": 2.5}, 422, "steps"),
    ("/v1/generate", {"prompt": "x", "steps": True}, 422, "steps"),
    ("/v1/generate", {"prompt": "x", "num_images": 4}, 422, "num_images"),
    ("/v1/generate", {"prompt": "x", "num_images": 0}, 422, "num_images"),
    ("/v1/generate", {"prompt": "x", "guidance_scale": -1}, 422, "guidance_scale"),
    ("/v1/generate", {"prompt": "x", "guidance_scale": 21}, 422, "guidance_scale"),
    ("/v1/generate", {"prompt": "x", "seed": -1}, 422, "seed"),
    ("/v1/generate", {"prompt": "x", "seed": 2**64}, 422, "seed"),
    ("/v1/generate", {"prompt": "x", "solver": "rk4"}, 422, "solver"),
    ("/v1/generate", {"prompt": "x", "colour": "red"}, 422, "colour"),
    ("/v1/generate", [], 422, "body"),
    ("/v1/generate", "a prompt", 422, "body"),
    ("/v1/ask", {**GOOD_ASK, "question": ""}, 422, "question"),
    ("/v1/ask", {**GOOD_ASK, "question": "q" * 301}, 422, "question"),
    ("/v1/ask", {**GOOD_ASK, "question": "<image_placeholder> and <image_placeholder>"}, 422, "question"),
    ("/v1/ask", {**GOOD_ASK, "max_new_tokens": 17}, 422, "max_new_tokens"),
    ("/v1/ask", {**GOOD_ASK, "max_new_tokens": 0}, 422, "max_new_tokens"),
    ("/v1/ask", {**GOOD_ASK, "image": "not base64!"}, 422, "image"),
    ("/v1/ask", {**GOOD_ASK, "image": b64(b"hello, not an image")}, 422, "image"),
    ("/v1/ask", {**GOOD_ASK, "image": b64(png_bytes(RED)[:60])}, 422, "image"),  # truncated
    ("/v1/ask", {**GOOD_ASK, "image": b64(png_bytes(RED, "GIF"))}, 415, "image"),
    ("/v1/ask", {**GOOD_ASK, "image": b64(png_bytes(Image.new("RGB", (201, 200))))}, 413, "image"),  # pixels
    ("/v1/ask", {**GOOD_ASK, "image": b64(png_header_only(100_000, 100_000))}, 413, "image"),  # bomb
    ("/v1/ask", {**GOOD_ASK, "image": "data:text/plain,hello"}, 422, "image"),
    ("/v1/ask", {"question": "what?"}, 422, "image"),
]


@pytest.mark.parametrize("route, body, status, field", BAD_REQUESTS, ids=[f"{r}-{f}-{i}" for i, (r, _, _, f) in
                                                                           enumerate(BAD_REQUESTS)])
def test_bad_requests_get_4xx_naming_the_field(client, route, body, status, field):
    response = client.post(route, json=body)
    assert response.status_code == status, response.text
    data = response.json()
    assert data["field"] == field and isinstance(data["error"], str) and data["error"]


def test_image_over_the_byte_limit_is_413(client, limits):
    noisy = Image.frombytes("RGB", (150, 150), bytes(range(256)) * (150 * 150 * 3 // 256) + b"\0" * (150 * 150 * 3 % 256))
    data = png_bytes(noisy, compress_level=0)
    assert len(data) > limits.max_image_bytes
    response = client.post("/v1/ask", json={**GOOD_ASK, "image": b64(data)})
    assert response.status_code == 413 and response.json()["field"] == "image"


def test_text_that_is_not_valid_unicode_or_json(client):
    headers = {"content-type": "application/json"}
    lone_surrogate = client.post("/v1/generate", content=b'{"prompt": "a \\ud800 b"}', headers=headers)
    assert lone_surrogate.status_code == 422 and lone_surrogate.json()["field"] == "prompt"
    bad_utf8 = client.post("/v1/generate", content=b'{"prompt": "\xff\xfe"}', headers=headers)
    assert 400 <= bad_utf8.status_code < 500
    not_json = client.post("/v1/generate", content=b'{"prompt": ', headers=headers)
    assert not_json.status_code == 400 and not_json.json()["field"] == "body"
    nan = client.post("/v1/generate", content=b'{"prompt": "x", "guidance_scale": NaN}', headers=headers)
    assert nan.status_code == 422 and nan.json()["field"] == "guidance_scale"
    control = client.post("/v1/generate", json={"prompt": "a\x00b\x1b[31m\u202e", "steps": 1})
    assert control.status_code == 200


def test_body_over_the_limit_is_413_with_or_without_content_length(client, limits):
    big = b'{"prompt": "' + b"x" * limits.max_body_bytes + b'"}'
    declared = client.post("/v1/generate", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and declared.json()["field"] == "body"
    streamed = client.post("/v1/generate", content=iter([big[:60_000], big[60_000:]]),
                           headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["field"] == "body"


def test_unknown_route_and_method(client):
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/generate").status_code == 405


# -- health, spec, log --------------------------------------------------------------------------------------

def test_health(client, limits):
    data = client.get("/health").json()
    assert data["status"] == "ok" and data["busy"] is False and data["waiting"] == 0
    assert data["limits"]["max_steps"] == limits.max_steps


def test_openapi_states_the_configured_limits(client, limits):
    spec = client.get("/openapi.json").json()
    assert {"/v1/generate", "/v1/ask", "/health"} <= set(spec["paths"])
    generate = spec["components"]["schemas"]["GenerateRequest"]["properties"]
    assert generate["num_inference_steps"]["maximum"] == limits.max_steps
    assert generate["prompt"]["maxLength"] == limits.max_prompt_chars
    assert generate["num_images_per_prompt"]["maximum"] == limits.max_images_per_request
    assert set(generate["solver"]["enum"]) == {"euler", "heun", "midpoint"}
    ask = spec["components"]["schemas"]["AskRequest"]["properties"]
    assert ask["max_new_tokens"]["maximum"] == limits.max_new_tokens
    assert "503" in spec["paths"]["/v1/generate"]["post"]["responses"]


def test_one_log_line_a_request_and_no_image_bytes(client, caplog):
    image = GOOD_ASK["image"]
    with caplog.at_level(logging.INFO, logger="janusflow.serve"):
        assert client.post("/v1/ask", json=GOOD_ASK).status_code == 200
        assert client.post("/v1/ask", json={**GOOD_ASK, "max_new_tokens": 99}).status_code == 422
    lines = [r.getMessage() for r in caplog.records if r.name == "janusflow.serve"]
    assert len(lines) == 2
    assert lines[0].startswith("POST /v1/ask 200 ") and lines[0].endswith("ms")
    assert lines[1].startswith("POST /v1/ask 422 ")
    assert not any(image[:40] in line for line in lines)


def test_limits_are_checked_and_set_by_name():
    assert ServeLimits().replace(["max_steps=5", "request-timeout-s=2.5"]) == ServeLimits(max_steps=5,
                                                                                        request_timeout_s=2.5)
    for bad in (["max_steps"], ["nope=1"], ["max_steps=1.5"], ["max_steps=0"]):
        with pytest.raises(ConfigError):
            ServeLimits().replace(bad)
    names = [name for name, _, doc in ServeLimits.documentation() if doc]
    documented = Path(__file__).resolve().parent.parent.joinpath("docs", "serve.md").read_text()
    assert names and all(f"| `{name}` |" in documented for name in names)  # every limit in docs/serve.md's table


def test_serve_warns_when_it_binds_beyond_this_machine_without_a_key(capsys, monkeypatch, tmp_path):
    from janusflow.serve.cli import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
    monkeypatch.delenv("JANUSFLOW_API_KEY", raising=False)
    missing = str(tmp_path / "no-model")  # the command stops at loading the model, after the checks
    assert cli_main(["serve", "--host", "0.0.0.0", "--model", missing]) == 1
    assert "without an API key" in capsys.readouterr().err
    assert cli_main(["serve", "--host", "0.0.0.0", "--api-key", "k", "--model", missing]) == 1
    monkeypatch.setenv("JANUSFLOW_API_KEY", "k")
    assert cli_main(["serve", "--host", "0.0.0.0", "--model", missing]) == 1
    assert cli_main(["serve", "--model", missing]) == 1
    assert "without an API key" not in capsys.readouterr().err
    assert cli_main(["serve", "--api-key", " ", "--model", missing]) == 1
    assert "--api-key is empty" in capsys.readouterr().err


def test_serve_command_refuses_bad_arguments_in_one_line(capsys):
    assert cli_main(["serve", "--limit", "max_steps=abc"]) == 1
    assert cli_main(["serve", "--port", "70000"]) == 1
    assert cli_main(["serve", "--port", "x"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 3


# -- queue and timeouts (fake engine) ---------------------------------------------------------------------

def test_full_queue_gets_503_with_retry_after():
    engine = BlockingFakeEngine()
    app = create_app(engine, ServeLimits(max_queue=2, retry_after_s=7, request_timeout_s=30), ui=False)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            body = {"prompt": "x", "steps": 1}
            running = asyncio.create_task(http.post("/v1/generate", json={**body, "seed": 1}))
            await asyncio.to_thread(engine.started.acquire)  # the first is on the model
            queued = [asyncio.create_task(http.post("/v1/generate", json={**body, "seed": s})) for s in (2, 3)]
            while app.state.worker.waiting < 2:
                await asyncio.sleep(0.01)
            health = (await http.get("/health")).json()
            refused = await http.post("/v1/generate", json={**body, "seed": 4})
            engine.release.set()
            done = await asyncio.gather(running, *queued)
            return health, refused, done

    health, refused, done = asyncio.run(scenario())
    assert health["busy"] is True and health["waiting"] == 2
    assert refused.status_code == 503 and refused.headers["retry-after"] == "7"
    assert refused.json()["field"] is None and "busy" in refused.json()["error"]
    assert [r.status_code for r in done] == [200, 200, 200]
    assert [r.json()["seed"] for r in done] == [1, 2, 3]
    assert engine.calls == 3


def test_timeout_is_503_and_cancels_the_running_work():
    engine = BlockingFakeEngine()
    app = create_app(engine, ServeLimits(request_timeout_s=0.5), ui=False)
    with TestClient(app) as http:
        start = time.monotonic()
        response = http.post("/v1/generate", json={"prompt": "x", "steps": 1})
        assert response.status_code == 503 and "did not finish within 0.5 s" in response.json()["error"]
        assert "retry-after" in response.headers
        assert time.monotonic() - start < 5
        deadline = time.monotonic() + 5
        while app.state.worker.busy and time.monotonic() < deadline:  # cancelled at its next step
            time.sleep(0.01)
        assert not app.state.worker.busy
        # work that ignores cancellation still cannot make a request hang
        hang = http.post("/v1/ask", json=GOOD_ASK)
        assert hang.status_code == 503


def test_a_timed_out_job_leaves_no_unread_exception_behind(caplog):
    """The cancelled job ends later with Cancelled; nobody reads it, so it must not be logged as
    "exception was never retrieved" when collected (that log's traceback formatting runs inside
    whatever the collector interrupted, which can break a concurrent ``ast.parse`` on Python 3.11)."""
    engine = BlockingFakeEngine()
    app = create_app(engine, ServeLimits(request_timeout_s=0.2), ui=False)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        with TestClient(app) as http:
            assert http.post("/v1/generate", json={"prompt": "x", "steps": 1}).status_code == 503
            deadline = time.monotonic() + 5
            while app.state.worker.busy and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not app.state.worker.busy
        del app, http
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_worker_drops_a_job_that_timed_out_while_waiting():
    worker = ModelWorker(max_queue=1, timeout_s=30)
    gate = threading.Event()
    ran = []
    try:
        first = worker.submit(lambda job: gate.wait(5))
        while not worker.busy:
            time.sleep(0.01)
        late = worker.submit(lambda job: ran.append("late"), timeout_s=1.0)  # long enough to still wait at the next submit, on a loaded machine
        with pytest.raises(QueueFull):
            worker.submit(lambda job: None)
        with pytest.raises(RequestTimeout):
            late.result()
        worker.submit(lambda job: ran.append("next"))  # the cancelled job no longer holds a queue slot
        gate.set()
        first.result()
        deadline = time.monotonic() + 5
        while not ran and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ran == ["next"]
    finally:
        gate.set()
        worker.close()


def test_page_is_mounted_at_the_root(engine, limits):
    with TestClient(create_app(engine, limits)) as http:
        page = http.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert http.get("/health").status_code == 200
        assert http.get("/openapi.json").json()["paths"].keys() >= {"/v1/generate"}
