"""The HTTP layer of ``phasegpt serve`` (Starlette): routes, request checks, OpenAI translation.

It only reads requests into the typed shapes of ``protocol``, asks the ``Engine``, and writes
OpenAI's responses back, the verdict in a top-level ``phasegpt`` field of each. Every route but
``/health`` needs the API key when one is set; every bad request gets OpenAI's error JSON.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import anyio
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from phasegpt.errors import AuditError
from phasegpt.serve.engine import Engine, Item, QueueFull, RequestError
from phasegpt.serve.errors import APIError, from_validation
from phasegpt.serve.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ClassifyRequest,
    ClassifyResponse,
    ClassifyResult,
    Delta,
    Document,
    Message,
    ModelCard,
    ModelList,
    Usage,
    VerdictOut,
)

log = logging.getLogger("phasegpt.serve")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")
FINISH = {"refusal": "content_filter", "stop": "stop", "length": "length"}


def create_app(engine: Engine, *, api_key: str | None = None) -> Starlette:
    """The ASGI app serving ``engine``; ``api_key`` (if given) is required on every route but /health."""
    started = int(time.time())

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": engine.name, "active": engine.active,
                             "classify_batches": engine.batches})

    async def models(request: Request, rid: str) -> Response:
        head = engine.model.head
        card = ModelCard(id=engine.name, created=started, head_sha256=head.sha256 if head else None,
                         labels=list(head.config.labels) if head else None)
        return JSONResponse(ModelList(data=[card]).model_dump())

    async def classify(request: Request, rid: str) -> Response:
        req = await read_json(request, ClassifyRequest, engine.limits.max_body_bytes)
        check_model(req.model, engine)
        if len(req.input) > engine.limits.max_classify_items:
            raise APIError(400, f"input has {len(req.input)} items; send at most {engine.limits.max_classify_items} "
                                "per request (split the batch)", param="input", code="too_many_items")
        items = [Item(prompt(x.messages) if x.messages else x.prompt, documents(x.documents), param=f"input[{i}]")
                 for i, x in enumerate(req.input)]
        with engine.admitted():
            tokens = await engine.check(items)
            verdicts = await engine.classify(items, audit_meta(rid, req.user, req.metadata))
        results = [ClassifyResult(index=i, prompt_tokens=n, phasegpt=VerdictOut.of(v))
                   for i, (n, v) in enumerate(zip(tokens, verdicts))]
        body = ClassifyResponse(id=f"clf-{rid}", created=int(time.time()), model=engine.name, results=results,
                                usage=Usage(prompt_tokens=sum(tokens), total_tokens=sum(tokens)))
        return JSONResponse(body.model_dump())

    async def chat(request: Request, rid: str) -> Response:
        req = await read_json(request, ChatCompletionRequest, engine.limits.max_body_bytes)
        check_model(req.model, engine)
        limit = engine.limits.max_tokens
        max_tokens = req.generation_tokens(min(engine.limits.default_max_tokens, limit))
        if max_tokens > limit:
            field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            raise APIError(400, f"{field}={max_tokens} is more than this server generates ({limit}); ask for "
                                f"at most {limit}", param=field, code="max_tokens_too_large")
        item = Item(prompt(req.messages), documents(req.documents))
        options = dict(max_tokens=max_tokens, temp=req.temperature or 0.0,
                       top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed,
                       stop_on_refusal=req.stop_on_refusal)
        meta = audit_meta(rid, req.user, req.metadata)
        cid, created = f"chatcmpl-{rid}", int(time.time())
        if not req.stream:
            with engine.admitted():
                (tokens,) = await engine.check([item])
                r = await engine.generate(item, options, meta)
            refused = r.finish_reason == "refusal"
            message = AssistantMessage(content=None if refused else r.text,
                                       refusal=refusal_text(r.verdict) if refused else None)
            body = ChatCompletion(id=cid, created=created, model=engine.name,
                                  choices=[Choice(message=message, finish_reason=FINISH.get(r.finish_reason, "stop"))],
                                  usage=Usage(prompt_tokens=r.prompt_tokens, completion_tokens=r.generation_tokens,
                                              total_tokens=r.prompt_tokens + r.generation_tokens),
                                  phasegpt=VerdictOut.of(r.verdict))
            return JSONResponse(body.model_dump(), headers=verdict_headers(r.verdict))

        # Streaming: everything that can fail (admission, checks, prefill, the audit write of the
        # verdict) happens before the 200 goes out, so a failure still gets its status code.
        stack = AsyncExitStack()
        try:
            stack.enter_context(engine.admitted())
            await engine.check([item])
            chunks = await stack.enter_async_context(engine.stream(item, options, meta))
            first = await anext(chunks)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            raise
        usage = bool(req.stream_options and req.stream_options.include_usage)

        def event(choices: list[ChunkChoice], **extra) -> str:
            chunk = ChatCompletionChunk(id=cid, created=created, model=engine.name, choices=choices, **extra)
            return f"data: {json.dumps(chunk.model_dump(exclude_none=True), ensure_ascii=False)}\n\n"

        async def events() -> AsyncIterator[str]:
            # the verdict rides on the first event, before any text
            yield event([ChunkChoice(delta=Delta(role="assistant", content=""))], phasegpt=VerdictOut.of(first.verdict))
            text, last = "", first
            try:
                async for c in chunks:
                    text += c.text
                    last = c
                    if c.text:
                        yield event([ChunkChoice(delta=Delta(content=c.text))])
            except Exception as e:  # noqa: BLE001  (the 200 is sent: say it in the stream, as OpenAI does)
                log.error("request %s: stream failed after its first event: %s", rid, e)
                error = APIError(503 if isinstance(e, AuditError) else 500, f"the stream failed: {e}",
                                 code="audit_unavailable" if isinstance(e, AuditError) else "internal_error")
                yield f"data: {json.dumps(error.body(), ensure_ascii=False)}\n\n"
                return
            finish = FINISH.get(last.finish_reason or "stop", "stop")
            refusal = refusal_text(first.verdict) if finish == "content_filter" else None
            # the last event repeats the verdict with any typed tag found in the text
            yield event([ChunkChoice(delta=Delta(refusal=refusal), finish_reason=finish)],
                        phasegpt=VerdictOut.of(engine.model.with_tag(first.verdict, text)))
            if usage:
                n = last.generation_tokens
                yield event([], usage=Usage(prompt_tokens=first.prompt_tokens, completion_tokens=n,
                                            total_tokens=first.prompt_tokens + n))
            yield "data: [DONE]\n\n"

        return EventStream(events(), stack.aclose, headers={"X-Request-ID": rid, **verdict_headers(first.verdict)})

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", guarded(models, api_key), methods=["GET"]),
        Route("/v1/chat/completions", guarded(chat, api_key), methods=["POST"]),
        Route("/v1/classify", guarded(classify, api_key), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})


class EventStream(StreamingResponse):
    """Server-sent events whose clean-up runs however the response ends (a client may leave)."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], cleanup: Callable[[], Awaitable[None]], **kwargs):
        super().__init__(content, **kwargs)
        self.headers["Cache-Control"] = "no-cache"
        self._cleanup = cleanup

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._cleanup()


