"""`d3llm leaderboard` and the demo's report: result files of real `evaluate` runs on toy models
-> Markdown, JSON and PNG plots with AUP computed from the points; refused inputs."""

import json
import re
import struct
from pathlib import Path

import pytest

from d3llm.decode import preset
from d3llm.errors import D3llmError
from d3llm.eval.demo import ar_comparisons, write_demo
from d3llm.eval.timing import Speed, time_in_rounds
from d3llm.eval.leaderboard import Result, build_leaderboard, load_results
from d3llm.eval.runner import evaluate
from d3llm.eval.sweep import sweep
from d3llm.metrics import aup, wilson_interval_pct
from d3llm.models import LoadedModel
from d3llm.tasks import ArithTask
from tests.conftest import run_cli, save_toy_model, tokenizer_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ParityTask(ArithTask):
    """Arithmetic prompts scored by the parity of answer + response length: a toy model gets a
    deterministic accuracy strictly between 0 and 100 that differs between decode methods."""

    def __init__(self):
        super().__init__(name="parity")

    def score(self, problem, response):
        return (int(problem.answer) + len(response)) % 2 == 0


def loaded(family, tokenizer, name):
    return LoadedModel(tokenizer_model(tokenizer, family), tokenizer, Path(name), name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer):
    """Result files as `d3llm eval --json` and `d3llm sweep` write them (n=6, seed 0)."""
    root = tmp_path_factory.mktemp("runs")
    dllm, ar, task = loaded("llada", tiny_tokenizer, "toy-llada"), loaded("ar", tiny_tokenizer, "toy-ar"), ParityTask()
    files = []
    for lm, method in ((dllm, "vanilla"), (ar, "ar")):
        result = evaluate(lm, task, preset(method, max_new_tokens=16, block_size=8), n=6, seed=0)
        files.append(root / f"{lm.name}-{method}.json")
        files[-1].write_text(json.dumps(result.to_dict(), indent=2))
    sweep(dllm, task, "d3llm", {"threshold": ["0.05", "3.0"], "block_size": ["8"]}, n=6, seed=0,
          out=root / "sweep", max_new_tokens=16)
    return root, files


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_leaderboard_from_eval_and_sweep_files(monkeypatch, capsys, runs, tmp_path):
    root, files = runs
    code, out, err = run_cli(monkeypatch, capsys, "leaderboard", *files, root / "sweep", "--out", tmp_path / "board")
    assert code in (0, None), err

    # Every point comes from a results file; the sweep's curve.json is not read as a point.
    records = [json.loads(f.read_text()) for f in files] + \
              [json.loads(f.read_text()) for f in sorted((root / "sweep").glob("point-*.json"))]
    y_max = max(r["accuracy_pct"] for r in records)
    assert 0 < y_max < 100  # the parity scorer gives the comparison something to weigh
    board = json.loads((tmp_path / "board" / "leaderboard.json").read_text())
    task = board["tasks"]["parity"]
    assert task["y_max"] == y_max
    rows = {(r["model"], r["method"]): r for r in task["rows"]}
    assert set(rows) == {("toy-llada", "vanilla"), ("toy-llada", "d3llm"), ("toy-ar", "ar")}
    assert len(rows["toy-llada", "d3llm"]["points"]) == 2 and len(rows["toy-ar", "ar"]["points"]) == 1
    for (model, method), row in rows.items():
        points = [(r["tokens_per_forward"], r["accuracy_pct"]) for r in records
                  if (r["model"], r["method"]) == (model, method)]
        assert row["aup"] == pytest.approx(aup(points, y_max))
    assert [r["aup"] for r in task["rows"]] == sorted((r["aup"] for r in task["rows"]), reverse=True)

    ar_record = next(r for r in records if r["method"] == "ar")
    low, high = wilson_interval_pct(ar_record["correct"], 6)
    assert ar_record["accuracy_ci_pct"] == [low, high] and rows["toy-ar", "ar"]["points"][0]["accuracy_ci_pct"] == [low, high]
    assert f"## parity (y_max {y_max:.1f}%; test, seed 0, n=6)" in out
    assert (f"| toy-ar | ar | {ar_record['accuracy_pct']:.1f} [{low:.1f}, {high:.1f}] | 1.00 | "
            f"{ar_record['tokens_per_second']:.1f} | {rows['toy-ar', 'ar']['aup']:.1f} | 6 | 1 |") in out
    assert "[low, high] after an accuracy is its 95% interval (Wilson)" in out
    assert out.strip() == (tmp_path / "board" / "leaderboard.md").read_text().strip()
    for name in ("accuracy_vs_tpf.png", "aup.png"):
        width, height = png_size(tmp_path / "board" / name)
        assert width > 300 and height > 200


