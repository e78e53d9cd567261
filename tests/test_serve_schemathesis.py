"""Property-based API test: schemathesis generates requests from the server's own OpenAPI spec
(valid ones and invalid ones) against the app on a tiny random model. No response may be a 5xx,
and every response must match the documented status codes, content types and schemas.

Refusals are 400, 413, 415 or 422 on today's routes and 400, 404 or 413 on the OpenAI-compatible ones
(docs/serve.md). ``positive_data_acceptance`` is left out: the spec cannot express "a decodable PNG",
"no reserved tokens in the prompt" or "the served model's id", so some schema-valid requests are
rightly refused with a 4xx. A streamed chat completion (``stream: true``) is checked as an event stream.
"""

from __future__ import annotations

import collections

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from janusflow.serve.app import create_app  # noqa: E402
from janusflow.serve.engine import ModelEngine  # noqa: E402
from janusflow.serve.limits import ServeLimits  # noqa: E402
from janusflow.serve.tiny_model import build_tiny_model_folder  # noqa: E402
from janusflow.serve.worker import ModelWorker  # noqa: E402

# Small limits keep each generated request fast on the tiny model (at most 4 steps x 2 images).
LIMITS = ServeLimits(max_prompt_chars=120, max_question_chars=120, max_image_bytes=20_000, max_image_pixels=128 * 128,
                     max_steps=4, max_images_per_request=2, max_new_tokens=6, max_body_bytes=64_000,
                     request_timeout_s=60, max_chat_messages=6, max_chat_images=2, max_choices=2)
EXAMPLES = 100  # per operation and mode; the whole file runs in about half a minute on 2 CPU cores


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    engine = ModelEngine.from_folder(build_tiny_model_folder(tmp_path_factory.mktemp("tiny-model")))
    # schemathesis runs the app's lifespan more than once: the worker must outlive each shutdown
    worker = ModelWorker(LIMITS.max_queue, LIMITS.request_timeout_s)
    app = create_app(engine, LIMITS, ui=False, worker=worker)
    # 413 is how the server refuses an over-long image or body; schemathesis expects 400/422 by default.
    config = schemathesis.config.SchemathesisConfig.from_str(
        "[checks.negative_data_rejection]\nexpected-statuses = [400, 413, 415, 422]\n")
    yield schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    worker.close()


# (schemathesis' own pytest plugin does not run under pytest 9, so the strategies are drawn by hand.)
OPERATIONS = [("POST", "/v1/generate", "positive"), ("POST", "/v1/generate", "negative"),
              ("POST", "/v1/ask", "positive"), ("POST", "/v1/ask", "negative"), ("GET", "/health", "positive"),
              ("POST", "/v1/chat/completions", "positive"), ("POST", "/v1/chat/completions", "negative"),
              ("POST", "/v1/images/generations", "positive"), ("POST", "/v1/images/generations", "negative"),
              ("GET", "/v1/models", "positive"), ("GET", "/v1/models/{model}", "positive")]
SINGLE = ("/health", "/v1/models")  # a single possible request


@pytest.mark.parametrize("method, path, mode", OPERATIONS, ids=[f"{m} {p} {g}" for m, p, g in OPERATIONS])
def test_api_never_answers_5xx(api_schema, method, path, mode, request):
    operation = api_schema[path][method]
    statuses: collections.Counter = collections.Counter()

    @given(operation.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case):
        response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
        statuses[response.status_code] += 1
        assert response.status_code < 500, response.text

    run()
    total = sum(statuses.values())
    report = request.config.pluginmanager.get_plugin("terminalreporter")
    if report is not None:
        report.write_line(f"schemathesis {method} {path} ({mode}): {total} requests, statuses {dict(statuses)}")
    assert total >= (1 if path in SINGLE else EXAMPLES // 2)
    if mode == "negative":
        assert all(400 <= code < 500 for code in statuses)
    assert not ({429, 503} & set(statuses)), "the queue refused a request: one at a time, it never fills"
