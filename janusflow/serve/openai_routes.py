"""The OpenAI-compatible routes, on the same model, queue, timeouts and limits as today's API:

    POST /v1/chat/completions     answers about images: several images and turns, system messages,
                                  sampling, stop strings, n choices, streaming (server-sent events)
    POST /v1/images/generations   text-to-image, the images as base64 PNG (b64_json)
    GET  /v1/models               the served model (and GET /v1/models/{id})

Refusals are OpenAI error objects (``{"error": {"message", "type", "param", "code"}}``, see
:mod:`janusflow.serve.app`). A streamed answer is refused with a status code like any other request
as long as nothing has been sent: the response starts once the model has read the prompt (so an
over-long conversation is still a 400); a failure after that (a timeout) ends the stream with an
``{"error": ...}`` event, which the OpenAI SDK raises.
"""

# (No ``from __future__ import annotations``: FastAPI must see the request models, built per app, as objects.)
import asyncio
import json
import logging
import secrets
import time

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from .chat_messages import read_messages
from .completion import Completion, SamplingParams, complete
from .engine import Engine
from .jobs import job_error, run_on_model, submit
from .limits import ServeLimits
from .openai_schemas import (ChatChoice, ChatCompletion, ChatCompletionChunk, ChatMessageOut, ChunkChoice,
                             ChunkDelta, ImageData, ImagesResponse, ModelCard, ModelList, OpenAIError, Usage,
                             chat_models, image_models, openai_error_body, openai_status)
from .schemas import ServeError, encode_png_base64
from .worker import ModelWorker

log = logging.getLogger("janusflow.serve")

OPENAI_ERRORS = {
    400: {"model": OpenAIError, "description": "a malformed or unsupported request (param names the field)"},
    401: {"model": OpenAIError, "description": "no or a wrong API key (when the server has one)"},
    404: {"model": OpenAIError, "description": "another model than the one served"},
    413: {"model": OpenAIError, "description": "the body or an image is over a size limit"},
    429: {"model": OpenAIError, "description": "the queue is full; see Retry-After"},
    503: {"model": OpenAIError, "description": "the request was cancelled"},
    504: {"model": OpenAIError, "description": "the request ran past request_timeout_s"},
}
STREAM_RESPONSE = {200: {"description": "the completion; with stream: true, server-sent chat.completion.chunk events",
                         "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


def add_openai_routes(app: FastAPI, engine: Engine, worker: ModelWorker, limits: ServeLimits,
                      allow_remote_images: bool = False) -> None:
    ChatCompletionRequest = chat_models(limits)
    ImageGenerationRequest = image_models(limits, engine.image_size)
    model_id, started = engine.model_id, int(time.time())
    card = ModelCard(id=model_id, created=started)

    def check_model(name) -> None:
        if name is not None and name != model_id:
            raise ServeError(404, "model", f"the model {name!r} does not exist; this server serves {model_id!r}",
                             code="model_not_found")

    @app.get("/v1/models", response_model=ModelList, responses={401: OPENAI_ERRORS[401]},
             summary="The served model (OpenAI)")
    async def list_models() -> ModelList:
        return ModelList(data=[card])

    @app.get("/v1/models/{model:path}", response_model=ModelCard,
             responses={401: OPENAI_ERRORS[401], 404: OPENAI_ERRORS[404]}, summary="One model (OpenAI)")
    async def get_model(model: str) -> ModelCard:
        check_model(model)
        return card

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses={**STREAM_RESPONSE, **OPENAI_ERRORS},
              summary="Answer a conversation about images (OpenAI chat completions)")
    async def chat_completions(body: ChatCompletionRequest):
        check_model(body.model)
        prompt = await read_messages(body.messages, limits, allow_remote_images)
        params = SamplingParams(
            max_new_tokens=body.max_completion_tokens or limits.max_new_tokens,
            temperature=body.temperature or 0.0, top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed if body.seed is not None else secrets.randbelow(2**63), n=body.n, stop=tuple(body.stops()))
        head = {"id": f"chatcmpl-{secrets.token_hex(12)}", "created": int(time.time()), "model": model_id}
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return await stream_completion(worker, engine, prompt, params, head, include_usage)

        def work(job):
            return complete(engine, prompt.conversation, prompt.system_prompt, params, check=job.check)

        result: Completion = await run_on_model(worker, work, "messages")
        return ChatCompletion(**head, usage=usage_of(result), choices=[
            ChatChoice(index=c.index, message=ChatMessageOut(content=c.text), finish_reason=c.finish_reason)
            for c in result.choices])

    @app.post("/v1/images/generations", response_model=ImagesResponse, responses=OPENAI_ERRORS,
              summary="Generate images from a prompt (OpenAI images)")
    async def images_generations(body: ImageGenerationRequest) -> ImagesResponse:
        check_model(body.model)
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        n = body.n or 1

        def work(job):
            return engine.generate(body.prompt, n, body.num_inference_steps, body.guidance_scale, seed, body.solver,
                                   progress=job.progress, candidates=body.candidates)

        images = await run_on_model(worker, work, "prompt")
        encoded = await run_in_threadpool(lambda: [encode_png_base64(image) for image in images])
        return ImagesResponse(created=int(time.time()), data=[ImageData(b64_json=e) for e in encoded],
                              size=f"{engine.image_size}x{engine.image_size}", seed=seed)


def usage_of(result: Completion) -> Usage:
    return Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                 total_tokens=result.prompt_tokens + result.completion_tokens)


