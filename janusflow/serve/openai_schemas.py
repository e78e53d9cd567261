"""Bodies of the OpenAI-compatible routes (``/v1/chat/completions``, ``/v1/images/generations``,
``/v1/models``) and OpenAI's error object, with the configured limits in the schema.

The fields are OpenAI's. Those that would change nothing here are accepted at their neutral values
(``frequency_penalty: 0``, ``logprobs: false``, ``tools: []``, ``user``, ...); any other value of them is
refused with a 400 that says why, and a field OpenAI does not have is refused as unknown.
(No ``from __future__ import annotations`` here: pydantic must see the bounds as objects.)
"""

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from ..sampler import SOLVERS
from .limits import ServeLimits
from .schemas import DATA_URL_PREFIX_CHARS, MAX_SEED, check_text, declare_old_names, merge_old_names

LEGACY_PATHS = ("/v1/generate", "/v1/ask")  # today's own API keeps its {error, field} bodies
MAX_STOP_STRINGS = 4  # as OpenAI
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
               429: "rate_limit_error", 503: "server_error", 504: "timeout_error"}


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/") and path not in LEGACY_PATHS


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error, "
                                  "rate_limit_error, timeout_error or server_error")
    param: Optional[str] = Field(None, description="the request field at fault, e.g. messages.0.content")
    code: Optional[str] = None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail


def openai_status(status: int, code: Optional[str]) -> int:
    """Today's API's status for a refusal -> the OpenAI routes' one: every malformed request is a 400
    (not 422 or 415), a full queue 429 and a timeout 504 (OpenAI clients back off and retry on both)."""
    if status in (415, 422):
        return 400
    return {"queue_full": 429, "timeout": 504}.get(code, status)


def openai_error_body(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error" if status >= 500
                                                                    else "invalid_request_error"),
                      "param": param, "code": code}}


def neutral(value: Any, allowed: tuple, why: str) -> Any:
    """``value`` if it is None or one of the values that change nothing here; else why it is refused."""
    if value is None or any(type(value) is type(a) and value == a for a in allowed):
        return value
    raise ValueError(why)


