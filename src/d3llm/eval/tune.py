"""Choose a model's decode recipe on the validation split: a fixed grid and a fixed rule.

    recipe, points = tune(lm, tasks, n=100)      # d3llm.models.recipe.Recipe, the scored grid
    write_recipe(lm.path, recipe)                # `d3llm tune MODEL --save`

The grid (`grid_for`): each preset the model is compared with (its provenance's `methods`),
at every threshold of `THRESHOLDS` for its strategy; a delayed-cache preset also in its lean
schedule (`LEAN`: no whole-canvas refresh while a block settles, the masks after the created
blocks read from the cache; docs/method.md section 4), in the dtype the model was loaded in
(`d3llm tune`: float32 unless --dtype says otherwise).

The rule: every point decodes `n` validation problems of each task (accuracy pooled over the
tasks; batched: a row decodes what it decodes alone, so batching changes no answer). The points
within `TOLERANCE` points of the best are eligible; they are timed at batch 1 (latency, as the
paper reports tokens/s) on the first `TIMING_N` problems of each task, in `TIMING_ROUNDS` rounds
that visit the points in turn, so a busy machine slows them alike; the recipe is the eligible
point with the highest median tokens/s. Then, for a grid scored in float32, the same point in
bfloat16: its dtype becomes the recipe's if its accuracy stays within `TOLERANCE` of the best
and its median (timed in rounds beside the float32 point) is higher. The recipe keeps every
point's scores (`chosen`), so the choice can be checked; the test split is never read here.

Per task (`per_task`, when more than one task is tuned): the same rule on each task's own
problems, over the recipe's method and dtype at every threshold and cache schedule of the grid
(`siblings`: the model is loaded once, in one dtype, with one method): of the siblings within
`TOLERANCE` points of the best score any point reached on that task, the fastest on that
task's timing problems. Where that is not the recipe's own point, the recipe lists the settings
that differ for the task (`Recipe.tasks`); `eval` and the demo then decode that task with them.

Scoring is the long part (hours on a real model): with `progress_file`, each point's score is
written there as soon as it is done (`ScoredPoints`), and a tune run again with the same file
and settings scores only the points it lacks. Timing is never reused: the eligible points are
timed together, in one run, so that they compare.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from d3llm.decode.config import PRESETS, resolve_config
from d3llm.decode.policies import DelayedCache
from d3llm.decode.strategies import ThresholdStrategy
from d3llm.errors import D3llmError
from d3llm.eval.runner import evaluate
from d3llm.eval.sweep import settings_differences
from d3llm.eval.timing import time_in_rounds
from d3llm.files import read_json, write_atomic
from d3llm.models.catalog import describe
from d3llm.models.loading import LoadedModel, load_model
from d3llm.models.recipe import Recipe
from d3llm.tasks import Task
from d3llm.trajectory.store import fingerprint
from d3llm.version import code_version

THRESHOLDS = {"entropy": (0.3, 0.5, 0.8, 1.2), "confidence": (0.7, 0.8, 0.9, 0.95)}
LEAN = {"refresh_while_waiting": False, "future_masks": "cached"}
TOLERANCE = 1.0  # accuracy points under the best that a faster point may give up
SEED = 0  # which validation problems
TIMING_N = 10  # problems per task of the timing pass
# rounds of it: bfloat16 against float32 differs by 6-14% at batch 1 on the bundled student,
# which 3 rounds did not always tell apart (docs/notebook/2026-12-07-recipes-per-task.md)
TIMING_ROUNDS = 5
SCORING_BATCH = 16


@dataclass
class Point:
    method: str
    settings: dict
    dtype: str
    scores: dict[str, tuple[int, int]] = field(default_factory=dict)  # task -> (correct, n)
    speeds: list[float] = field(default_factory=list)  # tokens/s of each timing round, over the tasks
    task_speeds: dict[str, list[float]] = field(default_factory=dict)  # task -> its own rounds (`per_task`)

    @property
    def correct(self) -> int:
        return sum(c for c, _ in self.scores.values())

    @property
    def n(self) -> int:
        return sum(n for _, n in self.scores.values())

    @property
    def accuracy_pct(self) -> float:
        """Pooled over the tasks."""
        return 100.0 * self.correct / max(self.n, 1)

    def accuracy_on(self, task: str) -> float:
        correct, n = self.scores.get(task, (0, 0))
        return 100.0 * correct / max(n, 1)

    @property
    def tokens_per_second(self) -> float:
        """The median of the timing rounds (0 when not timed: not eligible)."""
        return statistics.median(self.speeds) if self.speeds else 0.0

    def tokens_per_second_on(self, task: str) -> float:
        """The median of the task's own timing rounds (0 when not timed on it)."""
        rounds = self.task_speeds.get(task)
        return statistics.median(rounds) if rounds else 0.0

    def label(self) -> str:
        return Recipe(self.method, self.settings, self.dtype).text()

    def key(self) -> str:
        return json.dumps([self.method, self.settings, self.dtype], sort_keys=True)

    def record(self) -> dict:
        return {"method": self.method, "settings": self.settings, "dtype": self.dtype,
                "accuracy_pct": round(self.accuracy_pct, 2), "correct": self.correct, "n": self.n,
                "tokens_per_second_rounds": [round(v, 1) for v in self.speeds],
                "tasks": {task: {"correct": c, "n": n, "accuracy_pct": round(self.accuracy_on(task), 2),
                                 "tokens_per_second_rounds": [round(v, 1) for v in self.task_speeds.get(task, [])]}
                          for task, (c, n) in self.scores.items()}}


