"""The web page (Gradio Blocks, mounted on the API's server at "/"): chat and generation tabs.

Both tabs go through the same :class:`ModelWorker` as the API, so the page and the API share one
queue, one model and the same limits; the same request models validate what the page sends.
"""

from __future__ import annotations

import queue
import secrets
import time
from collections.abc import Iterator, Sequence

import gradio as gr
from pydantic import ValidationError

from ..errors import JanusFlowError
from ..sampler import SOLVERS
from .engine import Engine, Turn, text_streamer
from .limits import ServeLimits
from .schemas import ServeError, check_text, decode_image_bytes, request_models
from .worker import Cancelled, ModelWorker, QueueFull, RequestTimeout

TITLE = "JanusFlow"
INTRO = ("One model that answers questions about images (autoregression) and draws images from text "
         "(rectified flow). The same model serves the HTTP API: see `/docs`.")


def stream_on_worker(worker: ModelWorker, engine: Engine, image, question: str, max_new_tokens: int,
                     history: Sequence[Turn] = ()) -> Iterator[str]:
    """Queue ``engine.ask`` on the worker and yield the answer's text as it is produced."""
    from .jobs import CancelCheck

    streamer = text_streamer(engine, timeout=0.1)

    def work(job):
        try:
            return engine.ask(image, question, max_new_tokens, streamer=CancelCheck(job, streamer), history=history)
        finally:
            streamer.end()

    job = worker.submit(work)
    while True:
        try:
            piece = next(streamer)
        except StopIteration:
            break
        except queue.Empty:
            if time.monotonic() > job.deadline:
                job.cancel()
                raise RequestTimeout(f"the request did not finish within {job.timeout_s:g} s") from None
            continue
        if piece:
            yield piece
    job.future.result()  # the engine's error, if any, is raised here


def turns_of(history: list[dict]) -> list[Turn]:
    """Chatbot messages -> (question, answer) pairs."""
    def text(message):
        content = message.get("content") if isinstance(message, dict) else getattr(message, "content", "")
        if isinstance(content, list):  # content parts
            return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        return content if isinstance(content, str) else ""

    turns, question = [], None
    for message in history or []:
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        if role == "user":
            question = text(message)
        elif role == "assistant" and question is not None:
            turns.append((question, text(message)))
            question = None
    return turns


def _user_error(e: Exception) -> gr.Error:
    if isinstance(e, ValidationError):
        first = e.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ()))
        return gr.Error(f"{field}: {first.get('msg')}" if field else str(first.get("msg")))
    if isinstance(e, ServeError):
        return gr.Error(f"{e.field}: {e.message}" if e.field else e.message)
    if isinstance(e, QueueFull):
        return gr.Error(f"The server is busy ({e}); try again in a moment.")
    if isinstance(e, (RequestTimeout, Cancelled)):
        return gr.Error(f"Timed out: {e}")
    return gr.Error(str(e))


