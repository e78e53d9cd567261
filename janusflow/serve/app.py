"""The server: an HTTP API (FastAPI) and the web page (Gradio, mounted at "/") on one model.

    create_app(engine, limits, api_key=None, allow_remote_images=False) -> FastAPI

Routes: today's ``POST /v1/generate``, ``POST /v1/ask``, ``GET /health``; the OpenAI-compatible
``POST /v1/chat/completions``, ``POST /v1/images/generations``, ``GET /v1/models``
(:mod:`janusflow.serve.openai_routes`); the OpenAPI spec at ``/openapi.json`` (``/docs`` renders it)
and, when Gradio is installed, the page at ``/``.

Refusals: today's routes answer ``{"error": why, "field": name or null}`` (4xx for a malformed or
over-limit request, 503 with ``Retry-After`` when the queue is full or the request ran out of time);
every other ``/v1/`` path answers OpenAI's error object ``{"error": {"message", "type", "param",
"code"}}`` (400 for any malformed request, 413 over a size limit, 429 for a full queue, 504 for a
timeout; see ``docs/serve.md``). With an API key every route but ``/health`` needs it
(:mod:`janusflow.serve.auth`). The model is shared by the API and the page through one
:class:`~janusflow.serve.worker.ModelWorker`, so it runs one request at a time.
"""


import contextlib
import logging
import secrets
import time

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine
from .jobs import CancelCheck, run_on_model
from .limits import ServeLimits
from .openai_schemas import is_openai_path, openai_error_body, openai_status
from .schemas import (CONFLICT, AskResponse, ErrorResponse, GenerateResponse, HealthResponse, ServeError,
                      decode_image_base64, encode_png_base64, request_models)
from .worker import ModelWorker

log = logging.getLogger("janusflow.serve")

ERROR_RESPONSES = {
    400: {"model": ErrorResponse, "description": "the body is not valid JSON, or gives a setting under its old "
                                                 "and new names with different values"},
    401: {"model": ErrorResponse, "description": "no or a wrong API key (when the server has one)"},
    413: {"model": ErrorResponse, "description": "the body or the image is over a size limit"},
    415: {"model": ErrorResponse, "description": "the image is neither PNG nor JPEG"},
    422: {"model": ErrorResponse, "description": "a field is missing, malformed or out of bounds"},
    503: {"model": ErrorResponse, "description": "the queue is full or the request timed out; see Retry-After"},
}


