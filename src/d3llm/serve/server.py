"""Running the app with uvicorn: in the foreground (`d3llm serve`) or in a background thread
(tests, benchmarks, notebooks).

    with background_server(create_app(lm)) as base_url:   # a free loopback port
        OpenAI(base_url=f"{base_url}/v1", api_key="unused").chat.completions.create(...)

`d3llm serve` binds its port first (`listen`), so a port in use is a one-line error before
the model loads. Shutdown is graceful: uvicorn stops accepting connections, lets open
requests finish (up to `GRACEFUL_SHUTDOWN_SECONDS`), then the app's lifespan fails what still
waits in the queue and waits for the running batch.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI

from d3llm.errors import D3llmError

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_SECONDS = 30  # open streams get this long to finish after Ctrl-C
STARTUP_SECONDS = 60


def listen(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A socket bound to `host:port` for `run_server`; a port in use (or an address this machine
    does not have) is a `D3llmError` that says so."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restarts reuse TIME_WAIT ports
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = " (another server is running there? pick another --port)" if exc.errno == errno.EADDRINUSE else ""
        raise D3llmError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    return sock


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
               sock: socket.socket | None = None, log_level: str = "info") -> None:
    """Serve `app` on `sock` (default: `listen(host, port)`) until interrupted. `api_key` is
    only used to warn about an open server; `log_level` is uvicorn's. Requests are logged by
    the app (`d3llm.serve.app`), so uvicorn's access log is off."""
    sock = sock or listen(host, port)
    if api_key is None and not _is_loopback(host):
        log.warning("serving on %s without an API key: anyone who can reach this address can use the model "
                    "(pass --api-key)", host)
    # log_config=None: uvicorn's own lines go through the root logger, in the one format `d3llm
    # serve` sets (not uvicorn's "INFO:     ..."); its access log is off (the app logs requests)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, log_config=None,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled gracefully (as `uvicorn.run` does)
        pass
    finally:
        sock.close()


@contextmanager
def background_server(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """Run `app` on a free port of `host` in a daemon thread; yield its base URL; stop it on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="d3llm-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise D3llmError(f"the server on {host}:{port} did not start (see the log above)")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(GRACEFUL_SHUTDOWN_SECONDS + 5)
        sock.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
