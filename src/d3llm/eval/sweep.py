"""Sweeps: one model, task and preset evaluated over a grid of decode settings.

    results = sweep(lm, task, "d3llm", {"threshold": ["0.3", "0.5"]}, n=100, seed=0, out=Path("runs/s"))

Each grid point is written to `OUT/point-NNN.json` as soon as it is done (a killed sweep
keeps what it finished and skips it when run again), and `OUT/curve.json` lists the
(tokens per forward, accuracy %) points in TPF order: the input of AUP.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

from d3llm.decode import preset
from d3llm.decode.config import parse_overrides
from d3llm.errors import D3llmError
from d3llm.eval.runner import evaluate
from d3llm.models import LoadedModel
from d3llm.tasks import Task


def parse_grid(params: list[str]) -> dict[str, list[str]]:
    """`["threshold=0.3,0.5", "block_size=16,32"]` -> {"threshold": ["0.3", "0.5"], ...}."""
    grid: dict[str, list[str]] = {}
    for item in params:
        name, sep, values = item.partition("=")
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not choices:
            raise D3llmError(f"--param {item!r} must be NAME=V1,V2,...")
        grid[name.strip()] = choices
    if not grid:
        raise D3llmError("a sweep needs at least one --param NAME=V1,V2,...")
    return grid


def sweep(
    lm: LoadedModel, task: Task, method: str, grid: dict[str, list[str]], n: int, seed: int, out: Path,
    max_new_tokens: int = 64, batch_size: int = 8, progress: Callable[[str], None] | None = None,
) -> list[dict]:
    names = list(grid)
    points = [dict(zip(names, values)) for values in itertools.product(*grid.values())]
    configs = [preset(method, max_new_tokens=max_new_tokens, **parse_overrides([f"{k}={v}" for k, v in p.items()]))
               for p in points]  # every point is validated before the first forward
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for index, (point, config) in enumerate(zip(points, configs)):
        file = out / f"point-{index:03d}.json"
        if file.is_file():
            record = json.loads(file.read_text())
            if record.get("sweep_point") == point:
                records.append(record)
                continue
        if progress:
            progress(", ".join(f"{k}={v}" for k, v in point.items()))
        record = {**evaluate(lm, task, config, n=n, seed=seed, batch_size=batch_size).to_dict(), "sweep_point": point}
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(file)  # atomic: a point file is whole or absent
        records.append(record)
    curve = sorted(({"tokens_per_forward": r["tokens_per_forward"], "accuracy_pct": r["accuracy_pct"],
                     "settings": r["sweep_point"]} for r in records), key=lambda c: c["tokens_per_forward"])
    (out / "curve.json").write_text(json.dumps({"model": lm.name, "task": task.name, "method": method,
                                                "n": n, "seed": seed, "points": curve}, indent=2))
    return records
