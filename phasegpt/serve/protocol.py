"""The HTTP shapes of ``phasegpt serve``, as typed models: OpenAI's chat completion request,
response and stream chunk, its model list and error body, and phasegpt's own additions (the
verdict field, documents, ``stop_on_refusal``, and the ``/v1/classify`` request and response).

Requests are strict, as OpenAI's are: an unknown field is an error that names it (a typo such as
``document`` for ``documents`` must not be ignored silently). OpenAI options phasegpt cannot
honour are accepted only at their neutral value (``n: 1``, ``logprobs: false``, ...), anything
else is an error that says so.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Shape(BaseModel):
    """A response shape (extra fields allowed, never produced)."""


# --- requests -------------------------------------------------------------------------------
class Message(Strict):
    """One chat turn. ``content`` may also be OpenAI's list of parts, of which only text is read."""

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None  # accepted and ignored, as by most OpenAI-compatible servers

    @field_validator("content", mode="before")
    @classmethod
    def _join_parts(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        texts = []
        for i, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"content part {i} is {kind!r}; phasegpt reads text only: send a string or "
                                 'parts like {"type": "text", "text": "..."}')
            texts.append(part["text"])
        return "".join(texts)


class Document(Strict):
    """A retrieved document; its text goes into the last user turn through the RAG template."""

    id: str = ""
    text: str

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class StreamOptions(Strict):
    include_usage: bool = False


# OpenAI options phasegpt does not implement, each with the values that mean "not used"
NEUTRAL: dict[str, tuple] = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
    "stop": (None, [], ""),
    "n": (None, 1),
}


class ChatCompletionRequest(Strict):
    """``POST /v1/chat/completions``: OpenAI's request plus ``documents`` and ``stop_on_refusal``."""

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2**63)
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None  # accepted; phasegpt keeps its own audit log instead
    parallel_tool_calls: bool | None = None
    service_tier: str | None = None
    # phasegpt's own
    documents: list[Document] | None = None
    stop_on_refusal: bool = False
    # accepted only at their neutral values (see NEUTRAL)
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    stop: Union[str, list[str], None] = None
    n: int | None = None

    @field_validator(*NEUTRAL)
    @classmethod
    def _neutral(cls, value: Any, info: ValidationInfo) -> Any:
        allowed = NEUTRAL[info.field_name]
        if not any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed):
            shown = ", ".join("null" if a is None else json.dumps(a) for a in allowed)
            raise ValueError(f"phasegpt serve does not support {info.field_name}={json.dumps(value)}; "
                             f"leave it out (accepted: {shown})")
        return value

    @field_validator("messages")
    @classmethod
    def _last_is_user(cls, messages: list[Message]) -> list[Message]:
        if messages[-1].role != "user":
            raise ValueError("the last message must be the user's: the verdict is about the user's last turn")
        return messages

    def generation_tokens(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class ClassifyItem(Strict):
    """One request to classify: a ``prompt`` or a conversation (``messages``), and its documents."""

    prompt: str | None = None
    messages: list[Message] | None = Field(None, min_length=1)
    documents: list[Document] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyItem:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt (a string) or messages (a conversation)")
        if self.messages is not None and self.messages[-1].role != "user":
            raise ValueError("the last message must be the user's: the verdict is about the user's last turn")
        return self


class ClassifyRequest(Strict):
    """``POST /v1/classify``: verdicts from prefill only, no text generated."""

    model: str
    input: list[ClassifyItem] = Field(min_length=1)  # also a string, or strings among the items
    user: str | None = None
    metadata: dict[str, str] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _strings_are_prompts(cls, value: Any) -> Any:
        value = [value] if isinstance(value, str) else value
        return [{"prompt": x} if isinstance(x, str) else x for x in value] if isinstance(value, list) else value


# --- responses ------------------------------------------------------------------------------
class TagOut(Shape):
    text: str
    kind: str
    type: str
    label: str | None


class VerdictOut(Shape):
    """The ``phasegpt`` field of every response: why the model should answer or refuse."""

    label: str
    probs: dict[str, float]
    confidence: float
    evidence: list[str]
    tag: TagOut | None
    ood: float | None
    refusal: bool
    model: str
    head_sha256: str

    @classmethod
    def of(cls, verdict: Any) -> VerdictOut | None:
        if verdict is None:
            return None
        d = verdict.to_dict()
        return cls(**{k: d[k] for k in cls.model_fields})


class Usage(Shape):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class AssistantMessage(Shape):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class Choice(Shape):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(Shape):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    phasegpt: VerdictOut | None


class Delta(Shape):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None


class ChunkChoice(Shape):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(Shape):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    phasegpt: VerdictOut | None = None


class ModelCard(Shape):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "phasegpt"
    head_sha256: str | None = None
    labels: list[str] | None = None


class ModelList(Shape):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ClassifyResult(Shape):
    index: int
    prompt_tokens: int
    phasegpt: VerdictOut


class ClassifyResponse(Shape):
    id: str
    object: Literal["classification.list"] = "classification.list"
    created: int
    model: str
    results: list[ClassifyResult]
    usage: Usage


class ErrorDetail(Shape):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(Shape):
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorDetail
