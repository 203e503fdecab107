"""HTTP errors as OpenAI's error object, `{"error": {"message", "type", "param", "code"}}`:
`error_response` builds one, and `add_error_handlers` turns every error the app raises into
one whose message names what to change and whose `param` names the request field at fault.
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from d3llm.errors import D3llmError
from d3llm.serve.errors import BadRequest
from d3llm.serve.protocol import UNICODE_ERROR, error_body
from d3llm.serve.scheduler import QueueFull

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 422: "invalid_request_error", 503: "server_overloaded",
               500: "server_error"}
ERROR_KEY = "d3llm.error"  # where an error handler leaves its message, for the request log


def error_response(status: int, message: str, headers: dict | None = None, param: str | None = None,
                   request: Request | None = None) -> JSONResponse:
    """OpenAI's error object (its message also left in `request`'s scope for the log). Text from
    the request (an unknown field's name) may hold a lone surrogate, which UTF-8 cannot encode:
    it is sent escaped."""
    message, param = (None if s is None else s.encode("utf-8", "backslashreplace").decode() for s in (message, param))
    if request is not None:
        request.scope[ERROR_KEY] = message
    return JSONResponse(error_body(message, ERROR_TYPES.get(status, "error"), param=param), status, headers)


def add_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's error object with a message that names what to change."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message, cause = str(exc.detail), exc.__cause__
        if exc.status_code == 400 and cause is not None:  # FastAPI could not parse the body: say why
            message = f"the body is not JSON this server can read ({type(cause).__name__}: {cause})"
        return error_response(exc.status_code, message, exc.headers, request=request)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Text that is not valid Unicode is a 400 (the JSON parses; its text cannot be encoded);
        # pydantic also lists the other members of the field's union, which fail too: not said.
        errors = list(exc.errors())
        unicode = [e for e in errors if e["type"] in (UNICODE_ERROR, "string_unicode")]
        problems = []
        for error in unicode or errors:
            where = _field(error)
            problems.append(f"{where}: {error['msg']}" if where else error["msg"])
        return error_response(400 if unicode else 422, "malformed request: " + "; ".join(problems),
                      param=_param(unicode or errors), request=request)

    @app.exception_handler(QueueFull)
    async def busy(request: Request, exc: QueueFull) -> JSONResponse:
        return error_response(503, str(exc), {"Retry-After": "1"}, request=request)

    @app.exception_handler(D3llmError)
    async def bad_setting(request: Request, exc: D3llmError) -> JSONResponse:
        if isinstance(exc, BadRequest):
            return error_response(exc.status, str(exc), param=exc.param, request=request)
        return error_response(400, str(exc), request=request)


_TYPE_TAG = re.compile(r"str|int|float|bool|list|dict|[A-Z].*|.*[\[(].*")  # pydantic's union-member labels


def _param(errors: list[dict]) -> str | None:
    """The field the first error is about, as deep as any error about that field goes: a
    value that fails every member of a union (`prompt: [true]`) fails deepest in the member
    it was meant for (`prompt[0]`, not `prompt`)."""
    fields = [_field(error) for error in errors]
    if not fields or fields[0] is None:
        return None
    top = re.match(r"[^.\[]*", fields[0]).group()
    same = [f for f in fields if f is not None and re.match(r"[^.\[]*", f).group() == top]
    return max(same, key=lambda f: f.count(".") + f.count("["))  # the first of the deepest


def _field(error: dict) -> str | None:
    """The request field a validation error is about, as `messages[0].content`; None when
    the error is about the body as a whole (not JSON, not an object)."""
    loc = list(error["loc"])
    if loc[:1] == ["body"]:
        loc = loc[1:]
    if error["type"] == "extra_forbidden" and loc:  # the unknown field's own name, whatever it is
        loc, last = loc[:-1], [str(loc[-1])]
    else:
        last = []
    parts = [p for p in loc if isinstance(p, int) or not _TYPE_TAG.fullmatch(p)] + last
    if not parts or not isinstance(parts[0], str):
        return None
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