def guarded(handler: Callable[[Request, str], Awaitable[Response]], api_key: str | None):
    """The route with the API key checked, a request id assigned and errors turned into OpenAI's JSON."""

    async def route(request: Request) -> Response:
        rid = request.headers.get("x-request-id")
        try:
            if rid is not None and not REQUEST_ID.match(rid):
                rid = None
                raise APIError(400, "X-Request-ID must be 1-128 letters, digits or ._:/+=@- ; send another or "
                                    "leave the header out (the server then makes one)", param="X-Request-ID")
            rid = rid or uuid.uuid4().hex
            if api_key is not None:
                check_key(request, api_key)
            response = await handler(request, rid)
        except APIError as e:
            return e.response(rid)
        except RequestError as e:
            return APIError(400, str(e), param=e.param, code=e.code).response(rid)
        except QueueFull as e:
            return APIError(429, str(e), code="rate_limit_exceeded", headers={"Retry-After": "1"}).response(rid)
        except AuditError as e:
            log.error("request %s: audit write failed, answered 503 without text: %s", rid, e)
            return APIError(503, f"the audit log could not record this request, so no answer is given "
                                 f"(fail closed): {e}", code="audit_unavailable").response(rid)
        except ValueError as e:  # the library's word on a request it cannot take
            return APIError(400, str(e), code="invalid_request").response(rid)
        response.headers.setdefault("X-Request-ID", rid)
        return response

    return route


