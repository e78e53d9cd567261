"""What the server tests share: a fake engine for the queue and timeout tests, and `janusflow serve`
run as a subprocess on a free local port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from PIL import Image

from janusflow.serve.engine import DecodedTurn


class BlockingFakeEngine:
    """A fake engine for the concurrency tests only: ``generate`` and ``decode_turn`` block until
    released (checking for cancellation after every "step" or "token", as the real model does);
    ``ask`` hangs ignoring cancellation. A real model cannot be made to block until told to go on."""

    default_candidates = 1
    model_id = "fake"
    image_size = 8

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.calls = 0

    def generate(self, prompt, num_images_per_prompt, num_inference_steps, guidance_scale, seed, solver,
                 progress=None, candidates=None):
        self.calls += 1
        self.started.release()
        step = 0
        while not self.release.wait(0.01):
            step += 1
            if progress is not None:
                progress(step, 10**9)
        return [Image.new("RGB", (8, 8), (seed % 256, 0, 0))] * num_images_per_prompt

    def ask(self, image, question, max_new_tokens, streamer=None, history=()):
        time.sleep(1.0)
        return "late"

    def stream_answer(self, image, question, max_new_tokens, history=()):
        yield self.ask(image, question, max_new_tokens)

    def decode_turn(self, conversation, system_prompt, config, generator=None, streamer=None):
        """Writes "a" (id 1) every 10 ms, once started and until released."""
        import torch

        self.calls += 1
        self.started.release()
        streamer.put(torch.zeros(1, 5, dtype=torch.long))
        tokens = []
        while not self.release.wait(0.01) and len(tokens) < config.max_new_tokens:
            tokens.append(1)
            streamer.put(torch.tensor([1]))
        return DecodedTurn(5, tokens, len(tokens) < config.max_new_tokens)

    def detokenize(self, ids):
        return "a" * len(ids)

    def new_generator(self, seed):
        import torch

        return torch.Generator().manual_seed(seed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(args: list[str], log: Path, env: dict | None = None, timeout_s: float = 120):
    """`python -m janusflow serve ARGS --port P` in a subprocess; yields its base URL once /health answers."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **(env or {})}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "janusflow", "serve", *args, "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"janusflow serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"janusflow serve did not answer within {timeout_s} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
