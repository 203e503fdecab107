"""The Task interface: problems, prompts, answer extraction and scoring.

A task hands out `Problem`s from a named split (`train`, `validation`, `test`) and scores a
model's response text. Generated tasks assign each problem to a split by a hash of its key
(its question text), so the splits are disjoint by construction and stay the same for every
seed; the seed only chooses *which* problems of a split are drawn and in what order.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal, get_args

from d3llm.errors import TaskError

Split = Literal["train", "validation", "test"]
SPLITS: tuple[str, ...] = get_args(Split)

# Per mille of the problem space given to each split by the key hash (test, validation, rest
# train). 10% test leaves >= 200 test problems in every default task family.
_TEST_PER_MILLE = 100
_VALIDATION_PER_MILLE = 50


@dataclass(frozen=True)
class Problem:
    """One problem. `prompt` is the user's message; `target` a reference solution."""

    task: str
    key: str  # identity for dedup and split assignment
    prompt: str  # the user message (no chat markup)
    target: str  # a correct solution text, in the format the scorer expects
    answer: str  # the canonical final answer (arith: an integer; code: the function name)
    tests: tuple[tuple[str, str], ...] = field(default=())  # code: (call, expected repr)


def check_split(split: str) -> Split:
    if split not in SPLITS:
        raise TaskError(f"`split` must be one of {', '.join(SPLITS)}, got {split!r}")
    return split  # type: ignore[return-value]


def split_of(key: str, salt: str) -> Split:
    """The split a problem key belongs to; a pure function of (salt, key)."""
    digest = hashlib.sha256(f"{salt}\0{key}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 1000
    if bucket < _TEST_PER_MILLE:
        return "test"
    if bucket < _TEST_PER_MILLE + _VALIDATION_PER_MILLE:
        return "validation"
    return "train"


# The most problems one request may ask for: far above any test set or training mix we use,
# and a 99999999999999999999 from a typo fails at once instead of generating for ever.
MAX_PROBLEMS = 1_000_000


def check_count(n: object, what: str = "`n`", low: int = 0) -> int:
    """`n` as a problem count in low..MAX_PROBLEMS, else a `TaskError` naming `what`."""
    if isinstance(n, bool) or not isinstance(n, int) or not low <= n <= MAX_PROBLEMS:
        raise TaskError(f"{what} must be >= {low} and at most {MAX_PROBLEMS} (problems), got {n!r}")
    return n


# The fixed test set (docs/reference.md, "Tasks"): each task's first FIXED_TEST_N test problems
# of seed FIXED_TEST_SEED, what `d3llm eval` and `d3llm sweep` score by default. 600 problems
# put a 95% interval within about -/+4 points of any accuracy (-/+3 near 85%), where 100 leave
# -/+10; the bundled tasks hold more distinct test problems than that (code: about 1550).
FIXED_TEST_N = 600
FIXED_TEST_SEED = 0


def is_fixed_test_set(split: str, n: int, seed: int) -> bool:
    """Whether (`split`, `n`, `seed`) draws the fixed test set."""
    return (split, n, seed) == ("test", FIXED_TEST_N, FIXED_TEST_SEED)


def problem_set_name(split: str, n: int, seed: int) -> str:
    """How a result names the problems it was scored on: `fixed test set, n=600`, else
    `test, seed 3, n=100` (one name per problem set: results compare when it agrees)."""
    if is_fixed_test_set(split, n, seed):
        return f"fixed test set, n={n}"
    return f"{split}, seed {seed}, n={n}"


class Task(ABC):
    """A family of problems with a scorer."""

    name: str

    @abstractmethod
    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """`n` distinct problems of `split`, chosen by `seed` (deterministic)."""

    @abstractmethod
    def draws(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """`n` problems of `split` in the task's own proportions, repeats allowed (training data:
        `problems` keeps distinct ones only, so a kind of problem with few variants runs out and
        the others crowd it out)."""

    @abstractmethod
    def extract_answer(self, response: str) -> str | None:
        """The final answer in a response text, or None when there is none."""

    def score(self, problem: Problem, response: str) -> bool:
        """True when `response` answers `problem` correctly."""
        return self.extract_answer(response) == problem.answer

    def score_many(self, problems: list[Problem], responses: list[str]) -> list[bool]:
        if len(problems) != len(responses):
            raise ValueError(f"{len(problems)} problems but {len(responses)} responses")
        return [self.score(p, r) for p, r in zip(problems, responses)]


class GeneratedTask(Task):
    """A task whose problems come from a seeded generator (`sample`)."""

    # Bumping the salt reshuffles every split; keep it fixed so test sets stay comparable.
    split_salt: str = "d3llm-v1"

    @abstractmethod
    def sample(self, rng: random.Random) -> Problem:
        """Draw one problem (from any split) using only `rng`."""

    def distinct_problems(self) -> int | None:
        """About how many distinct problems `sample` can make over all splits; None when that is
        too many to matter. A request for more than a split holds is refused at once."""
        return None

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        split = check_split(split)
        check_count(n)
        total = self.distinct_problems()
        if total is not None:
            per_mille = {"test": _TEST_PER_MILLE, "validation": _VALIDATION_PER_MILLE}.get(
                split, 1000 - _TEST_PER_MILLE - _VALIDATION_PER_MILLE)
            about = total * per_mille // 1000
            if n > about * 1.1 + 50:  # the hash split is not exact: refuse only what cannot be there
                raise TaskError(f"task {self.name!r} has only about {about} distinct {split} problems; "
                                f"asked for n={n} (lower n)")
        out = self._from_split(split, n, random.Random(f"{self.name}:{split}:{seed}"), distinct=True)
        if len(out) < n:
            raise TaskError(
                f"task {self.name!r} has only about {len(out)} distinct {split} problems at this "
                f"difficulty; asked for n={n} (raise the difficulty or lower n)"
            )
        return out

    def draws(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """`n` problems of `split` as `sample` makes them, repeats allowed: every kind of problem
        keeps its share however few variants it has (docs/teacher-training.md)."""
        split = check_split(split)
        check_count(n)
        out = self._from_split(split, n, random.Random(f"{self.name}:{split}:{seed}:draws"), distinct=False)
        if len(out) < n:
            raise TaskError(f"task {self.name!r} yielded only {len(out)} {split} problems; asked for n={n}")
        return out

    def _from_split(self, split: Split, n: int, rng: random.Random, distinct: bool) -> list[Problem]:
        """Up to `n` problems of `split` from `sample` with `rng`, each key once if `distinct`."""
        seen: set[str] = set()
        out: list[Problem] = []
        # A split holds >= 5% of the space, so ~20 draws per problem suffice on average; the
        # bound only stops a request that asks for more distinct problems than exist.
        budget = 200 * n + 10_000
        while len(out) < n and budget > 0:
            budget -= 1
            problem = self.sample(rng)
            if (distinct and problem.key in seen) or split_of(problem.key, self.split_salt) != split:
                continue
            seen.add(problem.key)
            out.append(problem)
        return out


def fixed_test_set(task: Task) -> list[Problem]:
    """`task`'s fixed test set: its first FIXED_TEST_N test problems of seed FIXED_TEST_SEED, the
    same list on every machine (string seeds and the generators are platform-independent; the
    tests pin each bundled task's set by a hash of its questions)."""
    return task.problems("test", FIXED_TEST_N, FIXED_TEST_SEED)
