"""Leaderboards: result files of many runs -> one comparison with AUP (Markdown, JSON, plots).

    board = build_leaderboard(load_results(["runs/eval", "runs/sweep-d3llm"]))
    write_leaderboard(board, Path("runs/leaderboard"))  # d3llm.eval.report: leaderboard.md/.json + PNG plots
    print(board.to_markdown())

Inputs are the records written by `d3llm eval --json` and `d3llm sweep` (`EvalResult.to_dict()`,
checked against the same fields by `EvalResult.check_record`). `d3llm.eval.report` writes a
board's files (Markdown, JSON, plots).
Tasks come in a fixed order (arith, arith-long, code, then others as first seen).
Rows are grouped by task and (model, method); all points of one (model, method, task), one
eval or every point of a sweep, form its (TPF, accuracy) curve. AUP comes from that curve
through `d3llm.metrics.aup`, against y_max = the best accuracy of *all* rows on the task
(docs/method.md section 5), so the y_max used is stored with every task.
Results of one task measured on different problem sets (n, seed or split: `problem_set`, e.g.
the fixed test set) are not comparable and are refused unless `allow_mixed=True`. A single
point's accuracy shows its 95% interval (`83.0 [77.2, 87.6]`; docs/reference.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from d3llm.errors import D3llmError
from d3llm.eval.results import EvalResult
from d3llm.files import read_json
from d3llm.metrics.aup import ALPHA, aup
from d3llm.tasks import TASK_NAMES

log = logging.getLogger(__name__)

# What a results record must hold: `EvalResult`'s fields without a default.
REQUIRED_KEYS = EvalResult.required_keys()
# Keys by which a JSON file in a folder is recognised as a results record; other JSON files
# there (a sweep's curve.json, a leaderboard.json) are skipped.
RECORD_MARKERS = ("accuracy_pct", "tokens_per_forward")


@dataclass(frozen=True)
class Result(EvalResult):
    """One evaluated point as read back: the `EvalResult` record, a sweep point's settings
    and the file it came from."""

    settings: dict = field(default_factory=dict)  # a sweep point's settings ({} for one eval)
    source: str = ""  # the file it was read from

    @classmethod
    def from_record(cls, record: object, source: str) -> Result:
        """A `Result` from an `EvalResult.to_dict()` record; `source` names it in errors."""
        values = EvalResult.check_record(record, source)
        if not isinstance(record.get("sweep_point") or {}, dict):
            raise D3llmError(f"{source}: `sweep_point` must be an object (a sweep point's settings), "
                             f"got {record['sweep_point']!r}")
        return cls(**values, settings=record.get("sweep_point") or {}, source=source)


def _read_json(path: Path) -> object:
    return read_json(path, "results file")  # regular files only, bounded, any damage one line


def load_results(paths: Iterable[str | Path]) -> list[Result]:
    """Results from files and folders (searched recursively for `*.json`).

    A file named explicitly must be a results record; in a folder, JSON files that are not
    records (a sweep's curve.json, a leaderboard.json) are skipped."""
    results = []
    for path in map(Path, paths):
        if path.is_file():
            results.append(Result.from_record(_read_json(path), str(path)))
        elif path.is_dir():
            for file in sorted(path.rglob("*.json")):
                if not file.is_file():  # a FIFO or device named *.json: never opened
                    log.debug("skipping %s: not a regular file", file)
                    continue
                data = _read_json(file)
                if isinstance(data, dict) and all(k in data for k in RECORD_MARKERS):
                    results.append(Result.from_record(data, str(file)))
                else:
                    log.debug("skipping %s: not a results record", file)
        elif path.exists():
            raise D3llmError(f"results path {path} is not a regular file or a folder")
        else:
            raise D3llmError(f"results path {path} does not exist")
    if not results:
        raise D3llmError("no results records found in " + ", ".join(map(str, paths)))
    return results


@dataclass
class Row:
    """One (model, method) on one task: its points in TPF order and their AUP."""

    model: str
    method: str
    points: list[Result]
    aup: float | None  # None when every accuracy on the task is 0 (AUP undefined)

    @property
    def label(self) -> str:
        return f"{self.model} / {self.method}"

    @property
    def best_point(self) -> Result:
        """The most accurate point (the faster one on a tie)."""
        return max(self.points, key=lambda p: (p.accuracy_pct, p.tokens_per_forward))

    def cells(self) -> dict[str, str]:
        """Formatted values for tables: a single point (its accuracy with the 95% interval), or
        `min-max` over a sweep's points (their intervals are in the JSON)."""
        def span(values: Sequence[float], digits: int) -> str:
            low, high = (f"{v:.{digits}f}" for v in (min(values), max(values)))
            return low if low == high else f"{low}-{high}"

        return {
            "accuracy %": self.points[0].accuracy_text() if len(self.points) == 1
            else span([p.accuracy_pct for p in self.points], 1),
            "TPF": span([p.tokens_per_forward for p in self.points], 2),
            "tokens/s": span([p.tokens_per_second for p in self.points], 1),
            "AUP": "undefined" if self.aup is None else f"{self.aup:.1f}",
            "n": "/".join(str(n) for n in sorted({p.n for p in self.points})),
            "points": str(len(self.points)),
        }


@dataclass
class TaskBoard:
    """The rows of one task, best AUP first, and the y_max their AUP was computed against."""

    task: str
    y_max: float
    rows: list[Row]


@dataclass
class Leaderboard:
    tasks: list[TaskBoard]
    alpha: float = ALPHA

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "tasks": {
            t.task: {"y_max": t.y_max, "rows": [
                {"model": r.model, "method": r.method, "aup": r.aup,
                 "points": [asdict(p) for p in r.points]} for r in t.rows]}
            for t in self.tasks}}

    def to_markdown(self, preamble: str = "") -> str:
        lines = ["# Leaderboard", ""]
        if preamble:
            lines += [preamble.rstrip(), ""]
        lines += [f"AUP (alpha = {self.alpha:g}) of each row's (TPF, accuracy) points against y_max, the best "
                  "accuracy of all rows on the task; [low, high] after an accuracy is its 95% interval "
                  "(Wilson); a row with several points (a sweep) shows ranges.", ""]
        columns = ("model", "method", "accuracy %", "TPF", "tokens/s", "AUP", "n", "points")
        for t in self.tasks:
            sets = "; ".join(sorted({p.problem_set for r in t.rows for p in r.points}))
            lines += [f"## {t.task} (y_max {t.y_max:.1f}%; {sets})", "",
                      "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            for r in t.rows:
                cells = {"model": r.model, "method": r.method, **r.cells()}
                lines.append("| " + " | ".join(cells[c] for c in columns) + " |")
            lines.append("")
        return "\n".join(lines)


def check_comparable(results: Sequence[Result]) -> None:
    """Refuse one task's results measured on different problem sets (n, seed, split)."""
    by_task: dict[str, dict[str, list[str]]] = {}
    for r in results:
        by_task.setdefault(r.task, {}).setdefault(r.problem_set, []).append(r.source or "<memory>")
    for task, groups in by_task.items():
        if len(groups) > 1:
            described = "; ".join(f"{problems} ({', '.join(files[:3])}{' ...' if len(files) > 3 else ''})"
                                  for problems, files in groups.items())
            raise D3llmError(f"task {task!r} mixes results of different problem sets: {described}; evaluate "
                             "them with the same --n, --seed and --split (without them: the fixed test set), or "
                             "pass --allow-mixed")


def task_order(names: Iterable[str]) -> list[str]:
    """Distinct task names in a fixed order: the bundled tasks (arith, arith-long, code) first,
    then the others in the order they first appear, so tables and plot panels keep one order
    whatever order the result files were read in."""
    seen = list(dict.fromkeys(names))
    return [t for t in TASK_NAMES if t in seen] + [t for t in seen if t not in TASK_NAMES]


def build_leaderboard(results: Sequence[Result], allow_mixed: bool = False, alpha: float = ALPHA) -> Leaderboard:
    """Group results by task and (model, method) and score every group's curve with AUP."""
    if not results:
        raise D3llmError("no results to compare")
    if not alpha >= 0:
        raise D3llmError(f"`alpha` must be >= 0, got {alpha}")
    if not allow_mixed:
        check_comparable(results)
    tasks = []
    for task in task_order(r.task for r in results):
        groups: dict[tuple[str, str], list[Result]] = {}
        for r in results:
            if r.task == task:
                groups.setdefault((r.model, r.method), []).append(r)
        y_max = max(r.accuracy_pct for points in groups.values() for r in points)
        rows = [Row(model, method, sorted(points, key=lambda p: p.tokens_per_forward),
                    aup([(p.tokens_per_forward, p.accuracy_pct) for p in points], y_max, alpha) if y_max > 0 else None)
                for (model, method), points in groups.items()]
        rows.sort(key=lambda r: (-(r.aup if r.aup is not None else -1), -r.best_point.accuracy_pct, r.label))
        tasks.append(TaskBoard(task, y_max, rows))
    return Leaderboard(tasks, alpha)
