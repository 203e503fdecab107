"""PNG plots of a leaderboard: accuracy against TPF per task, and AUP as grouped bars.

    plot_curves(board, Path("accuracy_vs_tpf.png"))
    plot_aup(board, Path("aup.png"))
    figure = aup_figure(board)  # the matplotlib Figure itself, to inspect or save elsewhere

One panel per task in both, in the board's task order (arith, arith-long, code, then others);
each figure has a title that says what is plotted and on how many problems (n), and is ~10
inches wide with 9-10 pt text, so it reads at page width. A method has the same colour
everywhere and a model the same marker; the curves carry one legend, one entry per (model,
method) drawn as it appears (colour and marker), below the panels where it covers no point.
Markers of rows that coincide are drawn side by side (a few pixels apart). AUP panels are
stacked, one per task at full width; bars are grouped per model and centred on its tick; every
bar carries its value ("0" for a zero AUP, "n/a" where the model was not run with that method on
the task or AUP is undefined); a dashed line marks the task's best accuracy, the AUP of a
method that holds it at one token per forward (an AR model), and the axis says what AUP
measures: accuracy % integrated over TPF, so it exceeds 100 whenever accuracy holds at TPF > 1.
Drawn with
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


def _figure(board: Leaderboard, panel_width: float, panel_height: float, per_row: int = 3):
    """A figure with one panel per task (up to `per_row` a row)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise D3llmError("plots need matplotlib: pip install 'd3llm[plot]' (or pass --no-plots)") from None
    columns = min(len(board.tasks), per_row)
    rows = -(-len(board.tasks) // columns)
    figure = Figure(figsize=(panel_width * columns, panel_height * rows + 0.6), layout="constrained")
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


def _problems(board: Leaderboard) -> str:
    """"n = 200 problems per point" (or a range where results differ), for titles."""
    ns = sorted({p.n for t in board.tasks for r in t.rows for p in r.points})
    return f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}-{ns[-1]}"


def _row_legend(figure, rows, colors: dict, markers: dict) -> None:
    """One legend, one entry per (model, method) as drawn, below the panels."""
    from matplotlib.lines import Line2D

    handles = {(r.model, r.method): Line2D([], [], color=colors[r.method], marker=markers[r.model],
                                           markeredgecolor="black", markeredgewidth=0.6,
                                           label=f"{r.model} / {r.method}")
               for r in rows}
    entries = [handles[k] for k in sorted(handles)]
    figure.legend(handles=entries, loc="outside lower center", ncols=min(4, len(entries)), fontsize=9,
                  title="model / method", title_fontsize=9, frameon=False)


def _method_legend(figure, colors: dict) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=m) for m, c in colors.items()]
    handles.append(Line2D([], [], color="dimgray", ls="--", lw=0.8, label="best accuracy = AUP at TPF 1"))
    figure.legend(handles=handles, loc="outside lower center", ncols=min(6, len(handles)), fontsize=9,
                  title="method", title_fontsize=9, frameon=False)


# Where points of different rows coincide on a panel (closer than these fractions of its x and
# y ranges), later rows are drawn this many points to the side: 0, +OFFSET, -OFFSET, +2 OFFSET, ...
CLOSE_X, CLOSE_Y, OFFSET_PT = 0.025, 0.04, 6.0


