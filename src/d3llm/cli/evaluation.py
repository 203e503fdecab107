"""The commands that measure: `d3llm eval` (accuracy, TPF, tokens/s per task), `d3llm sweep` (a
grid of decode settings), `d3llm aup` (AUP of a table of points), `d3llm leaderboard` (result
files compared) and `d3llm demo` (every bundled model on every task). What they print is
rendered by `d3llm.eval.report` (and the sweep's and leaderboard's own modules)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from d3llm.cli.common import (BATCH_HELP, BATCH_SIZE, BLOCK_SIZE_HELP, CANVAS_HELP, METHOD_HELP, MODEL_HELP,
                              OVERWRITE_HELP, SET_HELP, TEMPERATURE_HELP, THRESHOLD_HELP, Device, Dtype,
                              decode_config, fail, load, placement)
from d3llm.errors import D3llmError
from d3llm.tasks.base import FIXED_TEST_N, FIXED_TEST_SEED

N_HELP = (f"Problems per task, >= 1; the default {FIXED_TEST_N} of the test split at seed {FIXED_TEST_SEED} "
          "is the fixed test set, which results compare on")


def _check_alpha(alpha: float) -> None:
    import math

    if not (math.isfinite(alpha) and alpha >= 0):
        raise D3llmError(f"--alpha must be a finite number >= 0 (the authors' 3), got {alpha}")


def _per_task_json(path: Path, task: str, several: bool) -> Path:
    """`--json FILE`: FILE itself for one task; FILE's stem plus the task name for several
    (r.json -> r-arith.json, r-code.json), so every file stays one `d3llm leaderboard` record."""
    import re

    if not several:
        return path
    return path.with_name(f"{path.stem}-{re.sub(r'[^A-Za-z0-9._-]+', '_', task)}{path.suffix or '.json'}")


def _eval_tasks(tasks: list[str], n: int, batch_size: int, json_out: Path | None, log_samples: Path | None,
                overwrite: bool) -> list:
    """The tasks `d3llm eval` scores, once every input and output is checked (before the model loads)."""
    from d3llm.eval.results import written_as_samples, written_by_eval
    from d3llm.eval.runner import check_batch_size
    from d3llm.files import check_out_file
    from d3llm.tasks import get_task
    from d3llm.tasks.base import check_count

    check_count(n, "`--n`", low=1)
    check_batch_size(batch_size, "`--batch-size`")
    the_tasks = [get_task(t) for t in dict.fromkeys(tasks)]  # unknown tasks fail before the model loads
    names = [t.name for t in the_tasks]
    if len(set(names)) < len(names):
        fail(f"--task {', '.join(tasks)}: two tasks share the name {max(names, key=names.count)!r} "
             "(their results would be indistinguishable); evaluate them in separate runs")
    for name in names if json_out else ():  # a result that cannot be written fails now, not after evaluating
        check_out_file(_per_task_json(json_out, name, len(names) > 1), "--json", overwrite, written_by_eval)
    if log_samples:
        check_out_file(log_samples, "--log-samples", overwrite, written_as_samples)
    return the_tasks


def eval_(
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)],
    tasks: Annotated[list[str], typer.Option("--task", help="arith | arith-long | code | arith:medium | gsm8k:PATH; "
                                             "repeatable: one result per task.")],
    method: Annotated[Optional[str], typer.Option(help=METHOD_HELP)] = None,
    temperature: Annotated[Optional[float], typer.Option(help=TEMPERATURE_HELP)] = None,
    threshold: Annotated[Optional[float], typer.Option(help=THRESHOLD_HELP)] = None,
    block_size: Annotated[Optional[int], typer.Option(help=BLOCK_SIZE_HELP)] = None,
    settings: Annotated[list[str], typer.Option("--set", help=SET_HELP)] = [],  # noqa: B006
    n: Annotated[int, typer.Option(help=N_HELP + " (a GSM8K file with fewer is used whole).")] = FIXED_TEST_N,
    seed: Annotated[int, typer.Option(help="Which problems are drawn.")] = FIXED_TEST_SEED,
    split: Annotated[str, typer.Option(help="train | validation | test")] = "test",
    batch_size: Annotated[int, typer.Option(help=BATCH_HELP)] = BATCH_SIZE,
    max_new_tokens: Annotated[Optional[int], typer.Option(help=CANVAS_HELP)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help=(
        "Write the result record here; with several --task, one file per task named FILE's stem plus "
        "the task (r.json -> r-arith.json, r-code.json)."))] = None,
    log_samples: Annotated[Optional[Path], typer.Option("--log-samples", help=(
        "Write one JSON line per problem here (task, prompt, response, extracted and reference answer, "
        "correct, the row's NFE and TPF)."))] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Decode N problems of each task (by default its fixed test set), score them, report accuracy
    with its 95% interval, TPF and tokens/s (one line per task)."""
    from d3llm.eval.report import result_line
    from d3llm.eval.runner import clamp_n, evaluate
    from d3llm.files import write_atomic
    from d3llm.progress import progress_bar
    from d3llm.tasks.base import check_split

    the_tasks = _eval_tasks(tasks, n, batch_size, json_out, log_samples, overwrite)
    split = check_split(split)
    counts = {}
    for the_task in the_tasks:
        counts[the_task.name], note = clamp_n(the_task, split, n)
        if note:
            typer.echo(f"note: {note}", err=True)
    lm = load(model, device, dtype)
    configs = {the_task.name: decode_config(method, lm.facts.family, max_new_tokens, settings,  # the recipe's on the task
                                            lm.recipe_for(the_task.name), temperature=temperature,
                                            threshold=threshold, block_size=block_size) for the_task in the_tasks}
    samples: list[dict] | None = [] if log_samples else None
    results = []
    with progress_bar(sum(counts.values()), "eval") as bar:  # on stderr: stdout holds only the results
        for the_task in the_tasks:  # each task's record written as it finishes: a crash later loses none
            config = configs[the_task.name]
            bar.describe(f"{the_task.name} / {config.method}")
            result = evaluate(lm, the_task, config, n=counts[the_task.name], seed=seed, split=split,
                              batch_size=batch_size, progress=bar.advance, samples=samples)
            results.append(result)
            if json_out:
                path = _per_task_json(json_out, result.task, len(the_tasks) > 1)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, json.dumps(result.to_dict(), indent=2))
    for result in results:
        typer.echo(result_line(result))
    if log_samples:
        log_samples.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(log_samples, "".join(json.dumps(record) + "\n" for record in samples))
        typer.echo(f"{len(samples)} samples written to {log_samples}", err=True)


