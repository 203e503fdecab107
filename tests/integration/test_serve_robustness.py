"""The server under odd input and odd clients: no 500s, errors that name the field, a gone
client that frees its slot at once, request and throughput logs, and `d3llm serve` on a
port in use. Driven through the official `openai` client and raw HTTP (httpx, sockets),
over the toy LLaDA-style model of test_serve.py.
"""

import json
import logging
import socket
import threading
import time

import httpx
import openai
import pytest

from d3llm.serve import background_server, create_app
from d3llm.serve import scheduler as scheduler_module
from d3llm.serve import service as service_module
from tests.conftest import run_cli

KEY = "test-key"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(lm):
    before = int(time.time())
    app = create_app(lm, api_key=KEY, max_batch=8, max_wait_ms=0, max_tokens_limit=64, max_prompt_tokens=120,
                     log_interval_s=0.2)
    with background_server(app) as url:
        yield app, url, before


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[1]}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server[1], headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
        yield http


def post(http, path, body: bytes | str | dict, content_type="application/json"):
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    return http.post(path, content=content.encode() if isinstance(content, str) else content,
                     headers={"Content-Type": content_type} if content_type else {})


def wait_until(condition, seconds: float = 10.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(every)


# --- seeds, lone surrogates, server errors, value types, gone clients, the docs ------------

def test_seed_out_of_range_is_a_400_naming_seed(client, http):
    for seed in (10**30, 2**63, -1):
        with pytest.raises(openai.BadRequestError, match=r"`seed` must be an integer in \[0, 2\*\*63\)") as error:
            client.completions.create(model="toy-llada", prompt="hi", max_tokens=4, temperature=1.0, seed=seed)
        assert error.value.param == "seed"
    answer = post(http, "/v1/completions", {"prompt": "hi", "max_tokens": 4, "temperature": 1.0, "seed": 2**63 - 1})
    assert answer.status_code == 200, answer.text


def test_lone_surrogate_is_a_400_and_the_connection_lives_on(http):
    raw = '{"messages": [{"role": "user", "content": "a\\ud800b"}], "max_tokens": 4}'
    first = post(http, "/v1/chat/completions", raw)
    second = post(http, "/v1/chat/completions", {"messages": HI, "max_tokens": 4})
    assert first.status_code == 400 and first.json()["error"]["param"] == "messages[0].content"
    assert "lone surrogate" in first.json()["error"]["message"]
    assert second.status_code == 200, second.text
    same = [r.extensions["network_stream"].get_extra_info("client_addr") for r in (first, second)]
    assert same[0] == same[1] and same[0][1] > 0  # one keep-alive connection served both
    for path, body, param in [("/v1/completions", '{"prompt": "a\\ud800b"}', "prompt"),
                              ("/v1/completions", '{"prompt": "hi", "stop": ["\\udfff"]}', "stop[0]"),
                              ("/v1/chat/completions", '{"messages": [{"role": "user", "content": '
                                                       '[{"type": "text", "text": "\\ud800"}]}]}',
                               "messages[0].content[0].text")]:
        answer = post(http, path, body)
        assert (answer.status_code, answer.json()["error"]["param"]) == (400, param), answer.text
    # (the `openai` client cannot send a lone surrogate: it fails to encode its own request)


def test_an_unexpected_exception_is_a_json_500_and_the_connection_lives_on(http, monkeypatch):
    from d3llm.serve import app as app_module

    def broken(*_):
        raise RuntimeError("a bug")

    monkeypatch.setattr(app_module, "chat_prompt_ids", broken)
    first = post(http, "/v1/chat/completions", {"messages": HI, "max_tokens": 4})
    monkeypatch.undo()
    second = post(http, "/v1/chat/completions", {"messages": HI, "max_tokens": 4})
    assert first.status_code == 500 and first.json()["error"]["type"] == "server_error"
    assert second.status_code == 200
    same = [r.extensions["network_stream"].get_extra_info("client_addr") for r in (first, second)]
    assert same[0] == same[1] and same[0][1] > 0


def test_a_bool_is_not_max_tokens_and_temperature_must_be_finite(client, http):
    with pytest.raises(openai.UnprocessableEntityError, match="max_tokens: Input should be a valid integer") as error:
        client.chat.completions.create(model="toy-llada", messages=HI, max_tokens=True)
    assert error.value.param == "max_tokens"
    for value in ("Infinity", "-Infinity", "NaN", "1e-320", "1e308"):  # Python's json reads Infinity and NaN
        answer = post(http, "/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], '
                                                    f'"max_tokens": 4, "temperature": {value}}}')
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "temperature", answer.text
    for value in ("Infinity", "NaN"):
        answer = post(http, "/v1/completions", f'{{"prompt": "hi", "max_tokens": 4, "threshold": {value}}}')
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "threshold", answer.text


def test_a_gone_client_of_a_whole_answer_frees_its_slot_at_once(lm, monkeypatch):
    """A non-streamed answer of 64 forwards; the worker is held after its 3rd forward and the
    client closes the connection meanwhile. The server notices the disconnect by itself (its
    periodic check is set to an hour, so only the ASGI disconnect message can tell it) and
    cancels the job while no forward runs; released, the row leaves the batch with no further
    forward."""
    forwards, held, release = [], threading.Event(), threading.Event()
    real_generate = scheduler_module.generate

    def held_generate(model, prompts, config, pad_token_id, on_step=None):
        def counted(state):
            forwards.append(state.step)
            if len(forwards) == 3:
                held.set()
                release.wait(60)
            return on_step(state)

        return real_generate(model, prompts, config, pad_token_id, on_step=counted)

    monkeypatch.setattr(scheduler_module, "generate", held_generate)
    monkeypatch.setattr(service_module, "DISCONNECT_POLL_SECONDS", 3600.0)
    app = create_app(lm, max_batch=1, max_wait_ms=0, max_tokens_limit=64)
    scheduler, cancelled = app.state.scheduler, []
    real_cancel = scheduler.cancel
    monkeypatch.setattr(scheduler, "cancel", lambda job: (cancelled.append(job), real_cancel(job)))
    try:
        with background_server(app) as url:
            port = int(url.rsplit(":", 1)[1])
            body = json.dumps({"messages": HI, "max_tokens": 64, "method": "vanilla"}).encode()
            request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body)) + body
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(request)
                assert held.wait(60), "the decode did not reach its 3rd forward"
                assert scheduler.load()["running"] == 1 and not cancelled
            wait_until(lambda: cancelled)  # noticed while the worker is held: no forward told it
            assert forwards == [1, 2, 3]
            release.set()
            wait_until(lambda: scheduler.load()["running"] == 0)
            assert forwards == [1, 2, 3]  # the row left before another forward
            answer = httpx.post(f"{url}/v1/chat/completions", json={"messages": HI, "max_tokens": 4}, timeout=30)
            assert answer.status_code == 200  # the server goes on
    finally:
        release.set()


