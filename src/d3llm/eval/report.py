"""A leaderboard's files: Markdown, JSON and (matplotlib permitting) the two PNG plots.

    files = write_leaderboard(build_leaderboard(load_results(paths)), Path("runs/leaderboard"))

Above both `leaderboard` (the board) and `plots` (its drawings), so neither imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path

from d3llm.errors import D3llmError
from d3llm.eval.leaderboard import Leaderboard
from d3llm.eval.plots import plot_aup, plot_curves
from d3llm.files import claim_folder, read_json, write_atomic


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


def terminal_tables(board: Leaderboard, n: int, seed: int) -> list:
    """One rich table per task for `d3llm demo` (the task in the title, not in every row); model
    and method names are never cut with an ellipsis (a name wider than the terminal allows folds
    onto a second line) and the number columns keep their width."""
    from rich.table import Table

    tables = []
    for task in board.tasks:
        table = Table(title=f"{task.task}: n={n} test problems, seed {seed}; best accuracy {task.y_max:.1f}%",
                      title_justify="left")
        for column in ("model", "method"):
            table.add_column(column, overflow="fold", ratio=1)
        for column in ("accuracy %", "TPF", "tokens/s", "AUP"):
            table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
        for row in task.rows:
            cells = row.cells()
            table.add_row(row.model, row.method, *(cells[c] for c in ("accuracy %", "TPF", "tokens/s", "AUP")))
        tables.append(table)
    return tables