class ScoredPoints:
    """The scores of a tune's points so far, in a JSON file rewritten (atomically) after each:
    `{"settings": what decides the scores, "scores": {point key: {task: [correct, n]}}}`. A file
    of other settings is refused, naming what differs."""

    def __init__(self, path: Path | None, settings: dict):
        self.path, self.settings, self.scores = path, settings, {}
        if path is None or not path.exists():
            return
        data = read_json(path, "tune progress file")
        old = data.get("settings") if isinstance(data, dict) else None
        if old != settings:
            diffs = settings_differences(old, settings) if isinstance(old, dict) else "unreadable settings"
            raise D3llmError(f"{path} holds the scores of another tune ({diffs}); "
                             "give another --out, or delete it to start over")
        scores = data.get("scores", {})
        if not (isinstance(scores, dict) and all(isinstance(v, dict) and all(map(_is_score, v.values()))
                                                 for v in scores.values())):
            raise D3llmError(f"{path}: `scores` must map each point to {{task: [correct, n]}}, as `d3llm tune` "
                             "writes; delete it to start over")
        self.scores = {k: {task: tuple(x) for task, x in v.items()} for k, v in scores.items()}

    def restore(self, point: Point) -> bool:
        """Fill `point` from the file; False if it has not been scored yet."""
        if point.key() not in self.scores:
            return False
        point.scores = dict(self.scores[point.key()])
        return True

    def add(self, point: Point) -> None:
        self.scores[point.key()] = dict(point.scores)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps({"settings": self.settings, "scores": self.scores}, indent=1))


def _is_score(value) -> bool:
    """[correct, n]: two ints."""
    return (isinstance(value, list) and len(value) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in value))


def run_settings(lm: LoadedModel, tasks: Sequence[Task], n: int) -> dict:
    """What decides a tune's scores: the model's weights and dtype, the tasks, n and the problems' seed."""
    return {"model": lm.name, "model_fingerprint": fingerprint(lm.path),
            "dtype": _dtype_of(lm), "tasks": [t.name for t in tasks],
            "n_per_task": n, "seed": SEED, "split": "validation"}


def points_to_score(lm: LoadedModel) -> int:
    """How many points `tune` scores for `lm` at least (a progress bar's total): its grid, and
    after a float32 grid the chosen point in bfloat16 (its siblings in bfloat16 are told by `more`)."""
    return len(grid_for(lm)) + (_dtype_of(lm) == "float32")


