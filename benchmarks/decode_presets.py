"""Decode presets on a model: accuracy, TPF, tokens/s at batch 1 and batch 8, and the share of
decode time spent outside model forwards. Prints a Markdown table (the source of docs/benchmarks.md's speed tables).

    python benchmarks/decode_presets.py --model tiny-teacher --task arith --task arith-long --n 50
    python benchmarks/decode_presets.py --model tiny-ar --model tiny-block --task arith --task code --batch-sizes 1
    python benchmarks/decode_presets.py --model tiny-ar --model tiny-d3llm --method ar --method d3llm-cache \
        --variant d3llm-cache:refresh_while_waiting=false --task code --batch-sizes 1
    python benchmarks/decode_presets.py --model tiny-ar --model tiny-d3llm@bfloat16 --method ar --method d3llm-cache \
        --task code --batch-sizes 1   # each model in its own fastest dtype (docs/platform-notes.md)

`--task` and `--method` repeat as in `d3llm eval` and `d3llm demo`; the older `--tasks a,b` and
`--methods a,b` are still accepted.

Every row decodes the same test problems (seed 0). Tokens/s is measured after a warm-up, on
this machine: compare rows as ratios. The rows run in turn, `--repeats` times (default 3; each
pass starts one row later, so no row always runs first), and each tokens/s cell is the median
over the passes with their min-max, so a load that comes and goes on a shared machine shows as
spread instead of moving one row. Accuracy (with its 95% interval) and TPF do not change between
passes. This is a benchmark, not a test: it asserts nothing and its numbers depend on the machine.

First it prints the ceiling any batching can reach here: rows per second of one bare model
forward over a canvas of each task's typical length, at each batch size. Where a forward of 8
rows costs 8 forwards of one (a compute-bound CPU), no decoder makes batch 8 faster per row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from d3llm.decode import preset
from d3llm.decode.config import inapplicable, methods_for, parse_overrides
from d3llm.errors import D3llmError
from d3llm.eval.runner import evaluate
from d3llm.models import load_model
from d3llm.models.tokenizer import prompt_ids
from d3llm.tasks import get_task


def forward_rows_per_second(model, length: int, batch_size: int, repeats: int = 10) -> float:
    """Rows per second of one full forward over `length` tokens at `batch_size` (after warm-up)."""
    ids = torch.randint(5, model.config.vocab_size, (batch_size, length), device=model.device)
    with torch.no_grad():
        model(ids, block_start=length // 2)  # block models: half prompt, half response
        started = time.perf_counter()
        for _ in range(repeats):
            model(ids, block_start=length // 2)
    return batch_size * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", metavar="NAME[@DTYPE]",
                        help="Model (repeatable: all in one run; default tiny-teacher); `@bfloat16` loads it in "
                             "that dtype (default: load_model's, float32 on a CPU)")
    parser.add_argument("--task", action="append", default=[], metavar="TASK",
                        help="Task (repeatable, as in `d3llm eval`; default: arith and arith-long)")
    parser.add_argument("--method", action="append", default=[], metavar="METHOD",
                        help="Preset (repeatable, as in `d3llm demo`; default: every preset of each model's family)")
    parser.add_argument("--tasks", default=None, help=argparse.SUPPRESS)  # the old a,b spelling, still accepted
    parser.add_argument("--methods", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", action="append", default=[], metavar="METHOD:NAME=VALUE[,NAME=VALUE]",
                        help="An extra row: a preset with decode settings changed (repeatable)")
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--repeats", type=int, default=3,
                        help="Passes over all rows, in turn; tokens/s is their median and min-max (default 3)")
    parser.add_argument("--no-ceiling", action="store_true", help="Skip the bare-forward lines")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1 (passes over the rows), got {args.repeats}")
    tasks = repeated(args.task, args.tasks) or ["arith", "arith-long"]
    chosen_methods = repeated(args.method, args.methods)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    variants = [variant(text, parser) for text in args.variant]
    header = ["model", "task", "method", "accuracy % [95% CI]", "TPF", *[f"tok/s b{b}" for b in batch_sizes],
              "outside fwd b1"]
    models = [_load(spec, parser) for spec in args.model or ["tiny-teacher"]]
    print(f"n={args.n} per task, seed 0, torch threads {torch.get_num_threads()}; tokens/s: "
          + (f"median (min-max) of {args.repeats} passes over the rows\n" if args.repeats > 1 else "one pass\n"))
    for lm in [] if args.no_ceiling else models:
        for task_name in tasks:
            problems = get_task(task_name).problems("test", 8, 0)
            length = max(len(prompt_ids(lm.tokenizer, p.prompt)) for p in problems) + preset("vanilla").max_new_tokens
            rates = [forward_rows_per_second(lm.model, length, b) for b in batch_sizes]
            cells = ", ".join(f"b{b} {r:.0f} rows/s" for b, r in zip(batch_sizes, rates))
            print(f"{lm.name}: bare forward, {task_name} canvas ({length} tokens): {cells} -> ceiling "
                  f"b{batch_sizes[-1]}/b{batch_sizes[0]} = {rates[-1] / rates[0]:.2f}x")
    rows = table_rows(models, tasks, chosen_methods, variants)
    runs = measure(rows, args.n, batch_sizes, args.repeats)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    firsts = []  # the median pass at the first batch size of every row, for the profile
    for (lm, task, label, _), by_batch in zip(rows, runs):
        cells, first = _cells(by_batch)
        firsts.append((label, first))
        print("| " + " | ".join([lm.name, task.name, label, *cells]) + " |")
    print_profile(firsts, batch_sizes[0])


def table_rows(models, tasks: list[str], methods: list[str], variants: list) -> list[tuple]:
    """(model, task, label, config) of every row, in table order: per task, per model, its presets
    (`methods`, default all of its family) then the variants of its family."""
    rows = []
    for task_name in tasks:
        task = get_task(task_name)
        for lm in models:
            own = methods_for(lm.facts.family)
            rows += [(lm, task, m, preset(m)) for m in methods or own if m in own]
            rows += [(lm, task, label, config) for label, config in variants if config.method in own]
    return rows


def measure(rows: list[tuple], n: int, batch_sizes: list[int], repeats: int) -> list[dict[int, list]]:
    """Per row, per batch size, the result of every pass. Each pass runs every row once, starting
    one row later than the pass before (round robin), so slow spells spread over all rows."""
    runs = [{b: [] for b in batch_sizes} for _ in rows]
    for repeat in range(repeats):
        start = repeat % max(len(rows), 1)
        for index in [*range(start, len(rows)), *range(start)]:
            lm, task, _, config = rows[index]
            for batch_size in batch_sizes:
                runs[index][batch_size].append(evaluate(lm, task, config, n=n, seed=0, batch_size=batch_size))
        print(f"pass {repeat + 1}/{repeats} done", file=sys.stderr, flush=True)
    return runs


def repeated(values: list[str], comma_list: str | None) -> list[str]:
    """`--task a --task b` plus the older `--tasks a,b`, in order, once each."""
    given = [*values, *(v.strip() for v in (comma_list or "").split(",") if v.strip())]
    return list(dict.fromkeys(given))


def _load(spec: str, parser):
    """`tiny-d3llm@bfloat16` -> the model in that dtype, its table name carrying the dtype."""
    name, _, dtype = spec.partition("@")
    try:
        lm = load_model(name, dtype=dtype or "auto")
    except D3llmError as exc:
        parser.error(f"--model {spec}: {exc}")
    if dtype:
        lm.name = f"{lm.name} ({dtype})"
    return lm


def variant(text: str, parser) -> tuple[str, object]:
    """`d3llm-cache:refresh_while_waiting=false` -> (its row label, the preset with that setting)."""
    method, _, settings = text.partition(":")
    try:
        overrides = parse_overrides(settings.split(",") if settings else [])
        config = preset(method, **overrides)
    except D3llmError as exc:
        parser.error(f"--variant {text}: {exc}")
    problems = inapplicable(config, overrides)  # a setting the method ignores would make a twin row
    if problems:
        parser.error(f"--variant {text}: {'; '.join(problems.values())}")
    return f"{method} ({settings})", config


def _cells(by_batch: dict[int, list]):
    """Cells of one row: accuracy with its 95% interval, TPF, tokens/s at each batch size (the
    median and, over several passes, the min-max), the share of time outside forwards at the
    first; and the pass at the median tokens/s (the lower middle of an even count) at the first
    batch size."""
    speeds = []
    for results in by_batch.values():
        rates = [r.tokens_per_second for r in results]
        spread = f" ({min(rates):.1f}-{max(rates):.1f})" if len(rates) > 1 else ""
        speeds.append(f"{statistics.median(rates):.1f}{spread}")
    first = next(iter(by_batch.values()))
    middle = statistics.median_low(r.tokens_per_second for r in first)
    typical = next(r for r in first if r.tokens_per_second == middle)
    outside = 1 - typical.forward_seconds / max(typical.seconds, 1e-9)
    return [typical.accuracy_text(), f"{typical.tokens_per_forward:.2f}", *speeds, f"{100 * outside:.0f}%"], typical


def print_profile(results, batch_size: int) -> None:
    """Where the time goes, per row at `batch_size`: forwards by kind (`full`: from column 0;
    `window`: after a KV cache; ar-spec's verifications are not split), columns and ms per
    forward, ms per iteration outside forwards, and the ceiling: TPF x (ms of the task's `ar`
    forward / ms of this row's forward), the speed-up over `ar` if nothing but forwards cost.
    `ar` is the task's fastest `ar` row (the baseline at its best)."""
    ar = {}  # task -> its fastest `ar` row (several when a model is loaded in two dtypes)
    for _, r in results:
        if r.method == "ar" and (r.task not in ar or r.tokens_per_second > ar[r.task].tokens_per_second):
            ar[r.task] = r
    ar_ms = {task: 1000 * r.forward_seconds / max(r.forward_calls, 1) for task, r in ar.items()}
    ar_rate = {task: r.tokens_per_second for task, r in ar.items()}
    print(f"\nProfile at batch {batch_size}:\n")
    print("| model | task | method | iterations | full: calls, columns, ms | window: calls, columns, ms "
          "| outside ms/iter | ceiling vs ar | measured vs ar |")
    print("|" + "---|" * 9)
    for label, r in results:
        kinds = []
        for kind in ("full", "window"):
            calls, columns, seconds = r.forward_profile.get(kind, [0, 0, 0.0])
            kinds.append(f"{calls}, {columns / max(calls, 1):.0f}, {1000 * seconds / max(calls, 1):.2f}" if calls else "-")
        outside = 1000 * (r.seconds - r.forward_seconds) / max(r.forward_calls, 1)
        row_ms = 1000 * r.forward_seconds / max(r.forward_calls, 1)
        ceiling = f"{r.tokens_per_forward * ar_ms[r.task] / row_ms:.2f}x" if r.task in ar_ms and row_ms else "-"
        measured = f"{r.tokens_per_second / ar_rate[r.task]:.2f}x" if r.task in ar_rate else "-"
        print(f"| {r.model} | {r.task} | {label} | {r.forward_calls} | {kinds[0]} | {kinds[1]} | {outside:.2f} "
              f"| {ceiling} | {measured} |")


if __name__ == "__main__":
    main()
