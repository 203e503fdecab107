"""The request log: an ASGI middleware that logs one line per request (streamed or not) and
counts it in the metrics, answers an exception no handler took with a JSON 500, and a
throughput line every few seconds while requests run. Logger `d3llm.serve.app` (app.py's
docstring gives the format).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from d3llm.serve.http_errors import ERROR_KEY, error_response
from d3llm.serve.metrics import ServerMetrics
from d3llm.serve.scheduler import Scheduler

USAGE_KEY = "d3llm.usage"  # where a route leaves an answer's usage in the ASGI scope, for the request log
PROBES = ("/health", "/metrics", "/version")  # logged at DEBUG: scrapers call them every few seconds
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", *PROBES)  # metric labels; others: "other"
log = logging.getLogger("d3llm.serve.app")  # the server's logger, by the name users configure


class RequestLog:
    """ASGI middleware: one log line per request, throughput counts, and a JSON 500 (with the
    connection kept open) for an exception no handler took."""

    def __init__(self, app: ASGIApp, stats: Throughput, metrics: ServerMetrics):
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
            await error_response(500, "internal server error (logged on the server)")(scope, receive, send)
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


class Throughput:
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
