"""The one progress display of the `d3llm` command: a rich bar with counts and time left.

    with progress_bar(total=60, what="eval") as bar:
        bar.describe("arith / d3llm")
        bar.advance(8)

On stderr, so stdout keeps only results; drawn only when stderr is a terminal (quiet in pipes,
logs and CI) and removed when done. Library code takes plain callbacks (`progress(k)`); only
the command line draws (docs/design.md: print and progress bars only in the CLI layer).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn,
    TimeRemainingColumn,
)


@dataclass
class Bar:
    progress: Progress
    job: TaskID

    def advance(self, k: int = 1) -> None:
        self.progress.advance(self.job, k)

    def describe(self, what: str) -> None:
        self.progress.update(self.job, description=what)

    def add_total(self, k: int) -> None:
        """Grow the total (work found on the way, e.g. evaluation steps of a training run)."""
        total = self.progress.tasks[self.job].total or 0
        self.progress.update(self.job, total=total + k)


def columns() -> tuple:
    return (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())


@contextmanager
def progress_bar(total: int | None, what: str = "", console: Console | None = None) -> Iterator[Bar]:
    """A bar of `total` units (None: unknown, a spinner with counts), on stderr when it is a
    terminal; a no-op display otherwise (the Bar's methods still work)."""
    console = console or Console(stderr=True)
    with Progress(*columns(), console=console, transient=True, disable=not console.is_terminal) as progress:
        yield Bar(progress, progress.add_task(what, total=total))
