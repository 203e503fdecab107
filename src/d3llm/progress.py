"""The one progress display of the `d3llm` command: a rich bar with counts and time left.

    with progress_bar(total=60, what="eval") as bar:
        bar.describe("arith / d3llm")
        bar.advance(8)

On stderr, so stdout keeps only results; drawn only when stderr is a terminal (quiet in pipes,
logs and CI) and removed when done. Library code takes plain callbacks (`progress(k)`); only
the command line draws (docs/design.md: print and progress bars only in the CLI layer).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn,
    TimeRemainingColumn,
)


@dataclass
class Bar:
    progress: Progress
    job: TaskID
    phases: dict[str, TaskID] = field(default_factory=dict)

    def advance(self, k: int = 1) -> None:
        self.progress.advance(self.job, k)

    def describe(self, what: str) -> None:
        self.progress.update(self.job, description=what)

    def grow(self, k: int) -> None:
        """k more units of work than the total said (found on the way)."""
        total = next(task.total for task in self.progress.tasks if task.id == self.job)
        self.progress.update(self.job, total=None if total is None else total + k)

    def phase(self, what: str, done: int, total: int) -> None:
        """`done` of `total` in a phase named by `what`'s first word (training, validation, ...):
        each phase its own line, so one phase's pace does not skew another's time left."""
        name = what.split(",")[0]
        if name not in self.phases:
            if not self.phases:  # the first phase takes the bar's own line
                self.phases[name] = self.job
            else:
                self.phases[name] = self.progress.add_task(what, total=total)
        self.progress.update(self.phases[name], description=what, completed=done, total=total)


def columns() -> tuple:
    return (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())


@contextmanager
def progress_bar(total: int | None, what: str = "", console: Console | None = None) -> Iterator[Bar]:
    """A bar of `total` units (None: unknown, a spinner with counts), on stderr when it is a
    terminal; a no-op display otherwise (the Bar's methods still work). Meanwhile transformers'
    own tqdm bars (e.g. "Writing model shards") are off: one bar, one style."""
    console = console or Console(stderr=True)
    with _no_transformers_bars(), Progress(*columns(), console=console, transient=True,
                                           disable=not console.is_terminal) as progress:
        yield Bar(progress, progress.add_task(what, total=total))


@contextmanager
def _no_transformers_bars() -> Iterator[None]:
    hf = sys.modules.get("transformers.utils.logging")  # only if loaded: no import for a bar
    was_on = hf is not None and hf.is_progress_bar_enabled()
    if was_on:
        hf.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf.enable_progress_bar()
