"""Sweeps: one model, task and preset evaluated over a grid of decode settings.

    results = sweep(lm, task, "d3llm", {"threshold": ["0.3", "0.5"]}, n=100, seed=0, out=Path("runs/s"))
    print(points_table(results))

Each grid point is written to `OUT/point-NNN.json` as soon as it is done (a killed sweep
keeps what it finished and skips it when run again), and `OUT/curve.json` lists the
(tokens per forward, accuracy %) points in TPF order: the input of AUP. Grid values are
stored typed, as the decode setting they name reads them (`threshold: 0.5`, `block_size: 16`,
`early_stop: false`), in the point files, the curve and the recorded settings alike.

Every point file and the curve record the sweep's settings (`sweep_settings`: model and its
weights' fingerprint, dtype, task, method, n, seed, split, the fixed decode overrides and the
grid). A folder is resumed only when they all match; a folder holding a sweep of other
settings is refused, naming what differs, unless `overwrite=True` replaces it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

from d3llm.decode.config import parse_overrides, resolve_config
from d3llm.errors import D3llmError
from d3llm.eval.results import EvalResult
from d3llm.eval.runner import evaluate
from d3llm.files import read_json, write_atomic
from d3llm.models import LoadedModel
from d3llm.tasks import Task
from d3llm.tasks.base import check_split
from d3llm.trajectory.store import fingerprint


def parse_grid(params: list[str]) -> dict[str, list[str]]:
    """`["threshold=0.3,0.5", "block_size=16,32"]` -> {"threshold": ["0.3", "0.5"], ...}
    (the command line's text; `sweep` types the values)."""
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


def typed_grid(grid: dict[str, list]) -> dict[str, list]:
    """Grid values as the `DecodeConfig` fields they name read them: `{"threshold": ["0.5"]}`
    -> `{"threshold": [0.5]}`; a value already typed is kept. A bad name or value is an error."""
    return {name: [_typed(name, v) for v in values] for name, values in grid.items()}


def _typed(name: str, value: object) -> object:
    if not isinstance(value, str):
        return value
    ((_, typed),) = parse_overrides([f"{name}={value}"]).items()
    return typed


def _typed_record(values: object) -> object:
    """An older record's string-valued point or grid, typed for comparison (as-is if it cannot be)."""
    if not isinstance(values, dict):
        return values
    try:
        return {k.strip().replace("-", "_"): [_typed(k, v) for v in vs] if isinstance(vs, list) else _typed(k, vs)
                for k, vs in values.items()}
    except D3llmError:
        return values


def points_table(records: list[dict]) -> str:
    """A sweep's points as an aligned text table: one column per swept setting, then accuracy %
    with its 95% interval, TPF and tokens/s, one row per point in grid order."""
    names = list(dict.fromkeys(k for r in records for k in r["sweep_point"]))
    header = [*names, "accuracy % [95% CI]", "TPF", "tokens/s"]
    rows = [[_cell(r["sweep_point"].get(k)) for k in names]
            + [EvalResult.from_record(r, "sweep point").accuracy_text(), f"{r['tokens_per_forward']:.2f}",
               f"{r['tokens_per_second']:.1f}"]
            for r in records]
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in [header, *rows])