def check_key(request: Request, api_key: str) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if not header:
        raise APIError(401, "no API key was sent; send the header 'Authorization: Bearer <key>' with the key the "
                            "server was started with (--api-key or PHASEGPT_API_KEY)", code="invalid_api_key")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
        raise APIError(401, "the API key is wrong; send 'Authorization: Bearer <key>' with the key the server was "
                            "started with", code="invalid_api_key")


async def read_json(request: Request, shape: type[BaseModel], max_bytes: int) -> BaseModel:
    """The body, size-checked, parsed and validated into ``shape``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(int(declared), max_bytes)
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > max_bytes:
            raise too_large(len(body), max_bytes)
    try:
        data = json.loads(body)
    except ValueError as e:  # JSONDecodeError, or bytes that are not UTF-8
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        reason = e.msg if isinstance(e, json.JSONDecodeError) else "it is not UTF-8 text"
        raise APIError(400, f"the request body is not valid JSON ({reason}{where}); send one JSON object",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body is a JSON {type(data).__name__}; send one JSON object",
                       code="invalid_json")
    try:
        return shape.model_validate(data)
    except ValidationError as e:
        raise from_validation(e, list(shape.model_fields)) from None


def too_large(size: int, limit: int) -> APIError:
    return APIError(413, f"the request body is {size:,} bytes or more; this server reads at most {limit:,} "
                         "(--max-body-bytes): send fewer or shorter documents", code="request_too_large")


def check_model(name: str, engine: Engine) -> None:
    if name != engine.name:
        raise APIError(404, f"the model {name!r} does not exist here; this server serves {engine.name!r} "
                            "(GET /v1/models lists it)", param="model", code="model_not_found")


def prompt(messages: list[Message]) -> str | list[dict[str, str]]:
    """What the Model takes: a lone user message as its text, anything longer as the conversation."""
    if len(messages) == 1:
        return messages[0].content
    return [{"role": m.role, "content": m.content} for m in messages]


def documents(docs: list[Document] | None) -> list[dict] | None:
    return [{"id": d.id, "text": d.text} for d in docs] if docs else None


def audit_meta(rid: str, user: str | None, metadata: dict | None) -> dict:
    meta: dict = {"request_id": rid}
    if user:
        meta["user"] = user
    if metadata:
        meta["client"] = dict(metadata)
    return meta


def verdict_headers(verdict) -> dict[str, str]:
    """The verdict's label and confidence as response headers too: some frameworks pass on a
    response's headers (LangChain's ``include_response_headers``) but drop unknown body fields."""
    if verdict is None:
        return {}
    return {"X-Phasegpt-Label": verdict.label, "X-Phasegpt-Confidence": f"{verdict.confidence:.4f}",
            "X-Phasegpt-Refusal": "true" if verdict.refusal else "false"}


def refusal_text(verdict) -> str:
    return f"phasegpt refused this request: {verdict.label} (confidence {verdict.confidence:.2f})"


async def http_error(request: Request, exc: HTTPException) -> Response:
    """Unknown routes and wrong methods, in OpenAI's shape."""
    if exc.status_code == 404:
        message = f"there is no route {request.url.path}; the routes are /v1/chat/completions, /v1/classify, " \
                  "/v1/models and /health"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}; see the README for each route's method"
    else:
        message = str(exc.detail)
    return APIError(exc.status_code, message).response()


async def server_error(request: Request, exc: Exception) -> Response:
    """A failure of the server's own: the client gets the request id, the log the traceback (Starlette
    re-raises the exception to uvicorn after this response)."""
    rid = request.headers.get("x-request-id") or "-"
    log.error("request %s failed with %s", rid, type(exc).__name__)
    return APIError(500, f"the server failed on this request ({type(exc).__name__}); the server log has the details "
                         f"(request id {rid})", code="internal_error").response()
