"""Errors of ``phasegpt serve`` in OpenAI's JSON shape, each naming the field and the fix.

Every failure a client can cause becomes ``{"error": {"message", "type", "param", "code"}}``
with a 4xx status; a failure of the server's own becomes a 5xx with the request id (the
traceback goes to the server's log, never to the client).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

from phasegpt.serve.protocol import ErrorDetail, ErrorResponse

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         500: "server_error", 503: "server_error"}
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|list\[.*|dict\[.*|function-.*|[A-Z]\w*)$")


class APIError(Exception):
    """An error to answer with ``status`` and OpenAI's error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        detail = ErrorDetail(message=self.message, type=TYPES.get(self.status, "invalid_request_error"),
                             param=self.param, code=self.code)
        return ErrorResponse(error=detail).model_dump()

    def response(self, request_id: str | None = None) -> JSONResponse:
        headers = dict(self.headers)
        if request_id:
            headers["X-Request-ID"] = request_id
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def field_path(loc: tuple[Any, ...]) -> str:
    """``("messages", 0, "content", "str")`` -> ``"messages[0].content"`` (pydantic's union tags dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _TYPE_TAG.match(str(part)):
            out += ("." if out else "") + str(part)
    return out


def from_validation(e: ValidationError, fields: list[str]) -> APIError:
    """One 400 for a request that does not fit its shape: the first problems, each with its field."""
    problems, first = [], None
    seen: set[str] = set()
    for err in e.errors():
        path = field_path(err["loc"])
        if path in seen:  # a union reports each of its members; the first says enough
            continue
        seen.add(path)
        first = first or path or None
        problems.append(_describe(err, path, fields))
        if len(problems) == 3:
            break
    return APIError(400, "; ".join(problems), param=first, code="invalid_request")


def _describe(err: dict, path: str, fields: list[str]) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        where = "" if "." in path or "[" in path else f" (this endpoint reads: {', '.join(fields)})"
        return f"Unrecognized request argument supplied: {path}; remove it{where}"
    if kind == "missing":
        return f"{path} is required; add it to the request"
    if kind == "value_error":
        return f"{path or 'request'}: {msg.removeprefix('Value error, ')}"
    given = err.get("input")
    got = "" if isinstance(given, dict) else f" (got {type(given).__name__} {_short(given)})"
    return f"{path}: {msg}{got}; fix this field and send the request again"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
