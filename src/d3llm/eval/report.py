"""What evaluations report: a leaderboard's files (Markdown, JSON and, matplotlib permitting, the
two PNG plots), and the lines and tables `d3llm eval`, `aup` and `demo` print.

    files = write_leaderboard(build_leaderboard(load_results(paths)), Path("runs/leaderboard"))
    print(result_line(evaluate(lm, task, config)))

Above both `leaderboard` (the board) and `plots` (its drawings), so neither imports the other;
none of them imports torch (`d3llm aup` prints its table without it). The tables are rich
tables, for a rich console to print.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich import box
from rich.table import Table

from d3llm.errors import D3llmError
from d3llm.eval.leaderboard import Leaderboard
from d3llm.eval.plots import plot_aup, plot_curves
from d3llm.eval.results import EvalResult
from d3llm.files import claim_folder, read_json, write_atomic
from d3llm.metrics.interval import wilson_interval_pct
from d3llm.tasks.base import FIXED_TEST_N


LEADERBOARD_FILES = ("leaderboard.md", "leaderboard.json", "accuracy_vs_tpf.png", "aup.png")


def _is_leaderboard_folder(out: Path) -> bool:
    """A folder `write_leaderboard` wrote: its leaderboard.json is one of ours."""
    try:
        data = read_json(out / "leaderboard.json", max_bytes=64 << 20)
    except D3llmError:
        return False
    return isinstance(data, dict) and set(data) == {"alpha", "tasks"}


def claim_out(out: Path, overwrite: bool = False) -> None:
    """Refuse (unless `overwrite`) a folder where writing the leaderboard would replace files
    it did not write."""
    claim_folder(out, "--out", overwrite, _is_leaderboard_folder, LEADERBOARD_FILES, "`d3llm leaderboard`")


def write_leaderboard(board: Leaderboard, out: Path, plots: bool = True, preamble: str = "") -> list[Path]:
    """Write leaderboard.md, leaderboard.json and (with `plots`) the two PNG plots into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "leaderboard.md", out / "leaderboard.json"]
    write_atomic(files[0], board.to_markdown(preamble))
    write_atomic(files[1], json.dumps(board.to_dict(), indent=2))
    if plots:
        files += [plot_curves(board, out / "accuracy_vs_tpf.png"), plot_aup(board, out / "aup.png")]
    return files