def error_response(status: int, field: str | None, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


VALIDATION_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter"}


def refusal(path: str, status: int, field: str | None, message: str, headers: dict | None = None,
            code: str | None = None) -> JSONResponse:
    """The refusal in the shape of the route asked: OpenAI's error object, or today's ``{error, field}``."""
    if not is_openai_path(path):
        return error_response(status, field, message, headers)
    code = code or {413: "too_large", 415: "unsupported_image_format"}.get(status, "invalid_value" if status < 500 else None)
    status = openai_status(status, code)
    return JSONResponse(openai_error_body(status, message, field, code), status_code=status, headers=headers)


UNION_TAGS = {"system", "developer", "user", "assistant", "text", "image_url"}  # the OpenAI bodies' tags
TYPE_STEPS = {"str", "int", "float", "bool", "list", "dict", "none", "constrained-str", "constrained-int",
              "constrained-float", "constrained-list"}


def _field_of(loc: tuple) -> str:
    """('body', 'steps') -> 'steps'; ('body',) -> 'body' (the body as a whole). Steps pydantic adds
    for unions are left out: ('body', 'messages', 0, 'user', 'content', 'str') -> 'messages.0.content'
    (the message's role tag, and which member of ``str | list`` was tried)."""
    parts = list(loc[1:]) if loc and loc[0] == "body" else list(loc)
    kept = []
    for i, part in enumerate(parts):
        if isinstance(part, str) and ("[" in part or part in TYPE_STEPS or
                                      (part in UNION_TAGS and i and isinstance(parts[i - 1], int))):
            continue
        kept.append(str(part))
    return ".".join(kept) or "body"


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: by its Content-Length, or (for /v1/) by counting what arrives."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        too_large = refusal(path, 413, "body", f"the request body is over the limit of {self.max_bytes} bytes",
                            code="request_too_large")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await refusal(path, 400, "body", "the Content-Length header is not a number")(scope, receive, send)
            if declared > self.max_bytes:
                return await too_large(scope, receive, send)
        if not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        # Read the whole (bounded) body now, then replay it to the route.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await too_large(scope, receive, send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class AccessLogMiddleware:
    """One line a request: method, path, status, duration. Never bodies, so never image bytes."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            log.info("%s %s %d %.1fms", scope["method"], scope["path"], status[0],
                     1000 * (time.perf_counter() - start))


def create_app(engine: Engine, limits: ServeLimits | None = None, *, ui: bool = True,
               worker: ModelWorker | None = None, api_key: str | None = None,
               allow_remote_images: bool = False) -> FastAPI:
    """The API (and, with ``ui`` and Gradio installed, the page at "/") serving ``engine``.

    ``worker``: a shared :class:`ModelWorker` (its owner closes it); by default the app makes one and
    closes it when it shuts down.
    ``api_key``: every route but /health needs ``Authorization: Bearer api_key`` (the page asks once).
    ``allow_remote_images``: chat messages may give http(s) image URLs, fetched within the limits."""
    limits = limits or ServeLimits()
    own_worker = worker is None  # a worker passed in is its owner's to close
    worker = worker or ModelWorker(limits.max_queue, limits.request_timeout_s)
    GenerateRequest, AskRequest = request_models(limits)
    retry_after = {"Retry-After": str(limits.retry_after_s)}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if own_worker:
            worker.close()

    app = FastAPI(title="JanusFlow", version="1", summary="Image understanding and text-to-image generation",
                  description="Limits are in the schema. Refusals: `{error, field}` on /v1/generate and /v1/ask, "
                              "OpenAI error objects on the OpenAI-compatible routes (see docs/serve.md).",
                  lifespan=lifespan)
    app.state.engine, app.state.worker, app.state.limits = engine, worker, limits

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, e: ServeError):
        headers = retry_after if e.status == 503 and e.code != "cancelled" else None
        return refusal(request.url.path, e.status, e.field, e.message, headers, e.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        path = request.url.path
        errors = e.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        if is_openai_path(path):  # of a union's errors, the one about the member that was meant (not "not a str")
            first = next((err for err in errors if not err.get("type", "").endswith("_type")), first)
        field = _field_of(tuple(first.get("loc", ())))
        kind = first.get("type")
        if kind == "json_invalid":
            return refusal(path, 400, "body", f"the body is not valid JSON ({first.get('msg')})", code="invalid_json")
        conflict = next((err for err in errors if err.get("type") == CONFLICT), None)
        if conflict is not None:
            return refusal(path, 400, conflict["ctx"]["old"], conflict["msg"], code="conflicting_names")
        if kind == "string_too_long" and (field == "image" or field.endswith("image_url.url")):
            return refusal(path, 413, field, f"the image is over the limit of {limits.max_image_bytes} bytes",
                           code="image_too_large")
        what = f"{field}: " if field else ""
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        why = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        return refusal(path, 422, field, f"{what}{why}{more}", code=VALIDATION_CODES.get(kind, "invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):  # 400 unreadable body, 404, 405
        field = "body" if e.status_code == 400 else None
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return refusal(request.url.path, e.status_code, field, str(e.detail), getattr(e, "headers", None), code)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return refusal(request.url.path, 500, None, f"internal error ({type(e).__name__})", code="internal_error")

    @app.post("/v1/generate", response_model=GenerateResponse, responses=ERROR_RESPONSES,
              summary="Generate images from a prompt")
    async def generate(body: GenerateRequest) -> GenerateResponse:
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)

        def work(job):
            return engine.generate(body.prompt, body.num_images_per_prompt, body.num_inference_steps,
                                   body.guidance_scale, seed, body.solver, progress=job.progress,
                                   candidates=body.candidates)

        images = await run_on_model(worker, work, "prompt")
        encoded = await run_in_threadpool(lambda: [encode_png_base64(image) for image in images])
        return GenerateResponse(images=encoded, seed=seed)

    @app.post("/v1/ask", response_model=AskResponse, responses=ERROR_RESPONSES,
              summary="Answer a question about an image")
    async def ask(body: AskRequest) -> AskResponse:
        image = await run_in_threadpool(decode_image_base64, body.image, limits)

        def work(job):
            return engine.ask(image, body.question, body.max_new_tokens, streamer=CancelCheck(job))

        return AskResponse(answer=await run_on_model(worker, work, "question"))

    @app.get("/health", response_model=HealthResponse, summary="Liveness and queue state")
    async def health() -> HealthResponse:
        numeric = {name: float(value) for name, value, _ in
                   ((n, getattr(limits, n), d) for n, _, d in ServeLimits.documentation())}
        return HealthResponse(status="ok", busy=worker.busy, waiting=worker.waiting, limits=numeric)

    from .openai_routes import add_openai_routes

    add_openai_routes(app, engine, worker, limits, allow_remote_images)
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    if api_key is not None:
        from .auth import ApiKeyMiddleware

        app.add_middleware(ApiKeyMiddleware, api_key=api_key)  # before the body is read
        declare_bearer_auth(app)
    app.add_middleware(AccessLogMiddleware)  # added last = outermost: it sees every response
    if ui:
        mount_ui(app, engine, worker, limits)
    return app


def declare_bearer_auth(app: FastAPI) -> None:
    """State the key in the OpenAPI spec, so that /docs offers to send it ("Authorize")."""
    build = app.openapi

    def openapi():
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"apiKey": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def mount_ui(app: FastAPI, engine: Engine, worker: ModelWorker, limits: ServeLimits) -> bool:
    """Mount the Gradio page at "/" when Gradio is installed; False (and a log line) when it is not."""
    try:
        import gradio as gr
    except ImportError:
        log.warning("gradio is not installed (pip install 'janusflow[demo]'): serving the API only")
        return False
    from .ui import build_ui

    blocks = build_ui(engine, worker, limits)
    gr.mount_gradio_app(app, blocks, path="/", max_file_size=limits.max_image_bytes, ssr_mode=False,
                        show_error=True)
    return True
