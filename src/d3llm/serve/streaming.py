"""One answer's messages: `Reply` holds what each carries (kind, id, model, prompt size,
method), leaves the answer's usage in the ASGI scope for the request log, and streams the
answer as server-sent events (final text pieces, the finish reason, usage if asked, then
`data: [DONE]`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import Request
from starlette.types import Scope

from d3llm.serve.http_errors import ERROR_TYPES
from d3llm.serve.protocol import Kind, chunk_body, error_body, finish_reason, usage, usage_chunk
from d3llm.serve.request_log import USAGE_KEY
from d3llm.serve.scheduler import Finished
from d3llm.serve.service import ClientGone, DecodeFailed, Submission
from d3llm.serve.text import TextStream


class Reply:
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