def terminal_tables(board: Leaderboard, n: int, seed: int) -> list[Table]:
    """One rich table per task for `d3llm demo` (the task in the title, not in every row); model
    and method names are never cut with an ellipsis (a name wider than the terminal allows folds
    onto a second line) and the number columns keep their width. Rules under the header only,
    so that the bundled names and the accuracy's interval fit 80 columns."""
    tables = []
    columns = {"accuracy % [95% CI]": "accuracy %", "TPF": "TPF", "tokens/s": "tokens/s", "AUP": "AUP"}
    for task in board.tasks:
        table = Table(title=f"{task.task}: n={n} test problems, seed {seed}; best accuracy {task.y_max:.1f}%",
                      title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for column in ("model", "method"):
            table.add_column(column, overflow="fold", ratio=1)
        for column in columns:
            table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
        for row in task.rows:
            cells = row.cells()
            table.add_row(row.model, row.method, *(cells[c] for c in columns.values()))
        tables.append(table)
    return tables


def small_n_note(n: int) -> str:
    """What the demo says of its `n`: few problems per row, so wide intervals, and where the
    numbers to compare come from."""
    low, high = wilson_interval_pct(n // 2, n)
    return (f"n={n} problems per row is small: the 95% interval after each accuracy spans up to "
            f"{high - low:.0f} points ({n // 2} of {n} correct: [{low:.1f}, {high:.1f}]); "
            f"`d3llm eval` scores the fixed test set ({FIXED_TEST_N} problems per task).")


def demo_lines(comparisons: list[str], files: list[Path], out: Path, plots: bool, n: int) -> list[str]:
    """What `d3llm demo` prints below its tables: that its `n` is small, each AR baseline
    comparison (`comparisons`, sentences), that the plots were skipped (without `plots`), and
    where the files are."""
    lines = [small_n_note(n),
             *(comparisons or ["no AR baseline to compare with (the bundled models are all of one kind)"])]
    if not plots:
        lines.append("plots skipped: matplotlib is not installed (pip install 'd3llm[plot]')")
    return [*lines, f"results in {out / 'results'}; leaderboard: " + ", ".join(str(f) for f in files)]


def result_line(result: EvalResult) -> str:
    """`d3llm eval`'s line for one task: model, task, method, accuracy with its 95% interval (on
    which problems), TPF and tokens/s."""
    return (f"{result.model} {result.task} {result.method}: accuracy {result.accuracy_text('%')} "
            f"({result.problem_set}), TPF {result.tokens_per_forward:.2f}, {result.tokens_per_second:.1f} tokens/s")


def _mean_column(tasks: list[str], common: list[str]) -> tuple[str, str]:
    """The AUP table's mean column: its header, and the note that says what it averages."""
    if len(common) == len(tasks):
        return "mean", f"mean over all {len(tasks)} tasks"
    if common:
        return (f"mean ({', '.join(common)})",
                f"mean over the tasks every method has ({', '.join(common)}), so means compare alike")
    return "mean", "no task has every method, so no mean"


def aup_report(result: dict, alpha: float) -> tuple[str, Table, str]:
    """`d3llm aup`'s view of `aup_table(...)` (`d3llm.metrics.aup`): the line above the table
    (alpha, each task's y_max), the rich table (a row per method, a column per task, then the
    mean over the tasks every method has, named in its header) and the lines below it (what AUP
    measures, what n/a and the mean stand for)."""
    tasks = list(result["aup"])
    mean_header, mean_note = _mean_column(tasks, result["mean_tasks"])
    title = (f"AUP (alpha={alpha:g}) per method and task; y_max per task: "
             + ", ".join(f"{t} {result['y_max'][t]:g}%" for t in tasks))
    view = Table()
    view.add_column("method")
    for task in tasks:
        view.add_column(task, justify="right")
    view.add_column(mean_header, justify="right")
    for method, mean in result["mean"].items():
        cells = [f"{result['aup'][t][method]:.1f}" if method in result["aup"][t] else "n/a" for t in tasks]
        view.add_row(method, *cells, "n/a" if mean is None else f"{mean:.1f}")
    notes = ("AUP integrates accuracy % (weighted against y_max, the task's best accuracy) over tokens "
             "per forward, so it exceeds 100 when TPF > 1.\n" f"n/a: not scored; {mean_note}.")
    return title, view, notes


def tune_table(points: list, recipe) -> Table:
    """`d3llm tune`'s grid (d3llm.eval.tune.Point): method, settings, dtype, accuracy pooled and
    per task, median tokens/s of the timing rounds with their range (timed: the eligible points);
    the chosen row marked `*`, and a task's own pick (`Recipe.tasks`) with the task's name."""
    tasks = list(dict.fromkeys(task for p in points for task in p.scores))
    table = Table("", "method", "settings", "dtype", "accuracy %", *(f"{t} %" for t in tasks), "tokens/s (range)")
    dtype = recipe.dtype or "float32"
    for p in points:
        same = p.method == recipe.method and p.dtype == dtype
        marks = ["*"] if same and p.settings == recipe.settings else []
        marks += [task for task in recipe.tasks if same and p.settings == recipe.pair(task)[1]]
        settings = ", ".join(f"{k}={v}" for k, v in p.settings.items()) or "-"
        speed = f"{p.tokens_per_second:.0f} ({min(p.speeds):.0f}-{max(p.speeds):.0f})" if p.speeds else "-"
        table.add_row(" ".join(marks), p.method, settings, p.dtype, f"{p.accuracy_pct:.1f}",
                      *(f"{p.accuracy_on(t):.1f}" if t in p.scores else "-" for t in tasks), speed)
    return table
