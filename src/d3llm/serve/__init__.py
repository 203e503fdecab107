"""Serving: an OpenAI-compatible HTTP server over the batched decode loop, and terminal chat.

    from d3llm import load_model
    from d3llm.serve import create_app, background_server
    app = create_app(load_model("tiny-ar"), api_key="secret", max_batch=8)

Modules, from the model outwards:

    scheduler.py     dynamic batching: jobs (prompt ids + DecodeConfig) -> batched decode -> events
    text.py          chat prompts; final token prefixes -> text pieces cut at stop strings
    service.py       per-request settings and limits checked, jobs submitted, answers read back
    protocol.py      OpenAI request and response bodies
    streaming.py     one answer's usage, and its server-sent events
    http_errors.py   every error as OpenAI's error object, naming the field at fault
    body_limit.py    413 for a request body over the limit, before it is parsed
    request_log.py   one log line per request, metrics, throughput lines
    app.py           the FastAPI app: its routes and API key, over the modules above
    server.py        uvicorn in the foreground (`d3llm serve`) or in a background thread
    chat.py          `d3llm chat`: a conversation in the terminal through the same scheduler

The web pieces need the `serve` extra (fastapi, uvicorn); `scheduler`, `text`, `service` and
`chat` do not, so names are imported lazily.
"""

from __future__ import annotations

from d3llm.errors import D3llmError

__all__ = ["ChatSession", "Scheduler", "background_server", "create_app", "run_server"]


def __getattr__(name: str):
    # Deliberately lazy (tests/unit/test_structure.py allows it here): the web modules need the
    # optional `serve` extra, and `d3llm chat` must not import them.
    if name in ("create_app", "background_server", "run_server"):
        try:
            from d3llm.serve import app, server
        except ImportError as exc:
            raise D3llmError(f"serving needs the `serve` extra ({exc.name} is missing): "
                             "pip install 'd3llm[serve]'") from None
        return getattr(app if name == "create_app" else server, name)
    if name == "Scheduler":
        from d3llm.serve.scheduler import Scheduler

        return Scheduler
    if name == "ChatSession":
        from d3llm.serve.chat import ChatSession

        return ChatSession
    raise AttributeError(f"module 'd3llm.serve' has no attribute {name!r}")
