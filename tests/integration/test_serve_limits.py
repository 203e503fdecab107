"""The server's limits: a request body over the limit is a 413 before it is parsed
(by Content-Length, or as soon as a chunked body passes it), stop strings are bounded in
number and length, and tokenizing a prompt runs off the event loop, so /health answers while
a long request is being prepared (checked by order of events, not by the clock)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from d3llm.errors import D3llmError
from d3llm.serve import background_server, create_app
from d3llm.serve.protocol import MAX_STOP_CHARS, MAX_STOP_STRINGS
from tests.conftest import run_cli

LIMIT = 64 << 10


@pytest.fixture(scope="module")
def url(lm):
    app = create_app(lm, max_batch=4, max_wait_ms=0, max_tokens_limit=16, max_body_bytes=LIMIT)
    with background_server(app) as base:
        yield base


@pytest.fixture
def http(url):
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client


def completion(**extra) -> dict:
    return {"prompt": "hi", "max_tokens": 4, **extra}


@pytest.mark.parametrize("size", [LIMIT + 1, 10 << 20])
def test_a_body_over_the_limit_is_a_413_and_the_server_lives_on(http, size):
    body = json.dumps(completion(prompt="x" * size)).encode()
    answer = http.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413, answer.text
    assert str(LIMIT) in answer.json()["error"]["message"]
    assert http.get("/health").status_code == 200
    assert http.post("/v1/completions", json=completion()).status_code == 200


def test_a_chunked_body_over_the_limit_is_a_413(http):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(LIMIT // 1024 + 2):
            yield b"x" * 1024
        yield b'", "max_tokens": 4}'

    answer = http.post("/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413, answer.text
    assert http.post("/v1/completions", json=completion()).status_code == 200


@pytest.mark.parametrize("stop", [
    ["x" * 300_000] * 8,
    ["x" * (MAX_STOP_CHARS + 1)],
    "y" * (MAX_STOP_CHARS + 1),
    ["a"] * (MAX_STOP_STRINGS + 1),
])
def test_stop_strings_are_bounded(http, stop):
    answer = http.post("/v1/completions", content=json.dumps(completion(stop=stop)),
                       headers={"Content-Type": "application/json"})
    assert answer.status_code in (400, 413, 422), answer.text
    if answer.status_code != 413:  # the 300,000-character list is also over the body limit
        assert answer.json()["error"]["param"] == "stop"


def test_the_longest_stop_strings_allowed_work(http):
    stop = ["z" * MAX_STOP_CHARS] * MAX_STOP_STRINGS
    assert http.post("/v1/completions", json=completion(stop=stop)).status_code == 200


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_health_answers_while_a_prompt_is_being_tokenized(url, lm, monkeypatch, route):
    entered, release = threading.Event(), threading.Event()
    if route == "/v1/completions":
        real = lm.tokenizer.encode

        def slow_encode(*args, **kwargs):
            entered.set()
            release.wait(60)
            return real(*args, **kwargs)

        monkeypatch.setattr(lm.tokenizer, "encode", slow_encode)
        body = completion()
    else:
        from d3llm.serve import app as app_module

        real_chat = app_module.chat_prompt_ids

        def slow_chat(*args, **kwargs):
            entered.set()
            release.wait(60)
            return real_chat(*args, **kwargs)

        monkeypatch.setattr(app_module, "chat_prompt_ids", slow_chat)
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    done, status = threading.Event(), []

    def request():
        with httpx.Client(base_url=url, timeout=60) as client:
            status.append(client.post(route, json=body).status_code)
        done.set()

    worker = threading.Thread(target=request, daemon=True)
    worker.start()
    try:
        assert entered.wait(30), "the request never reached the tokenizer"
        with httpx.Client(base_url=url, timeout=10) as client:
            health = client.get("/health")  # a blocked event loop would time out here
        assert health.status_code == 200
        assert not done.is_set()  # /health answered while the prompt was still being tokenized
    finally:
        release.set()
        worker.join(60)
    assert status == [200]


def test_max_body_bytes_is_checked(lm, monkeypatch, capsys):
    with pytest.raises(D3llmError, match="max_body_bytes"):
        create_app(lm, max_body_bytes=0)
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--model", "tiny-ar", "--max-body-bytes", "0")
    assert code == 2 and "--max-body-bytes" in err and len(err.strip().splitlines()) == 1, err
