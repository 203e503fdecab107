"""The FastAPI app: OpenAI-compatible routes over one model, a scheduler and its limits.

    app = create_app(load_model("tiny-ar"), api_key="secret", max_batch=8)
    uvicorn.run(app, host="127.0.0.1", port=8000)   # or `d3llm serve`

Routes: `POST /v1/completions`, `POST /v1/chat/completions` (both with `stream: true` as
server-sent events carrying only final text, ending with `data: [DONE]`), `GET /v1/models`,
and `GET /health` (no key needed: load balancers probe it). With `api_key`, the `/v1` routes
need `Authorization: Bearer KEY` (401 otherwise).

Status codes: 400 a setting or prompt the server cannot decode (the message names it), 401 a
missing or wrong key, 404 another model's name, 422 a malformed body, 503 a full queue
(`Retry-After: 1`), 500 a batch that failed to decode. Errors use OpenAI's
`{"error": {"message", "type", ...}}` shape, so the `openai` client raises them as such.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from d3llm.errors import D3llmError
from d3llm.models import LoadedModel
from d3llm.serve.protocol import (ChatRequest, CompletionRequest, DecodeRequest, Kind, chunk_body, error_body,
                                  finish_reason, new_id, response_body, usage, usage_chunk)
from d3llm.serve.scheduler import Finished, QueueFull, Scheduler
from d3llm.serve.service import ClientGone, DecodeFailed, Limits, ModelService, Submission
from d3llm.serve.text import TextStream, chat_prompt_ids

CLIENT_CLOSED_REQUEST = 499  # nginx's code for a client that left before its answer; nobody reads it
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               422: "invalid_request_error", 503: "server_overloaded", 500: "server_error"}


def create_app(
    lm: LoadedModel,
    default_method: str | None = None,
    api_key: str | None = None,
    max_batch: int = 8,
    max_wait_ms: float = 10.0,
    max_queue: int = 256,
    max_prompt_tokens: int | None = None,
    max_tokens_limit: int = 512,
    default_max_tokens: int = 64,
    model_id: str | None = None,
) -> FastAPI:
    """An app serving `lm`: requests decode with `default_method` (d3llm / ar by model) unless
    they name a `method`; up to `max_batch` waiting requests with the same settings decode
    together after waiting at most `max_wait_ms`; more than `max_queue` waiting requests are
    refused (503). `model_id` (default: the model's folder name) is the name clients use."""
    scheduler = Scheduler(lm.model, lm.tokenizer.pad_token_id, max_batch, max_wait_ms, max_queue)
    limits = Limits(max_prompt_tokens, max_tokens_limit, default_max_tokens)
    service = ModelService(lm, scheduler, default_method, limits, model_id or Path(lm.name).name or lm.name)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        scheduler.start()
        try:
            yield
        finally:  # uvicorn has let open requests finish (or timed out); fail what still waits
            await asyncio.to_thread(scheduler.close)

    app = FastAPI(title="d3llm", summary="OpenAI-compatible diffusion LLM server", lifespan=lifespan)
    app.state.service, app.state.scheduler = service, scheduler
    _add_error_handlers(app)
    app.include_router(_v1_routes(service, api_key))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": service.model_id, **scheduler.load()}

    return app


def _v1_routes(service: ModelService, api_key: str | None) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(_bearer_key(api_key))])

    @router.get("/models")
    async def models() -> dict:
        facts = service.lm.facts
        return {"object": "list", "data": [{
            "id": service.model_id, "object": "model", "created": 0, "owned_by": "d3llm",
            "d3llm": {"family": facts.family, "default_method": service.default_method,
                      "max_length": facts.max_length}}]}

    @router.post("/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> dict | Response:
        tokenizer = service.lm.tokenizer
        ids = body.prompt if isinstance(body.prompt, list) else tokenizer.encode(body.prompt)
        return await _answer("text", service, body, ids, request)

    @router.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest, request: Request) -> dict | Response:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        return await _answer("chat", service, body, chat_prompt_ids(service.lm.tokenizer, messages), request)

    return router


def _bearer_key(api_key: str | None):
    """A dependency that accepts `Authorization: Bearer <api_key>` (anything when no key is set)."""

    async def check(authorization: str | None = Header(default=None)) -> None:
        if api_key is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send `Authorization: Bearer KEY`",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


async def _answer(kind: Kind, service: ModelService, body: DecodeRequest, ids: list[int],
                  request: Request) -> dict | Response:
    """Check, submit and answer one request, streamed or whole."""
    if body.model not in (None, service.model_id):
        raise HTTPException(404, f"model {body.model!r} is not served here; this server serves "
                                 f"{service.model_id!r} (GET /v1/models)")
    config = service.decode_config(body.method, body.max_tokens, body.temperature, body.seed, body.threshold)
    service.check_prompt(ids, config)
    text = TextStream(service.lm.tokenizer, body.stop_strings())
    submission = service.submit(ids, config)
    reply = _Reply(kind, new_id(kind), service.model_id, len(ids), config.method, text)
    if body.stream:
        return StreamingResponse(reply.events(submission, request, body.wants_usage_chunk()),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        result = [item async for item in submission.answer(request, text) if isinstance(item, Finished)][-1]
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except DecodeFailed as exc:
        return JSONResponse(error_body(str(exc), ERROR_TYPES[500]), status_code=500)
    return response_body(kind, reply.rid, reply.model, text.text, finish_reason(result, text.stopped),
                         reply.usage(result))


class _Reply:
    """What every message of one answer carries: its kind, id, model, prompt size and method."""

    def __init__(self, kind: Kind, rid: str, model: str, prompt_tokens: int, method: str, text: TextStream):
        self.kind, self.rid, self.model, self.prompt_tokens, self.method, self.text = (
            kind, rid, model, prompt_tokens, method, text)

    def usage(self, result: Finished) -> dict:
        return usage(self.prompt_tokens, result, self.method)

    async def events(self, submission: Submission, request: Request, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: final text pieces, the finish reason, usage if asked, [DONE]."""
        answer = submission.answer(request, self.text)
        try:
            if self.kind == "chat":
                yield _sse(chunk_body(self.kind, self.rid, self.model, first=True))
            async for item in answer:
                if isinstance(item, str):
                    yield _sse(chunk_body(self.kind, self.rid, self.model, piece=item))
                    continue
                yield _sse(chunk_body(self.kind, self.rid, self.model, reason=finish_reason(item, self.text.stopped)))
                if include_usage:
                    yield _sse(usage_chunk(self.kind, self.rid, self.model, self.usage(item)))
        except ClientGone:
            return
        except DecodeFailed as exc:  # headers are sent: the error travels as an event (the client raises it)
            yield _sse(error_body(str(exc), ERROR_TYPES[500]))
        finally:
            await answer.aclose()  # cancels the job if we stop early
        yield "data: [DONE]\n\n"


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's error object with a message that names what to change."""

    def reply(status: int, message: str, headers: dict | None = None, param: str | None = None) -> JSONResponse:
        return JSONResponse(error_body(message, ERROR_TYPES.get(status, "error"), param=param), status, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return reply(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"] if part != "body")
            problems.append(f"{where}: {error['msg']}" if where else error["msg"])
        return reply(422, "malformed request: " + "; ".join(problems))

    @app.exception_handler(QueueFull)
    async def busy(_: Request, exc: QueueFull) -> JSONResponse:
        return reply(503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(D3llmError)
    async def bad_setting(_: Request, exc: D3llmError) -> JSONResponse:
        return reply(400, str(exc))
