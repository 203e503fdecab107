"""PNG plots of a leaderboard: accuracy against TPF per task, and AUP as grouped bars.

    plot_curves(board, Path("accuracy_vs_tpf.png"))
    plot_aup(board, Path("aup.png"))

One panel per task in both. A method has the same colour everywhere and a model the same
marker, so two short legends (methods, models) serve any number of rows; the demo compares
~25 (model, method) pairs, which one colour per pair could not tell apart. Drawn with
matplotlib's object API on the Agg canvas (no pyplot, no display, no global state), so
plotting works on a headless machine, in a server or in a test. matplotlib is the optional
`plot` extra; without it these functions raise a `D3llmError` that says so.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from d3llm.decode import METHODS
from d3llm.errors import D3llmError
from d3llm.eval.leaderboard import Leaderboard

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def matplotlib_available() -> bool:
    """Whether plots can be drawn (matplotlib is the optional `plot` extra)."""
    return importlib.util.find_spec("matplotlib") is not None


def _figure(board: Leaderboard, panel_width: float, panel_height: float):
    """A figure with one panel per task (up to 3 a row) and the legends' space on the right."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise D3llmError("plots need matplotlib: pip install 'd3llm[plot]' (or pass --no-plots)") from None
    columns = min(len(board.tasks), 3)
    rows = -(-len(board.tasks) // columns)
    figure = Figure(figsize=(panel_width * columns + 2.5, panel_height * rows), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(rows, columns, i + 1) for i in range(len(board.tasks))]


def _styles(board: Leaderboard) -> tuple[dict[str, tuple], dict[str, str]]:
    """A colour per method (in preset order) and a marker per model (in name order)."""
    from matplotlib import colormaps

    rank = {name: i for i, name in enumerate(METHODS)}
    methods = sorted({r.method for t in board.tasks for r in t.rows}, key=lambda m: (rank.get(m, len(rank)), m))
    models = sorted({r.model for t in board.tasks for r in t.rows})
    palette = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return ({m: palette(i % palette.N) for i, m in enumerate(methods)},
            {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(models)})


def _legends(figure, colors: dict, markers: dict | None) -> None:
    from matplotlib.lines import Line2D

    methods = [Line2D([], [], color=c, lw=6, label=m) for m, c in colors.items()]
    figure.legend(handles=methods, title="method", loc="outside right upper", fontsize="small")
    if markers:
        models = [Line2D([], [], color="black", marker=k, ls="", label=m) for m, k in markers.items()]
        figure.legend(handles=models, title="model", loc="outside right lower", fontsize="small")


def plot_curves(board: Leaderboard, path: Path) -> Path:
    """Accuracy % against TPF: one panel per task, one line per (model, method) through its points."""
    figure, panels = _figure(board, 4.5, 3.6)
    colors, markers = _styles(board)
    for axes, task in zip(panels, board.tasks):
        for row in task.rows:
            axes.plot([p.tokens_per_forward for p in row.points], [p.accuracy_pct for p in row.points],
                      color=colors[row.method], marker=markers[row.model], label=row.label)
        axes.set(title=f"{task.task} (y_max {task.y_max:.1f}%)", xlabel="tokens per forward (TPF)",
                 ylabel="accuracy %")
        axes.grid(alpha=0.3)
    _legends(figure, colors, markers)
    figure.savefig(path, dpi=110)
    return path


def plot_aup(board: Leaderboard, path: Path) -> Path:
    """AUP as grouped bars: one panel per task, one group per model, one bar per method."""
    colors, markers = _styles(board)
    most_bars = max(len(t.rows) for t in board.tasks)
    figure, panels = _figure(board, max(4.0, 1.5 + 0.3 * most_bars), 3.6)
    for axes, task in zip(panels, board.tasks):
        models = [m for m in markers if any(r.model == m for r in task.rows)]
        methods = [m for m in colors if any(r.method == m for r in task.rows)]
        width = 0.8 / len(methods)
        for k, method in enumerate(methods):
            bars = [(i, r.aup) for i, model in enumerate(models) for r in task.rows
                    if (r.model, r.method) == (model, method) and r.aup is not None]
            axes.bar([i - 0.4 + (k + 0.5) * width for i, _ in bars], [a for _, a in bars], width=width,
                     color=colors[method])
        axes.set_xticks(range(len(models)), models, rotation=15 if len(models) > 2 else 0)
        undefined = "; AUP undefined: all accuracies 0" if task.y_max == 0 else ""
        axes.set(title=f"{task.task} (y_max {task.y_max:.1f}%{undefined})", ylabel=f"AUP (alpha = {board.alpha:g})")
        axes.grid(axis="y", alpha=0.3)
    _legends(figure, colors, None)
    figure.savefig(path, dpi=110)
    return path