def sse(payload) -> str:
    data = payload.model_dump_json() if hasattr(payload, "model_dump_json") else json.dumps(payload)
    return f"data: {data}\n\n"


async def stream_completion(worker: ModelWorker, engine: Engine, prompt, params: SamplingParams, head: dict,
                            include_usage: bool) -> StreamingResponse:
    """Queue the completion; once the model has read the prompt, stream its events as chunks."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def put(*event) -> None:  # from the model's thread
        loop.call_soon_threadsafe(events.put_nowait, event)

    def work(job):
        try:
            result = complete(engine, prompt.conversation, prompt.system_prompt, params, check=job.check,
                              on_start=lambda: put("start"), on_text=lambda i, piece: put("text", i, piece),
                              on_done=lambda i, reason: put("done", i, reason))
        except BaseException as e:
            put("error", e)
            raise
        put("result", result)
        return result

    job = submit(worker, work)

    async def next_event() -> tuple:
        try:
            return await asyncio.wait_for(events.get(), max(0.0, job.deadline - time.monotonic()))
        except asyncio.TimeoutError:
            job.cancel()
            raise ServeError(503, None, f"the request did not finish within {job.timeout_s:g} s", code="timeout") \
                from None

    def refusal(e: BaseException) -> ServeError:
        mapped = job_error(e, "messages")
        if mapped is None:
            raise e
        return mapped

    try:
        first = await next_event()
    except BaseException:
        job.cancel()  # the client went away while the request waited
        raise
    if first[0] == "error":
        raise refusal(first[1]) from None
    usage = {"usage": None} if include_usage else {}

    def chunk(index: int, finish_reason=None, **delta) -> str:
        payload = ChatCompletionChunk(**head, **usage, choices=[
            ChunkChoice(index=index, delta=ChunkDelta(**delta), finish_reason=finish_reason)]).model_dump(mode="json")
        payload["choices"][0]["delta"] = delta  # only what this chunk adds, as OpenAI sends it
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    async def body():
        event = first
        try:
            for index in range(params.n):
                yield chunk(index, role="assistant", content="")
            while True:
                if event[0] == "text":
                    yield chunk(event[1], content=event[2])
                elif event[0] == "done":
                    yield chunk(event[1], finish_reason=event[2])
                elif event[0] == "error":
                    raise refusal(event[1])
                elif event[0] == "result":
                    if include_usage:
                        yield sse(ChatCompletionChunk(**head, choices=[], usage=usage_of(event[1])))
                    yield "data: [DONE]\n\n"
                    return
                event = await next_event()
        except ServeError as e:
            log.info("a streamed answer ended early: %s", e.message)
            yield sse(openai_error_body(openai_status(e.status, e.code), e.message, e.field, e.code))
        except Exception as e:
            log.exception("internal error while streaming an answer")
            yield sse(openai_error_body(500, f"internal error ({type(e).__name__})", None, "internal_error"))
        finally:
            job.cancel()  # no-op once it finished; stops it if the client went away

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
