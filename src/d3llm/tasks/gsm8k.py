"""GSM8K-format data from a JSONL file: one `{"question": ..., "answer": "... #### N"}` a line.

Use it where a user has real data (GSM8K itself or anything in its format):

    task = Gsm8kJsonlTask({"test": "gsm8k/test.jsonl", "train": "gsm8k/train.jsonl"})

Each split is read from its own file; a split without a file is an error when asked for.
GSM8K's calculator annotations (`<<48/2=24>>`) are removed from reference solutions.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from d3llm.errors import D3llmError, TaskError
from d3llm.files import read_text
from d3llm.tasks.arith import extract_final_number
from d3llm.tasks.base import Problem, Task, check_split

_CALC = re.compile(r"<<[^>]*>>")


def read_gsm8k_jsonl(path: str | Path, task_name: str = "gsm8k") -> list[Problem]:
    """Parse a GSM8K-format JSONL file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"GSM8K file not found: {path}")
    problems, seen = [], set()
    try:
        lines = read_text(path, "GSM8K file", max_bytes=256 << 20).split("\n")  # a regular UTF-8 file
    except D3llmError as exc:
        raise TaskError(str(exc)) from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question, solution = row["question"], row["answer"]
            if not isinstance(question, str) or not isinstance(solution, str):
                raise TypeError("'question' and 'answer' must be strings")
            question = question.strip()
        except (ValueError, RecursionError, KeyError, TypeError) as exc:  # ValueError: bad JSON, 5001-digit int
            raise TaskError(
                f"{path}:{lineno}: expected a JSON object with 'question' and 'answer' strings ({exc})"
            ) from None
        answer = extract_final_number(solution)
        if answer is None:
            raise TaskError(f"{path}:{lineno}: 'answer' has no final '#### N'")
        if question in seen:
            continue
        seen.add(question)
        target = _CALC.sub("", solution).strip()
        problems.append(Problem(task_name, question, question, target, answer))
    if not problems:
        raise TaskError(f"GSM8K file {path} holds no problems")
    return problems


class Gsm8kJsonlTask(Task):
    """GSM8K-format problems from JSONL files, one per split."""

    def __init__(self, files: dict[str, str | Path], name: str = "gsm8k"):
        for split in files:
            check_split(split)
        self.files = {split: Path(p) for split, p in files.items()}
        self.name = name
        self._cache: dict[str, list[Problem]] = {}

    def _split(self, split: str) -> list[Problem]:
        split = check_split(split)
        if split not in self.files:
            raise TaskError(f"task {self.name!r} has no file for split {split!r}")
        if split not in self._cache:
            self._cache[split] = read_gsm8k_jsonl(self.files[split], self.name)
        return self._cache[split]

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        pool = self._split(split)
        if not 0 <= n <= len(pool):
            raise TaskError(f"`n` must be in 0..{len(pool)} for {self.files[split]}, got {n}")
        return random.Random(f"{self.name}:{split}:{seed}").sample(pool, n)

    def draws(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        pool = self._split(split)
        if n < 0:
            raise TaskError(f"`n` must be >= 0, got {n}")
        if n and not pool:
            raise TaskError(f"{self.files[split]} holds no problems to draw from")
        return random.Random(f"{self.name}:{split}:{seed}:draws").choices(pool, k=n)

    def extract_answer(self, response: str) -> str | None:
        return extract_final_number(response)
