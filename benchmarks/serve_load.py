"""Load test of the OpenAI-compatible server: throughput and latency with dynamic batching
(`--max-batch`) and without it (max_batch=1, one request at a time), as a Markdown table.

    python benchmarks/serve_load.py --model tiny-ar --requests 64 --concurrency 16

The server runs in this process (uvicorn in a background thread, on a free loopback port);
`--concurrency` client threads send chat completions for held-out `arith` test problems
(greedy, `--max-tokens` each) through the official `openai` client until `--requests` are
answered. Each setting is warmed up with one request first. Clients, HTTP and the model share
this process and its cores, so absolute numbers understate a dedicated server: compare the
rows as ratios, on one machine, in one run. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai
import torch

from d3llm.models import load_model
from d3llm.serve import background_server, create_app
from d3llm.tasks import get_task


@dataclass
class LoadResult:
    max_batch: int
    seconds: float  # wall time of the whole load
    latencies: list[float]  # per answered request, seconds
    tokens: int  # completion tokens of the answered requests
    failures: int
    mean_batch: float  # mean rows per decoded batch

    def row(self) -> list[str]:
        answered = len(self.latencies)
        p50, p95 = (_percentile(self.latencies, q) for q in (50, 95)) if answered else (float("nan"),) * 2
        return [str(self.max_batch), f"{self.mean_batch:.1f}", f"{answered / self.seconds:.2f}",
                f"{self.tokens / self.seconds:.1f}", f"{p50:.2f}", f"{p95:.2f}", str(self.failures)]


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def run_load(lm, questions: list[str], args, max_batch: int) -> LoadResult:
    """Serve `lm` with `max_batch` and answer every question with `args.concurrency` clients."""
    app = create_app(lm, args.method, max_batch=max_batch, max_wait_ms=args.max_wait_ms,
                     max_queue=max(len(questions), 1), max_tokens_limit=args.max_tokens)
    with background_server(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)

        def ask(question: str) -> tuple[float, int] | None:
            started = time.perf_counter()
            try:
                answer = client.chat.completions.create(
                    model=app.state.service.model_id, messages=[{"role": "user", "content": question}],
                    max_tokens=args.max_tokens)
            except openai.APIError:
                return None
            return time.perf_counter() - started, answer.usage.completion_tokens

        ask(questions[0])  # warm-up
        app.state.scheduler.batch_sizes.clear()
        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            outcomes = list(pool.map(ask, questions))
        seconds = time.perf_counter() - started
        sizes = list(app.state.scheduler.batch_sizes)
    answered = [o for o in outcomes if o is not None]
    return LoadResult(max_batch, seconds, [o[0] for o in answered], sum(o[1] for o in answered),
                      len(outcomes) - len(answered), statistics.fmean(sizes) if sizes else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-ar", help="bundled model name or folder")
    parser.add_argument("--method", default=None, help="decode preset (default: d3llm / ar by model)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16, help="client threads sending at once")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    questions = [p.prompt for p in get_task("arith").problems("test", args.requests, seed=0)]
    results = [run_load(lm, questions, args, max_batch) for max_batch in (args.max_batch, 1)]
    method = args.method or ("d3llm" if lm.facts.is_diffusion else "ar")
    print(f"model {args.model} ({method}), {args.requests} requests from {args.concurrency} clients, "
          f"max_tokens {args.max_tokens}, max_wait_ms {args.max_wait_ms:g}, torch threads {torch.get_num_threads()}\n")
    header = ["max_batch", "mean batch", "requests/s", "tokens/s", "p50 latency s", "p95 latency s", "failures"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for result in results:
        print("| " + " | ".join(result.row()) + " |")
    batched, single = results
    print(f"\nthroughput ratio (max_batch={args.max_batch} / max_batch=1): "
          f"{batched.tokens / batched.seconds / max(single.tokens / single.seconds, 1e-9):.2f}x tokens/s")


if __name__ == "__main__":
    main()
