"""The results record: what one evaluation measured, defined once.

`d3llm eval --json`, `d3llm sweep` (one record per point, plus `sweep_point` and
`sweep_settings`) and the demo write `EvalResult.to_dict()`; `d3llm leaderboard` reads the
records back through `EvalResult.check_record`, against the same fields. The fields without a
default are what a comparison needs (a record lacking one is refused); the others say how the
numbers were measured. Two fields are derived, never read back: `problem_set` names the problems
(`d3llm.tasks.problem_set_name`) and `accuracy_ci_pct` is the 95% Wilson interval of the
accuracy (`d3llm.metrics.interval`) from `correct` of `n`; a record written before `correct` was
kept gets it from accuracy_pct and n. No torch here: the leaderboard reads records without
loading a model.
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import MISSING, asdict, dataclass, field, fields

from d3llm.errors import D3llmError
from d3llm.files import first_json_line, read_json
from d3llm.metrics.aup import check_points
from d3llm.metrics.interval import wilson_interval_pct
from d3llm.tasks.base import problem_set_name

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
    dtype: str = ""  # the model's compute dtype (float32, bfloat16, ...)
    correct: int | None = None  # problems scored correct (None: round(accuracy_pct * n / 100))
    # derived from the fields above (a record's own values are not read back)
    problem_set: str = field(init=False)  # e.g. "fixed test set, n=600"
    accuracy_ci_pct: tuple[float, float] = field(init=False)  # 95% Wilson interval, [low, high] in %

    def __post_init__(self) -> None:
        correct = round(self.accuracy_pct * self.n / 100) if self.correct is None else self.correct
        object.__setattr__(self, "correct", correct)
        object.__setattr__(self, "problem_set", problem_set_name(self.split, self.n, self.seed))
        object.__setattr__(self, "accuracy_ci_pct", wilson_interval_pct(correct, self.n))

    def to_dict(self) -> dict:
        return asdict(self)

    def accuracy_text(self, unit: str = "") -> str:
        """The accuracy % and its 95% interval as tables show them, `83.0 [77.2, 87.6]` (with
        `unit="%"`, as sentences do: `83.0% [77.2, 87.6]`)."""
        low, high = self.accuracy_ci_pct
        return f"{self.accuracy_pct:.1f}{unit} [{low:.1f}, {high:.1f}]"

    @classmethod
    def required_keys(cls) -> tuple[str, ...]:
        """The fields a record must hold to be compared (those without a default, not derived)."""
        return tuple(f.name for f in fields(EvalResult)
                     if f.init and f.default is MISSING and f.default_factory is MISSING)

    @classmethod
    def from_record(cls, record: object, source: str) -> EvalResult:
        """The result a record holds (`check_record`); `source` names it in errors."""
        return cls(**cls.check_record(record, source))

    @classmethod
    def check_record(cls, record: object, source: str) -> dict:
        """`record` checked against the fields (present, typed, a valid point, `correct` agreeing
        with the accuracy); `source` names it in errors. Returns the record's values of
        `EvalResult`'s fields that are not derived (other keys dropped)."""
        if not isinstance(record, dict):
            raise D3llmError(f"{source} is not a results record (expected a JSON object from `d3llm eval --json`)")
        missing = [k for k in cls.required_keys() if k not in record]
        if missing:
            raise D3llmError(f"{source} is not a results record: it lacks {', '.join(missing)}")
        check_points([(record["tokens_per_forward"], record["accuracy_pct"])], where=source)
        values = {}
        for f in fields(EvalResult):
            if f.name not in record or not f.init:
                continue
            value, kind = record[f.name], str(f.type).removesuffix(" | None")
            if value is None and kind != f.type:  # an optional field left empty
                continue
            if isinstance(value, bool) or not isinstance(value, _TYPES[kind]):
                what = "a number" if kind in ("int", "float") else {"str": "a string", "dict": "an object"}[kind]
                raise D3llmError(f"{source}: `{f.name}` must be {what}, got {value!r}")
            values[f.name] = _number(f.name, kind, value, source) if kind in ("int", "float") else value
        _check_correct(values, source)
        return values


def _number(name: str, kind: str, value: float, source: str) -> float:
    """A record's number checked: finite, an integer for an `int` field (returned as an int), and
    >= 0 (`n` >= 1; `seed` any integer)."""
    low = {"n": 1, "seed": -math.inf}.get(name, 0)
    if not (math.isfinite(value) and value >= low and (kind == "float" or value == int(value))):
        what = "a finite number" if kind == "float" else "an integer"
        raise D3llmError(f"{source}: `{name}` must be {what}{'' if low < 0 else f' >= {low}'}, got {value!r}")
    return int(value) if kind == "int" else value


def _check_correct(values: dict, source: str) -> None:
    """A record's `correct`, when it has one, is at most `n` and gives its `accuracy_pct`."""
    correct, n = values.get("correct"), values["n"]
    if correct is None:
        return
    if correct > n:
        raise D3llmError(f"{source}: `correct` must be at most n={n}, got {correct}")
    if not math.isclose(100 * correct / n, values["accuracy_pct"], abs_tol=1e-6):
        raise D3llmError(f"{source}: `correct` {correct} of n={n} is {100 * correct / n:.4g}%, "
                         f"but `accuracy_pct` is {values['accuracy_pct']}")


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
