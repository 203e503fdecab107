"""The results record: what one evaluation measured, defined once.

`d3llm eval --json`, `d3llm sweep` (one record per point, plus `sweep_point` and
`sweep_settings`) and the demo write `EvalResult.to_dict()`; `d3llm leaderboard` reads the
records back through `EvalResult.check_record`, against the same fields. The fields without a
default are what a comparison needs (a record lacking one is refused); the others say how the
numbers were measured. No torch here: the leaderboard reads records without loading a model.
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import MISSING, asdict, dataclass, field, fields

from d3llm.errors import D3llmError
from d3llm.files import first_json_line, read_json
from d3llm.metrics.aup import check_points

_TYPES = {"str": (str,), "int": (int, float), "float": (int, float), "dict": (dict,)}  # JSON types per field type


@dataclass(frozen=True)
class EvalResult:
    # what a comparison needs
    model: str
    task: str
    method: str
    n: int  # problems evaluated
    seed: int  # which problems were drawn
    split: str
    accuracy_pct: float
    tokens_per_forward: float
    tokens_per_second: float
    # how it was measured
    nfe: int = 0  # forwards summed over sequences (what TPF divides by)
    forward_calls: int = 0  # batched model calls actually made
    num_tokens: int = 0
    seconds: float = 0.0
    forward_seconds: float = 0.0  # of `seconds`, inside model forwards
    # forward kind (`full`: from column 0; `window`: after a KV cache) -> [calls, columns, seconds]
    forward_profile: dict = field(default_factory=dict)
    decode_config: dict = field(default_factory=dict)
    code_version: str = ""
    machine: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def required_keys(cls) -> tuple[str, ...]:
        """The fields a record must hold to be compared (those without a default)."""
        return tuple(f.name for f in fields(EvalResult) if f.default is MISSING and f.default_factory is MISSING)

    @classmethod
    def check_record(cls, record: object, source: str) -> dict:
        """`record` checked against the fields (present, typed, a valid point); `source` names it
        in errors. Returns the record's values of `EvalResult`'s fields (other keys dropped)."""
        if not isinstance(record, dict):
            raise D3llmError(f"{source} is not a results record (expected a JSON object from `d3llm eval --json`)")
        missing = [k for k in cls.required_keys() if k not in record]
        if missing:
            raise D3llmError(f"{source} is not a results record: it lacks {', '.join(missing)}")
        check_points([(record["tokens_per_forward"], record["accuracy_pct"])], where=source)
        values = {}
        for f in fields(EvalResult):
            if f.name not in record:
                continue
            value, kind = record[f.name], str(f.type)
            if isinstance(value, bool) or not isinstance(value, _TYPES[kind]):
                what = "a number" if kind in ("int", "float") else {"str": "a string", "dict": "an object"}[kind]
                raise D3llmError(f"{source}: `{f.name}` must be {what}, got {value!r}")
            if kind in ("int", "float") and f.name != "seed" and not (
                    math.isfinite(value) and value >= (f.name == "n") and (kind == "float" or value == int(value))):
                what = "an integer" if kind == "int" else "a finite number"
                raise D3llmError(f"{source}: `{f.name}` must be {what} >= {int(f.name == 'n')}, got {value!r}")
            values[f.name] = value
        return values


def written_by_eval(path: Path) -> bool:
    """Whether `path` holds a results record (`d3llm eval --json` may replace it)."""
    try:
        record = read_json(path, max_bytes=16 << 20)
    except D3llmError:
        return False
    return isinstance(record, dict) and all(k in record for k in EvalResult.required_keys())


def written_as_samples(path: Path) -> bool:
    """Whether `path` starts like a `d3llm eval --log-samples` file (which may replace it)."""
    first = first_json_line(path)
    return isinstance(first, dict) and {"task", "prompt", "response"} <= set(first)
