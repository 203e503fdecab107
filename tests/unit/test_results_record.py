"""The results record's accuracy interval and problem set: derived from `correct`, `n`, `seed` and
`split`, recomputed on reading, and found for records written before they were kept."""

import json
from pathlib import Path

import pytest

from d3llm.errors import D3llmError
from d3llm.eval.leaderboard import load_results
from d3llm.eval.results import EvalResult
from d3llm.metrics import wilson_interval_pct

RESULTS = Path(__file__).resolve().parents[2] / "results"


def record(**changes) -> dict:
    base = {"model": "m", "task": "arith", "method": "d3llm", "n": 200, "seed": 0, "split": "test",
            "accuracy_pct": 43.5, "tokens_per_forward": 2.0, "tokens_per_second": 100.0}
    return {**base, **changes}


def test_a_record_without_correct_gets_it_from_accuracy_and_n():
    result = EvalResult.from_record(record(), "old.json")
    assert result.correct == 87 and result.accuracy_ci_pct == wilson_interval_pct(87, 200)
    assert result.accuracy_text() == "43.5 [36.8, 50.4]"
    assert result.problem_set == "test, seed 0, n=200"
    assert EvalResult.from_record(record(correct=None), "null.json").correct == 87


def test_derived_fields_are_recomputed_not_read():
    result = EvalResult.from_record(record(correct=87, accuracy_ci_pct=[0, 100], problem_set="anything"), "r.json")
    assert result.accuracy_ci_pct == wilson_interval_pct(87, 200) and result.problem_set == "test, seed 0, n=200"
    assert EvalResult.from_record(json.loads(json.dumps(result.to_dict())), "again.json") == result


def test_the_fixed_test_set_is_named():
    assert EvalResult.from_record(record(n=600, accuracy_pct=50.0), "r").problem_set == "fixed test set, n=600"
    assert EvalResult.from_record(record(n=600, seed=1, accuracy_pct=50.0), "r").problem_set == "test, seed 1, n=600"
    assert EvalResult.from_record(record(n=600, split="validation", accuracy_pct=50.0), "r").problem_set \
        == "validation, seed 0, n=600"


@pytest.mark.parametrize("changes, message", [
    ({"correct": 88}, "r.json: `correct` 88 of n=200 is 44%, but `accuracy_pct` is 43.5"),
    ({"correct": 201}, "r.json: `correct` must be at most n=200, got 201"),
    ({"correct": 86.5}, "r.json: `correct` must be an integer >= 0, got 86.5"),
    ({"correct": -1}, "r.json: `correct` must be an integer >= 0, got -1"),
    ({"correct": "87"}, "r.json: `correct` must be a number, got '87'"),
    ({"seed": 0.5}, "r.json: `seed` must be an integer, got 0.5"),
])
def test_bad_counts_are_refused(changes, message):
    with pytest.raises(D3llmError) as caught:
        EvalResult.from_record(record(**changes), "r.json")
    assert str(caught.value) == message


def test_every_stored_result_still_loads_with_an_interval():
    results = load_results([RESULTS])
    assert len(results) > 100
    for r in results:
        low, high = r.accuracy_ci_pct
        assert low <= r.accuracy_pct <= high and abs(100 * r.correct / r.n - r.accuracy_pct) < 0.5 / r.n * 100, r.source