def demo(
    n: Annotated[int, typer.Option(help="Test problems per task (few, for speed: the output says how wide "
                                   "their accuracies' 95% intervals are).")] = 10,
    seed: Annotated[int, typer.Option(help="Which problems are drawn.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for result files, leaderboard and plots.")] = Path("runs/demo"),
    tasks: Annotated[list[str], typer.Option("--task", help="Only these tasks (repeatable; default: all).")] = [],  # noqa: B006
    methods: Annotated[list[str], typer.Option("--method", help="Only these diffusion presets (repeatable; "
                                               "default: all); the AR baseline always runs.")] = [],  # noqa: B006
    device: Device = "auto",
    dtype: Dtype = "auto",
) -> None:
    """Every bundled model on every task: accuracy, TPF, tokens/s and AUP in one table, the AR
    baseline comparison (timed one request at a time and in batches), and the result files,
    leaderboard and plots written to OUT."""
    from rich.console import Console

    from d3llm.eval.demo import demo_plan, latency_problems, run_demo, time_ar_comparisons, write_demo
    from d3llm.eval.plots import matplotlib_available
    from d3llm.eval.report import demo_lines, terminal_tables
    from d3llm.eval.runner import check_batch_size
    from d3llm.files import check_out_folder
    from d3llm.progress import progress_bar
    from d3llm.tasks.base import check_count

    check_count(n, "`--n`", low=1)
    check_out_folder(out)
    where, precision = placement(device, dtype)
    total = len(demo_plan(tasks, methods)) * n + latency_problems(tasks, methods, n)  # problems decoded
    with progress_bar(total, "demo") as bar:
        results = run_demo(n=n, seed=seed, progress=bar.describe, advance=bar.advance,
                           tasks=tasks, methods=methods, device=where, dtype=precision)
        latency = time_ar_comparisons(results, seed=seed, device=where, dtype=precision, progress=bar.describe,
                                      advance=bar.advance)
    plots = matplotlib_available()
    report = write_demo(results, out, plots=plots, latency=latency)
    console = Console()
    for table in terminal_tables(report.board, n, seed):
        console.print(table)
    for line in demo_lines([c.sentence() for c in report.comparisons], report.files, out, plots, n):
        console.print(line, highlight=False, markup=False)  # "d3llm[plot]" as written


