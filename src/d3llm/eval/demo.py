"""The demo behind `make demo`: every bundled model on every task, one leaderboard.

Each bundled model is decoded with the presets its provenance.json lists under `methods`
(vanilla LLaDA decoding and Fast-dLLM on the teacher, dParallel-style on its student, d3LLM with
and without its cache on the d3LLM student, `ar` and `ar-spec` on the AR model; a model without
the list, e.g. your own dropped into bundled/, gets every preset of its family; the preset its
decode recipe names with the recipe's settings on each task, `own_config`), on the same held-out
test problems.

    results = run_demo(n=20, seed=0)
    latency = time_ar_comparisons(results, seed=0)  # batch-1 tokens/s of the compared rows
    report = write_demo(results, Path("runs/demo"), latency=latency)  # results, leaderboard, plots
    report.board, report.comparisons

`write_demo` stores one results file per (model, task, method) under `OUT/results/` (the
input format of `d3llm leaderboard`), scores them with `d3llm.eval.leaderboard`, and names
the AR baseline comparison: on each task, of the rows that decode a model the way users get it
(its decode recipe, else its family's default preset: `default_rows`), the dLLM row with the
best AUP against the AR rows.
Accuracy is scored in the runner's batches (a row decodes what it decodes alone), so the run's
tokens/s are throughput at batch 16; `time_ar_comparisons` also times the compared rows one
request at a time (`d3llm.eval.timing`: batch 1, the first `LATENCY_N` problems, interleaved
rounds, medians), which is how the paper reports tokens/s and what a chat user waits for. The
comparison leads with that latency ratio against the fastest AR row at batch 1 and gives the
batch-16 ratio beside it. Its n is small, for speed, and its leaderboard says so
(`report.small_n_note`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from d3llm.decode import DecodeConfig, preset, resolve_config
from d3llm.decode.config import AR_METHODS
from d3llm.errors import D3llmError
from d3llm.eval.leaderboard import Leaderboard, Result, Row, build_leaderboard
from d3llm.eval.report import small_n_note, write_leaderboard
from d3llm.eval.results import EvalResult
from d3llm.eval.runner import evaluate
from d3llm.eval.timing import ROUNDS, Speed, time_in_rounds
from d3llm.models import bundled_models, load_model, resolve_device_dtype
from d3llm.files import write_atomic
from d3llm.models.catalog import describe
from d3llm.tasks import TASK_NAMES, Task, get_task

LATENCY_N = 10  # problems per task that the AR comparison times one at a time (at most the demo's n)
Latency = dict[tuple[str, str], Speed]  # (task, row label) -> tokens/s at batch 1

def demo_plan(tasks: Sequence[str] | None = None, methods: Sequence[str] | None = None) -> list[tuple[str, Task, str]]:
    """(model, task, method) of every evaluation `run_demo` makes, in its order, read from the
    bundled models' records (nothing loaded): a progress bar knows its total up front."""
    names = bundled_models()
    if not names:
        raise D3llmError("no bundled models are installed (train them: see README, 'Train and distill')")
    the_tasks = [get_task(t) for t in (tasks or TASK_NAMES)]  # unknown names fail before decoding
    for method in methods or ():
        preset(method)
    plan = []
    for name, path in names.items():
        own = describe(path, name).methods  # its provenance's `methods`, else every preset of its family
        for task in the_tasks:
            plan += [(name, task, m) for m in own if not methods or m in methods or m in AR_METHODS]  # baselines always
    return plan


def run_demo(n: int = 20, seed: int = 0, progress: Callable[[str], None] | None = None,
             tasks: Sequence[str] | None = None, methods: Sequence[str] | None = None,
             device: str | torch.device | None = "auto", dtype: str | torch.dtype | None = "auto",
             advance: Callable[[int], None] | None = None) -> list[EvalResult]:
    """Evaluate every bundled model on `tasks` (default: all), `n` test problems each: a dLLM with
    `methods` (default: every diffusion preset), the AR baseline always with `ar`; loaded on
    `device` in `dtype` (`d3llm.models.loading.resolve_device_dtype`). `progress(what)` is told
    each (model / task / method) as it starts, `advance(k)` each k problems done."""
    device, _ = resolve_device_dtype(device, dtype)  # a bad dtype fails here; "auto" stays: each model's recipe dtype
    plan = demo_plan(tasks, methods)
    results, lm = [], None
    for name, task, method in plan:
        if lm is None or lm.name != name:
            lm = load_model(name, device=device, dtype=dtype)
        if progress:
            progress(f"{name} / {task.name} / {method}")
        results.append(evaluate(lm, task, own_config(lm, method, task.name), n=n, seed=seed, progress=advance))
    return results