def _cell(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


SWEEP_FILES = ("point-*.json", "point-*.tmp", "curve.json")


def sweep_settings(lm: LoadedModel, task: Task, method: str, grid: dict[str, list[str]], n: int, seed: int,
                   split: str, fixed: dict) -> dict:
    """Everything that decides a sweep's points (not its speed settings such as batch size)."""
    return {"model": lm.name, "model_fingerprint": fingerprint(lm.path),
            "dtype": str(lm.model.dtype).removeprefix("torch."), "task": task.name, "method": method,
            "n": n, "seed": seed, "split": split, "fixed": dict(sorted(fixed.items())),
            "grid": {k: list(v) for k, v in grid.items()}}


def settings_differences(old: dict | None, new: dict) -> str:
    """What differs between the settings recorded in a folder (`old`) and a run's (`new`), one
    line: `n 100 there, 50 now; ...` (a sweep's folder and a tune's scores file are refused with it)."""
    if old is None:
        return "settings not recorded (written by an older d3llm)"
    diffs = [f"{key} {old.get(key)!r} there, {new[key]!r} now" for key in new if old.get(key) != new[key]]
    return "; ".join(diffs)


def _existing(out: Path) -> list[Path]:
    return sorted(f for pattern in SWEEP_FILES for f in out.glob(pattern) if f.is_file())


def check_resumable(out: Path, settings: dict, overwrite: bool = False) -> None:
    """Refuse a folder whose sweep files have other settings; `overwrite` clears it whatever it
    holds (a rerun after a decoder change must not read back the old points)."""
    if overwrite:
        for stale in _existing(out):
            stale.unlink()
        return
    for file in _existing(out):
        if file.suffix == ".tmp":
            continue
        try:
            old = read_json(file).get("sweep_settings")  # damage of any kind (deep, long ints): not ours
        except (D3llmError, AttributeError):
            old = None
        if isinstance(old, dict) and "grid" in old:  # written before grid values were stored typed
            old = {**old, "grid": _typed_record(old["grid"])}
        if old == settings:
            continue
        raise D3llmError(f"--out {out} holds a sweep with other settings ({file.name}: "
                         f"{settings_differences(old, settings)}); use --overwrite to replace it, or another --out")


def sweep(
    lm: LoadedModel, task: Task, method: str, grid: dict[str, list[str]], n: int, seed: int, out: Path,
    max_new_tokens: int | None = None, batch_size: int = 16, progress: Callable[[str], None] | None = None,
    split: str = "test", settings: dict | None = None, overwrite: bool = False,
    advance: Callable[[int], None] | None = None,
) -> list[dict]:
    """Evaluate `method` at every point of `grid` (with the fixed overrides `settings` and
    `max_new_tokens`, None: the preset's) and write the point files and the curve to `out`.
    `progress(point)` is told each point as it starts, `advance(k)` each k problems done (a
    point read back from `out` counts as its n at once)."""
    grid = {name.strip().replace("-", "_"): values for name, values in grid.items()}
    fixed = {**({} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}), **(settings or {})}
    clash = sorted(set(fixed) & set(grid))
    if clash:
        raise D3llmError(f"{', '.join(clash)} is both swept (--param) and fixed (--set); give it once")
    grid = typed_grid(grid)
    names = list(grid)
    points = [dict(zip(names, values)) for values in itertools.product(*grid.values())]
    # every point is validated (a swept setting the method ignores is refused) before the first forward
    configs = [resolve_config(method, lm.facts.family, **fixed, **p) for p in points]
    split = check_split(split)  # an unknown split fails now
    record_settings = sweep_settings(lm, task, method, grid, n, seed, split, fixed)
    if out.is_dir():
        check_resumable(out, record_settings, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for index, (point, config) in enumerate(zip(points, configs)):
        file = out / f"point-{index:03d}.json"
        if file.is_file():
            record = json.loads(file.read_text())
            if _typed_record(record.get("sweep_point")) == point:  # with the fields an older file lacks
                records.append({**record, **EvalResult.from_record(record, str(file)).to_dict(), "sweep_point": point})
                if advance:
                    advance(n)
                continue
        if progress:
            progress(", ".join(f"{k}={_cell(v)}" for k, v in point.items()))
        result = evaluate(lm, task, config, n=n, seed=seed, split=split, batch_size=batch_size, progress=advance)
        record = {**result.to_dict(), "sweep_point": point, "sweep_settings": record_settings}
        tmp = file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(file)  # atomic: a point file is whole or absent
        records.append(record)
    curve = sorted(({"tokens_per_forward": r["tokens_per_forward"], "accuracy_pct": r["accuracy_pct"],
                     "settings": r["sweep_point"]} for r in records), key=lambda c: c["tokens_per_forward"])
    write_atomic(out / "curve.json", json.dumps({"model": lm.name, "task": task.name, "method": method,
                                                "n": n, "seed": seed, "split": split, "points": curve,
                                                "sweep_settings": record_settings}, indent=2))
    return records
