"""The FastAPI app: OpenAI-compatible routes over one model, a scheduler and its limits.

    app = create_app(load_model("tiny-ar"), api_key="secret", max_batch=8)
    uvicorn.run(app, host="127.0.0.1", port=8000)   # or `d3llm serve`

Routes: `POST /v1/completions` (a prompt, or a list of prompts answered as one choice each),
`POST /v1/chat/completions` (both with `stream: true` as server-sent events carrying only
final text, ending with `data: [DONE]`), `GET /v1/models`, and, with no key needed (probes and
scrapers), `GET /health`, `GET /version` and `GET /metrics` (Prometheus; serve/metrics.py).
With `api_key`, the `/v1` routes and `/openapi.json` need `Authorization: Bearer KEY` (401
otherwise), and the browser pages `/docs` and `/redoc` are off (a browser cannot send the
key); without a key all are open.

Status codes: 400 a setting or prompt the server cannot decode, or text that is not valid
Unicode, 401 a missing or wrong key, 404 another model's name, 422 a malformed body, 503 a
full queue (`Retry-After: 1`), 500 a batch that failed to decode. Errors use OpenAI's
`{"error": {"message", "type", "param", "code"}}` shape, so the `openai` client raises them as
such; `param` names the request field at fault (`seed`, `messages[0].content`) when one is.

Logging (logger `d3llm.serve.app`): one INFO line per request, streamed or not, in one format
(client, method, path, status, prompt and completion tokens, NFE, TPF, latency; an error's
reason; `/health` and `/metrics` probes at DEBUG), and every
`log_interval_s` while requests run a throughput line (requests/s, tokens/s, running batch,
queue), as vLLM's server logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from d3llm import __version__
from d3llm.errors import D3llmError
from d3llm.models import LoadedModel
from d3llm.models.hub import hub_id_of_folder
from d3llm.models.tokenizer import quiet_length_warning
from d3llm.serve.errors import BadRequest
from d3llm.serve.metrics import ServerMetrics
from d3llm.serve.protocol import (UNICODE_ERROR, ChatRequest, CompletionRequest, DecodeRequest, Kind, chunk_body,
                                  error_body, finish_reason, new_id, response_body, summed_usage, usage,
                                  usage_chunk)
from d3llm.serve.scheduler import Finished, QueueFull, Scheduler
from d3llm.serve.service import ClientGone, DecodeFailed, Limits, ModelService, Submission, results
from d3llm.serve.text import TextStream, chat_prompt_ids
from d3llm.version import code_version

CLIENT_CLOSED_REQUEST = 499  # nginx's code for a client that left before its answer; nobody reads it
# Largest request body: far above any prompt a model here can take (a 512-token canvas is a few
# KB of text), and small enough that parsing it cannot hold the event loop (a 10 MB prompt took
# 24 s to tokenize; issue 25). `d3llm serve --max-body-bytes` changes it.
MAX_BODY_BYTES = 4 << 20
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 422: "invalid_request_error", 503: "server_overloaded",
               500: "server_error"}
USAGE_KEY = "d3llm.usage"  # where a route leaves an answer's usage in the ASGI scope, for the request log
ERROR_KEY = "d3llm.error"  # where an error handler leaves its message, for the request log
PROBES = ("/health", "/metrics", "/version")  # logged at DEBUG: scrapers call them every few seconds
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", *PROBES)  # metric labels; others: "other"
log = logging.getLogger(__name__)


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
    log_interval_s: float = 10.0,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """An app serving `lm`: requests decode with `default_method` (d3llm / ar by model) unless
    they name a `method`; up to `max_batch` waiting requests with the same settings decode
    together after waiting at most `max_wait_ms`; more than `max_queue` waiting requests are
    refused (503). `model_id` (default: the model's hub id, else its folder name) is the name clients use.
    A throughput line is logged every `log_interval_s` while requests run. A request body of
    more than `max_body_bytes` is refused (413) before it is read in full or parsed."""
    if max_body_bytes < 1:
        raise D3llmError(f"`max_body_bytes` must be >= 1, got {max_body_bytes}")
    quiet_length_warning(lm.tokenizer)  # a long prompt is a 400 naming its length, not a log warning
    scheduler = Scheduler(lm.model, lm.tokenizer.pad_token_id, max_batch, max_wait_ms, max_queue)
    limits = Limits(max_prompt_tokens, max_tokens_limit, default_max_tokens)
    # a model from the hub cache is served under its hub id (ORG/NAME), as vLLM and SGLang do
    served = hub_id_of_folder(lm.path) or Path(lm.name).name or lm.name
    service = ModelService(lm, scheduler, default_method, limits, model_id or served)
    stats = _Throughput(scheduler)
    metrics = ServerMetrics(scheduler)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        scheduler.start()
        reporter = asyncio.create_task(stats.report_every(log_interval_s))
        try:
            yield
        finally:  # uvicorn has let open requests finish (or timed out); fail what still waits
            reporter.cancel()
            await asyncio.to_thread(scheduler.close)

    pages = {} if api_key is None else {"openapi_url": None, "docs_url": None, "redoc_url": None}
    app = FastAPI(title="d3llm", summary="OpenAI-compatible diffusion LLM server", lifespan=lifespan, **pages)
    app.state.service, app.state.scheduler, app.state.started = service, scheduler, int(time.time())
    _add_error_handlers(app)
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(_RequestLog, stats=stats, metrics=metrics)
    app.include_router(_v1_routes(service, api_key, app.state.started))
    if api_key is not None:  # the schema stays available to clients that hold the key

        @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(_bearer_key(api_key))])
        async def openapi() -> dict:
            return app.openapi()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": service.model_id, **scheduler.load()}

    version = {"version": __version__, "code_version": code_version(), "model": service.model_id}

    @app.get("/version")
    async def version_() -> dict:
        return version

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _v1_routes(service: ModelService, api_key: str | None, started: int) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(_bearer_key(api_key))])

    @router.get("/models")
    async def models() -> dict:
        facts = service.lm.facts
        return {"object": "list", "data": [{
            "id": service.model_id, "object": "model", "created": started, "owned_by": "d3llm",
            "d3llm": {"family": facts.family, "default_method": service.default_method,
                      "max_length": facts.max_length}}]}

    @router.post("/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> dict | Response:
        tokenizer = service.lm.tokenizer
        # tokenizing a long prompt takes seconds: in a worker thread, so /health and others answer meanwhile
        if body.prompts() is not None:
            ids = [p if isinstance(p, list) else await asyncio.to_thread(tokenizer.encode, p) for p in body.prompts()]
            return await _answer_many(service, body, ids, request)
        ids = body.prompt if isinstance(body.prompt, list) else await asyncio.to_thread(tokenizer.encode, body.prompt)
        return await _answer("text", service, body, ids, request)

    @router.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest, request: Request) -> dict | Response:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        ids = await asyncio.to_thread(chat_prompt_ids, service.lm.tokenizer, messages)  # off the event loop
        return await _answer("chat", service, body, ids, request, prompt_param="messages")

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
                  request: Request, prompt_param: str = "prompt") -> dict | Response:
    """Check, submit and answer one request, streamed or whole."""
    if body.model not in (None, service.model_id):
        raise BadRequest(f"model {body.model!r} is not served here; this server serves "
                         f"{service.model_id!r} (GET /v1/models)", "model", status=404)
    config = service.decode_config(body.method, body.max_tokens, body.temperature, body.seed, body.threshold)
    service.check_prompt(ids, config, prompt_param)
    text = TextStream(service.lm.tokenizer, body.stop_strings())
    submission = service.submit(ids, config)
    reply = _Reply(kind, new_id(kind), service.model_id, len(ids), config.method, text, request.scope)
    if body.stream:
        return StreamingResponse(reply.events(submission, request, body.wants_usage_chunk()),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        result = await submission.result(request, text)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except DecodeFailed as exc:
        return JSONResponse(error_body(str(exc), ERROR_TYPES[500]), status_code=500)
    return response_body(kind, reply.rid, reply.model, text.text, finish_reason(result, text.stopped),
                         reply.usage(result))


async def _answer_many(service: ModelService, body: CompletionRequest, prompts: list[list[int]],
                       request: Request) -> dict | Response:
    """A list of prompts: every one checked, then all submitted together (they share settings,
    so the scheduler batches them); one choice per prompt, in order; usage summed."""
    if body.stream:
        raise BadRequest("`stream` with a list of prompts is not supported; stream one prompt per request",
                         "stream")
    if body.model not in (None, service.model_id):
        raise BadRequest(f"model {body.model!r} is not served here; this server serves "
                         f"{service.model_id!r} (GET /v1/models)", "model", status=404)
    config = service.decode_config(body.method, body.max_tokens, body.temperature, body.seed, body.threshold)
    for index, ids in enumerate(prompts):
        service.check_prompt(ids, config, f"prompt[{index}]")
    texts = [TextStream(service.lm.tokenizer, body.stop_strings()) for _ in prompts]
    submissions = [service.submit(ids, config) for ids in prompts]
    try:
        answers = await results(submissions, texts, request)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    except DecodeFailed as exc:
        return JSONResponse(error_body(str(exc), ERROR_TYPES[500]), status_code=500)
    usages = [usage(len(ids), r, config.method) for ids, r in zip(prompts, answers)]
    request.scope[USAGE_KEY] = total = summed_usage(usages)
    answer = response_body("text", new_id("text"), service.model_id, "", "stop", total)
    answer["choices"] = [{"index": i, "text": t.text, "logprobs": None, "finish_reason": finish_reason(r, t.stopped)}
                         for i, (t, r) in enumerate(zip(texts, answers))]
    return answer


class _Reply:
    """What every message of one answer carries: its kind, id, model, prompt size and method."""

    def __init__(self, kind: Kind, rid: str, model: str, prompt_tokens: int, method: str, text: TextStream,
                 scope: Scope):
        self.kind, self.rid, self.model, self.prompt_tokens, self.method, self.text = (
            kind, rid, model, prompt_tokens, method, text)
        self.scope = scope

    def usage(self, result: Finished) -> dict:
        """The answer's usage, also left in the scope for the request log."""
        self.scope[USAGE_KEY] = body = usage(self.prompt_tokens, result, self.method)
        return body

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
                usage_ = self.usage(item)  # left in the scope: the request log has it, asked for or not
                if include_usage:
                    yield _sse(usage_chunk(self.kind, self.rid, self.model, usage_))
        except ClientGone:
            return
        except DecodeFailed as exc:  # headers are sent: the error travels as an event (the client raises it)
            yield _sse(error_body(str(exc), ERROR_TYPES[500]))
        finally:
            await answer.aclose()  # cancels the job if we stop early
        yield "data: [DONE]\n\n"


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _error(status: int, message: str, headers: dict | None = None, param: str | None = None,
           request: Request | None = None) -> JSONResponse:
    """OpenAI's error object (its message also left in `request`'s scope for the log). Text from
    the request (an unknown field's name) may hold a lone surrogate, which UTF-8 cannot encode:
    it is sent escaped."""
    message, param = (None if s is None else s.encode("utf-8", "backslashreplace").decode() for s in (message, param))
    if request is not None:
        request.scope[ERROR_KEY] = message
    return JSONResponse(error_body(message, ERROR_TYPES.get(status, "error"), param=param), status, headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's error object with a message that names what to change."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message, cause = str(exc.detail), exc.__cause__
        if exc.status_code == 400 and cause is not None:  # FastAPI could not parse the body: say why
            message = f"the body is not JSON this server can read ({type(cause).__name__}: {cause})"
        return _error(exc.status_code, message, exc.headers, request=request)

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
        return _error(400 if unicode else 422, "malformed request: " + "; ".join(problems),
                      param=_param(unicode or errors), request=request)

    @app.exception_handler(QueueFull)
    async def busy(request: Request, exc: QueueFull) -> JSONResponse:
        return _error(503, str(exc), {"Retry-After": "1"}, request=request)

    @app.exception_handler(D3llmError)
    async def bad_setting(request: Request, exc: D3llmError) -> JSONResponse:
        if isinstance(exc, BadRequest):
            return _error(exc.status, str(exc), param=exc.param, request=request)
        return _error(400, str(exc), request=request)


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


# a refused body is read and dropped up to this many times the limit, and at least DRAIN_BYTES (reading
# is cheap: nothing is kept or parsed), then the connection closes
DRAIN_FACTOR, DRAIN_BYTES = 16, 64 << 20


async def _discard_body(receive: Receive, most: int) -> None:
    """Receive and drop request-body messages until the body ends or `most` bytes have passed."""
    seen = 0
    while seen <= most:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body"):
            return


class _BodyLimit:
    """ASGI middleware: a body over `max_bytes` gets 413, from its Content-Length before a byte is
    read, or as soon as a chunked body passes the limit; nothing of it is parsed. (The overflow
    is an HTTPException: FastAPI passes those through its body reader unchanged.)"""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request body is larger than this server's limit of {self.max_bytes} bytes (--max-body-bytes)"
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            # read the body (up to a bound) without keeping it: a server that closes a connection with
            # unread bytes makes the kernel reset it, and the client may lose the 413 itself
            await _discard_body(receive, max(DRAIN_FACTOR * self.max_bytes, DRAIN_BYTES))
            return await _error(413, message, {"Connection": "close"})(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            received = await receive()
            seen += len(received.get("body", b""))
            if seen > self.max_bytes:
                raise StarletteHTTPException(413, message, {"Connection": "close"})
            return received

        await self.app(scope, counted, send)


class _RequestLog:
    """ASGI middleware: one log line per request, throughput counts, and a JSON 500 (with the
    connection kept open) for an exception no handler took."""

    def __init__(self, app: ASGIApp, stats: "_Throughput", metrics: ServerMetrics):
        self.app, self.stats, self.metrics = app, stats, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.monotonic(), None

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("%s %s failed", scope["method"], scope["path"])
            if status is not None:  # the response began: nothing else can be sent
                raise
            status = 500
            await _error(500, "internal server error (logged on the server)")(scope, receive, send)
        finally:
            self._log(scope, status, time.monotonic() - start)

    def _log(self, scope: Scope, status: int | None, seconds: float) -> None:
        client = scope.get("client")
        where = f"{client[0]}:{client[1]} " if client else ""
        line = f'{where}"{scope["method"]} {scope["path"]}" {status if status is not None else "-"}'
        usage_ = scope.get(USAGE_KEY)
        if usage_ is not None:
            stats = usage_["d3llm"]
            line += (f" prompt_tokens={usage_['prompt_tokens']} completion_tokens={usage_['completion_tokens']}"
                     f" nfe={stats['nfe']} tpf={stats['tokens_per_forward']:.2f}")
            self.stats.count(usage_["prompt_tokens"], usage_["completion_tokens"])
        path = scope["path"] if scope["path"] in ROUTES else "other"
        self.metrics.observe(path, status if status is not None else 0, seconds, usage_)
        line += f" latency={seconds:.3f}s"
        if scope.get(ERROR_KEY):
            line += f" error={json.dumps(scope[ERROR_KEY], ensure_ascii=False)}"
        log.log(logging.DEBUG if scope["path"] in PROBES else logging.INFO, "%s", line)


class _Throughput:
    """Answers and tokens since the last report; a report line while there is work."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        self.answers = self.prompt_tokens = self.completion_tokens = 0
        self.since = time.monotonic()

    def count(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.answers += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def report(self) -> None:
        load = self.scheduler.load()
        now = time.monotonic()
        seconds = max(now - self.since, 1e-9)
        if self.answers or load["running"] or load["waiting"]:
            log.info("throughput: %.2f requests/s, prompt %.1f tokens/s, completion %.1f tokens/s; "
                     "running %d, waiting %d", self.answers / seconds, self.prompt_tokens / seconds,
                     self.completion_tokens / seconds, load["running"], load["waiting"])
        self.answers = self.prompt_tokens = self.completion_tokens = 0
        self.since = now

    async def report_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.report()