def own_config(lm, method: str, task: str) -> DecodeConfig:
    """`method` as `lm` decodes it on `task`: with the settings of its decode recipe (on that
    task) when the recipe is of that method (d3llm.models.recipe: what users get by default),
    else the plain preset."""
    recipe = lm.recipe_for(task)
    if recipe is not None and recipe[0] == method:
        return resolve_config(None, lm.facts.family, recipe)
    return preset(method)


@dataclass
class ArComparison:
    """On one task: the best dLLM row (by AUP) against the task's AR rows, same run and machine,
    and their tokens/s at batch 1 where timed (`latency`: row label -> `Speed`)."""

    task: str
    dllm: Row
    ar_rows: list[Row]
    latency: dict[str, Speed] = field(default_factory=dict)

    @property
    def ar(self) -> Row:
        """The strongest AR baseline: the fastest AR row at batch 1 when timed, else in the run."""
        if self.latency:
            return max(self.ar_rows, key=lambda r: self.latency[r.label].median)
        return self.fastest_in_batches

    @property
    def fastest_in_batches(self) -> Row:
        return max(self.ar_rows, key=lambda r: r.best_point.tokens_per_second)

    @property
    def speedup(self) -> float:
        """The dLLM's tokens/s over the AR baseline's: at batch 1 when timed, else in the run."""
        if self.latency:
            return self.latency[self.dllm.label].median / self.latency[self.ar.label].median
        return self.batched_speedup

    @property
    def batched_speedup(self) -> float:
        """tokens/s of the dLLM's most accurate point over the fastest AR row's, in the run's batches."""
        return self.dllm.best_point.tokens_per_second / self.fastest_in_batches.best_point.tokens_per_second

    def sentence(self) -> str:
        d, a = self.dllm.best_point, self.ar.best_point
        accuracy = f"at {d.accuracy_text('%')} vs {a.accuracy_text('%')} accuracy (95% intervals)"
        if not self.latency:
            return (f"{self.task}: {self.dllm.label} decodes {self.speedup:.2f}x the tokens/s of the AR baseline "
                    f"{self.ar.label} ({d.tokens_per_second:.1f} vs {a.tokens_per_second:.1f} tokens/s, "
                    f"TPF {d.tokens_per_forward:.2f}), {accuracy}")
        mine, theirs = self.latency[self.dllm.label], self.latency[self.ar.label]
        batched = self.fastest_in_batches
        return (f"{self.task}: {self.dllm.label} decodes {self.speedup:.2f}x the tokens/s of the AR baseline "
                f"{self.ar.label} one request at a time ({mine.median:.1f} vs {theirs.median:.1f} tokens/s at "
                f"batch 1, medians of {len(mine.rounds)} rounds; TPF {d.tokens_per_forward:.2f}), "
                f"{self.batched_speedup:.2f}x in the run's batches ({d.tokens_per_second:.1f} vs "
                f"{batched.best_point.tokens_per_second:.1f} tokens/s, {batched.label}), {accuracy}")

    def record(self) -> dict:
        """What ar_comparison.json keeps of it."""
        return {"task": self.task, "dllm": self.dllm.label, "ar": self.ar.label, "speedup": self.speedup,
                "batched_speedup": self.batched_speedup,
                "batch1_tokens_per_second_rounds": {k: list(v.rounds) for k, v in self.latency.items()}}


def _strength(row: Row) -> tuple:
    """Best AUP first; with AUP undefined (all accuracies 0), the faster row."""
    return (row.aup if row.aup is not None else -1.0, row.best_point.tokens_per_second)


def ar_comparisons(board: Leaderboard, latency: Latency | None = None,
                   defaults: Collection[tuple[str, str]] = ()) -> list[ArComparison]:
    """Per task with both kinds of rows: the best dLLM row (by AUP) against the AR rows (the
    fastest of them is the strongest baseline for a speed-up: `ar-spec` has the higher AUP, a
    faster `ar` loop may still beat it in tokens/s), with the task's batch-1 timings from `latency`.
    Where some rows are (model, method) pairs of `defaults` (what a model decodes with unless
    told otherwise, `default_rows`), the dLLM row is the best of those."""
    comparisons = []
    for task in board.tasks:
        ar = [r for r in task.rows if r.method in AR_METHODS]
        dllm = [r for r in task.rows if r.method not in AR_METHODS]
        dllm = [r for r in dllm if (r.model, r.method) in defaults] or dllm
        if ar and dllm:
            timed = {label: speed for (name, label), speed in (latency or {}).items() if name == task.task}
            comparisons.append(ArComparison(task.task, max(dllm, key=_strength), ar, timed))
    return comparisons