def test_aup_of_the_reference_values():
    """Spec section 5: points (2, 70), (5, 69) against y_max 70 give 344.157993; the best
    accuracy of all rows is the y_max, and one point at TPF 1 scores its accuracy."""
    def result(method, tpf, accuracy):
        return Result("m", "gsm8k", method, 100, 0, "test", accuracy, tpf, 10.0 * tpf)

    board = build_leaderboard([result("d3llm", 2.0, 70), result("d3llm", 5.0, 69), result("vanilla", 1.0, 65)])
    (task,) = board.tasks
    assert task.y_max == 70
    assert [(r.method, round(r.aup, 6)) for r in task.rows] == [("d3llm", 344.157993), ("vanilla", 65.0)]
    assert task.rows[0].cells()["accuracy %"] == "69.0-70.0" and task.rows[0].cells()["TPF"] == "2.00-5.00"


def test_zero_accuracy_leaves_aup_undefined():
    board = build_leaderboard([Result("m", "code", "d3llm", 10, 0, "test", 0.0, 2.0, 5.0)])
    assert board.tasks[0].rows[0].aup is None
    assert "| undefined |" in board.to_markdown()


def assert_one_line_error(code, err, *parts):
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for part in parts:
        assert part in err, err


def test_mixed_problem_sets_are_refused_unless_allowed(monkeypatch, capsys, runs, tmp_path):
    root, files = runs
    other = {k: v for k, v in json.loads(files[1].read_text()).items() if k != "correct"} | {"n": 3}
    (tmp_path / "ar-n3.json").write_text(json.dumps(other))
    args = ["leaderboard", files[0], tmp_path / "ar-n3.json", "--out", tmp_path / "board", "--no-plots"]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, "task 'parity' mixes results of different problem sets",
                          f"test, seed 0, n=6 ({files[0]})", "test, seed 0, n=3 (", "ar-n3.json", "--allow-mixed")
    code, out, err = run_cli(monkeypatch, capsys, *args, "--allow-mixed")
    assert code in (0, None), err
    assert "| toy-ar | ar |" in out and "| 3 | 1 |" in out
    assert not list((tmp_path / "board").glob("*.png"))  # --no-plots


def test_the_fixed_test_set_is_named_and_not_mixed_with_drawn_sets():
    def result(seed, method="d3llm", source="a.json"):
        return Result("m", "arith", method, 600, seed, "test", 50.0, 2.0, 100.0, source=source)

    board = build_leaderboard([result(0), result(0, "vanilla", source="b.json")])
    assert "## arith (y_max 50.0%; fixed test set, n=600)" in board.to_markdown()
    assert "| 50.0 [46.0, 54.0] |" in board.to_markdown()
    with pytest.raises(D3llmError, match=r"different problem sets: fixed test set, n=600 \(a.json\); "
                                         r"test, seed 1, n=600 \(c.json\); .*without them: the fixed test set"):
        build_leaderboard([result(0), result(1, source="c.json")])


def test_bad_inputs(monkeypatch, capsys, runs, tmp_path):
    root, files = runs
    out = ["--out", tmp_path / "board"]
    code, _, err = run_cli(monkeypatch, capsys, "leaderboard", tmp_path / "missing.json", *out)
    assert_one_line_error(code, err, "results path", "missing.json does not exist")
    code, _, err = run_cli(monkeypatch, capsys, "leaderboard", root / "sweep" / "curve.json", *out)
    assert_one_line_error(code, err, "curve.json is not a results record: it lacks", "accuracy_pct")
    (tmp_path / "broken.json").write_text("{not json")
    code, _, err = run_cli(monkeypatch, capsys, "leaderboard", tmp_path / "broken.json", *out)
    assert_one_line_error(code, err, "broken.json cannot be read as JSON")
    partial = {k: v for k, v in json.loads(files[0].read_text()).items() if k != "seed"}
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    code, _, err = run_cli(monkeypatch, capsys, "leaderboard", tmp_path / "partial.json", *out)
    assert_one_line_error(code, err, "partial.json is not a results record: it lacks seed")
    for key, value, message in (("accuracy_pct", 140, "accuracy must be a percentage in 0..100, got 140"),
                                ("tokens_per_forward", "fast", "a point must be [tpf, accuracy_pct]"),
                                ("n", "20", "`n` must be a number, got '20'")):
        (tmp_path / "bad.json").write_text(json.dumps(json.loads(files[0].read_text()) | {key: value}))
        code, _, err = run_cli(monkeypatch, capsys, "leaderboard", tmp_path / "bad.json", *out)
        assert_one_line_error(code, err, "bad.json: ", message)
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "leaderboard", tmp_path / "empty", *out)
    assert_one_line_error(code, err, "no results records found in")
    with pytest.raises(D3llmError, match="`alpha` must be >= 0"):
        build_leaderboard(load_results(files), alpha=-1)


