"""Real clients against a live `janusflow serve` (a subprocess on a free local port, the embedded
model, an API key): the official `openai` package for the OpenAI-compatible routes and
`gradio_client` for the page's endpoints. No mock: the answers must be the library's for the same
image and question, and the shapes-world scene's facts.
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

openai = pytest.importorskip("openai")
gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("fastapi")

from janusflow.pipeline import default_model_dir  # noqa: E402
from janusflow.shapes.render import render  # noqa: E402
from janusflow.shapes.world import Obj, Scene  # noqa: E402
from serve_helpers import live_server  # noqa: E402

pytestmark = pytest.mark.skipif(default_model_dir() is None, reason="no embedded model installed")
KEY = "test-key-0123"
SCENE = render(Scene((Obj("circle", "red", 6, 6, 20), Obj("square", "blue", 36, 36, 20))))  # 64 x 64


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "serve.log"
    env = {"GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio")), "JANUSFLOW_API_KEY": KEY}
    with live_server([], log, env) as url:  # the key from the environment variable
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def library():
    from janusflow.understanding import JanusFlowChat

    return JanusFlowChat.from_pretrained(default_model_dir(), device="cpu")


def library_turn(library, conversation):
    result = library.generate([conversation])
    return library.processor.decode(result.tokens[0]).strip(), result.prompt_length, len(result.tokens[0]) + 1


def ask_scene(question: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(SCENE)}},
                                        {"type": "text", "text": question}]}


def test_models_list(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["default_model"]
    assert client.models.retrieve("default_model").owned_by == "janusflow"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_with_an_image(client, library):
    done = client.chat.completions.create(model="default_model", messages=[ask_scene("describe the image.")],
                                          max_tokens=32)
    choice = done.choices[0]
    assert choice.message.content == "a red circle and a blue square"  # the scene's true description
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    answer, prompt_tokens, written = library_turn(library, [
        {"role": "User", "content": "<image_placeholder>\ndescribe the image.", "images": [SCENE]}])
    assert answer == choice.message.content
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (prompt_tokens, written)
    assert done.usage.total_tokens == prompt_tokens + written


def test_multi_turn_and_a_system_prompt(client):
    first = client.chat.completions.create(model="default_model", messages=[ask_scene("describe the image.")])
    messages = [{"role": "system", "content": "You are a helpful language and vision assistant."},
                ask_scene("describe the image."),
                {"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "how many shapes are there?"}]
    second = client.chat.completions.create(model="default_model", messages=messages, temperature=0)
    assert second.choices[0].message.content == "two"
    colour = client.chat.completions.create(model="default_model", messages=[
        *messages[1:3], {"role": "user", "content": [{"type": "text", "text": "what color is the circle?"}]}])
    assert colour.choices[0].message.content == "red"


def test_streaming(client):
    whole = client.chat.completions.create(model="default_model", messages=[ask_scene("describe the image.")])
    pieces, reasons, usage = [], [], None
    for chunk in client.chat.completions.create(model="default_model", messages=[ask_scene("describe the image.")],
                                                stream=True, stream_options={"include_usage": True}):
        assert chunk.object == "chat.completion.chunk"
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
        usage = chunk.usage or usage
    assert "".join(pieces) == whole.choices[0].message.content == "a red circle and a blue square"
    assert len([p for p in pieces if p]) > 1  # it came in pieces
    assert reasons[-1] == "stop" and usage == whole.usage
    stopped = client.chat.completions.create(model="default_model", messages=[ask_scene("describe the image.")],
                                             stop=[" and"], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stopped if c.choices) == "a red circle"


def test_images_generate_gives_pngs_of_the_models_size(client):
    kwargs = dict(model="default_model", prompt="a red circle above a blue square", n=2, size="64x64",
                  response_format="b64_json", extra_body={"num_inference_steps": 4, "seed": 3, "candidates": 1})
    result = client.images.generate(**kwargs)
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in result.data]
    assert len(images) == 2 and all(im.format == "PNG" and im.size == (64, 64) and im.mode == "RGB" for im in images)
    assert images[0].tobytes() != images[1].tobytes()
    again = client.images.generate(**kwargs)
    assert [d.b64_json for d in again.data] == [d.b64_json for d in result.data]  # the seed fixes them
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.generate(prompt="a red circle", size="1024x1024")
    assert "64x64" in str(refused.value) and refused.value.param == "size"
    with pytest.raises(openai.BadRequestError, match="b64_json"):
        client.images.generate(prompt="a red circle", response_format="url")


def test_a_bad_request_raises_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="default_model", messages=[ask_scene("hi")], max_tokens=100_000)
    assert refused.value.param == "max_tokens" and refused.value.status_code == 400
    with pytest.raises(openai.BadRequestError, match="allow-remote-images"):
        client.chat.completions.create(model="default_model", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])


def test_a_wrong_key_raises_authentication_error(server):
    for key in ("wrong", KEY + "x"):
        other = openai.OpenAI(base_url=server + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            other.models.list()
        with pytest.raises(openai.AuthenticationError):
            other.chat.completions.create(model="default_model", messages=[{"role": "user", "content": "hi"}])


def test_gradio_client_drives_the_page_with_the_key(server, tmp_path):
    from gradio_client import Client, handle_file

    page = Client(server + "/", headers={"Authorization": f"Bearer {KEY}"}, verbose=False,
                  download_files=str(tmp_path))
    endpoints = page.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/chat", "/generate"} <= set(endpoints)
    gallery, seed = page.predict("a red circle above a blue square", 4, 2.0, 7, 2, "euler", 1, api_name="/generate")
    assert seed == "seed 7" and len(gallery) == 2
    for item in gallery:
        with Image.open(item["image"]) as image:
            assert image.size == (64, 64)
    path = tmp_path / "scene.png"
    SCENE.save(path)
    history, question = page.predict(handle_file(str(path)), "describe the image.", [], 32, api_name="/chat")
    assert question == "" and [m["role"] for m in history] == ["user", "assistant"]
    assert history[-1]["content"] in ("a red circle and a blue square",
                                      [{"type": "text", "text": "a red circle and a blue square"}])
    from gradio_client.exceptions import AuthenticationError

    with pytest.raises(AuthenticationError):
        Client(server + "/", verbose=False)  # no key: the page's API is closed too
    with pytest.raises(AuthenticationError):
        Client(server + "/", headers={"Authorization": "Bearer wrong"}, verbose=False)


def test_page_and_health_without_the_key(server):
    import urllib.error
    import urllib.request

    with urllib.request.urlopen(server + "/health", timeout=10) as response:
        assert response.status == 200
    request = urllib.request.Request(server + "/", headers={"Accept": "text/html"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401 and b'name="key"' in refused.value.read()
