"""Plots a reader understands at a glance: a title that says what and on how many problems,
one legend for the curves, page-width figures with text of at least 8 pt."""

import pytest

from d3llm.eval.leaderboard import Result, build_leaderboard

pytest.importorskip("matplotlib")

from d3llm.eval.plots import aup_figure, curves_figure  # noqa: E402

PAGE_INCHES = 10.5  # wider figures shrink their text below reading size at page width


def board():
    def result(model, task, method, accuracy, tpf, n=50):
        return Result(model, task, method, n, 0, "test", accuracy, tpf, 10.0 * tpf, source=f"{model}-{task}-{method}")

    return build_leaderboard([
        result("m-ar", "arith", "ar", 90, 1.0), result("m-dllm", "arith", "d3llm", 85, 6.0),
        result("m-dllm", "arith", "vanilla", 88, 0.4), result("m-ar", "code", "ar", 80, 1.0),
        result("m-dllm", "code", "d3llm", 75, 4.0), result("m-block", "code", "d3llm-block", 78, 4.5),
    ])


def smallest_text(figure) -> float:
    figure.canvas.draw()  # legends and tick labels exist once drawn
    sizes = [t.get_fontsize() for t in figure.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text"))
             if t.get_text().strip()]
    return min(sizes)


@pytest.mark.parametrize("draw", [curves_figure, aup_figure])
def test_title_names_the_problems_and_the_figure_fits_a_page(draw):
    figure = draw(board())
    title = figure.get_suptitle()
    assert "n = 50 problems per point" in title and "y_max" not in title
    assert figure.get_figwidth() <= PAGE_INCHES
    assert smallest_text(figure) >= 8
    assert all("y_max" not in a.get_title() for a in figure.axes)


def test_curves_have_one_legend_with_every_row_once():
    figure = curves_figure(board())
    assert len(figure.legends) == 1 and not any(a.get_legend() for a in figure.axes)
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert sorted(labels) == sorted({f"{r.model} / {r.method}" for t in board().tasks for r in t.rows})


def test_aup_marks_the_best_accuracy_line_and_stacks_the_tasks():
    figure = aup_figure(board())
    panels = figure.axes[:2]
    assert panels[0].get_position().y0 > panels[1].get_position().y0  # one above the other, full width
    dashed = [line for line in panels[0].get_lines() if line.get_linestyle() == "--"]
    assert [line.get_ydata()[0] for line in dashed] == [90]  # arith's best accuracy = the AR row's AUP