# -- chat ------------------------------------------------------------------------------------------------
def chat_models(limits: ServeLimits):
    """The request model of ``/v1/chat/completions`` carrying ``limits``."""
    strict = ConfigDict(extra="forbid", strict=True)
    text_chars = limits.max_question_chars

    class TextPart(BaseModel):
        model_config = strict
        type: Literal["text"]
        text: str = Field(max_length=text_chars)

    class ImageURL(BaseModel):
        model_config = strict
        url: str = Field(min_length=1, max_length=limits.max_image_base64_chars + DATA_URL_PREFIX_CHARS,
                         description="data:image/png;base64,... (PNG or JPEG), or an http(s) URL when the "
                                     "server runs with --allow-remote-images")
        detail: Optional[Literal["auto", "low", "high"]] = Field(
            None, description="accepted and ignored: every image is resized to the encoder's input")

    class ImagePart(BaseModel):
        model_config = strict
        type: Literal["image_url"]
        image_url: ImageURL

    UserPart = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]

    class SystemMessage(BaseModel):
        """Replaces the model's default system prompt; ``developer`` is a synonym, as in OpenAI."""
        model_config = strict
        role: Literal["system", "developer"]
        content: Union[Annotated[str, Field(max_length=text_chars)], list[TextPart]]
        name: Optional[str] = None

    class UserMessage(BaseModel):
        model_config = strict
        role: Literal["user"]
        content: Union[Annotated[str, Field(max_length=text_chars)], list[UserPart]]
        name: Optional[str] = None

    class AssistantMessage(BaseModel):
        model_config = strict
        role: Literal["assistant"]
        content: Optional[Union[Annotated[str, Field(max_length=text_chars)], list[TextPart]]] = None
        name: Optional[str] = None
        refusal: Optional[str] = None
        tool_calls: Optional[Annotated[list[dict], Field(max_length=0)]] = None

        @field_validator("tool_calls", mode="before")
        @classmethod
        def _tool_calls(cls, value):
            return neutral(value, ([],), "tool calls are not supported: this model only writes text")

    Message = Annotated[Union[SystemMessage, UserMessage, AssistantMessage], Field(discriminator="role")]

    class StreamOptions(BaseModel):
        model_config = strict
        include_usage: bool = Field(False, description="a last chunk with the token counts (choices: [])")

    class ResponseFormat(BaseModel):
        model_config = strict
        type: Literal["text"] = Field(description="only text: no JSON mode or schema")

    class ChatCompletionRequest(BaseModel):
        """An OpenAI chat completion: answer the conversation's last user message."""

        model_config = ConfigDict(extra="forbid", strict=True,
                                  json_schema_extra=declare_old_names({"max_completion_tokens": "max_tokens"}))
        messages: list[Message] = Field(min_length=1, max_length=limits.max_chat_messages)
        model: Optional[str] = Field(None, description="the served model's id (GET /v1/models); null: that one")
        temperature: Optional[float] = Field(None, ge=0, le=2, allow_inf_nan=False,
                                             description="0 (the default, as the release decodes): greedy; "
                                                         "> 0: sampling at this temperature")
        top_p: Optional[float] = Field(None, ge=0, le=1, allow_inf_nan=False,
                                       description="nucleus sampling (default 1); 0 keeps only the likeliest token")
        max_completion_tokens: Optional[int] = Field(
            None, ge=1, le=limits.max_new_tokens, validation_alias=AliasChoices("max_completion_tokens", "max_tokens"),
            description=f"tokens the answer may have (default {limits.max_new_tokens}); old name max_tokens")
        stop: Optional[Union[Annotated[str, Field(min_length=1, max_length=200)],
                             Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]],
                                       Field(max_length=MAX_STOP_STRINGS)]]] = Field(
            None, description="the answer ends before the first of these strings (not included)")
        seed: Optional[int] = Field(None, ge=-2**63, le=2**64 - 1,
                                    description="sampling seed: the same request with the same seed gives the same "
                                                "answer; null draws one")
        n: int = Field(1, ge=1, le=limits.max_choices, description="choices to write")
        stream: Optional[bool] = Field(False, description="server-sent chat.completion.chunk events, then [DONE]")
        stream_options: Optional[StreamOptions] = None
        # OpenAI fields accepted at the values that change nothing here
        user: Optional[str] = None
        metadata: Optional[dict[str, str]] = None
        store: Optional[Literal[False]] = None
        service_tier: Optional[str] = None
        parallel_tool_calls: Optional[bool] = None
        prompt_cache_key: Optional[str] = None
        safety_identifier: Optional[str] = None
        frequency_penalty: Optional[Annotated[float, Field(ge=0, le=0)]] = None
        presence_penalty: Optional[Annotated[float, Field(ge=0, le=0)]] = None
        logit_bias: Optional[Annotated[dict[str, float], Field(max_length=0)]] = None
        logprobs: Optional[Literal[False]] = None
        top_logprobs: Optional[Annotated[int, Field(ge=0, le=0)]] = None
        response_format: Optional[ResponseFormat] = None
        tools: Optional[Annotated[list[dict], Field(max_length=0)]] = None
        tool_choice: Optional[Literal["none"]] = None
        functions: Optional[Annotated[list[dict], Field(max_length=0)]] = None
        function_call: Optional[Literal["none"]] = None
        modalities: Optional[list[Literal["text"]]] = None
        reasoning_effort: None = None
        audio: None = None
        prediction: None = None
        web_search_options: None = None

        @model_validator(mode="before")
        @classmethod
        def _old_names(cls, body):
            return merge_old_names(body, {"max_completion_tokens": "max_tokens"})

        @field_validator("store", mode="before")
        @classmethod
        def _store(cls, v):
            return neutral(v, (False,), "nothing is stored here; leave it false")

        @field_validator("frequency_penalty", "presence_penalty", mode="before")
        @classmethod
        def _penalty(cls, v):
            return neutral(v, (0.0, 0), "only 0 is supported (no repetition penalties)")

        @field_validator("logit_bias", mode="before")
        @classmethod
        def _logit_bias(cls, v):
            return neutral(v, ({},), "logit_bias is not supported")

        @field_validator("logprobs", mode="before")
        @classmethod
        def _logprobs(cls, v):
            return neutral(v, (False,), "log probabilities are not returned")

        @field_validator("top_logprobs", mode="before")
        @classmethod
        def _top_logprobs(cls, v):
            return neutral(v, (0,), "log probabilities are not returned")

        @field_validator("tools", "functions", mode="before")
        @classmethod
        def _tools(cls, v):
            return neutral(v, ([],), "tools are not supported: this model only writes text")

        @field_validator("tool_choice", "function_call", mode="before")
        @classmethod
        def _tool_choice(cls, v):
            return neutral(v, ("none",), "tools are not supported: this model only writes text")

        @field_validator("reasoning_effort", mode="before")
        @classmethod
        def _reasoning(cls, v):
            return neutral(v, (), "this is not a reasoning model")

        @field_validator("audio", "prediction", "web_search_options", mode="before")
        @classmethod
        def _not_served(cls, v):
            return neutral(v, (), "not supported: this model reads images and writes text")

        @field_validator("stop")
        @classmethod
        def _stop(cls, v):
            for s in [v] if isinstance(v, str) else v or []:
                check_text(s, "stop string")
            return v

        @model_validator(mode="after")
        def _stream_options(self):
            if self.stream_options is not None and not self.stream:
                raise ValueError("stream_options is only allowed with stream: true")
            return self

        def stops(self) -> list[str]:
            return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    return ChatCompletionRequest


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: Optional[str] = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int = Field(description="the prompt's tokens: template, system prompt, text and image tokens")
    completion_tokens: int = Field(description="tokens written, over all choices (an end-of-sentence token included)")
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: Optional[str] = None


