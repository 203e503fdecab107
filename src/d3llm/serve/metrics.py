"""The server's Prometheus metrics (`GET /metrics`, text exposition format 0.0.4).

    metrics = ServerMetrics(scheduler)
    metrics.observe(path="/v1/chat/completions", status=200, seconds=0.21, usage=usage_dict)
    metrics.render()  # the /metrics body

Counters (`_total`) only grow while the server runs; gauges are read from the scheduler at
scrape time; histograms follow Prometheus' cumulative `_bucket{le=...}`, `_sum`, `_count`.
Names are prefixed `d3llm_`, as vLLM's are `vllm:`. Written here rather than with
prometheus_client: eight metrics, one text format, no global registry to reset in tests.

| metric | kind | what |
|---|---|---|
| d3llm_requests_total{path,status} | counter | HTTP requests answered |
| d3llm_prompt_tokens_total | counter | prompt tokens of decoded requests |
| d3llm_completion_tokens_total | counter | generated tokens (through EOS, as TPF counts) |
| d3llm_request_forwards_total | counter | model forwards each request took part in (its NFE), summed |
| d3llm_tokens_per_forward | histogram | per request: completion tokens / its NFE |
| d3llm_request_latency_seconds | histogram | per decoding request: arrival to last byte |
| d3llm_queue_depth | gauge | requests waiting for a batch |
| d3llm_running_requests | gauge | requests in the running batch |
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds (vLLM's e2e spread, shorter top)
TPF_BUCKETS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0)  # d3LLM students reach 5-8 (docs/benchmarks.md)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; last: +Inf
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip([*map(_number, self.buckets), "+Inf"], self.counts):
            running += count
            out.append(f'{name}_bucket{{le="{bound}"}} {running}')
        return [*out, f"{name}_sum {_number(self.total)}", f"{name}_count {self.n}"]


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else f"{int(value)}.0"


class ServerMetrics:
    """What `/metrics` reports; `observe` is called once per finished request (thread-safe)."""

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.prompt_tokens = self.completion_tokens = self.forwards = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.tpf = Histogram(TPF_BUCKETS)

    def observe(self, path: str, status: int, seconds: float, usage: dict | None) -> None:
        with self.lock:
            self.requests[(path, status)] = self.requests.get((path, status), 0) + 1
            if usage is None:
                return
            stats = usage["d3llm"]
            self.prompt_tokens += usage["prompt_tokens"]
            self.completion_tokens += usage["completion_tokens"]
            self.forwards += stats["nfe"]
            self.tpf.observe(stats["tokens_per_forward"])
            self.latency.observe(seconds)

    def render(self) -> str:
        load = self.scheduler.load()
        with self.lock:
            lines = ["# HELP d3llm_requests_total HTTP requests answered, by path and status.",
                     "# TYPE d3llm_requests_total counter"]
            lines += [f'd3llm_requests_total{{path="{_label(p)}",status="{s}"}} {n}'
                      for (p, s), n in sorted(self.requests.items())]
            for name, value, what in (
                ("d3llm_prompt_tokens_total", self.prompt_tokens, "Prompt tokens of decoded requests."),
                ("d3llm_completion_tokens_total", self.completion_tokens, "Generated tokens, through EOS."),
                ("d3llm_request_forwards_total", self.forwards, "Model forwards each request took part in, summed."),
            ):
                lines += [f"# HELP {name} {what}", f"# TYPE {name} counter", f"{name} {value}"]
            for name, histogram, what in (
                ("d3llm_tokens_per_forward", self.tpf, "Per request: completion tokens / forwards (TPF)."),
                ("d3llm_request_latency_seconds", self.latency, "Per decoding request: arrival to last byte."),
            ):
                lines += [f"# HELP {name} {what}", f"# TYPE {name} histogram", *histogram.lines(name)]
        for name, value, what in (("d3llm_queue_depth", load["waiting"], "Requests waiting for a batch."),
                                  ("d3llm_running_requests", load["running"], "Requests in the running batch.")):
            lines += [f"# HELP {name} {what}", f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
