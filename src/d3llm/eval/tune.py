"""Choose a model's decode recipe on the validation split: a fixed grid and a fixed rule.

    recipe, points = tune(lm, tasks, n=100)      # d3llm.models.recipe.Recipe, the scored grid
    write_recipe(lm.path, recipe)                # `d3llm tune MODEL --save`

The grid (`grid_for`): each preset the model is compared with (its provenance's `methods`),
at every threshold of `THRESHOLDS` for its strategy; a delayed-cache preset also in its lean
schedule (`LEAN`: no whole-canvas refresh while a block settles, the masks after the created
blocks read from the cache; docs/method.md section 4). Every point decodes `n` validation
problems of each task at batch 1 (latency, as the paper reports tokens/s), in float32.

The rule (`choose`): the points whose accuracy, pooled over the tasks, is within `TOLERANCE`
points of the best point's are eligible; the recipe is the eligible point with the most tokens
per second (pooled: all tokens over all seconds). Then the same point in bfloat16: its dtype
becomes the recipe's if its accuracy is still within `TOLERANCE` of the best and it is faster.
Tokens/s is measured, so a rerun on a busy machine can choose another point of near-equal
speed; the recipe keeps every point's scores (`chosen`), so the choice can be checked. The test
split is never read here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from d3llm.decode.config import PRESETS, resolve_config
from d3llm.decode.policies import DelayedCache
from d3llm.decode.strategies import ThresholdStrategy
from d3llm.eval.runner import evaluate
from d3llm.models.catalog import describe
from d3llm.models.loading import LoadedModel, load_model
from d3llm.models.recipe import Recipe
from d3llm.tasks import Task
from d3llm.version import code_version

THRESHOLDS = {"entropy": (0.3, 0.5, 0.8, 1.2), "confidence": (0.7, 0.8, 0.9, 0.95)}
LEAN = {"refresh_while_waiting": False, "future_masks": "cached"}
TOLERANCE = 1.0  # accuracy points under the best that a faster point may give up
SEED = 0  # which validation problems


@dataclass
class Point:
    method: str
    settings: dict
    dtype: str
    correct: int = 0
    n: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def accuracy_pct(self) -> float:
        return 100.0 * self.correct / max(self.n, 1)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def record(self) -> dict:
        return {"method": self.method, "settings": self.settings, "dtype": self.dtype,
                "accuracy_pct": round(self.accuracy_pct, 2), "n": self.n,
                "tokens_per_second": round(self.tokens_per_second, 1)}


def grid_for(lm: LoadedModel) -> list[Point]:
    """The fixed grid of `lm` (see the module docstring), in float32."""
    points = []
    for method in describe(lm.path, lm.name).methods:
        config = PRESETS[method]
        thresholds = THRESHOLDS[config.strategy.name] if isinstance(config.strategy, ThresholdStrategy) else (None,)
        schedules = ({}, LEAN) if isinstance(config.cache, DelayedCache) else ({},)
        for threshold in thresholds:
            for schedule in schedules:
                settings = {**({} if threshold is None else {"threshold": threshold}), **schedule}
                points.append(Point(method, settings, "float32"))
    return points


def score(lm: LoadedModel, point: Point, tasks: Sequence[Task], n: int,
          advance: Callable[[int], None] | None = None) -> Point:
    """`point` with its counts on `n` validation problems of each task, at batch 1."""
    config = resolve_config(point.method, lm.facts.family, **point.settings)
    for task in tasks:
        result = evaluate(lm, task, config, n=n, seed=SEED, split="validation", batch_size=1, progress=advance)
        point.correct += round(result.accuracy_pct * result.n / 100)
        point.n += result.n
        point.tokens += result.num_tokens
        point.seconds += result.seconds
    return point


def choose(points: Sequence[Point]) -> Point:
    """The fastest point within TOLERANCE accuracy points of the best (the module's rule)."""
    best = max(p.accuracy_pct for p in points)
    eligible = [p for p in points if p.accuracy_pct >= best - TOLERANCE]
    return max(eligible, key=lambda p: p.tokens_per_second)


def tune(lm: LoadedModel, tasks: Sequence[Task], n: int, progress: Callable[[str], None] | None = None,
         advance: Callable[[int], None] | None = None) -> tuple[Recipe, list[Point]]:
    """The recipe of `lm` by the module's rule, and every point scored (float32 grid, then the
    chosen point in bfloat16)."""
    points = grid_for(lm)
    for point in points:
        if progress:
            progress(" ".join([point.method, *(f"{k}={v}" for k, v in point.settings.items())]))
        score(lm, point, tasks, n, advance)
    chosen = choose(points)
    best = max(p.accuracy_pct for p in points)
    if progress:
        progress(f"{chosen.method} in bfloat16")
    in_bf16 = score(load_model(lm.path, dtype="bfloat16", device=lm.model.device),
                    Point(chosen.method, chosen.settings, "bfloat16"), tasks, n, advance)
    points.append(in_bf16)
    faster = in_bf16.accuracy_pct >= best - TOLERANCE and in_bf16.tokens_per_second > chosen.tokens_per_second
    final = in_bf16 if faster else chosen
    record = {"rule": f"fastest point within {TOLERANCE:g} accuracy points of the best (pooled over the tasks), "
                      "at batch 1; then bfloat16 if still within and faster (d3llm.eval.tune)",
              "split": "validation", "seed": SEED, "n_per_task": n, "tasks": [t.name for t in tasks],
              "points": [p.record() for p in points], "code_version": code_version()}
    return Recipe(final.method, final.settings, final.dtype, record), points