def grid_for(lm: LoadedModel) -> list[Point]:
    """The fixed grid of `lm` (see the module docstring), in the dtype `lm` is loaded in."""
    points = []
    for method in describe(lm.path, lm.name).methods:
        config = PRESETS[method]
        thresholds = THRESHOLDS[config.strategy.name] if isinstance(config.strategy, ThresholdStrategy) else (None,)
        schedules = ({}, LEAN) if _delayed(method) else ({},)
        for threshold in thresholds:
            for schedule in schedules:
                settings = {**({} if threshold is None else {"threshold": threshold}), **schedule}
                points.append(Point(method, settings, _dtype_of(lm)))
    return points


def _dtype_of(lm: LoadedModel) -> str:
    """The name of the dtype `lm` computes in, as points and records write it ("float32")."""
    return str(lm.model.dtype).removeprefix("torch.")


def score(lm: LoadedModel, point: Point, tasks: Sequence[Task], n: int,
          advance: Callable[[int], None] | None = None) -> Point:
    """`point` with its correct answers on `n` validation problems of each task."""
    config = resolve_config(point.method, lm.facts.family, **point.settings)
    for task in tasks:
        result = evaluate(lm, task, config, n=n, seed=SEED, split="validation", batch_size=SCORING_BATCH,
                          progress=advance)
        point.scores[task.name] = (result.correct, result.n)
    return point


def time_points(runs: Sequence[tuple[LoadedModel, Point]], tasks: Sequence[Task]) -> list[list[float]]:
    """Each point's tokens/s at batch 1 on the first TIMING_N validation problems of each task,
    in interleaved rounds (`d3llm.eval.timing`): the rounds of each point, in order."""
    configs = [(lm, resolve_config(p.method, lm.facts.family, **p.settings)) for lm, p in runs]
    speeds = time_in_rounds(configs, tasks, n=TIMING_N, seed=SEED, split="validation", rounds=TIMING_ROUNDS)
    return [list(speed.rounds) for speed in speeds]


def within(point: Point, best: float) -> bool:
    """The rule's accuracy band: at most TOLERANCE points under the best."""
    return point.accuracy_pct >= best - TOLERANCE


def eligible(points: Sequence[Point], best: float) -> list[Point]:
    return [p for p in points if within(p, best)]


def choose(points: Sequence[Point]) -> Point:
    """The fastest point (median tokens/s) within TOLERANCE accuracy points of the best."""
    return max(eligible(points, max(p.accuracy_pct for p in points)), key=lambda p: p.tokens_per_second)


def _delayed(method: str) -> bool:
    """Whether the grid tries `method` in both cache schedules (its own and LEAN)."""
    return isinstance(PRESETS[method].cache, DelayedCache)


def siblings(chosen: Point) -> list[Point]:
    """`chosen` at every threshold of its strategy's grid, and for a delayed-cache method also
    in the grid's other cache schedule (LEAN, or the preset's own: without LEAN's settings, as
    the grid writes it), its dtype kept; just `chosen` for a method without either."""
    strategy = PRESETS[chosen.method].strategy
    thresholds = THRESHOLDS[strategy.name] if isinstance(strategy, ThresholdStrategy) else (None,)
    schedules = [chosen.settings]
    if _delayed(chosen.method):
        lean = all(chosen.settings.get(k) == v for k, v in LEAN.items())
        schedules.append({k: v for k, v in chosen.settings.items() if k not in LEAN} if lean
                         else {**chosen.settings, **LEAN})
    return [Point(chosen.method, {**settings, **({} if t is None else {"threshold": t})}, chosen.dtype)
            for settings in schedules for t in thresholds]


def _differences(chosen: Point, pick: Point) -> dict:
    """The settings of `pick` that differ from `chosen`'s (same method); one that `pick` leaves
    at its preset's value is written out, so that a task's settings replace the recipe's."""
    preset_values = PRESETS[chosen.method].settings()
    names = [*pick.settings, *(k for k in chosen.settings if k not in pick.settings)]
    value = lambda point, k: point.settings.get(k, preset_values.get(k))  # noqa: E731
    return {k: value(pick, k) for k in names if value(pick, k) != value(chosen, k)}


