"""`code`: small function-synthesis problems scored by hidden tests.

The prompt specifies one Python function in words; the response is its source. Scoring
runs the response as a module in `d3llm.tasks.sandbox` (a fenced child process: time limit,
own file system and network, no privileges), calls the function on the hidden inputs there,
and compares the returned values, sent back as plain data, with the expected ones here: all
must be equal. The expected values never reach the child, so a response can only score by
computing them (exiting early, raising SystemExit or returning an object whose `__eq__` always
says True all score False; docs/sandbox.md).

    Question: Write a Python function `scale(xs)` that returns a list with every number of
              xs multiplied by 3.
    Solution: def scale(xs):
                  return [v * 3 for v in xs]
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass
from typing import Callable

from d3llm.tasks.base import GeneratedTask, Problem
from d3llm.tasks.sandbox import CALL_FAILED, run_calls

ARG_INT, ARG_LIST, ARG_STR = "x", "xs", "s"


@dataclass(frozen=True)
class _Family:
    spec: str  # the request; {f} function name, {arg} argument, {k} constant
    body: str  # the reference body expression
    arg: str  # ARG_INT, ARG_LIST or ARG_STR
    ref: Callable[[object, int], object]  # reference semantics (value, k) -> result
    names: tuple[str, ...]
    k_range: tuple[int, int] | None = (2, 9)


_FAMILIES = (
    _Family("returns {arg} plus {k}", "x + {k}", ARG_INT, lambda x, k: x + k,
            ("add", "plus", "increase", "shift_up"), (1, 999)),
    _Family("returns {arg} minus {k}", "x - {k}", ARG_INT, lambda x, k: x - k,
            ("sub", "minus", "decrease", "shift_down"), (1, 999)),
    _Family("returns {arg} times {k}", "x * {k}", ARG_INT, lambda x, k: x * k,
            ("mul", "times", "scale_num", "multiply"), (2, 99)),
    _Family("returns True if {arg} is divisible by {k}, else False", "x % {k} == 0", ARG_INT,
            lambda x, k: x % k == 0, ("divisible", "is_multiple", "check_div"), (2, 99)),
    _Family("returns the smaller of {arg} and {k}", "min(x, {k})", ARG_INT,
            lambda x, k: min(x, k), ("cap", "clip_high", "at_most"), (1, 999)),
    _Family("returns the larger of {arg} and {k}", "max(x, {k})", ARG_INT,
            lambda x, k: max(x, k), ("floor_at", "clip_low", "at_least"), (1, 999)),
    _Family("returns the sum of the numbers in {arg}", "sum(xs)", ARG_LIST,
            lambda xs, k: sum(xs), ("total", "sum_list", "add_all"), None),
    _Family("returns the largest number in {arg}", "max(xs)", ARG_LIST,
            lambda xs, k: max(xs), ("largest", "max_list", "biggest"), None),
    _Family("returns how many numbers in {arg} are greater than {k}",
            "len([v for v in xs if v > {k}])", ARG_LIST,
            lambda xs, k: len([v for v in xs if v > k]), ("count_above", "num_greater"), (1, 99)),
    _Family("returns a list with every number of {arg} multiplied by {k}",
            "[v * {k} for v in xs]", ARG_LIST, lambda xs, k: [v * k for v in xs],
            ("scale", "scale_all", "mul_each"), (2, 99)),
    _Family("returns a list with {k} added to every number of {arg}",
            "[v + {k} for v in xs]", ARG_LIST, lambda xs, k: [v + k for v in xs],
            ("add_each", "shift_all", "bump"), (1, 99)),
    _Family("returns the numbers of {arg} that are divisible by {k}, in order",
            "[v for v in xs if v % {k} == 0]", ARG_LIST, lambda xs, k: [v for v in xs if v % k == 0],
            ("keep_multiples", "filter_div"), (2, 9)),
    _Family("returns the string {arg} reversed", "s[::-1]", ARG_STR, lambda s, k: s[::-1],
            ("reverse", "backwards", "flip"), None),
    _Family("returns the string {arg} repeated {k} times", "s * {k}", ARG_STR,
            lambda s, k: s * k, ("repeat", "echo", "copies"), (2, 9)),
    _Family("returns the first {k} characters of the string {arg}", "s[:{k}]", ARG_STR,
            lambda s, k: s[:k], ("prefix", "head", "first_chars"), (1, 9)),
)

_WORDS = ("apple", "dog", "river", "blue", "sun", "code", "tree", "a", "", "hello", "xyz")
_FENCE = re.compile(r"```(?:python)?\n(.*?)```", re.S)


def _inputs(arg: str, rng: random.Random) -> list[object]:
    if arg == ARG_INT:
        return [rng.randint(-20, 200) for _ in range(5)]
    if arg == ARG_LIST:
        return [[rng.randint(-9, 60) for _ in range(rng.randint(1, 6))] for _ in range(5)]
    return [rng.choice(_WORDS) + rng.choice(_WORDS) for _ in range(5)]


class CodeTask(GeneratedTask):
    """Function synthesis from a one-sentence specification."""

    def __init__(self, name: str = "code", timeout_s: float = 5.0):
        self.name = name
        self.timeout_s = timeout_s

    def distinct_problems(self) -> int:
        """Each family's function names times its constants (the prompt is the problem's key)."""
        return sum(len(f.names) * (f.k_range[1] - f.k_range[0] + 1 if f.k_range else 1) for f in _FAMILIES)

    def sample(self, rng: random.Random) -> Problem:
        fam = rng.choice(_FAMILIES)
        fname = rng.choice(fam.names)
        k = rng.randint(*fam.k_range) if fam.k_range else 0
        prompt = f"Write a Python function `{fname}({fam.arg})` that " + fam.spec.format(arg=fam.arg, k=k) + "."
        target = f"def {fname}({fam.arg}):\n    return {fam.body.format(k=k)}"
        case_rng = random.Random(prompt)
        tests = tuple(
            (f"{fname}({value!r})", repr(fam.ref(value, k)))
            for value in _inputs(fam.arg, case_rng)
            if fam.arg != ARG_LIST or value  # max([]) has no answer
        )
        return Problem(task=self.name, key=prompt, prompt=prompt, target=target, answer=fname, tests=tests)

    def extract_answer(self, response: str) -> str | None:
        """The code in a response: a fenced block if there is one, else the whole text."""
        fenced = _FENCE.search(response)
        code = (fenced.group(1) if fenced else response).strip()
        return code or None

    def score(self, problem: Problem, response: str) -> bool:
        code = self.extract_answer(response)
        if code is None:
            return False
        result = run_calls(code, [call for call, _ in problem.tests], timeout_s=self.timeout_s)
        expected = [_plain(ast.literal_eval(value)) for _, value in problem.tests]
        return result.complete and all(
            got is not CALL_FAILED and got == want for got, want in zip(result.values, expected, strict=True))


def _plain(value: object) -> object:
    """An expected value as the child's JSON sends it back: tuples become lists."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
