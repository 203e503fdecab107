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
import secrets
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from d3llm import __version__
from d3llm.errors import D3llmError
from d3llm.models import LoadedModel
from d3llm.models.hub import hub_id_of_folder
from d3llm.models.tokenizer import quiet_length_warning
from d3llm.serve.body_limit import MAX_BODY_BYTES, BodyLimit
from d3llm.serve.errors import BadRequest
from d3llm.serve.http_errors import ERROR_TYPES, add_error_handlers
from d3llm.serve.metrics import ServerMetrics
from d3llm.serve.protocol import (ChatRequest, CompletionRequest, DecodeRequest, Kind, error_body, finish_reason,
                                  new_id, response_body, summed_usage, usage)
from d3llm.serve.request_log import USAGE_KEY, RequestLog, Throughput
from d3llm.serve.scheduler import Scheduler
from d3llm.serve.service import ClientGone, DecodeFailed, Limits, ModelService, results
from d3llm.serve.streaming import Reply
from d3llm.serve.text import TextStream, chat_prompt_ids
from d3llm.version import code_version

CLIENT_CLOSED_REQUEST = 499  # nginx's code for a client that left before its answer; nobody reads it


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
    stats = Throughput(scheduler)
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
    add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(RequestLog, stats=stats, metrics=metrics)
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
    reply = Reply(kind, new_id(kind), service.model_id, len(ids), config.method, text, request.scope)
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