def per_task(lm: LoadedModel, chosen: Point, family: Sequence[Point], points: Sequence[Point],
             tasks: Sequence[Task]) -> dict[str, dict]:
    """{task: settings} for each task where the rule on that task alone picks another point of
    `family` (`chosen`'s siblings, scored) than `chosen`: of the siblings within TOLERANCE of the
    best any of `points` reached on the task, the fastest there (timed on the task when several).
    The settings are those that differ from `chosen`'s."""
    own = {}
    for task in tasks:
        best = max(p.accuracy_on(task.name) for p in points)
        close = [p for p in family if p.accuracy_on(task.name) >= best - TOLERANCE]
        if len(close) > 1:
            for p, rounds in zip(close, time_points([(lm, p) for p in close], [task])):
                p.task_speeds[task.name] = rounds
        pick = max(close, key=lambda p: p.tokens_per_second_on(task.name), default=chosen)
        if pick is not chosen:
            own[task.name] = _differences(chosen, pick)
    return own


def tune(lm: LoadedModel, tasks: Sequence[Task], n: int, progress: Callable[[str], None] | None = None,
         advance: Callable[[int], None] | None = None, progress_file: Path | None = None,
         more: Callable[[int], None] | None = None) -> tuple[Recipe, list[Point]]:
    """The recipe of `lm` by the module's rule, and every point scored (the grid; for a float32
    grid, the chosen point in bfloat16; the chosen point's siblings not in the grid, for the
    rule per task); scores kept in and resumed from `progress_file` (module docstring).
    `more(k)` is told of k problems to score beyond `points_to_score`'s (the siblings)."""
    saved = ScoredPoints(progress_file, run_settings(lm, tasks, n))

    def scored(model: LoadedModel, point: Point) -> Point:
        if saved.restore(point):
            if advance:
                advance(len(tasks) * n)
            return point
        if progress:
            progress(point.label())
        saved.add(score(model, point, tasks, n, advance))
        return point

    points = [scored(lm, point) for point in grid_for(lm)]
    best = max(p.accuracy_pct for p in points)
    if progress:
        progress("timing the eligible points")
    timed = eligible(points, best)
    for point, rounds in zip(timed, time_points([(lm, p) for p in timed], tasks)):
        point.speeds = rounds
    chosen, model = choose(points), lm
    if chosen.dtype == "float32":
        in_bf16 = Point(chosen.method, chosen.settings, "bfloat16")
        lm_bf16 = load_model(lm.path, dtype="bfloat16", device=lm.model.device)
        points.append(scored(lm_bf16, in_bf16))
        if within(in_bf16, best):
            twin = Point(chosen.method, chosen.settings, "float32")  # timed beside it, in the same rounds
            twin.speeds, in_bf16.speeds = time_points([(lm, twin), (lm_bf16, in_bf16)], tasks)
            if in_bf16.tokens_per_second > twin.tokens_per_second:
                chosen, model = in_bf16, lm_bf16
    own = {}
    if len(tasks) > 1:
        known, family = {p.key(): p for p in points}, siblings(chosen)
        missing = [p for p in family if p.key() not in known]
        if more and missing:
            more(len(missing) * len(tasks) * n)
        points += [scored(model, p) for p in missing]
        known.update((p.key(), p) for p in missing)
        if progress:
            progress("the rule on each task")
        own = per_task(model, chosen, [known[p.key()] for p in family], points, tasks)
    record = {"rule": f"fastest (median tokens/s at batch 1, {TIMING_ROUNDS} rounds) of the points within {TOLERANCE:g} "
                      "accuracy points of the best (pooled over the tasks); then bfloat16 if still within and "
                      "faster; then the same rule on each task over the chosen point's thresholds and cache schedules "
                      "(d3llm.eval.tune)",
              "split": "validation", "seed": SEED, "n_per_task": n, "timing_n_per_task": TIMING_N,
              "tasks": [t.name for t in tasks], "points": [p.record() for p in points], "code_version": code_version()}
    return Recipe(chosen.method, chosen.settings, chosen.dtype, record, own), points
