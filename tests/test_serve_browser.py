"""The web page in a real browser: Playwright drives Debian's Chromium (by its path, headless) against
`janusflow serve` started as a subprocess on a free local port with a tiny random model and an API key.

The page asks for the key once (a wrong one is refused); then everything runs on the cookie it set. It generates an image and sees it in the gallery (and the progress indicator while it runs), then
uploads an image, asks a question and sees the model's answer stream into the chat; the answer must
be the one the library gives for the same image and question. Screenshots of both tabs
(screenshot.png, screenshot-chat.png) go to $JANUSFLOW_SCREENSHOTS, e.g. docs/ for the README.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from serve_helpers import live_server

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
# Screenshots go to $JANUSFLOW_SCREENSHOTS (e.g. docs/, to refresh the README's) or to a temporary folder,
# so a test run leaves the working tree clean.
SHOTS = Path(os.environ.get("JANUSFLOW_SCREENSHOTS") or tempfile.mkdtemp(prefix="janusflow-shots-"))
QUESTION = "What is in the image?"
MAX_NEW_TOKENS = 24
KEY = "browser-key"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from janusflow.serve.tiny_model import build_tiny_model_folder

    return build_tiny_model_folder(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with live_server(["--model", str(model_dir), "--api-key", KEY], log,
                     env={"GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio"))}, timeout_s=90) as url:
        yield url, log


@pytest.fixture(scope="module")
def page(server):
    url, _ = server
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            page.set_default_timeout(60_000)
            page.goto(url + "/", wait_until="domcontentloaded")
            page.fill("#api-key", "not the key")  # the page asks for the key first
            page.click("#api-key-submit")
            sync_api.expect(page.locator("#api-key-problem")).to_contain_text("wrong")
            page.fill("#api-key", KEY)
            page.click("#api-key-submit")
            page.wait_for_selector("#question textarea")
            yield page
        finally:
            browser.close()


def test_generate_shows_progress_then_the_image_in_the_gallery(page):
    expect = sync_api.expect
    page.get_by_role("tab", name="Generate").click()
    page.fill("#gen-prompt textarea", "a red circle above a blue square")
    # the most steps the server allows, so that the tiny model runs long enough for the progress to show
    steps = page.locator("#gen-steps input[type=number]")
    steps.fill("100")
    steps.press("Enter")
    expect(steps).to_have_value("100")
    # and the most images: the progress is polled ten times a second, so the tiny model must sample
    # for longer than that (100 steps of one image alone finished between two polls once)
    images = page.locator("#gen-images input[type=number]")
    images.fill("4")
    images.press("Enter")
    expect(images).to_have_value("4")
    page.fill("#gen-seed-input input", "0")  # a fixed seed: the same screenshot every run
    page.click("#gen-button")
    expect(page.locator("#gallery")).to_contain_text("steps", timeout=60_000)  # "sampling k/n steps"
    image = page.locator("#gallery img").first
    expect(image).to_be_visible(timeout=120_000)
    size = image.evaluate("img => new Promise(ok => img.complete ? ok([img.naturalWidth, img.naturalHeight]) "
                          ": img.onload = () => ok([img.naturalWidth, img.naturalHeight]))")
    assert size == [32, 32]  # the tiny VAE's image side
    expect(page.locator("#gen-seed")).to_contain_text("seed 0")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "screenshot.png"))


def test_upload_ask_and_see_the_answer(page, model_dir, tmp_path):
    from janusflow.serve.engine import ModelEngine

    picture = tmp_path / "red.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(picture)
    expected = ModelEngine.from_folder(model_dir).ask(Image.open(picture).convert("RGB"), QUESTION, MAX_NEW_TOKENS)
    assert expected.strip()

    expect = sync_api.expect
    page.get_by_role("tab", name="Chat").click()
    page.set_input_files("#chat-image input[type=file]", str(picture))
    expect(page.locator("#chat-image img").first).to_be_visible()
    tokens = page.get_by_label("number input for Max new tokens")
    tokens.fill(str(MAX_NEW_TOKENS))
    tokens.press("Enter")
    page.fill("#question textarea", QUESTION)
    page.click("#ask-button")
    chat = page.locator("#chatbot")
    expect(chat).to_contain_text(QUESTION)
    expect(chat).to_contain_text(" ".join(expected.split()), timeout=60_000)
    # a second turn about the same image
    page.fill("#question textarea", "And what colour is it?")
    page.click("#ask-button")
    expect(chat).to_contain_text("And what colour is it?")
    answers = page.locator("#chatbot [data-testid=bot]")
    expect(answers).to_have_count(2, timeout=60_000)
    expect(answers.nth(1)).to_have_text(re.compile(r"\S"), timeout=60_000)  # the second answer arrived
    previous, deadline = None, time.monotonic() + 60
    while answers.nth(1).inner_text() != previous and time.monotonic() < deadline:  # until it stops growing
        previous = answers.nth(1).inner_text()
        page.wait_for_timeout(700)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "screenshot-chat.png"))


def test_the_server_logged_one_line_a_request_without_image_bytes(server):
    _, log = server
    text = log.read_text()
    assert "POST /gradio_api/" in text or "GET / 200" in text
    assert "Traceback" not in text
    assert "iVBOR" not in text  # no base64 PNG in the log
