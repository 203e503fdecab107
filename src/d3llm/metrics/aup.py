"""AUP, Accuracy Under Parallelism (docs/method.md section 5).

For one method on one task: points (rho_i, y_i) with rho = tokens per forward (TPF) > 0 and
y = accuracy in percent. Sorted by rho, points more than `drop_below` points under the
first (lowest-rho) accuracy are dropped (the authors' code raised an error instead), then

    AUP = rho_1 y_1 + sum_{i>=2} (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})) / 2
    W(y) = min(exp(-alpha (1 - y / y_max)), 1)

with `y_max` the best accuracy of *all* methods compared on the task, so AUP depends on the
comparison set: record it beside every AUP. A single point at rho = 1 gives AUP = y.
Pure functions; no model code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from d3llm.errors import D3llmError
from d3llm.files import load_yaml, read_text

ALPHA = 3.0  # the authors' alpha
DROP_BELOW = 5.0  # accuracy points under the first point beyond which a point is dropped

Point = tuple[float, float]  # (tokens per forward, accuracy %)
# TPF is at most the tokens a forward can commit; 1e6 is far above any canvas, and keeps
# rho * y finite (a TPF of 1e308 would make AUP inf).
MAX_TPF = 1e6


def check_points(points: Sequence[Point], where: str = "curve") -> list[Point]:
    """Validated (tpf, accuracy %) pairs sorted by tpf."""
    if isinstance(points, (str, bytes, Mapping)) or not hasattr(points, "__len__"):
        raise D3llmError(f"{where}: the points must be a list of [tpf, accuracy_pct] pairs, got {points!r}")
    if not points:
        raise D3llmError(f"{where}: no (tpf, accuracy) points")
    out = []
    for point in points:
        # numbers only: True is not 1 TPF, '2' is not 2 (float() would take both)
        if isinstance(point, (str, bytes, Mapping)) or not hasattr(point, "__len__") or len(point) != 2 \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point):
            raise D3llmError(f"{where}: a point must be [tpf, accuracy_pct] (two numbers), got {point!r}")
        try:
            rho, y = (float(v) for v in point)
        except OverflowError:  # an int too large for a float
            raise D3llmError(f"{where}: a point must be [tpf, accuracy_pct] of sensible size, got {point!r}") from None
        if not 0 < rho <= MAX_TPF:
            raise D3llmError(f"{where}: tokens per forward must be a positive number at most {MAX_TPF:g}, got {rho}")
        if not 0 <= y <= 100:
            raise D3llmError(f"{where}: accuracy must be a percentage in 0..100, got {y}")
        out.append((rho, y))
    return sorted(out)


def weight(y: float, y_max: float, alpha: float = ALPHA) -> float:
    return min(math.exp(-alpha * (1 - y / y_max)), 1.0)


def aup(points: Sequence[Point], y_max: float, alpha: float = ALPHA, drop_below: float = DROP_BELOW) -> float:
    """AUP of one method's (tpf, accuracy %) points against the comparison's best `y_max`."""
    curve = check_points(points)
    if not 0 < y_max <= 100:
        raise D3llmError(f"`y_max` must be in (0, 100], got {y_max}")
    first = curve[0][1]
    kept = [(rho, y) for rho, y in curve if y >= first - drop_below]
    total = kept[0][0] * kept[0][1]
    for (rho0, y0), (rho1, y1) in zip(kept, kept[1:]):
        total += 0.5 * (rho1 - rho0) * (y1 * weight(y1, y_max, alpha) + y0 * weight(y0, y_max, alpha))
    return total


def aup_table(table: Mapping[str, Mapping[str, Sequence[Point]]], alpha: float = ALPHA) -> dict:
    """`{task: {method: points}}` -> `{"y_max": {task: y}, "aup": {task: {method: aup}},
    "mean": {method: mean or None}, "mean_tasks": [task, ...]}`; y_max per task over all its
    methods. The mean is taken over `mean_tasks`, the tasks that *every* method has, so the
    means compare like with like (a method scored on one easy task is not averaged against
    another's two); with no task common to all methods every mean is None."""
    if not table:
        raise D3llmError("the AUP table is empty")
    y_max, scores = {}, {}
    for task, methods in table.items():
        if not methods:
            raise D3llmError(f"task {task!r} has no methods")
        curves = {m: check_points(p, f"{task}/{m}") for m, p in methods.items()}
        y_max[task] = max(y for curve in curves.values() for _, y in curve)
        if y_max[task] <= 0:
            raise D3llmError(f"task {task!r}: every accuracy is 0, so AUP is undefined")
        scores[task] = {m: aup(curve, y_max[task], alpha) for m, curve in curves.items()}
    methods = list(dict.fromkeys(m for task_scores in scores.values() for m in task_scores))
    common = [t for t in scores if all(m in scores[t] for m in methods)]
    mean = {m: sum(scores[t][m] for t in common) / len(common) if common else None for m in methods}
    return {"alpha": alpha, "y_max": y_max, "aup": scores, "mean": mean, "mean_tasks": common}


def read_table(path) -> dict:
    """A YAML or JSON file `task -> method -> [[tpf, accuracy_pct], ...]` (the authors' form)."""
    path = Path(path)
    if not path.is_file():
        raise D3llmError(f"AUP table {path} not found")
    text = read_text(path, "AUP table", max_bytes=16 << 20)  # a regular UTF-8 file
    try:
        table = load_yaml(text)  # JSON is YAML; aliases bounded
    except yaml.YAMLError as exc:
        raise D3llmError(f"{path} is neither YAML nor JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(table, dict) or not table or not all(isinstance(m, dict) for m in table.values()):
        raise D3llmError(f"{path} must map task -> method -> [[tpf, accuracy_pct], ...]")
    bad = [k for k in [*table, *(k for m in table.values() for k in m)] if not isinstance(k, str)]
    if bad:  # YAML reads `2024-01-01:` as a date, `1:` as an int and `~:` as null
        raise D3llmError(f"{path}: task and method names must be text, got {bad[0]!r} (quote it)")
    return table