def build_ui(engine: Engine, worker: ModelWorker, limits: ServeLimits) -> gr.Blocks:
    GenerateRequest, _ = request_models(limits)

    def read_image(path: str):
        with open(path, "rb") as f:
            data = f.read(limits.max_image_bytes + 1)
        return decode_image_bytes(data, limits)

    def chat(image_path, question, history, max_new_tokens):
        history = list(history or [])
        try:
            if not image_path:
                raise ServeError(422, "image", "upload an image first")
            if len(question or "") > limits.max_question_chars:
                raise ServeError(422, "question", f"longer than {limits.max_question_chars} characters")
            question = check_text(question or "", "question")
            image = read_image(image_path)
            turns = turns_of(history)
            history += [{"role": "user", "content": question}, {"role": "assistant", "content": ""}]
            yield history, ""
            answer = ""
            for piece in stream_on_worker(worker, engine, image, question, int(max_new_tokens), turns):
                answer += piece
                history[-1] = {"role": "assistant", "content": answer}
                yield history, ""
            if not answer.strip():
                history[-1] = {"role": "assistant", "content": "(the model gave an empty answer)"}
                yield history, ""
        except (ValueError, ServeError, QueueFull, RequestTimeout, Cancelled, JanusFlowError) as e:
            raise _user_error(e) from None

    def generate(prompt, num_inference_steps, guidance_scale, seed, num_images_per_prompt, solver, candidates,
                 progress=gr.Progress()):
        try:
            seed = None if seed is None or int(seed) < 0 else int(seed)
            body = GenerateRequest(prompt=prompt or "", num_inference_steps=int(num_inference_steps),
                                   guidance_scale=float(guidance_scale), seed=seed,
                                   num_images_per_prompt=int(num_images_per_prompt), solver=solver,
                                   candidates=int(candidates))
            seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
            progress(0, desc="waiting for the model")
            job = worker.submit(lambda job: engine.generate(body.prompt, body.num_images_per_prompt,
                                                            body.num_inference_steps, body.guidance_scale, seed,
                                                            body.solver, progress=job.progress,
                                                            candidates=body.candidates))

            def show(job):
                if job.steps_total:
                    progress((job.steps_done, job.steps_total), desc="sampling", unit="steps")

            images = job.result(poll=show)
        except (ValidationError, ValueError, ServeError, QueueFull, RequestTimeout, Cancelled, JanusFlowError) as e:
            raise _user_error(e) from None
        return images, f"seed {seed}"

    with gr.Blocks(title=TITLE, analytics_enabled=False) as blocks:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        with gr.Tab("Chat", id="chat"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(type="filepath", sources=["upload"], label="Image", elem_id="chat-image",
                                     format="png", height=260)  # png: the model sees the uploaded pixels
                    max_new_tokens = gr.Slider(1, limits.max_new_tokens, value=min(128, limits.max_new_tokens),
                                               step=1, label="Max new tokens")
                with gr.Column(scale=2):
                    chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=360,
                                         render_markdown=False)
                    question = gr.Textbox(label="Question", placeholder="Ask about the image",
                                          max_length=limits.max_question_chars, elem_id="question")
                    with gr.Row():
                        ask = gr.Button("Ask", variant="primary", elem_id="ask-button")
                        clear = gr.Button("Clear", elem_id="clear-button")
            # gradio_client: predict(handle_file(path), question, history, max_new_tokens, api_name="/chat")
            ask.click(chat, [image, question, chatbot, max_new_tokens], [chatbot, question], api_name="chat")
            question.submit(chat, [image, question, chatbot, max_new_tokens], [chatbot, question],
                            api_visibility="undocumented")
            clear.click(lambda: [], None, chatbot, api_visibility="undocumented")
            image.change(lambda: [], None, chatbot, api_visibility="undocumented")  # a new image starts a new chat
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    prompt = gr.Textbox(label="Prompt", lines=2, max_length=limits.max_prompt_chars,
                                        elem_id="gen-prompt", placeholder="a red circle above a blue square")
                    steps = gr.Slider(1, limits.max_steps, value=min(30, limits.max_steps), step=1, label="Steps", elem_id="gen-steps")
                    guidance = gr.Slider(0, limits.max_guidance_scale, value=2.0, step=0.1, label="Guidance")
                    seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)", elem_id="gen-seed-input")
                    num_images = gr.Slider(1, limits.max_images_per_request, value=1, step=1, label="Images", elem_id="gen-images")
                    solver = gr.Dropdown(list(SOLVERS), value="euler", label="Solver")
                    candidates = gr.Slider(1, limits.max_candidates, step=1, elem_id="gen-candidates",
                                           value=min(engine.default_candidates, limits.max_candidates),
                                           label="Candidates (the best of N by the model's self-check)")
                    run = gr.Button("Generate", variant="primary", elem_id="gen-button")
                with gr.Column(scale=2):
                    gallery = gr.Gallery(label="Results", columns=2, elem_id="gallery", format="png")
                    used_seed = gr.Markdown(elem_id="gen-seed")
            # gradio_client: predict(prompt, steps, guidance, seed, images, solver, candidates, api_name="/generate")
            run.click(generate, [prompt, steps, guidance, seed, num_images, solver, candidates], [gallery, used_seed],
                      api_name="generate")
    return blocks
