"""The server's /metrics (Prometheus), /version, one request log line for every request
(streamed ones included, errors with their reason), and lists of prompts on /v1/completions."""

from __future__ import annotations

import logging
import re

import httpx
import pytest

import d3llm
from d3llm.serve import background_server, create_app

QUESTION = "Tom has 3 apples. Tom buys 2 more apples. How many apples does Tom have now?"
CHAT = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16}


@pytest.fixture(scope="module")
def url(lm):
    with background_server(create_app(lm, max_batch=8, max_wait_ms=200)) as base:
        yield base


def metrics(url: str) -> dict[str, float]:
    reply = httpx.get(f"{url}/metrics", timeout=30)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {}
    for line in reply.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_count_requests_tokens_forwards_and_latency(url):
    before = metrics(url)
    plain = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60).json()["usage"]
    streamed = httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=60)
    assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
    httpx.post(f"{url}/v1/chat/completions", json={"messages": []}, timeout=30)  # a 422
    after = metrics(url)

    def grew(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert grew('d3llm_requests_total{path="/v1/chat/completions",status="200"}') == 2
    assert grew('d3llm_requests_total{path="/v1/chat/completions",status="422"}') == 1
    # the streamed answer is the plain one (greedy): the counters grew by twice its usage
    assert grew("d3llm_prompt_tokens_total") == 2 * plain["prompt_tokens"]
    assert grew("d3llm_completion_tokens_total") == 2 * plain["completion_tokens"]
    assert grew("d3llm_request_forwards_total") == 2 * plain["d3llm"]["nfe"]
    assert grew("d3llm_request_latency_seconds_count") == 2 and grew("d3llm_tokens_per_forward_count") == 2
    assert grew("d3llm_tokens_per_forward_sum") == pytest.approx(2 * plain["d3llm"]["tokens_per_forward"])
    assert after['d3llm_tokens_per_forward_bucket{le="+Inf"}'] == after["d3llm_tokens_per_forward_count"]
    assert after["d3llm_queue_depth"] == 0 and after["d3llm_running_requests"] == 0


def test_unknown_paths_share_one_metric_label(url):
    for path in ("/a", "/b", "/c"):
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 404
    labels = [name for name in metrics(url) if name.startswith("d3llm_requests_total")]
    assert 'd3llm_requests_total{path="other",status="404"}' in labels
    assert not any('path="/a"' in name for name in labels)


def test_version(url):
    reply = httpx.get(f"{url}/version", timeout=30).json()
    assert reply["version"] == d3llm.__version__ and reply["code_version"].startswith(d3llm.__version__)


def test_every_request_is_logged_in_one_format(url, caplog):
    caplog.set_level(logging.INFO, logger="d3llm.serve.app")
    httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=60)
    httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "seed": -1, "temperature": 0.5}, timeout=60)
    lines = [r.getMessage() for r in caplog.records if r.name == "d3llm.serve.app"]
    streamed = next(line for line in lines if " 200 " in line)
    assert re.search(r'"POST /v1/chat/completions" 200 prompt_tokens=\d+ completion_tokens=\d+ nfe=\d+ '
                     r'tpf=[0-9.]+ latency=[0-9.]+s$', streamed), streamed
    refused = next(line for line in lines if " 400 " in line)
    assert re.search(r'" 400 latency=[0-9.]+s error=".*`seed` must be an integer in', refused), refused


def test_a_list_of_prompts_gets_one_choice_each(url):
    questions = [QUESTION, "Ann has 5 pens. Ann loses 1 pen. How many pens does Ann have now?"]
    alone = [httpx.post(f"{url}/v1/completions", json={"prompt": q, "max_tokens": 12}, timeout=60).json()
             for q in questions]
    both = httpx.post(f"{url}/v1/completions", json={"prompt": questions, "max_tokens": 12}, timeout=60).json()
    assert [c["index"] for c in both["choices"]] == [0, 1]
    assert [c["text"] for c in both["choices"]] == [a["choices"][0]["text"] for a in alone]  # greedy: same text
    assert both["usage"]["prompt_tokens"] == sum(a["usage"]["prompt_tokens"] for a in alone)
    assert both["usage"]["completion_tokens"] == sum(a["usage"]["completion_tokens"] for a in alone)
    ids = httpx.post(f"{url}/v1/completions", json={"prompt": [[5, 6, 7], [8, 9]], "max_tokens": 4}, timeout=60)
    assert ids.status_code == 200 and len(ids.json()["choices"]) == 2


def test_a_streamed_list_and_a_bad_prompt_in_a_list_are_refused(url):
    streamed = httpx.post(f"{url}/v1/completions", json={"prompt": ["a b", "c d"], "stream": True}, timeout=30)
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "stream"
    empty = httpx.post(f"{url}/v1/completions", json={"prompt": [[5, 6], []], "max_tokens": 4}, timeout=30)
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "prompt[1]"