def test_demo_report_names_the_ar_comparison(runs, tiny_tokenizer, tmp_path):
    dllm, ar, task = loaded("llada", tiny_tokenizer, "toy-llada"), loaded("ar", tiny_tokenizer, "toy-ar"), ParityTask()
    results = [evaluate(lm, task, preset(method, max_new_tokens=16, block_size=8), n=4, seed=1)
               for lm, method in ((dllm, "vanilla"), (dllm, "d3llm"), (ar, "ar"), (ar, "ar-spec"))]
    report = write_demo(results, tmp_path / "demo", plots=False)

    assert sorted(p.name for p in (tmp_path / "demo" / "results").iterdir()) == [
        "toy-ar__parity__ar-spec.json", "toy-ar__parity__ar.json", "toy-llada__parity__d3llm.json",
        "toy-llada__parity__vanilla.json"]
    (comparison,) = report.comparisons
    dllm_rows = [r for r in report.board.tasks[0].rows if not r.method.startswith("ar")]
    assert comparison.dllm is max(dllm_rows, key=lambda r: (r.aup, r.best_point.tokens_per_second))
    by_method = {r.method: r for r in results}
    fastest_ar = max(("ar", "ar-spec"), key=lambda m: by_method[m].tokens_per_second)  # the strongest baseline
    assert comparison.ar.method == fastest_ar
    assert comparison.speedup == pytest.approx(
        by_method[comparison.dllm.method].tokens_per_second / by_method[fastest_ar].tokens_per_second)
    markdown = (tmp_path / "demo" / "leaderboard.md").read_text()
    assert comparison.sentence() in markdown and f"the AR baseline toy-ar / {fastest_ar} " in markdown
    without_ar = [p for r in report.board.tasks[0].rows if not r.method.startswith("ar") for p in r.points]
    assert ar_comparisons(build_leaderboard(without_ar)) == []
    (record,) = json.loads((tmp_path / "demo" / "ar_comparison.json").read_text())
    assert record["ar"] == f"toy-ar / {fastest_ar}" and record["batch1_tokens_per_second_rounds"] == {}


def test_the_ar_comparison_is_timed_one_request_at_a_time(runs, tiny_tokenizer, tmp_path):
    """With batch-1 timings, the AR baseline is the fastest AR row at batch 1 (not in the run's
    batches), the speed-up is the ratio of the medians, and the run's batched ratio is given beside it;
    the compared dLLM row is one a model decodes by default where there is one."""
    dllm, ar, task = loaded("llada", tiny_tokenizer, "toy-llada"), loaded("ar", tiny_tokenizer, "toy-ar"), ParityTask()
    results = [evaluate(lm, task, preset(method, max_new_tokens=16, block_size=8), n=4, seed=1)
               for lm, method in ((dllm, "vanilla"), (dllm, "d3llm"), (ar, "ar"), (ar, "ar-spec"))]
    by_method = {r.method: r for r in results}
    slow_in_batches = min(("ar", "ar-spec"), key=lambda m: by_method[m].tokens_per_second)
    fast = "ar-spec" if slow_in_batches == "ar" else "ar"
    latency = {("parity", "toy-llada / vanilla"): Speed((30.0, 10.0, 20.0)),
               ("parity", f"toy-ar / {slow_in_batches}"): Speed((8.0, 9.0, 7.0)),
               ("parity", f"toy-ar / {fast}"): Speed((6.0, 5.0, 4.0))}
    defaults = {("toy-llada", "vanilla")}  # vanilla's AUP is the lower one: chosen for being the default
    (comparison,) = ar_comparisons(write_demo(results, tmp_path / "demo", plots=False).board, latency, defaults)

    assert comparison.dllm.method == "vanilla" and comparison.ar.method == slow_in_batches
    assert comparison.speedup == pytest.approx(20.0 / 8.0)
    assert comparison.batched_speedup == pytest.approx(
        by_method["vanilla"].tokens_per_second / by_method[fast].tokens_per_second)
    sentence = comparison.sentence()
    assert "2.50x the tokens/s of the AR baseline" in sentence and "one request at a time (20.0 vs 8.0 tokens/s" in sentence
    assert f"{comparison.batched_speedup:.2f}x in the run's batches" in sentence and f"toy-ar / {fast})" in sentence
    assert comparison.record()["batch1_tokens_per_second_rounds"]["toy-ar / ar"] in ([8.0, 9.0, 7.0], [6.0, 5.0, 4.0])


