"""The 95% interval of an accuracy: the Wilson score interval (docs/reference.md, "Leaderboard
and lm-eval").

For `correct` successes in `n` trials, p = correct / n and z the normal quantile of the level
(1.959964 for 95%), the interval is

    (p + z^2 / 2n  -/+  z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)

E. B. Wilson, "Probable inference, the law of succession, and statistical inference", Journal
of the American Statistical Association 22 (1927) 209-212; method 3 of R. G. Newcombe,
"Two-sided confidence intervals for the single proportion: comparison of seven methods",
Statistics in Medicine 17 (1998) 857-872, whose table gives the values the tests check. Unlike
p -/+ z sqrt(p (1 - p) / n) it stays inside [0, 1] and does not shrink to a point at 0 or n
correct (0 of 10 correct: [0, 27.8%]). Pure functions; no model code.
"""

from __future__ import annotations

import math

from d3llm.errors import D3llmError

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (low, high), as fractions in [0, 1], of `correct` out of `n`."""
    for value, what in ((correct, "`correct`"), (n, "`n`")):
        if isinstance(value, bool) or not isinstance(value, int):
            raise D3llmError(f"{what} must be a whole number of problems, got {value!r}")
    if not 0 <= correct <= n or n < 1:
        raise D3llmError(f"need 0 <= correct <= n and n >= 1, got correct={correct}, n={n}")
    p, z2 = correct / n, z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    scale = 1 + z2 / n
    # exactly 0 and 1 at the ends (where the formula's two terms cancel up to rounding)
    return (0.0 if correct == 0 else (centre - half) / scale), (1.0 if correct == n else (centre + half) / scale)


def wilson_interval_pct(correct: int, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of an accuracy, in percent: `(low, high)` around 100 * correct / n."""
    low, high = wilson_interval(correct, n)
    return 100 * low, 100 * high