def default_rows() -> set[tuple[str, str]]:
    """(model, method) of each bundled model with its default preset (its decode recipe's, else
    its family's): what users get, the rows the AR comparison is made with."""
    return {(name, describe(path, name).method) for name, path in bundled_models().items()}


def _board(results: list[EvalResult], sources: Sequence[str] | None = None) -> Leaderboard:
    sources = sources or [""] * len(results)
    return build_leaderboard([Result.from_record(r.to_dict(), s) for r, s in zip(results, sources)])


def latency_problems(tasks: Sequence[str] | None, methods: Sequence[str] | None, n: int) -> int:
    """Problems `time_ar_comparisons` decodes at most (for a progress bar's total): on each
    task, the dLLM row and the AR rows, `ROUNDS` times `min(n, LATENCY_N)`."""
    plan = demo_plan(tasks, methods)
    rows = 0
    for task in {t.name for _, t, _ in plan}:
        on_task = [m for _, t, m in plan if t.name == task]
        ar = sum(m in AR_METHODS for m in on_task)
        rows += (1 + ar) if 0 < ar < len(on_task) else 0  # the dLLM row and the AR rows, where both run
    return rows * ROUNDS * min(n, LATENCY_N)


def time_ar_comparisons(results: list[EvalResult], seed: int = 0, device: str | torch.device | None = "auto",
                        dtype: str | torch.dtype | None = "auto", progress: Callable[[str], None] | None = None,
                        advance: Callable[[int], None] | None = None) -> Latency:
    """Tokens/s at batch 1 of each task's compared rows (`ar_comparisons`: the best dLLM row
    and every AR row), on the first `LATENCY_N` (at most the run's n) of the problems the run
    scored, in interleaved rounds (`d3llm.eval.timing`), each model with its own decode recipe
    (`own_config`), loaded as `run_demo` loads it."""
    device, _ = resolve_device_dtype(device, dtype)  # as `run_demo`: "auto" stays, each model's recipe dtype
    loaded: dict[str, object] = {}
    latency: Latency = {}
    for comparison in ar_comparisons(_board(results), defaults=default_rows()):
        rows = [comparison.dllm, *comparison.ar_rows]
        n = min(LATENCY_N, min(r.best_point.n for r in rows))
        runs = []
        for row in rows:
            if row.model not in loaded:
                loaded[row.model] = load_model(row.model, device=device, dtype=dtype)
            runs.append((loaded[row.model], own_config(loaded[row.model], row.method, comparison.task)))
        if progress:
            progress(f"{comparison.task}: timing {' vs '.join(r.label for r in rows)} at batch 1")
        speeds = time_in_rounds(runs, [get_task(comparison.task)], n=n, seed=seed, split="test", advance=advance)
        latency.update({(comparison.task, row.label): speed for row, speed in zip(rows, speeds)})
    return latency


@dataclass
class DemoReport:
    board: Leaderboard
    comparisons: list[ArComparison]
    files: list[Path]  # leaderboard.md, leaderboard.json, plots; results under OUT/results/


def _file_name(result: EvalResult) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{result.model}__{result.task}__{result.method}") + ".json"


def write_demo(results: list[EvalResult], out: Path, plots: bool = True, latency: Latency | None = None) -> DemoReport:
    """Write each result to `out/results/`, then the leaderboard (with the AR comparison, timed
    at batch 1 where `latency` holds its rows, see `time_ar_comparisons`) and ar_comparison.json
    to `out`."""
    folder = out / "results"
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for result in results:
        file = folder / _file_name(result)
        file.write_text(json.dumps(result.to_dict(), indent=2))
        sources.append(str(file))
    board = _board(results, sources)
    comparisons = ar_comparisons(board, latency, default_rows())
    preamble = "\n".join(f"- {c.sentence()}" for c in comparisons) or "- no AR baseline to compare with"
    n = min(r.n for r in results)  # one n for every row of a demo run
    preamble = f"{small_n_note(n)}\n\nAR baseline (same run, same machine):\n\n{preamble}"
    files = write_leaderboard(board, out, plots=plots, preamble=preamble)
    write_atomic(out / "ar_comparison.json", json.dumps([c.record() for c in comparisons], indent=2))
    return DemoReport(board, comparisons, [*files, out / "ar_comparison.json"])
