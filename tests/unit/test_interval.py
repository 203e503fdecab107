"""The Wilson score interval against published values (Newcombe 1998, method 3; docs/reference.md)."""

import pytest

from d3llm.errors import D3llmError
from d3llm.metrics import wilson_interval, wilson_interval_pct


@pytest.mark.parametrize("correct, n, low, high", [
    (81, 263, 0.2553, 0.3662),  # Newcombe's table: 81/263, 15/148, 0/20, 1/29
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (0, 10, 0.0, 0.2775),  # no success: the interval still has width (p -/+ z se would be [0, 0])
    (10, 10, 0.7225, 1.0),
    (87, 200, 0.3682, 0.5043),
])
def test_known_values(correct, n, low, high):
    assert wilson_interval(correct, n) == pytest.approx((low, high), abs=5e-5)


def test_bounds_stay_in_range_and_hold_the_estimate():
    for n in (1, 7, 600):
        for correct in range(n + 1):
            low, high = wilson_interval(correct, n)
            assert 0.0 <= low <= correct / n <= high <= 1.0
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_percent_and_symmetry():
    assert wilson_interval_pct(87, 200) == pytest.approx((36.82, 50.43), abs=5e-3)
    low, high = wilson_interval(3, 10)
    assert wilson_interval(7, 10) == pytest.approx((1 - high, 1 - low))


@pytest.mark.parametrize("correct, n, message", [
    (1, 0, "n >= 1"), (11, 10, "0 <= correct <= n"), (-1, 10, "0 <= correct <= n"),
    (1.5, 10, "`correct` must be a whole number"), (1, True, "`n` must be a whole number"),
])
def test_bad_counts_are_refused(correct, n, message):
    with pytest.raises(D3llmError, match=message):
        wilson_interval(correct, n)