class ChunkDelta(BaseModel):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: Optional[Literal["stop", "length"]] = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed answer (``data: {...}``); the stream ends with ``data: [DONE]``."""
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Optional[Usage] = None
    system_fingerprint: Optional[str] = None


# -- images ----------------------------------------------------------------------------------------------
def image_models(limits: ServeLimits, image_size: int):
    """The request model of ``/v1/images/generations`` for a model drawing ``image_size`` px squares."""
    served = f"{image_size}x{image_size}"

    class ImageGenerationRequest(BaseModel):
        """OpenAI's image generation, with the sampler's settings as extension fields."""

        model_config = ConfigDict(extra="forbid", strict=True)
        prompt: str = Field(min_length=1, max_length=limits.max_prompt_chars, examples=["a red circle above a blue square"])
        model: Optional[str] = Field(None, description="the served model's id; null: that one")
        n: Optional[int] = Field(1, ge=1, le=limits.max_images_per_request, description="images to draw")
        size: Optional[Literal[served, "auto"]] = Field(None, description=f"{served} (the model's own size) or auto")
        response_format: Optional[Literal["b64_json"]] = Field(None, description="b64_json (the only one served)")
        output_format: Optional[Literal["png"]] = Field(None, description="png (the only one served)")
        quality: Optional[Literal["auto", "standard"]] = Field(None, description="accepted, changes nothing")
        style: None = None
        background: Optional[Literal["auto", "opaque"]] = None
        moderation: Optional[Literal["auto", "low"]] = None
        user: Optional[str] = None
        # extensions: the sampler's settings, as in POST /v1/generate
        num_inference_steps: int = Field(min(30, limits.max_steps), ge=1, le=limits.max_steps, description="ODE steps")
        guidance_scale: float = Field(2.0, ge=0.0, le=limits.max_guidance_scale, allow_inf_nan=False,
                                      description="classifier-free guidance weight w (1 = no guidance)")
        seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="noise seed; null draws one")
        solver: Literal[tuple(SOLVERS)] = Field("euler", description="ODE solver")
        candidates: Optional[int] = Field(None, ge=1, le=limits.max_candidates,
                                          description="the best of up to this many samples an image by the model's "
                                                      "self-check (as in POST /v1/generate); null: the model's default")

        @field_validator("prompt")
        @classmethod
        def _prompt(cls, value: str) -> str:
            return check_text(value, "prompt")

        @field_validator("size", mode="before")
        @classmethod
        def _size(cls, v):
            return neutral(v, (served, "auto"), f"this model draws {served} images only: size must be {served!r} "
                                                f"(or auto)")

        @field_validator("response_format", mode="before")
        @classmethod
        def _response_format(cls, v):
            return neutral(v, ("b64_json",), "only b64_json is served: the images come in the answer, the server "
                                             "keeps no files to link to")

        @field_validator("output_format", mode="before")
        @classmethod
        def _output_format(cls, v):
            return neutral(v, ("png",), "only png is served")

        @field_validator("quality", mode="before")
        @classmethod
        def _quality(cls, v):
            return neutral(v, ("auto", "standard"), "auto or standard (one quality is served)")

        @field_validator("style", mode="before")
        @classmethod
        def _style(cls, v):
            return neutral(v, (), "style is not supported")

        @field_validator("background", mode="before")
        @classmethod
        def _background(cls, v):
            return neutral(v, ("auto", "opaque"), "only opaque images are drawn")

        @field_validator("moderation", mode="before")
        @classmethod
        def _moderation(cls, v):
            return neutral(v, ("auto", "low"), "auto or low (nothing is moderated here)")

    return ImageGenerationRequest


class ImageData(BaseModel):
    b64_json: str = Field(description="a base64-encoded PNG")
    revised_prompt: Optional[str] = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    size: str
    output_format: Literal["png"] = "png"
    seed: int = Field(description="extension: the noise seed used (the one given, or the one drawn)")


# -- models ----------------------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "janusflow"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