def test_rounds_take_turns_and_time_each_contender_alone(monkeypatch, tiny_tokenizer):
    """`time_in_rounds`: every contender is timed `rounds` times at batch 1 on the same problems,
    and each round starts with the next contender."""
    dllm, ar, task = loaded("llada", tiny_tokenizer, "toy-llada"), loaded("ar", tiny_tokenizer, "toy-ar"), ParityTask()
    calls = []
    real = evaluate

    def recording(lm, task, config, **kwargs):
        calls.append((lm.name, kwargs["batch_size"], kwargs["n"], kwargs["split"]))
        return real(lm, task, config, **kwargs)

    monkeypatch.setattr("d3llm.eval.timing.evaluate", recording)
    speeds = time_in_rounds([(dllm, preset("d3llm", max_new_tokens=16, block_size=8)), (ar, preset("ar", max_new_tokens=16))],
                            [task], n=3, seed=1, split="test", rounds=3)
    assert [c[0] for c in calls] == ["toy-llada", "toy-ar", "toy-ar", "toy-llada", "toy-llada", "toy-ar"]
    assert {c[1:] for c in calls} == {(1, 3, "test")}
    assert all(len(s.rounds) == 3 and min(s.rounds) > 0 for s in speeds)
    assert speeds[0].median == sorted(speeds[0].rounds)[1]


def test_demo_command_prints_aup_and_writes_the_leaderboard(monkeypatch, capsys, tiny_tokenizer, tmp_path):
    """`d3llm demo` over a toy dLLM and the bundled AR model (bundled dLLMs are replaced by the
    toy one so that the test's cost does not grow with the bundle), on two tasks and methods."""
    from d3llm.models import bundled_models

    toy = save_toy_model(tmp_path / "toy-llada", tiny_tokenizer, max_length=256)
    monkeypatch.setattr("d3llm.eval.demo.bundled_models", lambda: {str(toy): toy, "tiny-ar": bundled_models()["tiny-ar"]})

    code, out, err = run_cli(monkeypatch, capsys, "demo", "--n", 2, "--out", tmp_path / "demo", "--task", "arith",
                             "--task", "arith:medium", "--method", "vanilla", "--method", "d3llm-cache")
    assert code in (0, None), err
    assert "AUP" in out and "decodes" in out and re.search(r"the AR baseline tiny-ar / ar(-spec)? ", out)
    flat = " ".join(out.split())  # the console folds long lines
    assert "n=2 problems per row is small: the 95% interval after each accuracy spans up to 81 points" in flat
    assert "`d3llm eval` scores the fixed test set (600 problems per task)" in flat
    assert "accuracy % [95% CI]" in out and re.search(r"\d+\.\d \[\d+\.\d, \d+\.\d\]", out)
    assert "n=2 problems per row is small" in (tmp_path / "demo" / "leaderboard.md").read_text()
    board = json.loads((tmp_path / "demo" / "leaderboard.json").read_text())
    assert set(board["tasks"]) == {"arith", "arith:medium"}
    for task in board["tasks"].values():  # the AR baselines run whatever --method says
        assert sorted(r["method"] for r in task["rows"]) == ["ar", "ar-spec", "d3llm-cache", "vanilla"]
        assert all(p["n"] == 2 for r in task["rows"] for p in r["points"])
    assert len(list((tmp_path / "demo" / "results").glob("*.json"))) == 2 * 4
    assert "one request at a time" in flat and "in the run's batches" in flat
    for record in json.loads((tmp_path / "demo" / "ar_comparison.json").read_text()):  # timed: each row 3 rounds
        rounds = record["batch1_tokens_per_second_rounds"]
        assert {record["dllm"], record["ar"]} <= set(rounds) and {len(v) for v in rounds.values()} == {3}
    assert png_size(tmp_path / "demo" / "aup.png")[0] > 300

    code, _, err = run_cli(monkeypatch, capsys, "demo", "--out", tmp_path / "demo", "--method", "turbo")
    assert_one_line_error(code, err, "unknown method 'turbo'")


# --- plots and AUP tables ---------------------------------------------------------------------


