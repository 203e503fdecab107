"""A leaderboard's files: Markdown, JSON and (matplotlib permitting) the two PNG plots.

    files = write_leaderboard(build_leaderboard(load_results(paths)), Path("runs/leaderboard"))

Above both `leaderboard` (the board) and `plots` (its drawings), so neither imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path

from d3llm.eval.leaderboard import Leaderboard
from d3llm.eval.plots import plot_aup, plot_curves


def write_leaderboard(board: Leaderboard, out: Path, plots: bool = True, preamble: str = "") -> list[Path]:
    """Write leaderboard.md, leaderboard.json and (with `plots`) the two PNG plots into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "leaderboard.md", out / "leaderboard.json"]
    files[0].write_text(board.to_markdown(preamble))
    files[1].write_text(json.dumps(board.to_dict(), indent=2))
    if plots:
        files += [plot_curves(board, out / "accuracy_vs_tpf.png"), plot_aup(board, out / "aup.png")]
    return files
