"""The demo behind `make demo`: every bundled model on every task, one leaderboard.

Each bundled model is decoded with the presets its provenance.json lists under `methods`
(vanilla LLaDA decoding and Fast-dLLM on the teacher, dParallel-style on its student, d3LLM with
and without its cache on the d3LLM student, `ar` and `ar-spec` on the AR model; a model without
the list, e.g. your own dropped into bundled/, gets every preset of its family; the preset its
decode recipe names with the recipe's settings, `own_config`), on the same held-out test
problems.

    results = run_demo(n=20, seed=0)
    report = write_demo(results, Path("runs/demo"))  # result files, leaderboard.md/.json, plots
    report.board, report.comparisons

`write_demo` stores one results file per (model, task, method) under `OUT/results/` (the
input format of `d3llm leaderboard`), scores them with `d3llm.eval.leaderboard`, and names
the AR baseline comparison: on each task, the dLLM row with the best AUP against the best AR
row, as a tokens/s ratio measured in the same run and the two accuracies with their 95%
intervals. Its n is small, for speed, and its leaderboard says so (`report.small_n_note`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from d3llm.decode import DecodeConfig, preset, resolve_config
from d3llm.decode.config import AR_METHODS
from d3llm.errors import D3llmError
from d3llm.eval.leaderboard import Leaderboard, Result, Row, build_leaderboard
from d3llm.eval.report import small_n_note, write_leaderboard
from d3llm.eval.results import EvalResult
from d3llm.eval.runner import evaluate
from d3llm.models import bundled_models, load_model, resolve_device_dtype
from d3llm.models.catalog import describe
from d3llm.tasks import TASK_NAMES, Task, get_task

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
    device, dtype = resolve_device_dtype(device, dtype)
    plan = demo_plan(tasks, methods)
    results, lm = [], None
    for name, task, method in plan:
        if lm is None or lm.name != name:
            lm = load_model(name, device=device, dtype=dtype)
        if progress:
            progress(f"{name} / {task.name} / {method}")
        results.append(evaluate(lm, task, own_config(lm, method), n=n, seed=seed, progress=advance))
    return results


def own_config(lm, method: str) -> DecodeConfig:
    """`method` as `lm` decodes it: with the settings of its decode recipe when the recipe is of
    that method (d3llm.models.recipe: what users get by default), else the plain preset."""
    recipe = lm.recipe
    if recipe is not None and recipe[0] == method:
        return resolve_config(None, lm.facts.family, recipe)
    return preset(method)


@dataclass
class ArComparison:
    """On one task: the best dLLM row (by AUP) against the fastest AR row, same run and machine."""

    task: str
    dllm: Row
    ar: Row

    @property
    def speedup(self) -> float:
        """tokens/s of the dLLM's most accurate point over the AR model's."""
        return self.dllm.best_point.tokens_per_second / self.ar.best_point.tokens_per_second

    def sentence(self) -> str:
        d, a = self.dllm.best_point, self.ar.best_point
        return (f"{self.task}: {self.dllm.label} decodes {self.speedup:.2f}x the tokens/s of the AR baseline "
                f"{self.ar.label} ({d.tokens_per_second:.1f} vs {a.tokens_per_second:.1f} tokens/s, "
                f"TPF {d.tokens_per_forward:.2f}), at {d.accuracy_text('%')} vs {a.accuracy_text('%')} accuracy "
                f"(95% intervals)")


def _strength(row: Row) -> tuple:
    """Best AUP first; with AUP undefined (all accuracies 0), the faster row."""
    return (row.aup if row.aup is not None else -1.0, row.best_point.tokens_per_second)


def ar_comparisons(board: Leaderboard) -> list[ArComparison]:
    """Per task with both kinds of rows: the best dLLM row (by AUP) against the fastest AR row
    (the strongest baseline for a speed-up: `ar-spec` has the higher AUP, a faster `ar` loop
    may still beat it in tokens/s)."""
    comparisons = []
    for task in board.tasks:
        ar = [r for r in task.rows if r.method in AR_METHODS]
        dllm = [r for r in task.rows if r.method not in AR_METHODS]
        if ar and dllm:
            fastest = max(ar, key=lambda r: r.best_point.tokens_per_second)
            comparisons.append(ArComparison(task.task, max(dllm, key=_strength), fastest))
    return comparisons


@dataclass
class DemoReport:
    board: Leaderboard
    comparisons: list[ArComparison]
    files: list[Path]  # leaderboard.md, leaderboard.json, plots; results under OUT/results/


def _file_name(result: EvalResult) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{result.model}__{result.task}__{result.method}") + ".json"


def write_demo(results: list[EvalResult], out: Path, plots: bool = True) -> DemoReport:
    """Write each result to `out/results/`, then the leaderboard (with the AR comparison) to `out`."""
    folder = out / "results"
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for result in results:
        file = folder / _file_name(result)
        file.write_text(json.dumps(result.to_dict(), indent=2))
        records.append(Result.from_record(result.to_dict(), str(file)))
    board = build_leaderboard(records)
    comparisons = ar_comparisons(board)
    preamble = "\n".join(f"- {c.sentence()}" for c in comparisons) or "- no AR baseline to compare with"
    n = min(r.n for r in results)  # one n for every row of a demo run
    preamble = f"{small_n_note(n)}\n\nAR baseline (same run, same machine):\n\n{preamble}"
    files = write_leaderboard(board, out, plots=plots, preamble=preamble)
    return DemoReport(board, comparisons, files)