def sweep(
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)],
    task: Annotated[list[str], typer.Option(help="Task name (one per sweep).")],
    params: Annotated[list[str], typer.Option("--param", help="NAME=V1,V2,... (repeatable: a grid).")],
    out: Annotated[Path, typer.Option("--out", "-o", help=(
        "Folder for point files and curve.json; run again to resume (only a sweep of the same settings)."))],
    method: Annotated[str, typer.Option(help="Decode preset.")] = "d3llm",
    settings: Annotated[list[str], typer.Option("--set", help="Fix a decode setting at every point, e.g. "
                                                "--set block_size=16 (repeatable).")] = [],  # noqa: B006
    n: Annotated[int, typer.Option(help=N_HELP + ", at every point.")] = FIXED_TEST_N,
    seed: Annotated[int, typer.Option(help="Which problems are drawn.")] = FIXED_TEST_SEED,
    split: Annotated[str, typer.Option(help="train | validation | test")] = "test",
    max_new_tokens: Annotated[Optional[int], typer.Option(help=CANVAS_HELP)] = None,
    batch_size: Annotated[int, typer.Option(help=BATCH_HELP)] = BATCH_SIZE,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=(
        "Replace the sweep files in --out (point-*.json, curve.json) when they hold a sweep of "
        "other settings (model, task, method, n, seed, split, --set, grid, dtype); without it, refuse."))] = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
) -> None:
    """Evaluate a preset over a grid of settings; one results file per point plus the curve."""
    import math

    from d3llm.decode.config import parse_overrides
    from d3llm.eval.sweep import parse_grid, points_table, sweep as run_sweep
    from d3llm.files import check_out_folder
    from d3llm.progress import progress_bar
    from d3llm.tasks import get_task
    from d3llm.eval.runner import check_batch_size
    from d3llm.tasks.base import check_count

    check_count(n, "`--n`", low=1)
    check_batch_size(batch_size, "`--batch-size`")
    check_out_folder(out)
    if len(task) > 1:  # click keeps the last of a repeated option; a sweep is of one task
        fail(f"--task given {len(task)} times ({', '.join(task)}); a sweep covers one task: run one sweep "
             "per task, each with its own --out")
    grid = parse_grid(params)
    fixed = parse_overrides(settings)
    the_task = get_task(task[0])
    lm = load(model, device, dtype)
    points = math.prod(len(values) for values in grid.values())
    with progress_bar(points * n, "sweep") as bar:
        records = run_sweep(lm, the_task, method, grid, n=n, seed=seed, out=out, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, progress=lambda p: bar.describe(f"{the_task.name} {p}"),
                            advance=bar.advance, split=split, settings=fixed, overwrite=overwrite)
    typer.echo(points_table(records))
    typer.echo(f"curve written to {out / 'curve.json'}")


def aup(
    table: Annotated[Path, typer.Argument(help="YAML/JSON: task -> method -> [[tpf, accuracy_pct], ...]")],
    alpha: Annotated[float, typer.Option(help="Weight steepness (the authors' 3).")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """AUP per method and task, the y_max used per task, and each method's mean over the tasks
    every method has (named in the mean column's header)."""
    from rich.console import Console

    from d3llm.eval.report import aup_report
    from d3llm.metrics.aup import aup_table, read_table

    _check_alpha(alpha)
    result = aup_table(read_table(table), alpha=alpha)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    title, view, notes = aup_report(result, alpha)
    typer.echo(title)
    Console().print(view)
    typer.echo(notes)


def leaderboard(
    results: Annotated[list[Path], typer.Argument(help="Result files (d3llm eval --json, d3llm sweep) or folders of them.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for leaderboard.md, leaderboard.json and plots.")],
    allow_mixed: Annotated[bool, typer.Option("--allow-mixed", help="Compare results of one task measured with "
                                              "different n, seed or split.")] = False,
    alpha: Annotated[float, typer.Option(help="AUP weight steepness (the authors' 3).")] = 3.0,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw accuracy-vs-TPF and AUP PNGs.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Compare results by task and (model, method): accuracy, TPF, tokens/s and AUP as
    Markdown, JSON and plots; prints the Markdown."""
    from d3llm.eval.leaderboard import build_leaderboard, load_results
    from d3llm.eval.report import claim_out, write_leaderboard
    from d3llm.files import check_out_folder

    _check_alpha(alpha)
    check_out_folder(out)
    claim_out(out, overwrite)
    board = build_leaderboard(load_results(results), allow_mixed=allow_mixed, alpha=alpha)
    files = write_leaderboard(board, out, plots=plots)
    typer.echo(board.to_markdown())
    typer.echo("written: " + ", ".join(map(str, files)), err=True)
