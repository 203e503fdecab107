"""The one progress display: counts and time left on a terminal, nothing in a pipe."""

import io

from rich.console import Console

from d3llm.progress import progress_bar


def drawn(terminal: bool) -> str:
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=terminal, width=100)
    with progress_bar(4, "eval", console=console) as bar:
        bar.describe("arith / d3llm")
        bar.advance(3)
        bar.progress.refresh()
        with progress_bar(None, "train", console=console) as phases:  # phases: one line each
            phases.phase("training", 6, 10)
            phases.phase("validation", 8, 32)
            phases.progress.refresh()
    return stream.getvalue()


def test_counts_and_time_left_on_a_terminal():
    text = drawn(terminal=True)
    assert "arith / d3llm" in text and "3/4" in text and "left" in text
    assert "training" in text and "6/10" in text and "validation" in text and "8/32" in text


def test_nothing_when_not_a_terminal():
    assert drawn(terminal=False) == ""