def test_docs_and_schema_need_the_key(server, lm):
    url = server[1]
    assert httpx.get(f"{url}/openapi.json").status_code == 401
    schema = httpx.get(f"{url}/openapi.json", headers={"Authorization": f"Bearer {KEY}"})
    assert schema.status_code == 200 and "/v1/chat/completions" in schema.json()["paths"]
    assert httpx.get(f"{url}/docs").status_code == 404 and httpx.get(f"{url}/redoc").status_code == 404
    with background_server(create_app(lm)) as open_url:  # no key: all open
        assert httpx.get(f"{open_url}/docs").status_code == 200
        assert httpx.get(f"{open_url}/openapi.json").status_code == 200


# --- a sweep of odd bodies -------------------------------------------------------------------

NESTED = "[" * 100_000 + "]" * 100_000
NOT_SERVED = {"model": "gpt-4"}  # a valid body asking for another model: 404, the one case that is not malformed
CASES = [  # (id, change to a valid body or a raw body, the param the error names; None: the body as a whole)
    ("model-type", {"model": 5}, "model"),
    ("model-other", NOT_SERVED, "model"),
    ("max_tokens-string", {"max_tokens": "16"}, "max_tokens"),
    ("max_tokens-bool", {"max_tokens": True}, "max_tokens"),
    ("max_tokens-negative", {"max_tokens": -1}, "max_tokens"),
    ("max_tokens-float", {"max_tokens": 1.5}, "max_tokens"),
    ("max_tokens-huge", {"max_tokens": 10**30}, "max_tokens"),
    ("max_tokens-infinity", {"max_tokens": float("inf")}, "max_tokens"),
    ("temperature-string", {"temperature": "hot"}, "temperature"),
    ("temperature-negative", {"temperature": -1}, "temperature"),
    ("temperature-nan", {"temperature": float("nan")}, "temperature"),
    ("seed-huge", {"temperature": 1.0, "seed": 10**30}, "seed"),
    ("seed-string", {"seed": "7"}, "seed"),
    ("stop-number", {"stop": 5}, "stop"),
    ("stop-numbers", {"stop": [1, 2]}, "stop[0]"),
    ("stop-too-many", {"stop": ["a"] * 9}, "stop"),
    ("stop-empty", {"stop": [""]}, "stop"),
    ("stream-string", {"stream": "yes"}, "stream"),
    ("stream_options-type", {"stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    ("method-type", {"method": 5}, "method"),
    ("method-unknown", {"method": "turbo"}, "method"),
    ("threshold-negative", {"threshold": -1}, "threshold"),
    ("threshold-huge", {"threshold": 1e308}, "threshold"),
    ("n-2", {"n": 2}, "n"),
    ("n-bool", {"n": True}, "n"),
    ("top_p", {"top_p": 0.5}, "top_p"),
    ("user-type", {"user": 5}, "user"),
    ("unknown-field", {"logprobs": True}, "logprobs"),
    ("messages-empty", {"messages": []}, "messages"),
    ("messages-string", {"messages": "hi"}, "messages"),
    ("messages-role", {"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ("messages-no-content", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("messages-image", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
     "messages[0].content[0].type"),
    ("messages-last-assistant", {"messages": [{"role": "assistant", "content": "x"}]}, "messages[0].role"),
    ("messages-nested", {"messages": json.loads("[" * 500 + "]" * 500)}, "messages[0]"),
    ("max_completion_tokens-bool", {"max_completion_tokens": True}, "max_completion_tokens"),
    ("prompt-empty", {"prompt": ""}, "prompt"),
    ("prompt-no-ids", {"prompt": []}, "prompt"),
    ("prompt-bools", {"prompt": [True]}, "prompt[0]"),
    ("prompt-negative-id", {"prompt": [-1]}, "prompt"),
    ("prompt-object", {"prompt": {"a": 1}}, "prompt"),
    ("deeply-nested", NESTED, None),
    ("not-json", "{not json", None),
    ("json-list", "[1, 2]", None),
    ("empty-body", "", None),
    ("huge-integer", '{"max_tokens": ' + "9" * 5000 + "}", None),
    ("not-utf8", b'{"prompt": "\xff\xfe"}', None),
    ("surrogate-key", '{"\\ud800": 1}', None),
    ("text-plain", ("text/plain", json.dumps({"prompt": "hi", "messages": HI})), None),
    ("no-content-type", (None, "{not json"), None),
]
ENDPOINT_OF = {"messages": "chat", "max_completion_tokens": "chat", "prompt": "text"}  # fields of one endpoint only


@pytest.mark.parametrize("kind", ["text", "chat"])
@pytest.mark.parametrize("change, param", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_odd_bodies_are_4xx_naming_the_field(http, kind, change, param):
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    content_type = "application/json"
    if isinstance(change, dict):
        base = {"messages": HI} if kind == "chat" else {"prompt": "hi"}
        body = {**base, "max_tokens": 4, **change}
    elif isinstance(change, tuple):
        content_type, body = change
    else:
        body = change
    answer = post(http, path, body, content_type)
    error = answer.json()["error"]
    if change == NOT_SERVED:
        assert (answer.status_code, error["type"]) == (404, "not_found_error"), answer.text
    else:  # malformed (422) or a value the server cannot decode (400)
        assert answer.status_code in (400, 422) and error["type"] == "invalid_request_error", answer.text
    assert error["message"]
    top = param and param.split("[")[0].split(".")[0]
    if top in ENDPOINT_OF and ENDPOINT_OF[top] != kind:
        assert error["param"] == top and "Extra inputs are not permitted" in error["message"]
    else:
        assert error["param"] == param, error


# --- logs, /v1/models, the serve command -----------------------------------------------------

def test_each_request_is_logged_with_its_figures_and_throughput_is_reported(client, caplog):
    caplog.set_level(logging.INFO, logger="d3llm.serve")
    answer = client.chat.completions.create(model="toy-llada", messages=HI, max_tokens=8,
                                            extra_body={"method": "vanilla"})
    wait_until(lambda: any("throughput:" in r.getMessage() for r in caplog.records), seconds=5)  # every 0.2 s
    lines = [r.getMessage() for r in caplog.records if r.name == "d3llm.serve.app"]
    request = [line for line in lines if '"POST /v1/chat/completions" 200' in line]
    assert len(request) == 1, lines
    assert (f"prompt_tokens={answer.usage.prompt_tokens} completion_tokens=8 nfe=8 tpf=1.00 latency="
            in request[0])
    throughput = next(line for line in lines if "throughput:" in line)
    assert "requests/s" in throughput and "completion" in throughput and "running" in throughput
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="toy-llada", messages=HI, seed=-1)
    wait_until(lambda: any('"POST /v1/chat/completions" 400 latency=' in r.getMessage() for r in caplog.records))


def test_models_report_when_the_server_started(client, server):
    created = client.models.list().data[0].created
    assert server[2] <= created <= time.time()


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(monkeypatch, capsys, model_dir):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        code, out, err = run_cli(monkeypatch, capsys, "serve", "--model", model_dir, "--port", port)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: cannot listen on 127.0.0.1:{port}: "), err
    code, _, err = run_cli(monkeypatch, capsys, "serve", "--model", model_dir, "--log-level", "loud")
    assert code == 2 and err.count("\n") == 1 and "--log-level must be one of debug, info, warning, error" in err
