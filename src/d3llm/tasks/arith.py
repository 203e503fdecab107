"""`arith` and `arith-long`: GSM8K-style multi-step arithmetic word problems.

A problem is a short story with a start quantity and `steps` dependent operations. The
solution writes one equation per step and ends with the final answer in GSM8K's format:

    Question: Mia has 23 apples. Mia buys 19 more apples. Mia gives away 7 apples.
              How many apples does Mia have now?
    Solution: 23 + 19 = 42
              42 - 7 = 35
              #### 35

`arith-long` asks the same questions after `shots` solved examples from the train split, so
prompts are several hundred tokens long (the long-context case). It shares `arith`'s split
assignment: a test question of one is a test question of the other.

Difficulty presets (`ArithDifficulty.preset`) trade learnability for challenge. The default
`easy` keeps every intermediate value in 0..99: a 2.4M-parameter model learned the format
but not 3-digit arithmetic in 35 CPU minutes (docs/platform-notes.md).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from d3llm.errors import TaskError
from d3llm.tasks.base import GeneratedTask, Problem, Task

ANSWER_RE = re.compile(r"####\s*(-?[\d,]+)")

NAMES = ("Mia", "Tom", "Ana", "Leo", "Sara", "Ben", "Ivy", "Omar", "Lena", "Raj", "Kim", "Noah")
ITEMS = ("apples", "books", "coins", "stamps", "pens", "cards", "shells", "marbles", "eggs")

# Story frames: how the start, each operation and the question read. `{n}` = name,
# `{i}` = item, `{x}` = operand.
_FRAMES = (
    {
        "start": "{n} has {x} {i}.",
        "+": ("{n} buys {x} more {i}.", "{n} finds {x} more {i}.", "A friend gives {n} {x} {i}."),
        "-": ("{n} gives away {x} {i}.", "{n} loses {x} {i}.", "{n} sells {x} {i}."),
        "*": ("{n} ends up with {x} times as many {i}.",),
        "question": "How many {i} does {n} have now?",
    },
    {
        "start": "A box holds {x} {i}.",
        "+": ("{n} puts {x} more {i} in the box.", "{n} adds {x} {i} to the box."),
        "-": ("{n} takes {x} {i} out of the box.", "{n} removes {x} {i} from the box."),
        "*": ("The number of {i} in the box becomes {x} times as large.",),
        "question": "How many {i} are in the box now?",
    },
    {
        "start": "A shop has {x} {i} in stock.",
        "+": ("The shop receives {x} more {i}.", "{n} brings {x} {i} to the shop."),
        "-": ("The shop sells {x} {i}.", "{n} buys {x} {i} from the shop."),
        "*": ("The stock of {i} grows {x} times.",),
        "question": "How many {i} does the shop have now?",
    },
)


@dataclass(frozen=True)
class ArithDifficulty:
    """How hard `arith` problems are."""

    steps: int = 2  # operations after the start value
    max_value: int = 99  # every intermediate value stays in 0..max_value
    max_operand: int = 30  # + and - operands are in 2..max_operand
    ops: tuple[str, ...] = ("+", "-")  # allowed operations ('*' multiplies by 2..max_factor)
    max_factor: int = 3

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise TaskError(f"`steps` must be >= 1, got {self.steps}")
        if self.max_operand < 2 or self.max_value < self.max_operand:
            raise TaskError(
                f"need 2 <= `max_operand` <= `max_value`, got {self.max_operand} and {self.max_value}"
            )
        bad = set(self.ops) - {"+", "-", "*"}
        if not self.ops or bad:
            raise TaskError(f"`ops` must be a non-empty subset of + - *, got {self.ops}")
        if self.max_factor < 2:
            raise TaskError(f"`max_factor` must be >= 2, got {self.max_factor}")

    @classmethod
    def preset(cls, name: str) -> "ArithDifficulty":
        presets = {
            "easy": cls(),
            "medium": cls(steps=3, max_value=999, max_operand=200, ops=("+", "-", "*")),
            "hard": cls(steps=4, max_value=9999, max_operand=999, ops=("+", "-", "*"), max_factor=9),
        }
        if name not in presets:
            raise TaskError(f"unknown difficulty {name!r}; choose one of {', '.join(presets)}")
        return presets[name]


def extract_final_number(response: str) -> str | None:
    """The number after the last '####', normalised (no commas, no leading zeros)."""
    matches = ANSWER_RE.findall(response)
    if not matches:
        return None
    digits = matches[-1].replace(",", "")
    try:
        return str(int(digits))
    except ValueError:
        return None


class ArithTask(GeneratedTask):
    """Multi-step arithmetic word problems with step-by-step solutions."""

    def __init__(self, difficulty: ArithDifficulty | str = "easy", name: str = "arith"):
        self.difficulty = (
            ArithDifficulty.preset(difficulty) if isinstance(difficulty, str) else difficulty
        )
        self.name = name

    def sample(self, rng: random.Random) -> Problem:
        d = self.difficulty
        frame = rng.choice(_FRAMES)
        who, item = rng.choice(NAMES), rng.choice(ITEMS)
        value = rng.randint(2, d.max_value)
        sentences = [frame["start"].format(n=who, i=item, x=value)]
        lines = []
        for _ in range(d.steps):
            op, x = self._operation(rng, value)
            new = value + x if op == "+" else value - x if op == "-" else value * x
            sentences.append(rng.choice(frame[op]).format(n=who, i=item, x=x))
            lines.append(f"{value} {op} {x} = {new}")
            value = new
        sentences.append(frame["question"].format(n=who, i=item))
        question = " ".join(sentences)
        target = "\n".join(lines + [f"#### {value}"])
        return Problem(task=self.name, key=question, prompt=question, target=target, answer=str(value))

    def _operation(self, rng: random.Random, value: int) -> tuple[str, int]:
        """An operation that keeps the value in 0..max_value (always exists: '-' or '+')."""
        d = self.difficulty
        choices = []
        if "+" in d.ops and value + 2 <= d.max_value:
            choices.append(("+", min(d.max_operand, d.max_value - value)))
        if "-" in d.ops and value >= 2:
            choices.append(("-", min(d.max_operand, value)))
        if "*" in d.ops and 2 * value <= d.max_value and value > 0:
            choices.append(("*", min(d.max_factor, d.max_value // value)))
        if not choices:  # e.g. ops=('*',) at a large value: fall back to subtraction
            choices.append(("-", min(d.max_operand, value)) if value >= 2 else ("+", 2))
        op, hi = rng.choice(choices)
        return op, rng.randint(2, max(2, hi))

    def extract_answer(self, response: str) -> str | None:
        return extract_final_number(response)


def format_example(question: str, solution: str) -> str:
    return f"Question: {question}\nSolution:\n{solution}"


class ArithLongTask(Task):
    """`arith` questions after `shots` solved train examples (a long prompt)."""

    def __init__(self, base: ArithTask | None = None, shots: int = 4, name: str = "arith-long"):
        if shots < 1:
            raise TaskError(f"`shots` must be >= 1, got {shots}")
        self.base = base or ArithTask()
        self.shots = shots
        self.name = name

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        return self._with_shots(self.base.problems(split, n, seed), seed)

    def draws(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        return self._with_shots(self.base.draws(split, n, seed), seed)

    def _with_shots(self, questions: list[Problem], seed: int) -> list[Problem]:
        # Example pool from the train split only, so no test question leaks into a prompt.
        pool = self.base.problems("train", max(64, 4 * self.shots), seed=10_000 + seed)
        out = []
        for q in questions:
            rng = random.Random(f"{self.name}:{q.key}")
            shots = rng.sample([s for s in pool if s.key != q.key], self.shots)
            context = "\n\n".join(format_example(s.prompt, s.target) for s in shots)
            prompt = f"{context}\n\nQuestion: {q.prompt}"
            out.append(Problem(self.name, q.key, prompt, q.target, q.answer))
        return out

    def extract_answer(self, response: str) -> str | None:
        return extract_final_number(response)
