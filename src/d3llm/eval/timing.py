"""Latency at batch 1, measured so that a busy machine slows every contender alike.

    speeds = time_in_rounds([(lm_a, config_a), (lm_b, config_b)], tasks, n=10, seed=0, split="test")
    speeds[0]  # tokens/s of the first contender in each round; compare medians

Each contender decodes the same `n` problems of each task one at a time (batch 1: one request,
as a chat user sees it and as the paper reports tokens/s), `rounds` times; the contenders take
turns within a round, and each round starts one contender later, so none always runs first on
a machine whose load comes and goes. `d3llm tune` times its eligible points this way; `d3llm
demo` times its AR comparison this way (accuracy there is scored batched, which changes no
answer: a row decodes what it decodes alone).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from d3llm.decode import DecodeConfig
from d3llm.eval.runner import evaluate
from d3llm.models import LoadedModel
from d3llm.tasks import Task

ROUNDS = 3


@dataclass(frozen=True)
class Speed:
    """Tokens/s of one contender in each round."""

    rounds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.rounds) if self.rounds else 0.0


def time_in_rounds(runs: Sequence[tuple[LoadedModel, DecodeConfig]], tasks: Sequence[Task], n: int, seed: int,
                   split: str, rounds: int = ROUNDS, advance: Callable[[int], None] | None = None) -> list[Speed]:
    """Each run's tokens/s at batch 1 over the first `n` problems of `split` of every task, in
    `rounds` rounds (see the module docstring); one `Speed` per run, in order. `advance(k)` is
    told each k problems decoded."""
    speeds: list[list[float]] = [[] for _ in runs]
    for r in range(rounds):
        for i in (r % len(runs) + k for k in range(len(runs))):
            lm, config = runs[i % len(runs)]
            tokens = seconds = 0.0
            for task in tasks:
                result = evaluate(lm, task, config, n=n, seed=seed, split=split, batch_size=1, progress=advance)
                tokens, seconds = tokens + result.num_tokens, seconds + result.seconds
            speeds[i % len(runs)].append(tokens / max(seconds, 1e-9))
    return [Speed(tuple(s)) for s in speeds]
