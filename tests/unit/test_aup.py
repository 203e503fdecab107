"""AUP against the reference values of docs/method.md section 5."""

import pytest

from d3llm.errors import D3llmError
from d3llm.metrics import aup, aup_table


@pytest.mark.parametrize(
    "rho, y, y_max, expected",
    [([1.0], [74.1], 74.98, 74.1),
     ([1, 2, 3, 4], [80, 74, 79, 77], 82, 292.601531),  # 74 is dropped (more than 5 under 80)
     ([1.0, 2.0], [50, 60], 55, 99.032510),
     ([2.0, 5.0], [70, 69], 70, 344.157993)],
)
def test_reference_values(rho, y, y_max, expected):
    assert aup(list(zip(rho, y)), y_max) == pytest.approx(expected, abs=1e-6)


def test_points_are_sorted_by_tpf():
    assert aup([(2.0, 60), (1.0, 50)], 55) == pytest.approx(99.032510, abs=1e-6)


@pytest.mark.parametrize("points, message", [
    ([], "no \\(tpf, accuracy\\) points"),
    ([(0.0, 50)], "tokens per forward must be a positive number"),
    ([(-1.0, 50)], "tokens per forward must be a positive number"),
    ([(1.0, 150)], "accuracy must be a percentage in 0..100"),
    ([(1.0, -3)], "accuracy must be a percentage"),
    ([("fast", 50)], "a point must be \\[tpf, accuracy_pct\\]"),
])
def test_bad_points(points, message):
    with pytest.raises(D3llmError, match=message):
        aup(points, 80)


def test_table_uses_the_best_accuracy_of_all_methods_per_task():
    table = {"gsm8k": {"a": [(1.0, 50)], "b": [(1.0, 55), (2.0, 60)]}, "math": {"a": [(1.0, 40)]}}
    result = aup_table(table)
    assert result["y_max"] == {"gsm8k": 60, "math": 40}
    assert result["aup"]["math"]["a"] == pytest.approx(40)
    # The mean is over the tasks every method has (gsm8k here): a's math score is not averaged in.
    assert result["mean_tasks"] == ["gsm8k"]
    assert result["mean"]["a"] == pytest.approx(50)
    assert result["mean"]["b"] == pytest.approx(result["aup"]["gsm8k"]["b"])
    both = aup_table({"gsm8k": {"a": [(1.0, 50)]}, "math": {"a": [(1.0, 40)]}})
    assert both["mean_tasks"] == ["gsm8k", "math"] and both["mean"]["a"] == pytest.approx((50 + 40) / 2)
    assert aup_table({"gsm8k": {"a": [(1.0, 50)]}, "math": {"b": [(1.0, 40)]}})["mean"] == {"a": None, "b": None}
    with pytest.raises(D3llmError, match="empty"):
        aup_table({})


def test_aup_command(tmp_path, monkeypatch, capsys):
    import json
    import sys

    from d3llm.cli import main

    table = tmp_path / "t.yaml"
    table.write_text("gsm8k:\n  vanilla: [[1.0, 72.55]]\n  fast: [[1.0, 74.0], [3.0, 73.0]]\nmath:\n  vanilla: [[1.0, 30]]\n")
    monkeypatch.setattr(sys, "argv", ["d3llm", "aup", str(table), "--json"])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code in (0, None)
    result = json.loads(capsys.readouterr().out)
    assert result["y_max"] == {"gsm8k": 74.0, "math": 30}
    assert result["aup"]["gsm8k"]["vanilla"] == pytest.approx(72.55)
    assert result["aup"]["gsm8k"]["fast"] == pytest.approx(aup([(1.0, 74.0), (3.0, 73.0)], 74.0))
    bad = tmp_path / "bad.json"
    bad.write_text('{"gsm8k": {"m": [[1.0, 0.7], [0, 0.6]]}}')
    monkeypatch.setattr(sys, "argv", ["d3llm", "aup", str(bad)])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 2
    assert "gsm8k/m: tokens per forward must be a positive number" in capsys.readouterr().err
