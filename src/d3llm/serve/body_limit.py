"""The request-body limit: an ASGI middleware that refuses (413) a body over the server's
limit before any of it is parsed, and reads a refused body (up to a bound, keeping nothing) so
that the client receives the answer instead of a reset connection.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from d3llm.serve.http_errors import error_response

# Largest request body: far above any prompt a model here can take (a 512-token canvas is a few
# KB of text), and small enough that parsing it cannot hold the event loop (a 10 MB prompt took
# 24 s to tokenize; issue 25). `d3llm serve --max-body-bytes` changes it.
MAX_BODY_BYTES = 4 << 20
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


class BodyLimit:
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
            return await error_response(413, message, {"Connection": "close"})(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            received = await receive()
            seen += len(received.get("body", b""))
            if seen > self.max_bytes:
                raise StarletteHTTPException(413, message, {"Connection": "close"})
            return received

        await self.app(scope, counted, send)
