"""What the HTTP routes call: a request's decode settings and prompt checked, its job
submitted to the scheduler, and its answer read back as final text pieces.

Everything a request can get wrong is checked here, before its job is queued, so that one
bad request never fails the batch it would have joined (the decode loop checks a whole
batch at once).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from d3llm.decode import DecodeConfig, DecodeSettingError, default_method as model_default, resolve_config
from d3llm.decode.config import check_seed
from d3llm.errors import D3llmError
from d3llm.models import LoadedModel
from d3llm.serve.errors import BadRequest
from d3llm.serve.scheduler import Failed, Finished, Job, Scheduler
from d3llm.serve.text import TextStream

if TYPE_CHECKING:  # the service itself needs no web framework (`d3llm chat` uses it too)
    from starlette.requests import Request

DISCONNECT_POLL_SECONDS = 0.5  # how often a streamed request waiting for news checks that its client is still there
_REQUEST_FIELDS = {"max_new_tokens": "max_tokens"}  # DecodeConfig field -> request field, where they differ


class DecodeFailed(Exception):
    """The batch holding this request could not be decoded (a server error, not the client's)."""


class ClientGone(Exception):
    """The client disconnected while its answer was being decoded."""


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int | None  # None: whatever fits the model with `max_tokens`
    max_tokens_limit: int  # largest `max_tokens` a request may ask for
    default_max_tokens: int  # `max_tokens` of a request that gives none

    def __post_init__(self) -> None:
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise D3llmError(f"`max_prompt_tokens` must be >= 1 or None, got {self.max_prompt_tokens}")
        if self.max_tokens_limit < 1:
            raise D3llmError(f"`max_tokens_limit` must be >= 1, got {self.max_tokens_limit}")


class ModelService:
    """One loaded model served through a scheduler, with per-request settings and limits."""

    def __init__(self, lm: LoadedModel, scheduler: Scheduler, default_method: str | None, limits: Limits,
                 model_id: str):
        self.lm, self.scheduler, self.limits, self.model_id = lm, scheduler, limits, model_id
        # a server default named by the user wins over the model's own recipe (published checkpoints)
        self.recipe = (default_method, {}) if default_method else lm.recipe
        self.default_method = self.recipe[0] if self.recipe else model_default(lm.facts.family)
        self.decode_config()  # a default method that cannot decode this model fails at start

    def decode_config(self, method: str | None = None, max_tokens: int | None = None, temperature: float | None = None,
                      seed: int | None = None, threshold: float | None = None,
                      settings: dict | None = None) -> DecodeConfig:
        """A request's `DecodeConfig`: its preset (`method`) with its overrides (and `settings`,
        any `DecodeConfig` fields, as `d3llm chat --set` gives them), through `resolve_config`. A
        bad value, or one the method would ignore, is a `BadRequest` naming the request field."""
        max_tokens = max_tokens or min(self.limits.default_max_tokens, self.limits.max_tokens_limit)
        if max_tokens > self.limits.max_tokens_limit:
            raise BadRequest(f"`max_tokens` must be <= {self.limits.max_tokens_limit} on this server, got {max_tokens}",
                             "max_tokens")
        overrides: dict = {"max_new_tokens": max_tokens}
        if temperature:  # a greedy answer keeps the preset's seed, so seeds do not split batches
            overrides.update(temperature=temperature, seed=seed or 0)
        if threshold is not None:
            overrides["threshold"] = threshold
        try:
            if seed is not None and not temperature:  # ignored, but still a value torch must accept
                check_seed(seed)
            return resolve_config(method, self.lm.facts.family, self.recipe or (self.default_method, {}),
                                  **{**overrides, **(settings or {})})
        except DecodeSettingError as exc:
            if exc.setting == "method":
                raise BadRequest(f"{exc}; this server's default is {self.default_method!r}", "method") from None
            raise BadRequest(str(exc), _REQUEST_FIELDS.get(exc.setting, exc.setting)) from None

    def check_prompt(self, ids: list[int], config: DecodeConfig, param: str = "prompt") -> None:
        """A prompt that is empty, over `max_prompt_tokens`, or too long for the model with
        `max_tokens` is the client's error (`BadRequest` naming `param`: prompt or messages)."""
        if not ids:
            raise BadRequest("the prompt is empty", param)
        if self.limits.max_prompt_tokens is not None and len(ids) > self.limits.max_prompt_tokens:
            raise BadRequest(f"the prompt has {len(ids)} tokens; this server accepts at most "
                             f"{self.limits.max_prompt_tokens} (max_prompt_tokens)", param)
        vocab = self.lm.model.config.vocab_size
        if any(not 0 <= i < vocab for i in ids):
            raise BadRequest(f"the prompt's token ids must be in [0, {vocab})", param)
        longest = self.lm.facts.max_length
        if len(ids) + config.max_new_tokens > longest:
            raise BadRequest(f"prompt ({len(ids)} tokens) + `max_tokens` ({config.max_new_tokens}) exceeds the "
                             f"model's maximum length {longest}", param)

    def submit(self, ids: list[int], config: DecodeConfig) -> "Submission":
        """Queue the job (`QueueFull` when the queue is full); its events arrive on this loop."""
        return Submission(self.scheduler, ids, config)


class Submission:
    """A submitted job and the asyncio queue its events arrive on (from the worker thread)."""

    def __init__(self, scheduler: Scheduler, ids: list[int], config: DecodeConfig):
        loop = asyncio.get_running_loop()
        self.scheduler, self.events = scheduler, asyncio.Queue()
        self.job = Job(ids, config, deliver=lambda event: loop.call_soon_threadsafe(self.events.put_nowait, event))
        scheduler.submit(self.job)

    async def answer(self, request: "Request", text: TextStream) -> AsyncIterator[str | Finished]:
        """Final text pieces as they come, then the `Finished` event. Leaving early (the client
        went away, or the consumer stopped iterating) cancels the job and frees its slot."""
        try:
            while True:
                event = await self._next(request)
                if isinstance(event, Failed):
                    raise DecodeFailed(event.message)
                piece = text.release(event)
                if piece:
                    yield piece
                if isinstance(event, Finished):
                    yield event
                    return
        finally:
            self.scheduler.cancel(self.job)

    async def result(self, request: "Request", text: TextStream) -> Finished:
        """The whole answer of a non-streamed request (its text is `text.text`). A client that
        disconnects meanwhile is noticed at once (`ClientGone`): its job is cancelled, and its
        row leaves the running batch after the current forward."""
        return await _unless_gone(request, self._last(request, text))

    async def _last(self, request: "Request", text: TextStream) -> Finished:
        async for item in self.answer(request, text):
            if isinstance(item, Finished):
                return item
        raise AssertionError("an answer ends with Finished or DecodeFailed")

    async def _next(self, request: "Request"):
        """The next event; `ClientGone` if the client disconnects while we wait (a streamed
        response also notices a disconnect itself and stops iterating `answer`)."""
        getter = asyncio.ensure_future(self.events.get())
        try:
            while True:
                done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_SECONDS)
                if done:
                    return getter.result()
                if await request.is_disconnected():
                    raise ClientGone
        finally:
            getter.cancel()


async def results(submissions: list[Submission], texts: list[TextStream], request: "Request") -> list[Finished]:
    """The whole answers of several submissions of one request (a list of prompts), watching
    for one disconnect: `ClientGone` cancels them all."""
    return await _unless_gone(request, asyncio.gather(*(s._last(request, t) for s, t in zip(submissions, texts))))


async def _unless_gone(request: "Request", work):
    """The result of `work` (an awaitable), unless the client disconnects first: then
    `ClientGone`, and `work` is cancelled (each `answer`'s cleanup cancels its job)."""
    collect = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        if collect in done:
            return collect.result()
        raise ClientGone
    finally:
        for task in (collect, gone):
            task.cancel()
        await asyncio.gather(collect, gone, return_exceptions=True)


async def _disconnected(request: "Request") -> None:
    """Return when the client disconnects. Only for a request whose body was read: the ASGI
    server's next message is then `http.disconnect`, sent as soon as the connection closes
    (a streamed response listens the same way)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
