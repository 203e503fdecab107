"""Tasks: problems with prompts, reference solutions, answer extraction and scoring.

    from d3llm.tasks import get_task
    task = get_task("arith")                      # or "arith-long", "code", "arith:medium"
    problems = task.problems("test", n=200, seed=0)
    problems = fixed_test_set(task)               # the fixed test set: 600 test problems, seed 0
    task.score(problems[0], response_text)

`get_task` also accepts a GSM8K-format JSONL path (`gsm8k:PATH`, used for every split).
"""

from __future__ import annotations

from d3llm.errors import TaskError
from d3llm.tasks.arith import ArithDifficulty, ArithLongTask, ArithTask
from d3llm.tasks.base import (FIXED_TEST_N, FIXED_TEST_SEED, SPLITS, GeneratedTask, Problem, Split, Task,
                              fixed_test_set, problem_set_name, split_of)
from d3llm.tasks.code import CodeTask
from d3llm.tasks.gsm8k import Gsm8kJsonlTask, read_gsm8k_jsonl

TASK_NAMES = ("arith", "arith-long", "code")

__all__ = [
    "ArithDifficulty", "ArithLongTask", "ArithTask", "CodeTask", "FIXED_TEST_N", "FIXED_TEST_SEED",
    "GeneratedTask", "Gsm8kJsonlTask", "Problem", "SPLITS", "Split", "TASK_NAMES", "Task",
    "fixed_test_set", "get_task", "problem_set_name", "read_gsm8k_jsonl", "split_of",
]


def get_task(spec: str) -> Task:
    """A task by name: `arith`, `arith-long`, `code`, `arith:DIFFICULTY`,
    `arith-long:DIFFICULTY`, or `gsm8k:PATH` (one JSONL file for every split)."""
    name, _, arg = spec.partition(":")
    if name == "arith":
        return ArithTask(arg or "easy", name=spec)
    if name == "arith-long":
        return ArithLongTask(ArithTask(arg or "easy"), name=spec)
    if name == "code" and not arg:
        return CodeTask()
    if name == "gsm8k" and arg:
        return Gsm8kJsonlTask({s: arg for s in SPLITS}, name="gsm8k")
    raise TaskError(
        f"unknown task {spec!r}; choose one of {', '.join(TASK_NAMES)}, arith:medium, "
        "arith:hard, or gsm8k:PATH.jsonl"
    )