def plot_board():
    """Results read in an order that is not task order; a zero AUP, a method not run on one
    task, an AUP over 100, and two rows on the very same (TPF, accuracy) point."""
    def result(model, task, method, accuracy, tpf):
        return Result(model, task, method, 10, 0, "test", accuracy, tpf, 10.0 * tpf, source=f"{model}-{task}-{method}")

    return build_leaderboard([
        result("m-dllm", "code", "d3llm", 50, 4.5), result("m-dllm", "code", "d3llm-cache", 50, 4.5),
        result("m-ar", "code", "ar", 80, 1.0), result("m-ar", "mystery", "ar", 40, 1.0),
        result("m-dllm", "arith", "d3llm", 0, 3.0), result("m-ar", "arith", "ar", 90, 1.0),
        result("m-dllm", "arith-long", "d3llm", 20, 2.8), result("m-ar", "arith-long", "ar", 90, 1.0),
        result("m-dllm", "arith-long", "d3llm-cache", 20, 2.8),
    ])


def test_tasks_come_in_a_fixed_order():
    board = plot_board()
    assert [t.task for t in board.tasks] == ["arith", "arith-long", "code", "mystery"]
    markdown = board.to_markdown()
    assert markdown.index("## arith (") < markdown.index("## arith-long") < markdown.index("## code") \
        < markdown.index("## mystery")


def test_aup_bars_are_centred_labelled_and_explained():
    pytest.importorskip("matplotlib")
    from d3llm.eval.plots import aup_figure

    board = plot_board()
    figure = aup_figure(board)
    panels = figure.axes[:len(board.tasks)]
    assert [a.get_title().split(" (")[0] for a in panels] == ["arith", "arith-long", "code", "mystery"]
    for axes in panels:
        assert "can exceed 100" in axes.get_ylabel()
        ticks = list(axes.get_xticks())
        bars = [p for p in axes.patches if p.get_width() > 0]
        for tick in ticks:  # every group of bars is centred on its model's tick
            group = [b.get_x() + b.get_width() / 2 for b in bars if abs(b.get_x() + b.get_width() / 2 - tick) < 0.45]
            assert group and sum(group) / len(group) == pytest.approx(tick)
    arith = {t.get_text() for t in panels[0].texts}
    assert "0" in arith and "90" in arith  # the d3llm row scored 0: labelled, not blank
    assert "n/a" in arith  # m-dllm was not run with d3llm-cache on arith
    code = [t.get_text() for t in panels[2].texts]
    code_aup = {r.method: r.aup for r in board.tasks[2].rows}
    assert code_aup["d3llm"] > 100 and f"{code_aup['d3llm']:.0f}" in code
    assert "exceeds 100" in figure.get_suptitle() or "above 100" in figure.get_suptitle()


def test_coinciding_markers_are_drawn_side_by_side():
    pytest.importorskip("matplotlib")
    from d3llm.eval.plots import curves_figure

    board = plot_board()
    figure = curves_figure(board)
    code_panel = figure.axes[2]
    assert code_panel.get_title().startswith("code")
    same_place = [line for line in code_panel.get_lines() if list(line.get_xdata()) == [4.5]]
    assert len(same_place) == 2
    shown = [line.get_transform().transform((4.5, 50))[0] for line in same_place]
    assert abs(shown[0] - shown[1]) > 3  # pixels apart, not on top of each other
    markers = {line.get_marker() for line in code_panel.get_lines()}
    assert len(markers) == 2  # one per model


def test_aup_command_means_over_common_tasks(monkeypatch, capsys, tmp_path):
    table = tmp_path / "t.yaml"
    table.write_text("gsm8k:\n  d3llm: [[2, 70], [5, 69]]\n  vanilla: [[1, 65]]\nmath:\n  vanilla: [[1, 40]]\n")
    code, out, err = run_cli(monkeypatch, capsys, "aup", table)
    assert code in (0, None), err
    assert not out.startswith("\n")
    assert "mean (gsm8k)" in out and "n/a" in out and "exceeds 100" in out
    assert "mean over the tasks every method has (gsm8k)" in out
    vanilla = next(line for line in out.splitlines() if "vanilla" in line)
    assert vanilla.split("│")[-2].strip() == "65.0"  # gsm8k only, not (65 + 40) / 2
    code, out, err = run_cli(monkeypatch, capsys, "aup", table, "--json")
    result = json.loads(out)
    assert result["mean_tasks"] == ["gsm8k"] and result["mean"]["vanilla"] == pytest.approx(65.0)