def _side_offsets(rows) -> list[float]:
    """Per row (in drawing order), a horizontal shift in points that keeps its markers off
    markers already drawn at (nearly) the same place; 0 for a row that collides with none."""
    xs = [p.tokens_per_forward for r in rows for p in r.points]
    ys = [p.accuracy_pct for r in rows for p in r.points]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float, int]] = []  # (x, y, offset slot)
    offsets = []
    for row in rows:
        points = [(p.tokens_per_forward, p.accuracy_pct) for p in row.points]
        taken = {slot for x, y, slot in placed for px, py in points
                 if abs(px - x) < CLOSE_X * span_x and abs(py - y) < CLOSE_Y * span_y}
        slot = next(k for k in range(len(placed) + 1) if k not in taken)
        placed += [(x, y, slot) for x, y in points]
        offsets.append(OFFSET_PT * ((slot + 1) // 2) * (1 if slot % 2 else -1))
    return offsets


def plot_curves(board: Leaderboard, path: Path) -> Path:
    """`curves_figure` saved as a PNG at `path`."""
    curves_figure(board).savefig(path, dpi=110)
    return path


def curves_figure(board: Leaderboard):
    """Accuracy % against TPF: one panel per task (in the board's task order), one line per
    (model, method) through its points; coinciding markers are drawn side by side."""
    from matplotlib.transforms import offset_copy

    figure, panels = _figure(board, 3.4, 3.2)
    colors, markers = _styles(board)
    shifted = False
    for axes, task in zip(panels, board.tasks):
        for row, dx in zip(task.rows, _side_offsets(task.rows)):
            shifted |= dx != 0
            (line,) = axes.plot([p.tokens_per_forward for p in row.points], [p.accuracy_pct for p in row.points],
                                color=colors[row.method], marker=markers[row.model], markeredgecolor="black",
                                markeredgewidth=0.6, alpha=0.9, label=row.label)
            if dx:  # shifted after plotting, so the axis limits still come from the data
                line.set_transform(offset_copy(axes.transData, fig=figure, x=dx, units="points"))
        axes.set(title=f"{task.task} (best accuracy {task.y_max:.1f}%)", xlabel="tokens per forward (TPF)",
                 ylabel="accuracy %")
        axes.margins(x=0.08, y=0.08)
        axes.grid(alpha=0.3)
    note = "; markers at the same point are drawn side by side" if shifted else ""
    figure.suptitle(f"Accuracy against tokens per forward (TPF), {_problems(board)} problems per point\n"
                    f"up and to the right is better{note}", fontsize=11)
    _row_legend(figure, [r for t in board.tasks for r in t.rows], colors, markers)
    return figure


def _bar_label(value: float | None) -> str:
    """A bar's label: "n/a" for no AUP (not run, or undefined), "0" for a zero AUP."""
    if value is None:
        return "n/a"
    if value == 0:
        return "0"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def plot_aup(board: Leaderboard, path: Path) -> Path:
    """`aup_figure` saved as a PNG at `path`."""
    aup_figure(board).savefig(path, dpi=110)
    return path


def aup_figure(board: Leaderboard):
    """AUP as grouped bars: one panel per task, one group per model centred on its tick, one bar
    per method the model has on any task, labelled with its value ("0" for zero, "n/a" where
    the model was not run with that method on the task or AUP is undefined)."""
    colors, markers = _styles(board)
    model_methods = {m: [k for k in colors if any((r.model, r.method) == (m, k) for t in board.tasks for r in t.rows)]
                     for m in markers}
    most_bars = max(sum(len(model_methods[m]) for m in markers if any(r.model == m for r in t.rows))
                    for t in board.tasks)
    figure, panels = _figure(board, max(9.0, 1.5 + 0.35 * most_bars), 2.8, per_row=1)
    width = 0.8 / max(len(v) for v in model_methods.values())
    for axes, task in zip(panels, board.tasks):
        models = [m for m in markers if any(r.model == m for r in task.rows)]
        scores = {(r.model, r.method): r.aup for r in task.rows}
        top = max((a for a in scores.values() if a is not None), default=0.0) or 1.0
        for i, model in enumerate(models):
            group = model_methods[model]
            for k, method in enumerate(group):
                x = i + (k - (len(group) - 1) / 2) * width
                value = scores.get((model, method))
                axes.bar(x, value or 0.0, width=width * 0.95, color=colors[method])
                axes.annotate(_bar_label(value), (x, value or 0.0), xytext=(0, 2), textcoords="offset points",
                              ha="center", va="bottom", fontsize=8, rotation=90 if len(group) > 3 else 0,
                              color="black" if value is not None else "dimgray")
        if task.y_max > 0:  # what holding the best accuracy at one token per forward (an AR model) scores
            axes.axhline(task.y_max, color="dimgray", ls="--", lw=0.8)
        axes.set_xticks(range(len(models)), models, fontsize=9)
        axes.set_xlim(-0.5, len(models) - 0.5)
        axes.set_ylim(0, top * 1.18)
        undefined = "; AUP undefined: all accuracies 0" if task.y_max == 0 else ""
        axes.set_title(f"{task.task} (best accuracy {task.y_max:.1f}%{undefined})", fontsize=10)
        axes.set_ylabel(f"AUP (alpha {board.alpha:g})\ncan exceed 100", fontsize=9)
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle(f"AUP per model and method, {_problems(board)} problems per point\n"
                    "accuracy % integrated over tokens per forward: above 100 when accuracy holds at TPF > 1; "
                    "0: scored 0, n/a: not run", fontsize=10)
    _method_legend(figure, colors)
    return figure
